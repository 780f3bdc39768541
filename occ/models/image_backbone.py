"""Image backbones: torchvision ResNet / Swin trunks, and loading local ImageNet weights into them."""
import os

import torch
import torchvision
from torch import nn

from occ.errors import UsageError

from .view_transform import batch_ground_prior

# stage s (1..4) of every backbone has stride 2 ** (s + 1)
RESNET_STAGE_CHANNELS = {"resnet18": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048)}
SWIN_STAGE_CHANNELS = {"swin_t": (96, 192, 384, 768), "swin_b": (128, 256, 512, 1024)}


def stage_stride(stage):
    return 2 ** (stage + 1)


class ResNetTrunk(nn.Module):
    """torchvision ResNet without avgpool / fc; returns the outputs of `stages` (1..4).

    Attribute names follow torchvision so that its state dicts load directly.
    """

    def __init__(self, name, stages, extra_in_channels=0):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.stages = tuple(stages)
        self.out_channels = [RESNET_STAGE_CHANNELS[name][s - 1] for s in self.stages]
        # maps stacked onto the image (e.g. the ground prior): conv1's kernel for them, zero at the start
        # so that a trunk with ImageNet weights computes what it computed without them
        self.conv1_extra = None
        if extra_in_channels:
            self.conv1_extra = nn.Conv2d(extra_in_channels, net.conv1.out_channels, 7, 2, 3, bias=False)
            nn.init.zeros_(self.conv1_extra.weight)

    def forward(self, x, extra=None):
        """x (B, 3, H, W), extra (B, extra_in_channels, H, W) when the trunk has them."""
        if (extra is None) != (self.conv1_extra is None):
            raise ValueError("the trunk takes extra input maps exactly when built with extra_in_channels")
        x = self.conv1(x) if extra is None else self.conv1(x) + self.conv1_extra(extra)
        x = self.maxpool(self.relu(self.bn1(x)))
        outs = []
        for stage, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            x = layer(x)
            if stage in self.stages:
                outs.append(x)
            if stage == self.stages[-1]:
                break
        return outs


class SwinTrunk(nn.Module):
    """torchvision Swin transformer `features` (no final norm / head) and, like mmdet's
    SwinTransformer (the official EFFOcc backbone), one LayerNorm per output stage (`out_norms`);
    returns NCHW maps of `stages`."""

    def __init__(self, name, stages):
        super().__init__()
        self.features = getattr(torchvision.models, name)(weights=None).features
        self.stages = tuple(stages)
        self.out_channels = [SWIN_STAGE_CHANNELS[name][s - 1] for s in self.stages]
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels)

    def forward(self, x):
        outs = []
        for i, block in enumerate(self.features[:2 * self.stages[-1]]):
            x = block(x)  # (B, H, W, C)
            if i % 2 == 1 and (i + 1) // 2 in self.stages:
                outs.append(self.out_norms[len(outs)](x).permute(0, 3, 1, 2).contiguous())
        return outs


def trunk_outputs(trunk, batch):
    """The trunk's outputs for the B*N images of batch['images'] (B, N, 3, H, W), with each pixel's
    ground inverse depth as a fourth input map when the trunk reads it (model.camera_ground_prior)."""
    images = batch["images"].flatten(0, 1)
    if getattr(trunk, "conv1_extra", None) is None:
        return trunk(images)
    return trunk(images, batch_ground_prior(batch).flatten(0, 1))


def build_image_backbone(name, stages, extra_in_channels=0):
    if name in RESNET_STAGE_CHANNELS:
        return ResNetTrunk(name, stages, extra_in_channels)
    if extra_in_channels:
        raise UsageError(f"model.camera_ground_prior needs a ResNet backbone, not {name!r}")
    if name in SWIN_STAGE_CHANNELS:
        return SwinTrunk(name, stages)
    raise UsageError(f"model.backbone = {name!r} is not one of "
                     f"{tuple(RESNET_STAGE_CHANNELS) + tuple(SWIN_STAGE_CHANNELS)}")


def load_pretrained(module, path):
    """Load a local torchvision state dict (e.g. ImageNet weights) into a trunk; nothing is downloaded.

    Keys the trunk does not have (fc, head, final norm) are ignored. Raises if the file is missing,
    shapes disagree, or no tensor matches. Returns (loaded_keys, missing_keys).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.pretrained_path: no such file {path!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = module.state_dict()
    loaded = {}
    for key, value in state.items():
        if key in own:
            if own[key].shape != value.shape:
                raise UsageError(f"{path}: tensor {key!r} has shape {tuple(value.shape)}, "
                                 f"the model expects {tuple(own[key].shape)}")
            loaded[key] = value
    if not loaded:
        raise UsageError(f"{path}: no tensor matches the {type(module).__name__} (wrong backbone file?)")
    missing = sorted(set(own) - set(loaded))
    module.load_state_dict(loaded, strict=False)
    print(f"pretrained: loaded {len(loaded)} tensors from {path}; missing {len(missing)}"
          + (f": {missing[:8]}" if missing else ""))
    return sorted(loaded), missing
