"""Distillation benchmark (docs/training.md#distillocc): does a camera-only student learn more from a fusion teacher on
partly labelled data than from the labels alone? One budget (minutes, or --steps) per run.

    python bench/distill.py [--data-root data/synthetic] [--minutes 6] [--teacher-minutes 8] [--steps N]
                            [--seeds 0 1 2] [--labelled-fraction 0.4] [--teacher-ckpt CKPT]
                            [--camera-set KEY=VALUE ...] [--work-dir work_dirs/distill]

On the synthetic world (generated with datasets/make_synthetic.py and prepared when absent), with
the tiny presets, for each seed (train.seed: initial weights, augmentation, sample order):
  1. the fusion teacher (effocc_fusion_r18_tiny) on the labelled scenes (skipped with --teacher-ckpt);
  2. camera-only on the labelled scenes alone (train_fusion.py --scenes-fraction F);
  3. the distilled student on the same labelled scenes + the unlabelled rest (train_distill.py);
  4. camera-only on every scene, all labelled.
The labelled scenes are the seeded sample of docs/training.md#label-efficiency (seed 42) in every run. The camera-only runs
use the student's architecture (flashocc_r50_tiny with a 64-channel BEV output, as
distillocc_r50_tiny); --camera-set changes the camera models of runs 2-4 alike (e.g. the camera
branch of effocc_fusion_r18_tiny: model.backbone=resnet18 model.backbone_stages=[2,3,4]
model.downsample=8 model.bev_encoder=second). With --steps a cosine decay (of the camera presets) ends with the
run (train.cosine_steps), and train.epochs is raised where the presets' epochs would end a run on
the labelled samples before its step budget. Each run is scored with evaluate.py (EMA weights,
camera mask, validation split, no RayIoU); the script prints the per-class IoU, one line per run
and, over the seeds, the mean, standard deviation and range of each kind of run.

Every run lives in WORK_DIR/seed<N>/<run>; a run that reached its step budget (and its score, kept
next to the checkpoint) is read back, one that stopped earlier is continued, so with --steps the
benchmark can be stopped and run again with the same arguments to go on where it stopped.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_distill  # noqa: E402
import train_fusion  # noqa: E402
from bench.common import epochs_for_steps, mean_and_spread, score_once, train_once, training_samples  # noqa: E402
from datasets.build import ensure_synthetic_world  # noqa: E402
from occ import occ3d  # noqa: E402
from occ.config import get_config  # noqa: E402
from occ.metrics import format_table  # noqa: E402

TEACHER, CAMERA, STUDENT = "effocc_fusion_r18_tiny", "flashocc_r50_tiny", "distillocc_r50_tiny"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--work-dir", default="work_dirs/distill",
                        help="finished runs in it are read back, stopped ones continued")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget of each camera-only / student run")
    parser.add_argument("--teacher-minutes", type=float, default=8.0, help="training budget of the teacher")
    parser.add_argument("--steps", type=int, help="a step budget per run instead of minutes (all runs, teacher too)")
    parser.add_argument("--labelled-fraction", type=float, default=0.4)
    parser.add_argument("--teacher-ckpt", help="use this fusion checkpoint instead of training a teacher")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads (with --steps, two benchmarks may share the cores)")
    parser.add_argument("--lr", type=float, default=1e-3, help="train.lr of every run (short budgets)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of every run, one round each")
    parser.add_argument("--camera-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides of the camera-only and student runs")
    return parser.parse_args()


def student_width_overrides():
    """Overrides giving the camera-only baseline the student's BEV width (the same network)."""
    return [f"model.bev_neck_channels={get_config(STUDENT).model.bev_neck_channels}"]


def seed_round(args, seed, num_labelled, num_samples):
    """The runs of one seed (module docstring, 1-4) with num_labelled of the num_samples training
    samples labelled; returns [(name, labels, samples, steps, metrics)]."""
    fraction, seed_dir = str(args.labelled_fraction), os.path.join(args.work_dir, f"seed{seed}")
    common = ["--data-root", args.data_root, "--no-val", "--set", f"train.lr={args.lr}", f"train.seed={seed}",
              *([f"train.cosine_steps={args.steps}"] if args.steps else [])]  # a cosine ends with the run
    camera = [*common, *args.camera_set]
    runs = []

    def epochs(config, samples):  # with --steps, enough epochs for the budget on `samples` samples
        return [epochs_for_steps(config, args.steps, samples)] if args.steps else []

    def run(name, num_labels, samples_seen, script, folder, minutes, argv):
        print(f"\n=== seed {seed}, {name}: {num_labels} labelled of {samples_seen} training samples ===", flush=True)
        checkpoint, steps, _ = train_once(script, os.path.join(seed_dir, folder), argv, args.steps, minutes)
        metrics = score_once(checkpoint, ["--data-root", args.data_root, "--no-rayiou"])
        runs.append((name, num_labels, samples_seen, steps, metrics))
        return str(checkpoint)

    teacher_ckpt = args.teacher_ckpt or run(
        "fusion teacher", num_labelled, num_labelled, train_fusion, "teacher", args.teacher_minutes,
        ["--config", TEACHER, "--scenes-fraction", fraction, *common, *epochs(TEACHER, num_labelled)])
    run("camera-only", num_labelled, num_labelled, train_fusion, f"camera_{num_labelled}", args.minutes,
        ["--config", CAMERA, "--scenes-fraction", fraction, *camera, *student_width_overrides(),
         *epochs(CAMERA, num_labelled)])
    run("distilled student", num_labelled, num_samples, train_distill, f"student_{num_labelled}", args.minutes,
        ["--config", STUDENT, "--teacher-ckpt", teacher_ckpt, "--labelled-fraction", fraction, *camera,
         *epochs(STUDENT, num_samples)])
    run("camera-only", num_samples, num_samples, train_fusion, f"camera_{num_samples}", args.minutes,
        ["--config", CAMERA, *camera, *student_width_overrides(), *epochs(CAMERA, num_samples)])
    return runs


def main():
    args = parse_args()
    ensure_synthetic_world(args.data_root)
    torch.set_num_threads(args.threads)
    # the training key frames ({token, scene_token, scene_name}), as the scripts' default train split
    train_infos = training_samples(args.data_root)
    labelled_infos = training_samples(args.data_root, args.labelled_fraction)
    num_scenes = len({info["scene_token"] for info in train_infos})
    num_labelled_scenes = len({info["scene_token"] for info in labelled_infos})
    if num_labelled_scenes == num_scenes:
        sys.exit(f"error: --labelled-fraction {args.labelled_fraction} of the {num_scenes} training scenes of "
                 f"{args.data_root} labels every scene; generate more scenes or lower the fraction")
    num_labelled = len(labelled_infos)
    print(f"{args.data_root}: {num_labelled_scenes} of {num_scenes} training scenes labelled "
          f"({num_labelled} of {len(train_infos)} samples)", flush=True)
    rounds = {seed: seed_round(args, seed, num_labelled, len(train_infos)) for seed in args.seeds}

    names = occ3d.CLASS_NAMES[:occ3d.FREE]
    budget_text = f"{args.steps} steps" if args.steps else f"{args.minutes} min (teacher {args.teacher_minutes} min)"
    for seed, runs in rounds.items():
        print(f"\nseed {seed}: per-class IoU (camera mask), validation split")
        print(format_table(names, {f"run {i}": [m["per_class"][n]["iou"] for n in names]
                                   for i, (*_, m) in enumerate(runs)},
                           {f"run {i}": m["miou"] for i, (*_, m) in enumerate(runs)}))
        print(f"{'run':<6} {'model':<44} {'samples':>7} {'steps':>6} {'mIoU':>7} {'geomIoU':>8}")
        for i, (name, num_labels, num_samples, steps, m) in enumerate(runs):
            key = f"{name} ({num_labels}/{len(train_infos)} labelled)"
            print(f"run {i:<2} {key:<44} {num_samples:>7} {steps:>6} {100 * m['miou']:7.2f} "
                  f"{100 * m['geometry_iou']:8.2f}")
    print(f"\nbudget per run: {budget_text}; seeds {args.seeds}; data: {args.data_root}"
          + (f"; camera overrides: {' '.join(args.camera_set)}" if args.camera_set else ""))
    print(f"{'model':<44} {'mIoU mean':>9} {'std':>5} {'min-max':>13} {'geomIoU mean':>12} {'std':>5}")
    first = next(iter(rounds.values()))
    for i, (name, num_labels, *_) in enumerate(first):
        miou = mean_and_spread([100 * runs[i][-1]["miou"] for runs in rounds.values()])
        geometry = mean_and_spread([100 * runs[i][-1]["geometry_iou"] for runs in rounds.values()])
        key = f"{name} ({num_labels}/{len(train_infos)} labelled)"
        print(f"{key:<44} {miou[0]:9.2f} {miou[1]:5.2f} {f'{miou[2]:.2f}-{miou[3]:.2f}':>13} {geometry[0]:12.2f} "
              f"{geometry[1]:5.2f}")


if __name__ == "__main__":
    main()
