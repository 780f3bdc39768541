"""Geometry IoU of an Occ3D checkpoint when a bias is added to its free logit (precision vs recall).

    python bench/free_bias.py --ckpt CKPT [--data-root data/synthetic] [--biases -1 0 1 2 3] [--threads 1]

For each bias b, every voxel's free logit is raised by b before the argmax (b > 0: fewer voxels
called occupied), and "occupied vs free" is scored against the GT inside the camera mask over the
validation split: geometry IoU, precision and recall, one line per bias. It tells whether a model's
geometry is limited by where its decision threshold sits (some b beats b = 0 by far) or by what
it has learnt (no b does). EMA weights.
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


def geometry_counts(logits, semantics, mask, biases):
    """{bias: (TP, FP, FN)} of "not free" inside `mask` when `bias` is added to the free logit.
    logits (X, Y, Z, C) with free = C - 1; semantics (X, Y, Z) with free = occ3d.FREE; mask bool."""
    occupied = (semantics != occ3d.FREE) & mask
    counts = {}
    for bias in biases:
        shifted = logits.clone()
        shifted[..., -1] += bias
        predicted = (shifted.argmax(-1) != logits.shape[-1] - 1) & mask
        counts[bias] = ((predicted & occupied).sum().item(), (predicted & ~occupied).sum().item(),
                        (~predicted & occupied).sum().item())
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--biases", type=float, nargs="+", default=[-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, cfg = build_model_from_checkpoint(args.ckpt, True, "cpu")
    split = default_split(args.data_root, "val")
    dataset = dataset_from_config(cfg, args.data_root, info_path(args.data_root, split), train=False, load_gt=True)
    totals = {bias: [0, 0, 0] for bias in args.biases}
    for index in range(len(dataset)):
        batch = collate([dataset[index]])
        with torch.no_grad():
            logits = model(batch)["occ_logits"][0]
        counts = geometry_counts(logits, batch["semantics"][0], batch["mask_camera"][0], args.biases)
        for bias, (tp, fp, fn) in counts.items():
            totals[bias] = [totals[bias][0] + tp, totals[bias][1] + fp, totals[bias][2] + fn]
    print(f"{args.ckpt}, {split} ({len(dataset)} samples), camera mask")
    print(f"{'free bias':>9} {'geometry IoU':>13} {'precision':>10} {'recall':>7}")
    for bias, (tp, fp, fn) in totals.items():
        print(f"{bias:+9.1f} {100 * tp / max(tp + fp + fn, 1):13.2f} {100 * tp / max(tp + fp, 1):10.1f} "
              f"{100 * tp / max(tp + fn, 1):7.1f}")


if __name__ == "__main__":
    main()
