"""Learning benchmark: fusion vs LiDAR-only vs camera-only, one budget each.

    python bench/learning.py [--data-root data/synthetic] [--minutes 20 | --steps N] [--lr 1e-3]
                             [--work-dir work_dirs/learning]

Trains effocc_fusion_r18_tiny, effocc_lidar_tiny and flashocc_r50_tiny on the default synthetic
world (generated with datasets/make_synthetic.py and prepared when absent) for the same number of
minutes each, or with --steps for the same number of optimizer steps (on a CPU a fusion step costs
about twice a LiDAR-only step, so equal minutes favour the LiDAR-only model; equal steps compare
what each model learns from the same samples), all at one learning rate. Scores each with
evaluate.py's functions (EMA weights, camera mask) and prints the per-class IoU table and one line
per model: name, modality, steps, minutes, mIoU, geometry IoU, RayIoU.
Two trivial predictors give the floor: everything free, and the most frequent occupied class of
the training GT everywhere.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402
import train_fusion  # noqa: E402
from datasets.build import default_split, ensure_synthetic_world, info_path  # noqa: E402
from datasets.nuscenes_occ import load_infos, load_occ_gt  # noqa: E402
from occ.checkpoint import latest_checkpoint  # noqa: E402
from occ.loop import budget_args  # noqa: E402
from occ.metrics import OCC3D_CLASS_NAMES, OCC3D_FREE, format_table  # noqa: E402

MODELS = [("fusion", "effocc_fusion_r18_tiny"), ("lidar", "effocc_lidar_tiny"), ("camera", "flashocc_r50_tiny")]


def majority_class(data_root, infos):
    """The most frequent occupied (non-free) class inside the camera mask of the training GT."""
    counts = np.zeros(OCC3D_FREE + 1, dtype=np.int64)
    for info in infos:
        gt = load_occ_gt(os.path.join(data_root, "gts", info["scene_name"], info["token"], "labels.npz"))
        counts += np.bincount(gt["semantics"][gt["mask_camera"]], minlength=OCC3D_FREE + 1)
    return int(np.argmax(counts[:OCC3D_FREE]))


def constant_predictor(infos, label):
    grid = np.full((200, 200, 16), label, dtype=np.uint8)
    return ((info, grid) for info in infos)


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

    val_infos = load_infos(info_path(args.data_root, default_split(args.data_root, "val")))
    train_infos = load_infos(info_path(args.data_root, default_split(args.data_root, "train")))
    majority = majority_class(args.data_root, train_infos)
    results = {
        "all free": evaluate.score(constant_predictor(val_infos, OCC3D_FREE), val_infos, args.data_root),
        f"majority ({OCC3D_CLASS_NAMES[majority]})": evaluate.score(constant_predictor(val_infos, majority),
                                                                   val_infos, args.data_root),
    }
    steps, minutes = {}, {}
    for modality, preset in MODELS:
        if modality not in args.models:
            continue
        work_dir = os.path.join(args.work_dir, preset)
        budget = f"{args.steps} steps" if args.steps else f"{args.minutes} minutes"
        print(f"\n=== {modality}: {preset}, {budget} ===", flush=True)
        started = time.perf_counter()
        position = train_fusion.main(["--config", preset, "--data-root", args.data_root, "--work-dir", work_dir,
                                      *budget_args(args.steps, args.minutes), "--no-val",
                                      "--set", f"train.lr={args.lr}"])
        minutes[modality] = (time.perf_counter() - started) / 60
        steps[modality] = position.step
        checkpoint = str(latest_checkpoint(work_dir))
        results[f"{modality} ({preset})"] = evaluate.main(["--ckpt", checkpoint, "--data-root", args.data_root,
                                                            "--out", os.path.join(work_dir, "metrics.json")])

    names = OCC3D_CLASS_NAMES[:OCC3D_FREE]
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
