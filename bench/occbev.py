"""Occ-BEV transfer benchmark (docs/training.md#occ-bev-pre-training): does geometry pre-training help a camera-only model that has
few labels?

    python bench/occbev.py [--data-root data/synthetic] [--work-dir work_dirs/occbev_bench]
        [--pretrain-minutes 12 | --pretrain-steps N] [--finetune-steps 150] [--scenes-fraction 0.25]
        [--lr 1e-3] [--threads N] [--rayiou]

1. Pre-trains occbev_pretrain_tiny for --pretrain-minutes (or --pretrain-steps) on every training
   scene (images and LiDAR-made geometry targets, no labels) and scores its geometry IoU on the
   validation split (EMA weights, every voxel), next to the floor of predicting everything occupied.
   The IoU is pretrain_occbev.py's own validation at the last step (--val-every), read back from
   its TensorBoard log; with --pretrain-minutes the number of steps is only known at the end, so the
   run is resumed for one more step, which validates (the fine-tuning starts from that step).
   The floor counts the occupied voxels of the cached validation targets (<sample_token>.npz,
   `occupied` bit-packed along z).
2. Fine-tunes flashocc_r50_tiny on --scenes-fraction of the training scenes (the seeded labelled
   scenes of docs/training.md#label-efficiency) twice with the same number of optimizer steps: from the pre-trained
   backbone, neck, view transformer and BEV encoder (train_fusion.py --init-from), and from scratch.
3. Scores both with evaluate.py (EMA weights, camera mask) and prints the table.
Both stages use --lr (the presets' 2e-4 / 1e-4 are meant for 24 epochs, not minutes). The default
synthetic world (datasets/make_synthetic.py) is generated into --data-root when absent, with its
info files (datasets/prepare_nuscenes.py) and Occ-BEV targets (datasets/prepare_occbev.py).

--task detection (Occ-BEV's headline, camera 3-D detection):

    python bench/occbev.py --task detection [--pretrain-steps N | --pretrained CKPT] [--finetune-steps 150]
        [--det-scenes-fraction 1.0] [--seeds 0 1 2] [--threads N]

1. Pre-trains occbev_pretrain_tiny as above (or takes the Occ-BEV checkpoint --pretrained).
2. For each seed (train.seed: initial weights of what is not transferred, augmentation, sample
   order) fine-tunes occbev_det_r50_tiny for --finetune-steps on --det-scenes-fraction of the
   training scenes twice: from the pre-trained camera branch and BEV encoder (--init-from; the
   detection head starts fresh) and from scratch.
3. Scores each with evaluate.py --benchmark detection (nuscenes-devkit, detection_cvpr_2019, EMA
   weights) and prints NDS and mAP per seed, their mean and standard deviation, and s/step. A
   finished run (its metrics.json exists) is read back, not trained again.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402
import pretrain_occbev  # noqa: E402
import train_fusion  # noqa: E402
from bench.common import split_samples  # noqa: E402
from datasets.build import default_split, ensure_synthetic_world  # noqa: E402
from cli import budget_args  # noqa: E402
from datasets import prepare_occbev  # noqa: E402  (a script: main(argv) only)
from occ import occ3d  # noqa: E402
from occ.checkpoint import latest_checkpoint  # noqa: E402

# pretraining validates only where the bench asks (--val-every), not at every epoch's end
NO_EPOCH_VALIDATION = "train.val_interval=1000000"


def logged_geometry_iou(work_dir, step):
    """The validation geometry IoU that pretrain_occbev.py logged to TensorBoard at `step`."""
    events = EventAccumulator(os.path.join(work_dir, "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    values = [event.value for event in events.Scalars("val/geometry_IoU") if event.step == step]
    if not values:
        raise RuntimeError(f"{work_dir}: no validation geometry IoU logged at step {step}")
    return values[-1]


def all_occupied_iou(data_root, targets_dir):
    """IoU of predicting everything occupied on the val split: its occupied share of the voxels of
    the cached targets (`occupied`, np.packbits along z, datasets/prepare_occbev.py)."""
    samples = split_samples(data_root, default_split(data_root, "val"))
    occupied = 0
    for sample in samples:
        with np.load(os.path.join(targets_dir, f"{sample['token']}.npz")) as target:
            occupied += int(np.unpackbits(target["occupied"], axis=-1).sum())
    return occupied / (len(samples) * int(np.prod(occ3d.GRID_SHAPE)))


def pretrain(args, pretrain_dir, lr):
    """Occ-BEV pre-training within the budget, validated at its last step; returns (steps,
    minutes, validation geometry IoU at that step)."""
    common = ["--config", "occbev_pretrain_tiny", "--data-root", args.data_root, "--work-dir", pretrain_dir,
              "--set", lr, NO_EPOCH_VALIDATION]
    budget = budget_args(args.pretrain_steps, args.pretrain_minutes)
    started = time.perf_counter()
    if args.pretrain_steps:
        steps = pretrain_occbev.main([*common, *budget, "--val-every", str(args.pretrain_steps)]).step
        minutes = (time.perf_counter() - started) / 60
    else:
        steps = pretrain_occbev.main([*common, *budget, "--no-val"]).step
        minutes = (time.perf_counter() - started) / 60
        print(f"\n=== Occ-BEV pre-training: one more step ({steps + 1}), validated ===", flush=True)
        steps = pretrain_occbev.main([*common, "--resume", "--max-steps", str(steps + 1),
                                      "--val-every", str(steps + 1)]).step
    return steps, minutes, logged_geometry_iou(pretrain_dir, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--work-dir", default="work_dirs/occbev_bench")
    parser.add_argument("--pretrain-minutes", type=float, default=12.0, help="Occ-BEV pre-training budget")
    parser.add_argument("--pretrain-steps", type=int, help="a step budget for pre-training instead of minutes")
    parser.add_argument("--finetune-steps", type=int, default=150, help="optimizer steps of each fine-tuning")
    parser.add_argument("--scenes-fraction", type=float, default=0.25, help="labelled training scenes")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads (with --pretrain-steps, two benchmarks may share the cores)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of both stages")
    parser.add_argument("--rayiou", action="store_true", help="also score RayIoU (slow on a CPU)")
    parser.add_argument("--task", choices=("occupancy", "detection"), default="occupancy",
                        help="what the pre-trained model is fine-tuned for")
    parser.add_argument("--pretrained", help="detection: fine-tune from this Occ-BEV checkpoint, no pre-training")
    parser.add_argument("--det-scenes-fraction", type=float, default=1.0, help="detection: labelled training scenes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="detection: fine-tuning seeds")
    args = parser.parse_args()
    ensure_synthetic_world(args.data_root)
    targets_dir = os.path.join(args.data_root, "occbev_targets")
    prepare_occbev.main(["--root", args.data_root, "--version", "v1.0-mini", "--out", targets_dir])
    torch.set_num_threads(args.threads)
    lr = f"train.lr={args.lr}"
    if args.task == "detection":
        return detection_benchmark(args, lr)

    budget = f"{args.pretrain_steps} steps" if args.pretrain_steps else f"{args.pretrain_minutes} minutes"
    print(f"\n=== Occ-BEV pre-training: occbev_pretrain_tiny, {budget} ===", flush=True)
    pretrain_dir = os.path.join(args.work_dir, "pretrain")
    pretrain_steps, pretrain_minutes, geometry_iou = pretrain(args, pretrain_dir, lr)
    pretrained = str(latest_checkpoint(pretrain_dir))
    all_occupied = all_occupied_iou(args.data_root, targets_dir)

    results, evaluate_extra = {}, [] if args.rayiou else ["--no-rayiou"]
    for init in ("Occ-BEV", "scratch"):
        print(f"\n=== fine-tuning flashocc_r50_tiny from {init}: {args.finetune_steps} steps on "
              f"{args.scenes_fraction:.0%} of the training scenes ===", flush=True)
        work_dir = os.path.join(args.work_dir, "finetune_occbev" if init == "Occ-BEV" else "finetune_scratch")
        init_args = ["--init-from", pretrained] if init == "Occ-BEV" else []
        train_fusion.main(["--config", "flashocc_r50_tiny", "--data-root", args.data_root, "--work-dir", work_dir,
                           "--scenes-fraction", str(args.scenes_fraction), "--max-steps", str(args.finetune_steps),
                           "--no-val", "--set", lr] + init_args)
        results[init] = evaluate.main(["--ckpt", str(latest_checkpoint(work_dir)), "--data-root", args.data_root,
                                       "--out", os.path.join(work_dir, "metrics.json")] + evaluate_extra)

    print(f"\nOcc-BEV pre-training: {pretrain_steps} steps in {pretrain_minutes:.1f} minutes, validation geometry "
          f"IoU {100 * geometry_iou:.2f} (everything occupied: {100 * all_occupied:.2f})")
    print(f"fine-tuning flashocc_r50_tiny, {args.finetune_steps} steps on {args.scenes_fraction:.0%} of the "
          f"training scenes, validation split, camera mask:")
    header = f"{'initialisation':<16} {'mIoU':>7} {'geomIoU':>8}" + (f" {'RayIoU':>7}" if args.rayiou else "")
    print(header)
    for init, metrics in results.items():
        row = f"{init:<16} {100 * metrics['miou']:7.2f} {100 * metrics['geometry_iou']:8.2f}"
        print(row + (f" {100 * metrics['rayiou']:7.2f}" if args.rayiou else ""))


DETECTION_CONFIG = "occbev_det_r50_tiny"


def detection_run(args, lr, init, seed, pretrained):
    """One fine-tuning of DETECTION_CONFIG (init "Occ-BEV" or "scratch") and its devkit scores;
    returns (metrics, seconds per step or None when read back)."""
    work_dir = os.path.join(args.work_dir, f"det_{'occbev' if init == 'Occ-BEV' else 'scratch'}_seed{seed}")
    metrics_path = os.path.join(work_dir, "metrics.json")
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            return json.load(f), None
    print(f"\n=== fine-tuning {DETECTION_CONFIG} from {init}, seed {seed}: {args.finetune_steps} steps on "
          f"{args.det_scenes_fraction:.0%} of the training scenes ===", flush=True)
    init_args = ["--init-from", pretrained] if init == "Occ-BEV" else []
    seconds_per_step = None
    if latest_checkpoint(work_dir) is None or latest_checkpoint(work_dir).name != f"step_{args.finetune_steps:08d}.pt":
        started = time.perf_counter()
        train_fusion.main(["--config", DETECTION_CONFIG, "--data-root", args.data_root, "--work-dir", work_dir,
                           "--scenes-fraction", str(args.det_scenes_fraction), "--max-steps",
                           str(args.finetune_steps), "--no-val", "--set", lr, f"train.seed={seed}"] + init_args)
        seconds_per_step = (time.perf_counter() - started) / args.finetune_steps
    metrics = evaluate.main(["--benchmark", "detection", "--ckpt", str(latest_checkpoint(work_dir)),
                             "--data-root", args.data_root, "--out", metrics_path])
    return metrics, seconds_per_step


def detection_benchmark(args, lr):
    """--task detection (module docstring): prints the table, returns {init: [metrics per seed]}."""
    if args.pretrained:
        pretrained, pretrain_line = args.pretrained, f"Occ-BEV checkpoint {args.pretrained} (given)"
    else:
        budget = f"{args.pretrain_steps} steps" if args.pretrain_steps else f"{args.pretrain_minutes} minutes"
        print(f"\n=== Occ-BEV pre-training: occbev_pretrain_tiny, {budget} ===", flush=True)
        pretrain_dir = os.path.join(args.work_dir, "pretrain")
        steps, minutes, geometry_iou = pretrain(args, pretrain_dir, lr)
        pretrained = str(latest_checkpoint(pretrain_dir))
        pretrain_line = (f"Occ-BEV pre-training: {steps} steps in {minutes:.1f} minutes, validation geometry IoU "
                         f"{100 * geometry_iou:.2f}")
    results, speeds = {"Occ-BEV": [], "scratch": []}, []
    for seed in args.seeds:
        for init in results:
            metrics, seconds_per_step = detection_run(args, lr, init, seed, pretrained)
            results[init].append(metrics)
            if seconds_per_step is not None:
                speeds.append(seconds_per_step)
    print(f"\n{pretrain_line}")
    print(f"fine-tuning {DETECTION_CONFIG}, {args.finetune_steps} steps on {args.det_scenes_fraction:.0%} of the "
          f"training scenes, seeds {args.seeds}, validation split (nuscenes-devkit, detection_cvpr_2019):")
    print(f"{'initialisation':<16} {'NDS mean':>9} {'std':>6} {'mAP mean':>9} {'std':>6}   per seed NDS / mAP")
    for init, runs in results.items():
        nds, maps = [100 * m["nds"] for m in runs], [100 * m["map"] for m in runs]
        per_seed = ", ".join(f"{n:.2f} / {a:.2f}" for n, a in zip(nds, maps))
        print(f"{init:<16} {np.mean(nds):9.2f} {np.std(nds):6.2f} {np.mean(maps):9.2f} {np.std(maps):6.2f}"
              f"   {per_seed}")
    if speeds:
        print(f"{np.mean(speeds):.1f} s/step of fine-tuning (including its set-up; shared CPU, distorted by load)")
    scratch_map = np.mean([m["map"] for m in results["scratch"]])
    if scratch_map < 0.01:
        print(f"not conclusive: the model trained from scratch detects next to nothing (mAP {100 * scratch_map:.2f}); "
              f"a larger --finetune-steps is needed before the difference means anything")
    return results


if __name__ == "__main__":
    main()
