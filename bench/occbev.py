"""Occ-BEV transfer benchmark (SPEC 5): does geometry pre-training help a camera-only model that has
few labels?

    python bench/occbev.py [--data-root data/synthetic] [--work-dir work_dirs/occbev_bench]
        [--pretrain-minutes 12 | --pretrain-steps N] [--finetune-steps 150] [--scenes-fraction 0.25]
        [--lr 1e-3] [--threads N] [--rayiou]

1. Pre-trains occbev_pretrain_tiny for --pretrain-minutes (or --pretrain-steps) on every training
   scene (images and LiDAR-made geometry targets, no labels) and scores its geometry IoU on the
   validation split (EMA weights, every voxel), next to the floor of predicting everything occupied.
2. Fine-tunes flashocc_r50_tiny on --scenes-fraction of the training scenes (the seeded labelled
   scenes of SPEC 3/4) twice with the same number of optimizer steps: from the pre-trained
   backbone, neck, view transformer and BEV encoder (train_fusion.py --init-from), and from scratch.
3. Scores both with evaluate.py (EMA weights, camera mask) and prints the table.
Both stages use --lr (the presets' 2e-4 / 1e-4 are meant for 24 epochs, not minutes). The default
synthetic world (datasets/make_synthetic.py) is generated into --data-root when absent, with its
info files (datasets/prepare_nuscenes.py) and Occ-BEV targets (datasets/prepare_occbev.py).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402
import pretrain_occbev  # noqa: E402
import train_fusion  # noqa: E402
from datasets import prepare_occbev  # noqa: E402
from datasets.build import default_split, ensure_synthetic_world  # noqa: E402
from occ.checkpoint import latest_checkpoint, load_checkpoint, model_weights  # noqa: E402
from occ.config import config_from_dict  # noqa: E402
from occ.loop import budget_args  # noqa: E402
from occ.models import build_model  # noqa: E402


def pretrained_geometry_iou(checkpoint_path, data_root, targets_dir):
    """(geometry IoU of the EMA weights, IoU of predicting everything occupied) on the val split."""
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = config_from_dict(checkpoint["config"])
    model = build_model(cfg)
    model.load_state_dict(model_weights(checkpoint, use_ema=True, path=checkpoint_path))
    val_set = pretrain_occbev.occbev_dataset(cfg, data_root, default_split(data_root, "val"), False, targets_dir)
    iou, _ = pretrain_occbev.geometry_scores(model.eval(), val_set, "cpu")
    occupied = sum(int(val_set[i]["occupied"].sum()) for i in range(len(val_set)))
    return iou, occupied / (len(val_set) * 200 * 200 * 16)


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
    args = parser.parse_args()
    ensure_synthetic_world(args.data_root)
    targets_dir = os.path.join(args.data_root, "occbev_targets")
    prepare_occbev.main(["--root", args.data_root, "--version", "v1.0-mini", "--out", targets_dir])
    torch.set_num_threads(args.threads)
    lr = f"train.lr={args.lr}"

    budget = f"{args.pretrain_steps} steps" if args.pretrain_steps else f"{args.pretrain_minutes} minutes"
    print(f"\n=== Occ-BEV pre-training: occbev_pretrain_tiny, {budget} ===", flush=True)
    pretrain_dir = os.path.join(args.work_dir, "pretrain")
    started = time.perf_counter()
    pretrain_steps = pretrain_occbev.main(["--config", "occbev_pretrain_tiny", "--data-root", args.data_root,
                                           "--work-dir", pretrain_dir,
                                           *budget_args(args.pretrain_steps, args.pretrain_minutes),
                                           "--no-val", "--set", lr]).step
    pretrain_minutes = (time.perf_counter() - started) / 60
    pretrained = str(latest_checkpoint(pretrain_dir))
    geometry_iou, all_occupied_iou = pretrained_geometry_iou(pretrained, args.data_root, targets_dir)

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
          f"IoU {100 * geometry_iou:.2f} (everything occupied: {100 * all_occupied_iou:.2f})")
    print(f"fine-tuning flashocc_r50_tiny, {args.finetune_steps} steps on {args.scenes_fraction:.0%} of the "
          f"training scenes, validation split, camera mask:")
    header = f"{'initialisation':<16} {'mIoU':>7} {'geomIoU':>8}" + (f" {'RayIoU':>7}" if args.rayiou else "")
    print(header)
    for init, metrics in results.items():
        row = f"{init:<16} {100 * metrics['miou']:7.2f} {100 * metrics['geometry_iou']:8.2f}"
        print(row + (f" {100 * metrics['rayiou']:7.2f}" if args.rayiou else ""))


if __name__ == "__main__":
    main()
