"""Occupancy-and-flow benchmark (OpenOcc v2 protocol) on the synthetic world.

    python bench/flow.py [--data-root data/synthetic] [--steps 500] [--work-dir work_dirs/flow]
                         [--skip-train [--ckpt CKPT]]

Trains effocc_fusion_r18_flow_tiny for --steps optimizer steps (train_fusion.py, no validation,
a checkpoint every 50 steps) on the default synthetic world (generated and prepared when absent),
then scores on the validation split with evaluate.py --benchmark openocc (EMA weights):
  - the model (its predictions saved to WORK_DIR/pred_model),
  - its own occupancy with zero flow (WORK_DIR/pred_model_zero_flow),
  - the GT occupancy with zero flow (WORK_DIR/pred_gt_zero_flow),
  - the GT occupancy with the model's flow (WORK_DIR/pred_gt_model_flow): the flow head alone,
    scored on every GT ray (a model that predicts no moving class has no true-positive dynamic
    ray of its own, and then no mAVE).
With zero flow the mAVE is the mean GT speed over the true-positive dynamic rays, so the model's
flow helps exactly when its mAVE is below the one of the same occupancy with zero flow.
--skip-train scores --ckpt (default: the latest checkpoint in WORK_DIR/effocc_fusion_r18_flow_tiny).
Prints the RayIoU / mAVE / OccScore table, the per-class AVE, and the model's flow on the GT
voxels: on the moving ones (GT speed > occ.flow.MOVING_SPEED) its mean speed, end-point error
(against the zero-flow one, the mean GT speed) and cosine with the GT flow; on the static occupied
ones its mean speed. --set passes config overrides to training (e.g. train.flow_loss_voxels=balanced).
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
from bench.common import split_samples  # noqa: E402
from datasets.build import default_split, ensure_synthetic_world  # noqa: E402
from occ import occ3d, openocc  # noqa: E402
from occ.checkpoint import latest_checkpoint  # noqa: E402
from occ.flow import MOVING_SPEED, moving_voxels  # noqa: E402

PRESET = "effocc_fusion_r18_flow_tiny"


def score(data_root, pred_dir):
    return evaluate.main(["--benchmark", "openocc", "--pred-dir", pred_dir, "--data-root", data_root,
                          "--out", os.path.join(pred_dir, "metrics.json")])


def write_predictions(samples, pred_dir, semantics_of, flow_of):
    """<token>.npz files holding semantics_of(sample) (uint8, OpenOcc order) and flow_of(sample)."""
    os.makedirs(pred_dir, exist_ok=True)
    for sample in samples:
        np.savez_compressed(os.path.join(pred_dir, f"{sample['token']}.npz"), semantics=semantics_of(sample),
                            flow=flow_of(sample))


def flow_on_gt_voxels(samples, gt_of, flow_of):
    """{"moving", "speed", "epe", "zero_flow_epe", "cosine", "static", "static_speed"}: the number
    of moving GT voxels (occupied, GT speed > MOVING_SPEED) over `samples`, the mean predicted speed,
    end-point error |flow - GT| and GT speed (the zero-flow error) on them, the mean cosine between
    predicted and GT flow (0 where the prediction is 0); the number of static occupied voxels and the
    mean predicted speed on them. gt_of(sample) -> (semantics, flow); flow_of(sample) -> flow."""
    sums = dict.fromkeys(("moving", "speed", "epe", "zero_flow_epe", "cosine", "static", "static_speed"), 0.0)
    for sample in samples:
        semantics, gt_flow = gt_of(sample)
        flow = flow_of(sample)
        gt_speed = np.linalg.norm(gt_flow, axis=-1)
        moving = moving_voxels(torch.from_numpy(semantics), torch.from_numpy(gt_flow)).numpy()
        static = (semantics != openocc.FREE) & ~moving
        f, g = flow[moving], gt_flow[moving]   # (N, 2)
        speed = np.linalg.norm(f, axis=-1)
        sums["moving"] += moving.sum()
        sums["speed"] += speed.sum()
        sums["epe"] += np.linalg.norm(f - g, axis=-1).sum()
        sums["zero_flow_epe"] += gt_speed[moving].sum()
        sums["cosine"] += ((f * g).sum(-1) / np.maximum(speed * gt_speed[moving], 1e-12)).sum()
        sums["static"] += static.sum()
        sums["static_speed"] += np.linalg.norm(flow[static], axis=-1).sum()
    moving, static = max(sums["moving"], 1), max(sums["static"], 1)
    return {"moving": int(sums["moving"]), "speed": sums["speed"] / moving, "epe": sums["epe"] / moving,
            "zero_flow_epe": sums["zero_flow_epe"] / moving, "cosine": sums["cosine"] / moving,
            "static": int(sums["static"]), "static_speed": sums["static_speed"] / static}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--work-dir", default="work_dirs/flow")
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps of training")
    parser.add_argument("--skip-train", action="store_true", help="score an existing checkpoint (--ckpt)")
    parser.add_argument("--ckpt", help="with --skip-train: the checkpoint (default: the latest of the run)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides of training")
    args = parser.parse_args()
    ensure_synthetic_world(args.data_root)
    run_dir = os.path.join(args.work_dir, PRESET)
    if not args.skip_train:
        started = time.perf_counter()
        train_fusion.main(["--config", PRESET, "--data-root", args.data_root, "--work-dir", run_dir,
                           "--max-steps", str(args.steps), "--no-val", "--ckpt-every", "50", "--overwrite",
                           "--set", *args.set])
        print(f"trained {args.steps} steps in {(time.perf_counter() - started) / 60:.1f} min")
    checkpoint = args.ckpt or str(latest_checkpoint(run_dir))

    val_samples = split_samples(args.data_root, default_split(args.data_root, "val"))
    model_dir = os.path.join(args.work_dir, "pred_model")
    results = {f"model ({os.path.basename(checkpoint)})": evaluate.main(
        ["--benchmark", "openocc", "--ckpt", checkpoint, "--data-root", args.data_root, "--save-pred", model_dir,
         "--vis-dir", os.path.join(args.work_dir, "pictures"), "--vis-samples", "2",
         "--out", os.path.join(model_dir, "metrics.json")])}

    def own_semantics(sample):
        with np.load(os.path.join(model_dir, f"{sample['token']}.npz")) as pred:
            return pred["semantics"]

    def own_flow(sample):
        with np.load(os.path.join(model_dir, f"{sample['token']}.npz")) as pred:
            return pred["flow"]

    def zero_flow(sample):
        return np.zeros(occ3d.GRID_SHAPE + (2,), dtype=np.float32)

    def gt_arrays(sample, *keys):  # these arrays of the GT file, in one read (an npz reads only what is asked)
        with np.load(occ3d.gt_path(args.data_root, sample["scene_name"], sample["token"], openocc.GT_DIR)) as gt:
            return [gt[key] for key in keys]

    def gt_semantics(sample):
        return gt_arrays(sample, "semantics")[0].astype(np.uint8)

    def gt_labels(sample):
        semantics, flow = gt_arrays(sample, "semantics", "flow")
        return semantics.astype(np.uint8), flow

    for name, semantics_of, flow_of, folder in (
            ("own occupancy, zero flow", own_semantics, zero_flow, "pred_model_zero_flow"),
            ("GT occupancy, zero flow", gt_semantics, zero_flow, "pred_gt_zero_flow"),
            ("GT occupancy, model flow", gt_semantics, own_flow, "pred_gt_model_flow")):
        write_predictions(val_samples, os.path.join(args.work_dir, folder), semantics_of, flow_of)
        results[name] = score(args.data_root, os.path.join(args.work_dir, folder))

    dynamic = [openocc.CLASS_NAMES[c] for c in openocc.DYNAMIC_CLASSES]
    print(f"\nOpenOcc metrics, validation split ({len(val_samples)} samples), checkpoint {checkpoint}")
    print(f"{'predictor':<36} {'Ray@1':>6} {'Ray@2':>6} {'Ray@4':>6} {'RayIoU':>7} {'mAVE':>6} {'OccScore':>8}")
    for name, m in results.items():
        print(f"{name:<36} {100 * m['rayiou@1']:6.2f} {100 * m['rayiou@2']:6.2f} {100 * m['rayiou@4']:6.2f} "
              f"{100 * m['rayiou']:7.2f} {m['mave']:6.3f} {100 * m['occ_score']:8.2f}")
    print("\nAVE per dynamic class (m/s; nan: no true-positive ray at 2 m)")
    print(f"{'predictor':<36} " + " ".join(f"{name[:8]:>8}" for name in dynamic))
    for name, m in results.items():
        print(f"{name:<36} " + " ".join(f"{m['per_class'][c]['ave']:8.3f}" for c in dynamic))
    f = flow_on_gt_voxels(val_samples, gt_labels, own_flow)
    print(f"\nthe model's flow on the GT voxels: {f['moving']} moving (GT speed > {MOVING_SPEED} m/s): mean speed "
          f"{f['speed']:.3f} m/s, end-point error {f['epe']:.3f} m/s (zero flow: {f['zero_flow_epe']:.3f}), "
          f"cosine with the GT {f['cosine']:.3f}; {f['static']} static occupied: mean speed {f['static_speed']:.3f} m/s")


if __name__ == "__main__":
    main()
