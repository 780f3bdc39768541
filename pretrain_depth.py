"""Monocular depth pre-training of a camera model's image backbone and neck from projected LiDAR:
the stand-in for ImageNet / FCOS3D weights where none can be downloaded (docs/training.md#depth-pre-training).

    python pretrain_depth.py --config flashocc_r50_tiny --data-root data/synthetic \
        --work-dir work_dirs/depth_r50_tiny --max-steps 2000
    # then: the backbone alone (torchvision layout) ...
    python train_fusion.py --config flashocc_r50_tiny ... --set model.pretrained_path=work_dirs/depth_r50_tiny/backbone.pth
    # ... or backbone and neck (and nothing else: the depth head is not the view transformer's)
    python train_fusion.py --config flashocc_r50_tiny ... --init-from work_dirs/depth_r50_tiny/step_00002000.pt \
        --init-prefixes img_backbone img_neck

The network is the config's image backbone and neck (same names as in OccNet) with a 1x1 conv to
the D bins of model.depth_bins at the frustum's stride; the loss is the depth loss of
docs/training.md#depth-supervision on every camera of every training frame, with the config's image
augmentation; no label is read. Validation: the depth loss and the share of supervised feature
cells whose most likely bin is within one bin of the target (EMA weights, validation split). When
training ends, WORK_DIR/backbone.pth holds the backbone's EMA weights in the layout
model.pretrained_path reads.
"""
import os

import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm import tqdm

from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate
from occ.config import apply_overrides, get_config
from occ.data import move_batch
from occ.errors import UsageError
from occ.loop import evaluate_with_ema, fit, setup_run
from occ.losses import depth_bin_count, depth_loss, depth_targets
from occ.models.image_backbone import build_image_backbone, stage_stride, trunk_outputs
from occ.models.necks import build_image_neck


class MonoDepthNet(nn.Module):
    """images (B, N, 3, H, W) -> {"depth": (B, N, D, H / downsample, W / downsample)}, a softmax
    over the depth bins per feature cell."""

    def __init__(self, model_cfg):
        super().__init__()
        m = model_cfg
        if stage_stride(m.backbone_stages[0]) != m.downsample:
            raise UsageError(f"model.downsample = {m.downsample} but the first of model.backbone_stages "
                             f"{m.backbone_stages} has stride {stage_stride(m.backbone_stages[0])}")
        self.img_backbone = build_image_backbone(m.backbone, m.backbone_stages, int(m.camera_ground_prior))
        self.img_neck = build_image_neck(m.img_neck, self.img_backbone.out_channels, m.img_neck_channels)
        self.depth_head = nn.Conv2d(self.img_neck.out_channels, depth_bin_count(m.depth_bins), 1)

    def forward(self, batch):
        images = batch["images"]
        B, N = images.shape[:2]
        logits = self.depth_head(self.img_neck(trunk_outputs(self.img_backbone, batch)))
        return {"depth": logits.softmax(dim=1).view(B, N, *logits.shape[1:])}


def build_config(args):
    cfg = get_config(args.config)
    apply_overrides(cfg, args.set)
    if cfg.model.modality == "lidar":
        raise UsageError(f"--config {args.config} has no camera branch to pre-train")
    if cfg.model.depth_loss_weight == 0:  # the dataset loads depth maps for depth-supervised models
        apply_overrides(cfg, ["model.depth_loss_weight=1.0"])
    return cfg


def make_loss_fn(model_cfg):
    def loss_fn(model, batch):
        depth = model(batch)["depth"]
        return {"loss_depth": depth_loss(depth, batch["depth_maps"], model_cfg.downsample, model_cfg.depth_bins)}
    return loss_fn


@torch.no_grad()
def depth_scores(model, dataset, device, model_cfg):
    """(mean depth loss per sample, share of supervised cells whose argmax bin is within one bin of
    the target) over a split."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate)
    loss_sum, within, cells = 0.0, 0, 0
    for batch in tqdm(loader, desc="depth", unit="sample"):
        batch = move_batch(batch, device)
        depth = model(batch)["depth"]
        loss_sum += depth_loss(depth, batch["depth_maps"], model_cfg.downsample, model_cfg.depth_bins).item()
        target = depth_targets(batch["depth_maps"], model_cfg.downsample, model_cfg.depth_bins)
        valid = target >= 0
        within += int(((depth.argmax(dim=2) - target).abs() <= 1)[valid].sum())
        cells += int(valid.sum())
    return loss_sum / max(len(dataset), 1), within / max(cells, 1)


def make_validate(val_set, model_cfg):
    def validate(run, step):
        result = evaluate_with_ema(run, lambda network: depth_scores(network, val_set, run.accelerator.device,
                                                                     model_cfg))
        if result is None:
            return None
        loss, within_one_bin = result
        run.writer.add_scalar("val/depth_loss", loss, step)
        run.writer.add_scalar("val/depth_within_one_bin", within_one_bin, step)
        run.log(f"step {step}: val depth loss {loss:.3f}, argmax within one bin {100 * within_one_bin:.1f} %")
        return {"depth_loss": loss, "depth_within_one_bin": within_one_bin}
    return validate


def save_backbone(run, path):
    """The backbone's EMA weights as a plain state dict (what model.pretrained_path loads)."""
    if not run.accelerator.is_main_process:
        return
    network = run.accelerator.unwrap_model(run.model)
    live_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    run.ema.copy_to(network)
    torch.save({k: v.cpu() for k, v in network.img_backbone.state_dict().items()}, path)
    network.load_state_dict(live_state)
    run.log(f"backbone weights (EMA) written to {path}")


def main(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_training_args(parser)
    args = parser.parse_args(argv)
    cli.check_training_args(args)
    cfg = build_config(args)
    train_split, train_info = cli.info_file(args, "train")
    train_set = dataset_from_config(cfg, args.data_root, train_info, train=True, load_gt=False,
                                    skip_bad_samples=args.skip_bad_samples)
    val_set = None
    if not args.no_val:
        val_set = dataset_from_config(cfg, args.data_root, cli.info_file(args, "val")[1], train=False, load_gt=False)

    set_seed(cfg.train.seed)
    model = MonoDepthNet(cfg.model)
    options = cli.setup_options(args, cli.run_settings(args), __file__, argv)
    run = setup_run(cfg, model, train_set, collate, **options)
    run.log(f"depth pre-training of {cfg.name}'s {cfg.model.backbone} + {cfg.model.img_neck}: {len(train_set)} "
            f"training samples ({train_split}, no labels), {len(val_set) if val_set else 0} validation samples")
    result = fit(run, make_loss_fn(cfg.model), make_validate(val_set, cfg.model) if val_set else None,
                 **cli.fit_options(args))
    save_backbone(run, os.path.join(args.work_dir, "backbone.pth"))
    return result


if __name__ == "__main__":
    cli.run_main(main)
