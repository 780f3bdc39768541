"""Distillation benchmark (docs/training.md#distillocc): does a camera-only student learn more from a fusion teacher on
partly labelled data than from the labels alone? One budget (minutes, or --steps) per run.

    python bench/distill.py [--data-root data/synthetic] [--minutes 6] [--teacher-minutes 8]
                            [--labelled-fraction 0.4] [--teacher-ckpt CKPT] [--work-dir work_dirs/distill]

On the synthetic world (generated with datasets/make_synthetic.py and prepared when absent), with
the tiny presets:
  1. the fusion teacher (effocc_fusion_r18_tiny) on the labelled scenes (skipped with --teacher-ckpt);
  2. camera-only on the labelled scenes alone (train_fusion.py --scenes-fraction F);
  3. the distilled student on the same labelled scenes + the unlabelled rest (train_distill.py);
  4. camera-only on every scene, all labelled.
The labelled scenes are the seeded sample of docs/training.md#label-efficiency (seed 42) in every run. The camera-only runs
use the student's architecture (flashocc_r50_tiny with a 64-channel BEV output, as
distillocc_r50_tiny). Each run is scored with evaluate.py (EMA weights, camera mask,
validation split, no RayIoU); the script prints the per-class IoU and one line per run.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402
import train_distill  # noqa: E402
import train_fusion  # noqa: E402
from bench.common import split_samples  # noqa: E402
from datasets.build import default_split, ensure_synthetic_world  # noqa: E402
from cli import budget_args  # noqa: E402
from occ import occ3d  # noqa: E402
from occ.checkpoint import latest_checkpoint  # noqa: E402
from occ.config import get_config  # noqa: E402
from occ.data import scene_fraction  # noqa: E402
from occ.metrics import format_table  # noqa: E402

TEACHER, CAMERA, STUDENT = "effocc_fusion_r18_tiny", "flashocc_r50_tiny", "distillocc_r50_tiny"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--work-dir", default="work_dirs/distill", help="must be empty or absent")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget of each camera-only / student run")
    parser.add_argument("--teacher-minutes", type=float, default=8.0, help="training budget of the teacher")
    parser.add_argument("--steps", type=int, help="a step budget per run instead of minutes (all runs, teacher too)")
    parser.add_argument("--labelled-fraction", type=float, default=0.4)
    parser.add_argument("--teacher-ckpt", help="use this fusion checkpoint instead of training a teacher")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads (with --steps, two benchmarks may share the cores)")
    parser.add_argument("--lr", type=float, default=1e-3, help="train.lr of every run (short budgets)")
    return parser.parse_args()


def student_width_overrides():
    """Overrides giving the camera-only baseline the student's BEV width (the same network)."""
    return [f"model.bev_neck_channels={get_config(STUDENT).model.bev_neck_channels}"]


def main():
    args = parse_args()
    if os.path.isdir(args.work_dir) and os.listdir(args.work_dir):
        sys.exit(f"error: --work-dir {args.work_dir} is not empty; remove it or pass another one")
    ensure_synthetic_world(args.data_root)
    torch.set_num_threads(args.threads)
    # the training key frames ({token, scene_token, scene_name}), as the scripts' default train split
    train_infos = split_samples(args.data_root, default_split(args.data_root, "train"))
    num_scenes = len({info["scene_token"] for info in train_infos})
    labelled = scene_fraction(train_infos, args.labelled_fraction)
    if len(labelled) == num_scenes:
        sys.exit(f"error: --labelled-fraction {args.labelled_fraction} of the {num_scenes} training scenes of "
                 f"{args.data_root} labels every scene; generate more scenes or lower the fraction")
    num_labelled = sum(info["scene_token"] in labelled for info in train_infos)
    fraction = str(args.labelled_fraction)
    print(f"{args.data_root}: {len(labelled)} of {num_scenes} training scenes labelled "
          f"({num_labelled} of {len(train_infos)} samples)", flush=True)

    common = ["--data-root", args.data_root, "--no-val", "--set", f"train.lr={args.lr}"]
    runs = []   # (name, labels used, samples seen, training position, checkpoint)
    teacher_ckpt = args.teacher_ckpt
    if teacher_ckpt is None:
        work_dir = os.path.join(args.work_dir, "teacher")
        print(f"\n=== fusion teacher {TEACHER} on {fraction} of the scenes ===", flush=True)
        position = train_fusion.main(["--config", TEACHER, "--work-dir", work_dir, "--scenes-fraction", fraction,
                                      *budget_args(args.steps, args.teacher_minutes), *common])
        teacher_ckpt = str(latest_checkpoint(work_dir))
        runs.append(("fusion teacher", num_labelled, num_labelled, position.step, teacher_ckpt))

    plans = [
        ("camera-only", num_labelled, num_labelled, train_fusion,
         ["--config", CAMERA, "--scenes-fraction", fraction, *common, *student_width_overrides()]),
        ("distilled student", num_labelled, len(train_infos), train_distill,
         ["--config", STUDENT, "--teacher-ckpt", teacher_ckpt, "--labelled-fraction", fraction, *common]),
        ("camera-only", len(train_infos), len(train_infos), train_fusion,
         ["--config", CAMERA, *common, *student_width_overrides()]),
    ]
    for index, (name, num_labels, num_samples, script, argv) in enumerate(plans):
        work_dir = os.path.join(args.work_dir, f"{index}_{name.replace(' ', '_')}_{num_labels}")
        print(f"\n=== {name}: {num_labels} labelled of {num_samples} training samples ===", flush=True)
        position = script.main(["--work-dir", work_dir, *budget_args(args.steps, args.minutes), *argv])
        runs.append((name, num_labels, num_samples, position.step, str(latest_checkpoint(work_dir))))

    results = {}
    for name, num_labels, num_samples, steps, checkpoint in runs:
        key = f"{name} ({num_labels}/{len(train_infos)} labelled)"
        results[key] = (steps, num_samples, evaluate.main(
            ["--ckpt", checkpoint, "--data-root", args.data_root, "--no-rayiou",
             "--out", os.path.join(os.path.dirname(checkpoint), "metrics.json")]))

    names = occ3d.CLASS_NAMES[:occ3d.FREE]
    columns = {f"run {i}": [m["per_class"][n]["iou"] for n in names] for i, (_, _, m) in enumerate(results.values())}
    print("\nper-class IoU (camera mask), validation split")
    print(format_table(names, columns, {f"run {i}": m["miou"] for i, (_, _, m) in enumerate(results.values())}))
    budget_text = f"{args.steps} steps" if args.steps else f"{args.minutes} min (teacher {args.teacher_minutes} min)"
    print(f"\nbudget per run: {budget_text}; data: {args.data_root}")
    print(f"{'run':<6} {'model':<44} {'samples':>7} {'steps':>6} {'mIoU':>7} {'geomIoU':>8}")
    for i, (key, (steps, num_samples, m)) in enumerate(results.items()):
        print(f"run {i:<2} {key:<44} {num_samples:>7} {steps:>6} {100 * m['miou']:7.2f} {100 * m['geometry_iou']:8.2f}")


if __name__ == "__main__":
    main()
