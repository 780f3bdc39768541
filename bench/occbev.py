"""Occ-BEV transfer benchmark (docs/training.md#occ-bev-pre-training): does geometry pre-training help a camera-only model that has
few labels?

    python bench/occbev.py [--data-root data/synthetic] [--work-dir work_dirs/occbev_bench]
        [--pretrain-minutes 12 | --pretrain-steps N | --pretrained CKPT] [--finetune-steps 150]
        [--seeds 0 1 2] [--scenes-fraction 0.25] [--camera-set KEY=VALUE ...] [--lr 1e-3] [--threads N] [--rayiou]

1. Pre-trains occbev_pretrain_tiny for --pretrain-minutes (or --pretrain-steps) on every training
   scene (images and LiDAR-made geometry targets, no labels) and scores its geometry IoU on the
   validation split (EMA weights, every voxel), next to the floor of predicting everything occupied.
   The IoU is pretrain_occbev.py's own validation at the last step (--val-every), read back from
   its TensorBoard log; with --pretrain-minutes the number of steps is only known at the end, so the
   run is resumed for one more step, which validates (the fine-tuning starts from that step).
   The floor counts the occupied voxels of the cached validation targets (<sample_token>.npz,
   `occupied` bit-packed along z). --pretrained CKPT fine-tunes from a given Occ-BEV checkpoint instead.
2. For each seed (train.seed: initial weights of what is not transferred, augmentation, sample
   order) fine-tunes flashocc_r50_tiny on --scenes-fraction of the training scenes (the seeded labelled
   scenes of docs/training.md#label-efficiency) twice with the same number of optimizer steps: from the pre-trained
   backbone, neck, view transformer and BEV encoder (train_fusion.py --init-from), and from scratch.
   One pre-training serves every seed.
3. Scores each with evaluate.py (EMA weights, camera mask) and prints mIoU and geometry IoU per
   seed, their mean and standard deviation.
Both stages use --lr (the presets' 2e-4 / 1e-4 are meant for 24 epochs, not minutes), a cosine
decay that ends with the stage's step budget (train.cosine_steps; train.epochs is raised where the
presets' epochs would end a stage before it) and the --camera-set overrides
(e.g. the camera branch of effocc_fusion_r18_tiny: model.backbone=resnet18
model.backbone_stages=[2,3,4] model.downsample=8 model.bev_encoder=second). The default
synthetic world (datasets/make_synthetic.py) is generated into --data-root when absent, with its
info files (datasets/prepare_nuscenes.py) and Occ-BEV targets (datasets/prepare_occbev.py).

--task detection (Occ-BEV's headline, camera 3-D detection):

    python bench/occbev.py --task detection [--pretrain-steps N | --pretrained CKPT] [--finetune-steps 150]
        [--det-scenes-fraction 1.0] [--seeds 0 1 2] [--threads N]

as above, but fine-tunes occbev_det_r50_tiny on --det-scenes-fraction of the training scenes (the
detection head starts fresh) and scores each run with evaluate.py --benchmark detection
(nuscenes-devkit, detection_cvpr_2019, EMA weights): NDS and mAP per seed, mean and standard deviation.

Every run lives in its own folder of --work-dir; a run that reached its step budget (and its score,
kept next to the checkpoint) is read back, one that stopped earlier is continued, so the benchmark
can be stopped and run again with the same arguments to go on where it stopped (pre-training with
--pretrain-minutes cannot be continued: give --pretrain-steps, or --pretrained).
"""
import argparse
import os
import sys

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pretrain_occbev  # noqa: E402
import train_fusion  # noqa: E402
from bench.common import (epochs_for_steps, mean_and_spread, score_once, split_samples, train_once,  # noqa: E402
                          training_samples)
from datasets.build import default_split, ensure_synthetic_world  # noqa: E402
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


def pretrain(args, pretrain_dir, overrides):
    """Occ-BEV pre-training within the budget, validated at its last step; returns (steps, minutes
    trained now (None when read back), validation geometry IoU at that step)."""
    common = ["--config", "occbev_pretrain_tiny", "--data-root", args.data_root, "--set", *overrides,
              NO_EPOCH_VALIDATION, *([f"train.cosine_steps={args.pretrain_steps}",
                                      epochs_for_steps("occbev_pretrain_tiny", args.pretrain_steps,
                                                       len(training_samples(args.data_root)))]
                                     if args.pretrain_steps else [])]
    if args.pretrain_steps:
        _, steps, minutes = train_once(pretrain_occbev, pretrain_dir, [*common, "--val-every", str(args.pretrain_steps)],
                                       steps=args.pretrain_steps)
    else:
        _, steps, minutes = train_once(pretrain_occbev, pretrain_dir, [*common, "--no-val"],
                                       minutes=args.pretrain_minutes)
        print(f"\n=== Occ-BEV pre-training: one more step ({steps + 1}), validated ===", flush=True)
        steps = pretrain_occbev.main(["--work-dir", pretrain_dir, *common, "--resume", "--max-steps", str(steps + 1),
                                      "--val-every", str(steps + 1)]).step
    return steps, minutes, logged_geometry_iou(pretrain_dir, steps)


def pretrained_checkpoint(args, overrides):
    """The Occ-BEV checkpoint to fine-tune from (--pretrained, or pre-trained here) and a line on it."""
    if args.pretrained:
        return args.pretrained, f"Occ-BEV checkpoint {args.pretrained} (given)"
    budget = f"{args.pretrain_steps} steps" if args.pretrain_steps else f"{args.pretrain_minutes} minutes"
    print(f"\n=== Occ-BEV pre-training: occbev_pretrain_tiny, {budget} ===", flush=True)
    pretrain_dir = os.path.join(args.work_dir, "pretrain")
    steps, minutes, geometry_iou = pretrain(args, pretrain_dir, overrides)
    trained = "trained earlier" if minutes is None else f"{minutes:.1f} minutes"
    return (str(latest_checkpoint(pretrain_dir)),
            f"Occ-BEV pre-training: {steps} steps ({trained}), validation geometry IoU {100 * geometry_iou:.2f}")


# per task: the fine-tuned preset, the work-dir prefix, and the evaluate.py arguments
TASKS = {"occupancy": ("flashocc_r50_tiny", "finetune", []),
         "detection": ("occbev_det_r50_tiny", "det", ["--benchmark", "detection"])}


def finetune(args, overrides, init, seed, pretrained):
    """One fine-tuning of the task's preset (init "Occ-BEV" or "scratch") and its scores; returns
    (metrics, seconds per step, None when read back)."""
    config, prefix, score_args = TASKS[args.task]
    fraction = args.scenes_fraction if args.task == "occupancy" else args.det_scenes_fraction
    work_dir = os.path.join(args.work_dir, f"{prefix}_{'occbev' if init == 'Occ-BEV' else 'scratch'}_seed{seed}")
    print(f"\n=== fine-tuning {config} from {init}, seed {seed}: {args.finetune_steps} steps on {fraction:.0%} of "
          f"the training scenes ===", flush=True)
    checkpoint, _, minutes = train_once(
        train_fusion, work_dir, ["--config", config, "--data-root", args.data_root, "--scenes-fraction", str(fraction),
                                 "--no-val", "--set", *overrides, f"train.seed={seed}",
                                 f"train.cosine_steps={args.finetune_steps}",
                                 epochs_for_steps(config, args.finetune_steps, len(training_samples(args.data_root, fraction))),
                                 *(["--init-from", pretrained] if init == "Occ-BEV" else [])],
        steps=args.finetune_steps)
    if args.task == "occupancy" and not args.rayiou:
        score_args = [*score_args, "--no-rayiou"]
    metrics = score_once(checkpoint, [*score_args, "--data-root", args.data_root])
    return metrics, None if minutes is None else 60 * minutes / args.finetune_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--work-dir", default="work_dirs/occbev_bench",
                        help="finished runs in it are read back, stopped ones continued")
    parser.add_argument("--pretrain-minutes", type=float, default=12.0, help="Occ-BEV pre-training budget")
    parser.add_argument("--pretrain-steps", type=int, help="a step budget for pre-training instead of minutes")
    parser.add_argument("--pretrained", help="fine-tune from this Occ-BEV checkpoint, no pre-training")
    parser.add_argument("--finetune-steps", type=int, default=150, help="optimizer steps of each fine-tuning")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds (train.seed)")
    parser.add_argument("--scenes-fraction", type=float, default=0.25, help="occupancy: labelled training scenes")
    parser.add_argument("--det-scenes-fraction", type=float, default=1.0, help="detection: labelled training scenes")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads (with --pretrain-steps, two benchmarks may share the cores)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of both stages")
    parser.add_argument("--camera-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides of pre-training and fine-tuning alike (the camera architecture)")
    parser.add_argument("--rayiou", action="store_true", help="occupancy: also score RayIoU (slow on a CPU)")
    parser.add_argument("--task", choices=tuple(TASKS), default="occupancy",
                        help="what the pre-trained model is fine-tuned for")
    args = parser.parse_args()
    ensure_synthetic_world(args.data_root)
    targets_dir = os.path.join(args.data_root, "occbev_targets")
    prepare_occbev.main(["--root", args.data_root, "--version", "v1.0-mini", "--out", targets_dir])
    torch.set_num_threads(args.threads)
    overrides = [f"train.lr={args.lr}", *args.camera_set]
    pretrained, pretrain_line = pretrained_checkpoint(args, overrides)

    results, speeds = {"Occ-BEV": [], "scratch": []}, []
    for seed in args.seeds:
        for init in results:
            metrics, seconds_per_step = finetune(args, overrides, init, seed, pretrained)
            results[init].append(metrics)
            if seconds_per_step is not None:
                speeds.append(seconds_per_step)

    config = TASKS[args.task][0]
    print(f"\n{pretrain_line}")
    if args.task == "occupancy":
        print(f"(predicting everything occupied: {100 * all_occupied_iou(args.data_root, targets_dir):.2f})")
        fraction, where = args.scenes_fraction, "validation split, camera mask"
        columns = [("mIoU", "miou"), ("geomIoU", "geometry_iou")] + ([("RayIoU", "rayiou")] if args.rayiou else [])
    else:
        fraction, where = args.det_scenes_fraction, "validation split (nuscenes-devkit, detection_cvpr_2019)"
        columns = [("NDS", "nds"), ("mAP", "map")]
    print(f"fine-tuning {config}, {args.finetune_steps} steps on {fraction:.0%} of the training scenes, seeds "
          f"{args.seeds}, {where}" + (f"; overrides: {' '.join(args.camera_set)}" if args.camera_set else "") + ":")
    print(f"{'initialisation':<16}" + "".join(f" {name + ' mean':>12} {'std':>5}" for name, _ in columns)
          + "   per seed " + " / ".join(name for name, _ in columns))
    for init, runs in results.items():
        row = f"{init:<16}"
        for _, key in columns:
            mean, std, _, _ = mean_and_spread([100 * m[key] for m in runs])
            row += f" {mean:12.2f} {std:5.2f}"
        per_seed = ", ".join(" / ".join(f"{100 * m[key]:.2f}" for _, key in columns) for m in runs)
        print(f"{row}   {per_seed}")
    if speeds:
        print(f"{np.mean(speeds):.1f} s/step of fine-tuning (including its set-up; shared CPU, distorted by load)")
    if args.task == "detection":
        scratch_map = np.mean([m["map"] for m in results["scratch"]])
        if scratch_map < 0.01:
            print(f"not conclusive: the model trained from scratch detects next to nothing (mAP "
                  f"{100 * scratch_map:.2f}); a larger --finetune-steps is needed before the difference means anything")
    return results


if __name__ == "__main__":
    main()
