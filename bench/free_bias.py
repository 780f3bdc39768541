"""Geometry IoU of an Occ3D checkpoint when a bias is added to its free logit (precision vs recall).

    python bench/free_bias.py --ckpt CKPT [--data-root data/synthetic] [--biases -1 0 1 2 3]
                              [--distances 10 20 30 40] [--threads 1]

For each bias b, every voxel's free logit is raised by b before the argmax (b > 0: fewer voxels
called occupied), and "occupied vs free" is scored against the GT inside the camera mask over the
validation split: geometry IoU, precision and recall, one line per bias. It tells whether a model's
geometry is limited by where its decision threshold sits (some b beats b = 0 by far) or by what
it has learnt (no b does). A second table splits the unbiased (b = 0) figures by the horizontal
distance of the voxel centres from the ego origin (bands between --distances): where the
geometry is lost. EMA weights.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.build import dataset_from_config, default_split, info_path  # noqa: E402
from datasets.nuscenes_occ import collate  # noqa: E402
from occ import occ3d  # noqa: E402
from occ.evaluation import build_model_from_checkpoint  # noqa: E402
from occ.models.occnet import occ_grid_shape  # noqa: E402


def predicted_occupied(logits, bias):
    """(X, Y, Z) bool: the argmax is not free (the last of the C logits) once `bias` is added to the free logit."""
    shifted = logits.clone()
    shifted[..., -1] += bias
    return shifted.argmax(-1) != logits.shape[-1] - 1


def confusion(predicted, occupied, mask):
    """(TP, FP, FN) of the `predicted` occupied cells against the `occupied` ones inside `mask`."""
    predicted, occupied = predicted & mask, occupied & mask
    return ((predicted & occupied).sum().item(), (predicted & ~occupied).sum().item(),
            (~predicted & occupied).sum().item())


def geometry_counts(logits, semantics, mask, biases):
    """{bias: (TP, FP, FN)} of "not free" inside `mask` when `bias` is added to the free logit.
    logits (X, Y, Z, C) with free = C - 1; semantics (X, Y, Z) with free = occ3d.FREE; mask bool."""
    occupied = semantics != occ3d.FREE
    return {bias: confusion(predicted_occupied(logits, bias), occupied, mask) for bias in biases}


def distance_bands(model_cfg, edges):
    """[(name, mask (X, Y, Z) bool)] of the output grid's cells whose centre lies at a horizontal
    distance from the ego origin in [e_i, e_i+1), for the edges 0 < e_1 < ... plus the rest beyond."""
    r, v = model_cfg.point_cloud_range, model_cfg.occ_voxel_size
    X, Y, Z = occ_grid_shape(model_cfg)
    x = r[0] + (torch.arange(X) + 0.5) * v
    y = r[1] + (torch.arange(Y) + 0.5) * v
    distance = torch.hypot(x[:, None], y[None, :])[:, :, None].expand(X, Y, Z)
    bounds = [0.0, *edges, float("inf")]
    return [(f"{low:g}-{high:g} m" if high != float("inf") else f">= {low:g} m", (distance >= low) & (distance < high))
            for low, high in zip(bounds[:-1], bounds[1:])]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--biases", type=float, nargs="+", default=[-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--distances", type=float, nargs="+", default=[10.0, 20.0, 30.0, 40.0],
                        help="band edges in metres of the by-distance table")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, cfg = build_model_from_checkpoint(args.ckpt, True, "cpu")
    split = default_split(args.data_root, "val")
    dataset = dataset_from_config(cfg, args.data_root, info_path(args.data_root, split), train=False, load_gt=True)
    if sorted(args.distances) != args.distances or args.distances[0] <= 0:
        sys.exit(f"error: --distances must be increasing and positive, got {args.distances}")
    totals = {bias: [0, 0, 0] for bias in args.biases}
    bands = distance_bands(cfg.model, args.distances)
    band_totals = {name: [0, 0, 0, 0] for name, _ in bands}   # TP, FP, FN, GT occupied
    for index in range(len(dataset)):
        batch = collate([dataset[index]])
        with torch.no_grad():
            logits = model(batch)["occ_logits"][0]
        counts = geometry_counts(logits, batch["semantics"][0], batch["mask_camera"][0], args.biases)
        for bias, (tp, fp, fn) in counts.items():
            totals[bias] = [totals[bias][0] + tp, totals[bias][1] + fp, totals[bias][2] + fn]
        unbiased, occupied = predicted_occupied(logits, 0.0), batch["semantics"][0] != occ3d.FREE
        for name, band in bands:
            tp, fp, fn = confusion(unbiased, occupied, batch["mask_camera"][0] & band)
            band_totals[name] = [band_totals[name][0] + tp, band_totals[name][1] + fp, band_totals[name][2] + fn,
                                 band_totals[name][3] + tp + fn]
    print(f"{args.ckpt}, {split} ({len(dataset)} samples), camera mask")
    print(f"{'free bias':>9} {'geometry IoU':>13} {'precision':>10} {'recall':>7}")
    for bias, (tp, fp, fn) in totals.items():
        print(f"{bias:+9.1f} {100 * tp / max(tp + fp + fn, 1):13.2f} {100 * tp / max(tp + fp, 1):10.1f} "
              f"{100 * tp / max(tp + fn, 1):7.1f}")
    occupied = sum(counts[3] for counts in band_totals.values())
    print("\nby distance from the ego origin, free bias 0")
    print(f"{'distance':>10} {'occupied voxels':>16} {'share %':>8} {'geometry IoU':>13} {'precision':>10} {'recall':>7}")
    for name, (tp, fp, fn, gt) in band_totals.items():
        print(f"{name:>10} {gt:16d} {100 * gt / max(occupied, 1):8.1f} {100 * tp / max(tp + fp + fn, 1):13.2f} "
              f"{100 * tp / max(tp + fp, 1):10.1f} {100 * tp / max(tp + fn, 1):7.1f}")


if __name__ == "__main__":
    main()
