"""Occ-BEV pre-training (docs/training.md#occ-bev-pre-training): the camera BEV model learns to
reconstruct 3-D geometry from the images, with binary occupancy targets made from accumulated,
unlabelled LiDAR.

    python datasets/prepare_occbev.py --root data/nuscenes --version v1.0-trainval     # targets, once
    accelerate launch pretrain_occbev.py --config occbev_pretrain --data-root data/nuscenes \
        --work-dir work_dirs/occbev
    python pretrain_occbev.py --config occbev_pretrain_tiny --data-root data/synthetic \
        --work-dir work_dirs/occbev_tiny --max-minutes 10
    # transfer: backbone, neck, view transformer and BEV encoder into the occupancy model
    python train_fusion.py --config flashocc_r50 --data-root data/nuscenes --work-dir work_dirs/flashocc \
        --init-from work_dirs/occbev/step_XXXXXXXX.pt

Every sample of the training split is used (images, camera geometry and the cached target; no
semantic label is read). The targets live in <data-root>/occbev_targets (--targets-dir), one
<sample_token>.npz per key frame, in the key frame's ego frame: the same BEV grid and frame as the
fine-tuning model's. Loss: sigmoid focal (alpha 0.25, gamma 2) over every voxel. Validation: the
geometry IoU of the prediction (EMA weights) against the targets of the validation split.
"""
import os

import cli  # noqa: F401  (first: quiets third-party warnings before they are imported)

import numpy as np
import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from datasets.build import dataset_from_config
from datasets.nuscenes_occ import collate
from datasets.occbev_targets import load_occbev_target, occbev_target_path
from datasets.transforms import flip_grid
from occ import occ3d
from occ.config import apply_overrides, get_config
from occ.data import move_batch
from occ.loop import evaluate_with_ema, fit, setup_run
from occ.errors import UsageError
from occ.losses import camera_depth_loss, occupancy_focal_loss
from occ.models import build_model
from occ.visualize import bev_semantic_map, titled


def parse_args(argv=None):
    parser = cli.parser_for(__doc__)
    cli.add_training_args(parser)
    parser.add_argument("--targets-dir", help="cached targets of datasets/prepare_occbev.py "
                                              "(default DATA_ROOT/occbev_targets)")
    args = parser.parse_args(argv)
    cli.check_training_args(args)
    return args


def build_config(args):
    cfg = get_config(args.config)
    apply_overrides(cfg, args.set)
    if cfg.train.loss != "focal":
        raise UsageError(f"train.loss={cfg.train.loss!r} is not implemented by pretrain_occbev.py: Occ-BEV "
                         f"pre-training uses the sigmoid focal loss (train.loss='focal')")
    if cfg.model.head != "geometry" or cfg.model.modality != "camera":
        raise UsageError(f"--config {args.config} is a {cfg.model.modality} model with a '{cfg.model.head}' "
                         f"head; Occ-BEV pre-trains a camera model with the geometry decoder "
                         f"(occbev_pretrain, occbev_pretrain_tiny)")
    return cfg


# ------------------------------------------------------------------------------------- data
def bev_flips(bda):
    """(flip_x, flip_y) of a bda (4, 4) that holds only BEV flips, diag(+-1, +-1, 1, 1)."""
    bda = np.asarray(bda, dtype=np.float64)
    diagonal = np.diag(bda)
    if not (np.array_equal(bda, np.diag(diagonal)) and np.all(np.abs(diagonal[:2]) == 1)
            and np.all(diagonal[2:] == 1)):
        raise ValueError(f"the Occ-BEV target can only follow BEV flips, but bda is\n{bda}")
    return bool(diagonal[0] < 0), bool(diagonal[1] < 0)


class WithOccBEVTargets(torch.utils.data.Dataset):
    """A camera dataset without semantic GT whose samples also hold `occupied` bool (200, 200, 16)
    [x, y, z]: the cached target of the key frame, mirrored with the sample's BEV flips."""

    def __init__(self, dataset, targets_dir):
        if dataset.load_gt:
            raise UsageError("Occ-BEV pre-training reads no semantic labels: build the dataset with load_gt=False")
        missing = [info["token"] for info in dataset.infos
                   if not occbev_target_path(targets_dir, info["token"]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(dataset.infos)} samples have no Occ-BEV target in {targets_dir} "
                f"(first missing: {occbev_target_path(targets_dir, missing[0])}); run "
                f"datasets/prepare_occbev.py --root {dataset.data_root} --version VERSION --out {targets_dir}")
        self.dataset, self.targets_dir = dataset, targets_dir
        self.infos = dataset.infos

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        sample = self.dataset[index]
        flip_x, flip_y = bev_flips(sample["bda"])
        occupied = load_occbev_target(occbev_target_path(self.targets_dir, sample["sample_token"]))
        sample["occupied"] = torch.from_numpy(flip_grid(occupied, flip_x, flip_y))
        return sample


def occbev_dataset(cfg, data_root, info_file, train, targets_dir, skip_bad_samples=False):
    dataset = dataset_from_config(cfg, data_root, info_file, train=train, load_gt=False,
                                  skip_bad_samples=skip_bad_samples)
    return WithOccBEVTargets(dataset, targets_dir)


# ------------------------------------------------------------------------- loss and metric
def make_occbev_loss(cfg):
    """loss_fn(model, batch) of occ.loop.fit: the focal loss over every voxel
    (docs/training.md#occ-bev-pre-training), plus the depth loss with model.depth_loss_weight > 0
    (docs/training.md#depth-supervision)."""
    def occbev_loss(model, batch):
        outputs = model(batch)
        return {"loss_focal": occupancy_focal_loss(outputs["geo_logits"], batch["occupied"]),
                **camera_depth_loss(outputs, batch, cfg.model)}
    return occbev_loss


def occupied_prediction(geo_logits):
    """(..., 2) logits, channel 0 = empty, 1 = occupied (occ.losses.occupancy_focal_loss) -> bool
    (...): the channel with the larger logit, i.e. the larger of the two sigmoid probabilities."""
    return geo_logits[..., 1] > geo_logits[..., 0]


@torch.no_grad()
def geometry_scores(model, dataset, device, batch_size=1):
    """Geometry IoU of the prediction against the targets over a whole split, from one global count
    (tp / (tp + fp + fn) over every voxel of every sample). Returns (IoU, (target, prediction) bool
    (200, 200, 16) of the first sample)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    intersection = union = 0
    example = None
    for batch in tqdm(loader, desc="geometry IoU", unit="batch"):
        predicted = occupied_prediction(model(move_batch(batch, device))["geo_logits"]).cpu()
        target = batch["occupied"]
        intersection += int((predicted & target).sum())
        union += int((predicted | target).sum())
        if example is None:
            example = (target[0].numpy(), predicted[0].numpy())
    return intersection / max(union, 1), example


def geometry_picture(target, predicted):
    """Bird's-eye picture of a target and a prediction side by side (occupied columns black)."""
    as_labels = [np.where(grid, 0, occ3d.FREE) for grid in (target, predicted)]
    left = titled(bev_semantic_map(as_labels[0], scale=2), "LiDAR target")
    right = titled(bev_semantic_map(as_labels[1], scale=2), "prediction")
    return np.concatenate([left, np.full((left.shape[0], 8, 3), 255, np.uint8), right], axis=1)


def make_validate(val_set):
    """validate(run, step): geometry IoU of the EMA weights on the validation split, and a picture."""
    def validate(run, step):
        result = evaluate_with_ema(run, lambda network: geometry_scores(network, val_set, run.accelerator.device,
                                                                        run.cfg.data.batch_size))
        if result is None:
            return None
        iou, (target, predicted) = result
        run.writer.add_scalar("val/geometry_IoU", iou, step)
        run.writer.add_image("val/bev_target_vs_pred", geometry_picture(target, predicted), step, dataformats="HWC")
        run.log(f"step {step}: val geometry IoU {100 * iou:.2f}")
        return {"geometry_iou": iou}
    return validate


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    targets_dir = args.targets_dir or os.path.join(args.data_root, "occbev_targets")
    train_split, train_info = cli.info_file(args, "train")
    train_set = occbev_dataset(cfg, args.data_root, train_info, True, targets_dir, args.skip_bad_samples)
    val_set = None
    if not args.no_val:
        val_set = occbev_dataset(cfg, args.data_root, cli.info_file(args, "val")[1], False, targets_dir)

    set_seed(cfg.train.seed)  # seeded initial weights (and the same on every process)
    model = build_model(cfg)
    settings = cli.run_settings(args, "targets_dir")
    run = setup_run(cfg, model, train_set, collate, **cli.setup_options(args, settings, __file__, argv))
    run.log(f"{cfg.name}: {len(train_set)} training samples ({train_split}, every scene, no labels), "
            f"{len(val_set) if val_set else 0} validation samples, targets in {targets_dir}, "
            f"{run.accelerator.num_processes} process(es)")
    return fit(run, make_occbev_loss(cfg), make_validate(val_set) if val_set else None, **cli.fit_options(args))


if __name__ == "__main__":
    cli.run_main(main)
