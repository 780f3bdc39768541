"""Data-loading throughput: samples/s of NuScenesOccDataset in train mode at full resolution
(N cameras x 256x704 from the source JPEGs, key frame + 9 sweeps, LiDAR depth maps, Occ3D GT,
BEV flips) with 0, 1 and 2 DataLoader workers, and the CPU time of one sample (a figure that
holds on a busy shared machine, where samples/s does not).

    python bench/data.py [--data-root data/synthetic] [--samples 24] [--workers 0 1 2]

With the default data root, data/synthetic (ignored by git), the default synthetic world is
generated there on the first run (datasets.build.ensure_synthetic_world, shared with the other
benchmarks). Another root needs its info file (--info).

The one benchmark that imports dataset code: it measures the dataset reader itself
(datasets.nuscenes_occ.NuScenesOccDataset and its collate); the others drive the scripts only
through their main(argv) and otherwise import occ/.
"""
import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from datasets.build import ensure_synthetic_world  # noqa: E402
from datasets.nuscenes_occ import NuScenesOccDataset, collate  # noqa: E402  (what this benchmark measures)


def cpu_seconds_per_sample(dataset, num_samples):
    """CPU time of one in-process sample: a figure that, unlike samples/s, does not depend on what
    else runs on a shared machine."""
    start = time.process_time()
    for index in range(num_samples):
        collate([dataset[index % len(dataset)]])
    return (time.process_time() - start) / num_samples


def samples_per_second(dataset, num_workers, num_samples):
    """Throughput over `num_samples` samples after the first batch (worker start-up excluded)."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=num_samples + 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=num_workers,
                                         collate_fn=collate)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = sum(1 for _ in iterator)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.path.join(REPO, "data", "synthetic"))
    parser.add_argument("--info", default=None, help="info file (default: DATA_ROOT/occ_infos_mini_train.pkl)")
    parser.add_argument("--samples", type=int, default=24, help="timed samples per worker setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    default_root = os.path.join(REPO, "data", "synthetic")
    if args.info is None and os.path.abspath(args.data_root) != default_root:
        parser.error("--info is required with a --data-root other than data/synthetic")
    if args.info is None:
        ensure_synthetic_world(default_root)
    info = args.info or os.path.join(default_root, "occ_infos_mini_train.pkl")
    torch.set_num_threads(1)
    dataset = NuScenesOccDataset(args.data_root, info, train=True, image_size=(256, 704), num_sweeps=9)
    # key frames with all 9 sweeps available (a scene's first frames have fewer)
    full = [i for i, record in enumerate(dataset.infos) if len(record["sweeps"]) >= 9]
    if not full:
        raise SystemExit(f"no key frame of {info} has 9 sweeps")
    dataset = torch.utils.data.Subset(dataset, full)
    sample = dataset[0]
    print(f"{len(full)} key frames with >= 9 sweeps from {info}; one sample: images {tuple(sample['images'].shape)}, "
          f"points {tuple(sample['points'].shape)}, depth maps {tuple(sample['depth_maps'].shape)}, "
          f"GT {'with' if 'flow' in sample else 'without'} flow; {os.cpu_count()} CPU cores")
    cpu = cpu_seconds_per_sample(dataset, args.samples)
    print(f"CPU time per sample (in process): {cpu * 1000:.0f} ms -> at most {os.cpu_count() / cpu:.1f} samples/s "
          f"on {os.cpu_count()} idle cores")
    for num_workers in args.workers:
        rate = samples_per_second(dataset, num_workers, args.samples)
        print(f"workers={num_workers}: {rate:.2f} samples/s")


if __name__ == "__main__":
    main()
