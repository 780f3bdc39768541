"""Official mmcv / mmdet3d checkpoints of EFFOcc, FlashOcc and DistillOcc -> this project's state
dicts (docs/deployment.md#official-checkpoints): reading the file, the key-name map, and the few
tensors whose layout differs. Pure functions of names, shapes and tensors; nothing here builds a
model or writes a file (tools/convert_checkpoint.py does).

The map is module-level: `module_map(cfg)` pairs every official module prefix with ours (e.g.
`img_neck.lateral_convs.0.conv` -> `img_neck.laterals.0`); a key is renamed by its longest
official prefix and keeps its suffix (`weight`, `bias`, `running_mean`, `running_var`,
`num_batches_tracked`, ...). Tensors are copied unchanged except:
  - sparse-conv weights (`pts_middle_encoder`, 5-D): spconv 2.x stores (out, kz, ky, kx, in), ours
    too; spconv 1.x / mmcv (kz, ky, kx, in, out) is permuted with (4, 0, 1, 2, 3). The layout is
    read off each tensor's shape (`sparse_layout`).
  - Swin patch merging (`stages.{i}.downsample.{reduction,norm}`): mmdet gathers the 2x2
    neighbours with nn.Unfold (channel-major: c * 4 + kh * 2 + kw), torchvision concatenates them
    (position-major: p * C + c with p = (0,0), (1,0), (0,1), (1,1)); `unfold_to_concat_order`.
  - Swin `relative_position_index`: mmdet (49, 49), torchvision flattened (2401,); same values.
"""
import math
import re

import torch

from occ.errors import UsageError


class ConversionError(UsageError):
    """An official checkpoint that does not map onto the model of the chosen config."""


SWIN_MERGE = re.compile(r"^img_backbone\.stages\.\d+\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$")


# ------------------------------------------------------------------------------- reading the file
def read_official_checkpoint(path, trusted=False):
    """(state dict with any `module.` prefix stripped, {"epoch", "updates"} where the file has
    them) of an mmcv checkpoint ({'meta', 'state_dict', 'optimizer'}), an EMA file ({'epoch',
    'state_dict', 'updates'}) or a bare state dict. The file is read with
    torch.load(weights_only=True) unless `trusted` (full unpickling runs code from the file)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except FileNotFoundError:
        raise
    except Exception as error:  # the pickle names a class outside tensors and plain data, or is corrupt
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "" if trusted else "; if you trust the file, --trust-file loads it with full unpickling"
        raise ConversionError(f"cannot read {path} as a tensors-only checkpoint ({first_line}){hint}") from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state = checkpoint["state_dict"]
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = checkpoint
    else:
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConversionError(f"{path} is not an mmcv checkpoint: expected a dict with a 'state_dict' entry "
                              f"(or a bare state dict), found {found}")
    stripped = {(key[len("module."):] if key.startswith("module.") else key): value for key, value in state.items()}
    extras = {key: checkpoint[key] for key in ("epoch", "updates") if isinstance(checkpoint.get(key), int)}
    return stripped, extras


# ------------------------------------------------------------------------------------ name map
def module_map(cfg):
    """{official module prefix: our module prefix} for the model of `cfg` (any occupancy preset)."""
    m = cfg.model
    pairs = {}
    if m.modality in ("fusion", "camera"):
        pairs.update(image_backbone_map(m.backbone, m.backbone_stages))
        pairs.update(image_neck_map(m.img_neck, len(m.backbone_stages)))
        if m.modality == "fusion" and m.use_lidar_depth:
            pairs["img_view_transformer.lidar_input_net"] = "view_transformer.depth_net.depth_input"
            pairs["img_view_transformer.depth_net"] = "view_transformer.depth_net.net"
        else:
            pairs["img_view_transformer.depth_net"] = "view_transformer.depth_net"
    if m.modality in ("fusion", "lidar"):
        pairs.update(sparse_encoder_map(m.sparse_blocks))
    if m.modality == "fusion":
        pairs["occ_fuser.occ_enc"] = "fuser.fuse"
    if m.bev_encoder == "second":
        pairs.update({"pts_backbone.blocks.0": "bev_encoder.stage_a", "pts_backbone.blocks.1": "bev_encoder.stage_b",
                      "pts_neck.deblocks.0": "bev_encoder.lateral_a", "pts_neck.deblocks.1": "bev_encoder.up_b"})
    else:
        pairs.update(resnet_bev_encoder_map(len(m.bev_resnet_channels), m.bev_resnet_blocks))
    if m.head != "occ":
        raise ConversionError(f"config {cfg.name}: official checkpoints exist for occupancy models only, "
                              f"not for the '{m.head}' head")
    pairs.update({"occ_head.final_conv.conv": "head.conv.0", "occ_head.predicter.0": "head.mlp.0",
                  "occ_head.predicter.2": "head.mlp.2"})
    return pairs


def image_backbone_map(backbone, out_stages):
    """ResNet: mmdet uses torchvision's names. Swin: mmdet's SwinTransformer -> torchvision's
    `features` (stage i at features[2i + 1], its patch merging at features[2i + 2]) and the
    LayerNorms of the output stages (`norm{i}`, i = stage - 1, -> `out_norms`)."""
    if backbone.startswith("resnet"):
        return {"img_backbone": "img_backbone"}
    depths = {"swin_t": (2, 2, 6, 2), "swin_b": (2, 2, 18, 2)}[backbone]
    pairs = {"img_backbone.patch_embed.projection": "img_backbone.features.0.0",
             "img_backbone.patch_embed.norm": "img_backbone.features.0.2"}
    for stage, depth in enumerate(depths):
        for block in range(depth):
            official = f"img_backbone.stages.{stage}.blocks.{block}"
            ours = f"img_backbone.features.{2 * stage + 1}.{block}"
            pairs.update({f"{official}.norm1": f"{ours}.norm1", f"{official}.attn.w_msa": f"{ours}.attn",
                          f"{official}.norm2": f"{ours}.norm2", f"{official}.ffn.layers.0.0": f"{ours}.mlp.0",
                          f"{official}.ffn.layers.1": f"{ours}.mlp.3"})
        if stage < len(depths) - 1:
            pairs[f"img_backbone.stages.{stage}.downsample"] = f"img_backbone.features.{2 * stage + 2}"
    for index, stage in enumerate(out_stages):
        pairs[f"img_backbone.norm{stage - 1}"] = f"img_backbone.out_norms.{index}"
    return pairs


def image_neck_map(kind, num_levels):
    if kind == "custom_fpn":
        pairs = {f"img_neck.lateral_convs.{i}.conv": f"img_neck.laterals.{i}" for i in range(num_levels)}
        pairs["img_neck.fpn_convs.0.conv"] = "img_neck.out_conv"
        return pairs
    return fpn_lss_map("img_neck", "img_neck.neck", extra_upsample=False)


def fpn_lss_map(official, ours, extra_upsample):
    """FPN_LSS: `conv` = [conv, BN, ReLU, conv, BN, ReLU], `up2` = [Upsample, conv, BN, ReLU, conv1x1]."""
    pairs = {f"{official}.conv.0": f"{ours}.fuse.0.0", f"{official}.conv.1": f"{ours}.fuse.0.1",
             f"{official}.conv.3": f"{ours}.fuse.1.0", f"{official}.conv.4": f"{ours}.fuse.1.1"}
    if extra_upsample:
        pairs.update({f"{official}.up2.1": f"{ours}.up.0.0", f"{official}.up2.2": f"{ours}.up.0.1",
                      f"{official}.up2.4": f"{ours}.up.1"})
    return pairs


def sparse_encoder_map(blocks):
    """mmdet3d SparseEncoder: encoder_layer{s} = [BasicBlock x blocks, SparseSequential(conv, BN, ReLU)];
    ours: stages[s - 1] = [BasicBlock x blocks, conv, BN, ReLU]."""
    official, ours = "pts_middle_encoder", "lidar_branch.encoder"
    pairs = {f"{official}.conv_input": f"{ours}.conv_input", f"{official}.conv_out": f"{ours}.conv_out"}
    for stage in range(4):
        layer = f"{official}.encoder_layers.encoder_layer{stage + 1}"
        for block in range(blocks):
            pairs[f"{layer}.{block}"] = f"{ours}.stages.{stage}.{block}"
        if stage < 3:
            pairs[f"{layer}.{blocks}.0"] = f"{ours}.stages.{stage}.{blocks}"
            pairs[f"{layer}.{blocks}.1"] = f"{ours}.stages.{stage}.{blocks + 1}"
    return pairs


def resnet_bev_encoder_map(num_stages, blocks):
    """CustomResNet `layers.{i}.{j}` (BasicBlock names; `downsample` a bare conv) and the FPN_LSS neck."""
    pairs = {f"img_bev_encoder_backbone.layers.{i}.{j}": f"bev_encoder.stages.{i}.{j}"
             for i in range(num_stages) for j in range(blocks)}
    pairs.update(fpn_lss_map("img_bev_encoder_neck", "bev_encoder.neck", extra_upsample=True))
    return pairs


def official_to_ours(name, pairs):
    """Our key for the official key `name` (by its longest official module prefix), or None."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in pairs:
            return ".".join([pairs[prefix]] + parts[end:])
    return None


def ours_to_official(name, pairs):
    """The official key that maps onto our key `name` (the inverse of `official_to_ours`), or None."""
    inverse = {ours: official for official, ours in pairs.items()}
    return official_to_ours(name, inverse)


# ------------------------------------------------------------------------------- tensor layouts
def sparse_layout(official_shape, our_shape):
    """"spconv2" when a sparse-conv weight of `official_shape` is already in our (out, kz, ky, kx, in)
    layout, "spconv1" when it is (kz, ky, kx, in, out), None when it is neither."""
    official_shape, our_shape = tuple(official_shape), tuple(our_shape)
    spconv1_shape = our_shape[1:4] + (our_shape[4], our_shape[0])
    if official_shape == our_shape and official_shape == spconv1_shape:
        raise ConversionError(f"sparse-conv weight of shape {official_shape} reads the same in both layouts")
    if official_shape == our_shape:
        return "spconv2"
    if official_shape == spconv1_shape:
        return "spconv1"
    return None


def spconv1_to_spconv2(weight):
    """(kz, ky, kx, in, out) -> (out, kz, ky, kx, in)."""
    return weight.permute(4, 0, 1, 2, 3).contiguous()


def unfold_to_concat_order(tensor):
    """A Swin patch-merging tensor whose last axis runs over 4C merged channels in mmdet's
    nn.Unfold order (c * 4 + kh * 2 + kw) -> torchvision's concat order (p * C + c, p over
    (kh, kw) = (0,0), (1,0), (0,1), (1,1)): the reduction weight (2C, 4C) or the norm's (4C,)."""
    *lead, merged = tensor.shape
    by_offset = tensor.reshape(*lead, merged // 4, 4)[..., [0, 2, 1, 3]]  # (..., C, p)
    return by_offset.transpose(-1, -2).reshape(*lead, merged).contiguous()


def convert_tensor(official_name, tensor, our_shape):
    """(tensor in our layout, how it was converted) for the official key `official_name`;
    None when its shape cannot give `our_shape`."""
    our_shape = tuple(our_shape)
    if official_name.startswith("pts_middle_encoder.") and tensor.dim() == 5:
        layout = sparse_layout(tensor.shape, our_shape)
        if layout is None:
            return None
        return (tensor if layout == "spconv2" else spconv1_to_spconv2(tensor)), layout
    if official_name.endswith(".relative_position_index"):
        return (tensor.reshape(our_shape), "flattened") if tensor.numel() == math.prod(our_shape) else None
    if tuple(tensor.shape) != our_shape:
        return None
    if SWIN_MERGE.match(official_name):
        return unfold_to_concat_order(tensor), "unfold order -> concat order"
    return tensor, "copied"


def convert_state_dict(official, our_shapes, pairs, source="checkpoint"):
    """Our state dict from the official one. `our_shapes` {our key: shape} is the model's state dict;
    `pairs` is `module_map(cfg)`. Every official key must map onto a distinct key of ours with a
    fitting shape, and every key of ours must be filled; otherwise ConversionError lists every
    problem. Returns (state dict, {how: number of tensors converted that way})."""
    state, sources, counts, problems = {}, {}, {}, []
    for name, tensor in official.items():
        ours = official_to_ours(name, pairs)
        if ours is None or ours not in our_shapes:
            target = f" (-> {ours}, not in the model)" if ours else ""
            problems.append(f"unmapped: {name} {tuple(tensor.shape)}{target}")
            continue
        if ours in sources:
            problems.append(f"duplicate: {name} and {sources[ours]} both map to {ours}")
            continue
        sources[ours] = name
        converted = convert_tensor(name, tensor, our_shapes[ours])
        if converted is None:
            problems.append(f"shape mismatch: {name} {tuple(tensor.shape)} -> {ours} {tuple(our_shapes[ours])}")
            continue
        state[ours], how = converted
        counts[how] = counts.get(how, 0) + 1
    problems += [f"missing: {ours_to_official(ours, pairs)} (for {ours} {tuple(shape)})"
                 for ours, shape in our_shapes.items() if ours not in sources]
    if problems:
        listing = "\n  ".join(problems)
        raise ConversionError(f"{source}: {len(problems)} key(s) do not map onto the model:\n  {listing}")
    return state, counts
