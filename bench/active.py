"""Active-learning benchmark: one round of entropy-chosen frames vs random frames vs entropy-chosen voxels.

    python bench/active.py [--data-root data/synthetic] [--steps 150] [--frames 20] [--seeds 0 1 2]
                           [--threads 1] [--work-dir work_dirs/active]

On the default synthetic world (generated and prepared when absent; 8 training scenes of 20 key
frames, 2 validation scenes), with effocc_lidar_tiny at train.lr 1e-3:

- round 0, once: one labelled scene (active_select.py --strategy random --scenes-fraction
  1/scenes: the scene train_fusion.py --scenes-fraction would take), --steps steps from random
  initialisation (train.seed 0); its model chooses the entropy selections, once;
- round 1, for each seed S, each run from the round-0 checkpoint (--init-from,
  docs/training.md#active-learning) for --steps more steps with train.seed=S (sample order and
  augmentation) on the whole selection (the round-0 frames + the new labels):
    entropy frames   + K frames, the highest mean voxel entropy of the round-0 model;
    random frames    + K frames drawn with active_select.py --strategy random --seed S;
    entropy voxels   + V voxels in every other training frame (class-balanced, highest entropy),
                     V = K x the mean camera-mask voxel count of the unlabelled frames / their
                     number: the same voxel budget as K average frames, spread over all of them.
  So the seeds measure the spread of round-1 training (and of the random draw) from one round-0
  model; one round 0 per seed would cost two more entropy passes and a training run per seed.

Every model is scored by evaluate.py (EMA weights, validation split, camera mask, no RayIoU). Prints
the mIoU of every run, then per strategy the mean, sample standard deviation and range over the
seeds, and the labelled camera-mask voxels; writes WORK_DIR/results.json.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import active_select  # noqa: E402
import evaluate  # noqa: E402
import train_fusion  # noqa: E402
from bench.common import training_samples  # noqa: E402
from datasets.build import ensure_synthetic_world  # noqa: E402
from occ import occ3d  # noqa: E402
from occ.checkpoint import latest_checkpoint  # noqa: E402

PRESET = "effocc_lidar_tiny"
STRATEGIES = ("entropy frames", "random frames", "entropy voxels")


def camera_mask_counts(data_root, samples):
    """{token: number of mask_camera voxels} of the Occ3D GT files of `samples`."""
    counts = {}
    for sample in samples:
        with np.load(occ3d.gt_path(data_root, sample["scene_name"], sample["token"])) as gt:
            counts[sample["token"]] = int(gt["mask_camera"].astype(bool).sum())
    return counts


def labelled_voxels(selection, mask_counts):
    """Camera-mask voxels with a label: every one of the full frames, plus the selected voxels."""
    return sum(mask_counts[token] for token in selection.frames) + selection.num_voxels()


def train_and_score(args, seed, work_dir, labelled, init_from=None):
    """(val mIoU, minutes) of effocc_lidar_tiny trained --steps steps on the selection file `labelled`."""
    started = time.perf_counter()
    extra = ["--init-from", init_from] if init_from else []
    train_fusion.main(["--config", PRESET, "--data-root", args.data_root, "--work-dir", work_dir, "--overwrite",
                       "--labelled", labelled, "--max-steps", str(args.steps), "--no-val",
                       "--set", f"train.lr={args.lr}", f"train.seed={seed}", *extra])
    checkpoint = str(latest_checkpoint(work_dir))
    metrics = evaluate.main(["--ckpt", checkpoint, "--data-root", args.data_root, "--no-rayiou",
                             "--out", os.path.join(work_dir, "metrics.json")])
    return metrics["miou"], (time.perf_counter() - started) / 60


def select(args, out, *options):
    return active_select.main(["--data-root", args.data_root, "--out", out, *options])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--work-dir", default="work_dirs/active")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of every training run")
    parser.add_argument("--frames", type=int, default=20, help="K: frames added in round 1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    parser.add_argument("--lr", type=float, default=1e-3, help="train.lr of every run")
    args = parser.parse_args()
    ensure_synthetic_world(args.data_root)
    torch.set_num_threads(args.threads)

    train_samples = training_samples(args.data_root)
    mask_counts = camera_mask_counts(args.data_root, train_samples)
    num_scenes = len({sample["scene_token"] for sample in train_samples})
    os.makedirs(args.work_dir, exist_ok=True)
    round0_file = os.path.join(args.work_dir, "round0.json")
    round0 = select(args, round0_file, "--strategy", "random", "--scenes-fraction", str(1 / num_scenes))
    unlabelled = [token for token in mask_counts if token not in round0.frames]
    voxels_per_frame = round(args.frames * np.mean([mask_counts[t] for t in unlabelled]) / len(unlabelled))
    print(f"round 0: {len(round0.frames)} frames of 1 of {num_scenes} scenes; round 1: +{args.frames} frames, or "
          f"+{voxels_per_frame} voxels in each of the {len(unlabelled)} other frames", flush=True)

    print("\n=== round 0 ===", flush=True)
    round0_dir = os.path.join(args.work_dir, "round0")
    round0_miou, round0_minutes = train_and_score(args, 0, round0_dir, round0_file)
    round0_ckpt = str(latest_checkpoint(round0_dir))
    entropy_budgets = {"entropy frames": ["--frames", str(args.frames)],
                     "entropy voxels": ["--voxels-per-frame", str(voxels_per_frame)]}
    selections = {}   # {strategy: (file, Selection)} of the entropy strategies, shared by the seeds
    for strategy, budget in entropy_budgets.items():
        path = os.path.join(args.work_dir, strategy.replace(" ", "_") + ".json")
        selections[strategy] = path, select(args, path, "--labelled", round0_file, "--ckpt", round0_ckpt, *budget)

    results = []   # {"seed", "strategy", "miou", "minutes", "labelled_voxels"}
    for seed in args.seeds:
        seed_dir = os.path.join(args.work_dir, f"seed{seed}")
        random_file = os.path.join(seed_dir, "random_frames.json")
        selections["random frames"] = random_file, select(args, random_file, "--labelled", round0_file,
                                                          "--strategy", "random", "--seed", str(seed),
                                                          "--frames", str(args.frames))
        for strategy in STRATEGIES:
            print(f"\n=== seed {seed}: {strategy} ===", flush=True)
            path, selection = selections[strategy]
            miou, minutes = train_and_score(args, seed, os.path.join(seed_dir, strategy.replace(" ", "_")), path,
                                            round0_ckpt)
            results.append({"seed": seed, "strategy": strategy, "miou": miou, "minutes": minutes,
                            "labelled_voxels": labelled_voxels(selection, mask_counts)})
        with open(os.path.join(args.work_dir, "results.json"), "w") as f:
            json.dump({"steps": args.steps, "frames": args.frames, "voxels_per_frame": voxels_per_frame,
                       "seeds": args.seeds, "round0": {"miou": round0_miou, "minutes": round0_minutes},
                       "results": results}, f, indent=2)

    print(f"\nval mIoU (%), {PRESET}, {args.steps} steps per round, round 1 from the round-0 checkpoint")
    print(f"round 0 ({len(round0.frames)} frames, {labelled_voxels(round0, mask_counts):,} labelled voxels): "
          f"{100 * round0_miou:.2f} ({round0_minutes:.1f} minutes)")
    print(f"{'strategy':<16} " + " ".join(f"{'seed ' + str(s):>8}" for s in args.seeds)
          + f" {'mean':>7} {'std':>6} {'min-max':>13} {'labelled voxels':>16} {'minutes':>8}")
    for strategy in STRATEGIES:
        rows = [r for r in results if r["strategy"] == strategy]
        mious = [100 * r["miou"] for r in rows]
        spread = statistics.stdev(mious) if len(mious) > 1 else float("nan")
        print(f"{strategy:<16} " + " ".join(f"{m:8.2f}" for m in mious) + f" {statistics.mean(mious):7.2f} "
              f"{spread:6.2f} {min(mious):6.2f}-{max(mious):<6.2f} "
              f"{statistics.mean(r['labelled_voxels'] for r in rows):16,.0f} "
              f"{statistics.mean(r['minutes'] for r in rows):8.1f}")


if __name__ == "__main__":
    main()
