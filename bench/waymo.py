"""Occ3D-Waymo benchmark: EFFOcc-T (fusion) vs EFFOcc-L (LiDAR-only) on the synthetic world in the Waymo layout.

    python bench/waymo.py [--data-root data/synthetic_waymo] [--steps 200] [--frames-every 5]
                          [--work-dir work_dirs/waymo] [--threads N] [--models fusion lidar]

Writes the default synthetic world as Occ3D-Waymo (datasets/make_synthetic.py --format waymo: 10
scenes, 8 training / 2 validation, 20 frames each at 10 Hz) into --data-root when absent, with its
info files (datasets/prepare_waymo.py). Trains effocc_waymo_fusion_r18_tiny and
effocc_waymo_lidar_tiny for the same number of optimizer steps on every --frames-every-th training
frame (5: the 20 % setting of the paper), OHEM loss, the tiny presets' rate, no validation while
training; scores each checkpoint (EMA weights) with evaluate.py --benchmark waymo on the validation
split (mIoU over the 15 classes inside infov AND final_voxel_state) and prints the per-class table
and one line per model with steps, minutes and s/step (wall clock, on a shared CPU; a run that
an earlier command finished is read back, one it stopped is continued). Two trivial
predictors give the floor: everything free, and the most frequent non-free class of the training
GT (inside the loss mask) everywhere; their predictions are written to WORK_DIR/floor_* and scored
with --pred-dir.
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import score_constant, train_and_score  # noqa: E402
from datasets import make_synthetic, prepare_waymo  # noqa: E402  (scripts: main(argv) only)
from occ import waymo  # noqa: E402
from occ.metrics import format_table  # noqa: E402

MODELS = [("fusion", "effocc_waymo_fusion_r18_tiny"), ("lidar", "effocc_waymo_lidar_tiny")]


def ensure_synthetic_waymo_world(root):
    """The default synthetic world in the Occ3D-Waymo layout in `root` (generated when its
    voxel04/ folder is absent) and its info files."""
    if not os.path.isdir(os.path.join(root, waymo.GT_DIR)):
        print(f"generating the default synthetic world as Occ3D-Waymo in {root} (several minutes on 2 cores)")
        make_synthetic.main(["--format", "waymo", "--out", root])
    prepare_waymo.main(["--root", root])


def gt_files(data_root, split):
    """{token "<scene:03d>_<frame:03d>": GT path} of a split, from the voxel04 folder."""
    folder = os.path.join(data_root, waymo.GT_DIR, waymo.SPLIT_DIRS[split])
    paths = sorted(glob.glob(os.path.join(folder, "*", "*_04.npz")))
    return {f"{os.path.basename(os.path.dirname(p))}_{os.path.basename(p)[:3]}": p for p in paths}


def majority_class(paths):
    """The most frequent non-free class inside infov AND final_voxel_state of these GT files."""
    counts = np.zeros(256, dtype=np.int64)
    for path in paths:
        with np.load(path) as gt:
            mask = gt["infov"].astype(bool) & gt["final_voxel_state"].astype(bool)
            counts += np.bincount(gt["voxel_label"][mask].astype(np.int64), minlength=256)
    return int(np.argmax(counts[:waymo.FREE]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic_waymo")
    parser.add_argument("--work-dir", default="work_dirs/waymo")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per model")
    parser.add_argument("--frames-every", type=int, default=5, help="train on every N-th frame (5 = the 20 %% setting)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--models", nargs="*", default=[m for m, _ in MODELS], choices=[m for m, _ in MODELS])
    args = parser.parse_args()
    ensure_synthetic_waymo_world(args.data_root)
    torch.set_num_threads(args.threads)

    majority = majority_class(gt_files(args.data_root, "train").values())
    val_tokens = list(gt_files(args.data_root, "val"))
    results = {
        "free (everywhere)": score_constant(args.data_root, val_tokens, waymo.FREE, waymo.GRID_SHAPE,
                                            os.path.join(args.work_dir, "floor_all_free"), "waymo"),
        f"majority ({waymo.CLASS_NAMES[majority]})": score_constant(
            args.data_root, val_tokens, majority, waymo.GRID_SHAPE, os.path.join(args.work_dir, "floor_majority"),
            "waymo"),
    }
    steps, minutes = train_and_score(MODELS, args.models, args.data_root, args.work_dir,
                                     ["--frames-every", str(args.frames_every)], ["--benchmark", "waymo"], results,
                                     steps=args.steps)

    names = waymo.CLASS_NAMES[:waymo.FREE]
    columns = {key.split(" ")[0]: [m["per_class"][n]["iou"] for n in names] for key, m in results.items()}
    print("\nper-class IoU (infov AND final_voxel_state), validation split")
    print(format_table(names, columns, {key.split(" ")[0]: m["miou"] for key, m in results.items()}))
    print(f"\n{'model':<42} {'steps':>6} {'minutes':>8} {'s/step':>7} {'mIoU':>7} {'geomIoU':>8}")
    for key, m in results.items():
        modality = key.split(" ")[0]
        spent = f"{minutes[modality]:.1f}" if modality in minutes else "-"
        per_step = f"{60 * minutes[modality] / max(steps[modality], 1):.1f}" if modality in minutes else "-"
        print(f"{key:<42} {steps.get(modality, '-'):>6} {spent:>8} {per_step:>7} {100 * m['miou']:7.2f} "
              f"{100 * m['geometry_iou']:8.2f}")


if __name__ == "__main__":
    main()
