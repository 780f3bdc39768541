"""OpenOccupancy benchmark: the tiny fusion preset on the 512 x 512 x 40 LiDAR-frame grid.

    python bench/openoccupancy.py [--data-root data/synthetic] [--steps 200] [--lr 1e-3] [--warmup 20]
                                  [--work-dir work_dirs/openoccupancy] [--train-only | --eval-only]

Trains effocc_openoccupancy_r18_tiny on the default synthetic world (generated and prepared when
absent) for --steps optimizer steps (batch 1, the four losses with the published class weights)
and scores its EMA weights with `evaluate.py --benchmark openoccupancy` on the validation split.
Two trivial predictors give the floor: everything empty, and the most frequent semantic class of
the training GT everywhere; their predictions (the submission format: uint8 (512, 512, 40)) are
written to WORK_DIR/floor_* and scored with --pred-dir. Prints the per-class IoU table and one line
per predictor (SC IoU, SSC mIoU), and the training cost: seconds per step and the peak resident
memory of this process during training (ru_maxrss; on a shared CPU, seconds are indicative).
--train-only stops after training (a cost measurement); --eval-only scores the run's latest checkpoint.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402
import train_fusion  # noqa: E402
from bench.common import SPLIT_VERSIONS, read_table, score_constant, split_samples  # noqa: E402
from datasets.build import default_split, ensure_synthetic_world  # noqa: E402
from cli import budget_args  # noqa: E402
from occ import openocc  # noqa: E402
from occ.checkpoint import latest_checkpoint  # noqa: E402
from occ.metrics import format_table  # noqa: E402

PRESET = "effocc_openoccupancy_r18_tiny"
NAMES = openocc.OPENOCCUPANCY_CLASS_NAMES[1:]


def gt_file(data_root, scene_token, lidar_token):
    return os.path.join(data_root, "nuScenes-Occupancy", f"scene_{scene_token}", "occupancy", f"{lidar_token}.npy")


def lidar_tokens(data_root, split):
    """{sample token: key-frame LIDAR_TOP sample_data token} of a split, from the tables."""
    version = SPLIT_VERSIONS[split]
    return {sd["sample_token"]: sd["token"] for sd in read_table(data_root, version, "sample_data")
            if sd["is_key_frame"] and "LIDAR_TOP" in sd["filename"]}


def majority_class(data_root, samples, lidar):
    """The most frequent semantic class (1..16) of the training GT rows (raw 0 = noise skipped)."""
    counts = np.zeros(len(openocc.OPENOCCUPANCY_CLASS_NAMES), dtype=np.int64)
    for sample in samples:
        rows = np.load(gt_file(data_root, sample["scene_token"], lidar[sample["token"]]))
        counts += np.bincount(rows[:, 3].astype(np.int64), minlength=len(counts))
    return 1 + int(np.argmax(counts[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--work-dir", default="work_dirs/openoccupancy")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of the tiny model (batch 1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="train.lr (the tiny preset's)")
    parser.add_argument("--warmup", type=int, default=20, help="train.warmup_iters (the tiny preset's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--eval-only", action="store_true", help="score the checkpoint of an earlier run, do not train")
    parser.add_argument("--train-only", action="store_true", help="train and report the cost, do not score")
    args = parser.parse_args()
    if args.eval_only and args.train_only:
        parser.error("--eval-only and --train-only exclude each other")
    ensure_synthetic_world(args.data_root)
    torch.set_num_threads(args.threads)

    work_dir = os.path.join(args.work_dir, PRESET)
    print(f"=== {PRESET}: {args.steps} steps ===", flush=True)
    started = time.perf_counter()
    if not args.eval_only:
        train_fusion.main(["--config", PRESET, "--data-root", args.data_root, "--work-dir", work_dir,
                           *budget_args(args.steps, None), "--no-val", "--cpu", "--overwrite",
                           "--set", f"train.lr={args.lr}", f"train.warmup_iters={args.warmup}"])
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # kB -> GB
    cost = (f"training: {args.steps} steps in {seconds / 60:.1f} min = {seconds / args.steps:.1f} s/step "
            f"(start-up included; {args.threads} threads), peak resident memory {peak_gb:.2f} GB")
    if args.train_only:
        print(cost)
        return
    results = {"model": evaluate.main(["--benchmark", "openoccupancy", "--ckpt", str(latest_checkpoint(work_dir)),
                                       "--data-root", args.data_root, "--device", "cpu",
                                       "--out", os.path.join(work_dir, "metrics.json")])}

    train_split, val_split = default_split(args.data_root, "train"), default_split(args.data_root, "val")
    val_samples = split_samples(args.data_root, val_split)
    majority = majority_class(args.data_root, split_samples(args.data_root, train_split),
                              lidar_tokens(args.data_root, train_split))
    val_tokens = [sample["token"] for sample in val_samples]
    for name, label in (("empty", 0), ("majority", majority)):
        results[name] = score_constant(args.data_root, val_tokens, label, openocc.OPENOCCUPANCY_GRID_SHAPE,
                                       os.path.join(args.work_dir, f"floor_{name}"), "openoccupancy")

    print(f"\nper-class IoU, {val_split} ({len(val_samples)} samples); majority class = {NAMES[majority - 1]}")
    print(format_table(NAMES, {k: [m["per_class"][n] for n in NAMES] for k, m in results.items()},
                       {k: m["ssc_miou"] for k, m in results.items()}))
    print(f"\n{'predictor':<40} {'SC IoU':>7} {'SSC mIoU':>9}")
    labels = {"model": f"{PRESET}, {args.steps} steps", "empty": "all empty",
              "majority": f"majority class ({NAMES[majority - 1]})"}
    for key, m in results.items():
        print(f"{labels[key]:<40} {100 * m['sc_iou']:7.2f} {100 * m['ssc_miou']:9.2f}")
    if not args.eval_only:
        print(f"\n{cost}")


if __name__ == "__main__":
    main()
