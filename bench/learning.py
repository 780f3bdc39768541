"""Learning benchmark: fusion vs LiDAR-only vs camera-only, one budget each.

    python bench/learning.py [--data-root data/synthetic] [--minutes 20 | --steps N] [--lr 1e-3]
                             [--work-dir work_dirs/learning]

Trains effocc_fusion_r18_tiny, effocc_lidar_tiny and flashocc_r50_tiny on the default synthetic
world (generated with datasets/make_synthetic.py and prepared when absent) for the same number of
minutes each, or with --steps for the same number of optimizer steps (on a CPU a fusion step costs
about twice a LiDAR-only step, so equal minutes favour the LiDAR-only model; equal steps compare
what each model learns from the same samples), all at one learning rate. Scores each with
evaluate.py (EMA weights, camera mask) and prints the per-class IoU table and one line per model:
name, modality, steps, minutes, mIoU, geometry IoU, RayIoU. With --steps a run stopped half-way
is continued and a finished one read back when the command is run again (minutes: none trained
now); a --minutes run cannot be continued, so its work dir must be fresh.
Two trivial predictors give the floor: everything free, and the most frequent occupied class of
the training GT everywhere; their predictions are written to WORK_DIR/floor_* (Occ3D submission
format) and scored by evaluate.py --pred-dir.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import score_constant, split_samples, train_and_score, training_samples  # noqa: E402
from datasets.build import default_split, ensure_synthetic_world  # noqa: E402
from occ import occ3d  # noqa: E402
from occ.metrics import format_table  # noqa: E402

MODELS = [("fusion", "effocc_fusion_r18_tiny"), ("lidar", "effocc_lidar_tiny"), ("camera", "flashocc_r50_tiny")]


def majority_class(data_root, samples):
    """The most frequent occupied (non-free) class inside the camera mask of the training GT (the
    Occ3D labels.npz files: `semantics`, `mask_camera`)."""
    counts = np.zeros(occ3d.NUM_CLASSES, dtype=np.int64)
    for sample in samples:
        with np.load(occ3d.gt_path(data_root, sample["scene_name"], sample["token"])) as gt:
            semantics, mask = gt["semantics"], gt["mask_camera"].astype(bool)
        counts += np.bincount(semantics[mask].astype(np.int64), minlength=occ3d.NUM_CLASSES)
    return int(np.argmax(counts[:occ3d.FREE]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--work-dir", default="work_dirs/learning")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--steps", type=int, help="an optimizer-step budget per model instead of minutes")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads (with --steps, two benchmarks may share the cores)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="train.lr of every model (the presets' rates are meant for 24-48 epochs, not minutes)")
    parser.add_argument("--models", nargs="*", default=[m for m, _ in MODELS], choices=[m for m, _ in MODELS])
    args = parser.parse_args()
    ensure_synthetic_world(args.data_root)
    torch.set_num_threads(args.threads)

    val_samples = split_samples(args.data_root, default_split(args.data_root, "val"))
    train_samples = training_samples(args.data_root)
    majority = majority_class(args.data_root, train_samples)
    results = {
        "all free": score_constant(args.data_root, [s["token"] for s in val_samples], occ3d.FREE,
                                   occ3d.GRID_SHAPE, os.path.join(args.work_dir, "floor_all_free")),
        f"majority ({occ3d.CLASS_NAMES[majority]})": score_constant(
            args.data_root, [s["token"] for s in val_samples], majority, occ3d.GRID_SHAPE,
            os.path.join(args.work_dir, "floor_majority")),
    }
    steps, minutes = train_and_score(MODELS, args.models, args.data_root, args.work_dir,
                                     ["--set", f"train.lr={args.lr}"], [], results, args.steps, args.minutes)

    names = occ3d.CLASS_NAMES[:occ3d.FREE]
    columns = {key.split(" ")[0]: [m["per_class"][n]["iou"] for n in names] for key, m in results.items()}
    print("\nper-class IoU (camera mask), validation split")
    print(format_table(names, columns, {key.split(" ")[0]: m["miou"] for key, m in results.items()}))
    print(f"\n{'model':<34} {'steps':>6} {'minutes':>8} {'mIoU':>7} {'geomIoU':>8} {'RayIoU':>7}")
    for key, m in results.items():
        modality = key.split(" ")[0]
        spent = f"{minutes[modality]:.1f}" if modality in minutes else "-"
        print(f"{key:<34} {steps.get(modality, '-'):>6} {spent:>8} {100 * m['miou']:7.2f} "
              f"{100 * m['geometry_iou']:8.2f} {100 * m['rayiou']:7.2f}")


if __name__ == "__main__":
    main()
