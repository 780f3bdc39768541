"""Batch-1 forward latency of the occupancy presets at full resolution, with a per-stage breakdown.

    python bench/latency.py [--presets effocc_fusion_r18 flashocc_r50 ...] [--iters 3] [--warmup 1]
                            [--devices cpu cuda] [--threads 2] [--num-points 250000]

Stages: image backbone + neck, view transform (depth net + BEV pooling), LiDAR branch
(voxelisation + sparse encoder), BEV encoder (fuser + BEV encoder), head. Inference mode (eval,
no_grad), random inputs shaped like a real sample (`occ.models.example_inputs.example_batch`, 6
cameras, LiDAR-like points); the frustum ranks are computed in the warm-up and reused (fixed
calibration). Every (preset, device, precision) runs in a fresh process so that its peak memory is its own: peak RSS on
CPU, peak allocated CUDA memory on GPU. fp16 = CUDA autocast. Prints a markdown table.
"""
import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import sys
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from occ.config import PRESETS, get_config
from occ.models import build_model
from occ.models.example_inputs import example_batch

STAGES = ("image", "view", "lidar", "bev", "head")


def stage_modules(model):
    """stage -> (module whose forward starts it, module whose forward ends it)."""
    stages = {"bev": (model.fuser or model.bev_encoder, model.bev_encoder), "head": (model.head, model.head)}
    if model.has_camera:
        stages["image"] = (model.img_backbone, model.img_neck)
        stages["view"] = (model.view_transformer, model.view_transformer)
    if model.has_lidar:
        stages["lidar"] = (model.lidar_branch, model.lidar_branch)
    return stages


def add_stage_timers(model, device, elapsed):
    """Forward hooks that add each stage's seconds of the current forward to `elapsed`."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for name, (first, last) in stage_modules(model).items():
        start = {}

        def pre_hook(module, args, start=start):
            sync()
            start["t"] = time.perf_counter()

        def post_hook(module, args, output, name=name, start=start):
            sync()
            elapsed[name] = elapsed.get(name, 0.0) + time.perf_counter() - start["t"]

        first.register_forward_pre_hook(pre_hook)
        last.register_forward_hook(post_hook)


def run_one(preset, device_name, fp16, iters, warmup, threads, num_points):
    """One preset on one device: mean seconds per stage and in total, the median total, peak memory in MiB."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    cfg = get_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    batch = example_batch(cfg, num_points=num_points, device=device)
    elapsed = {}
    add_stage_timers(model, device, elapsed)
    totals = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
        for i in range(warmup + iters):
            if i == warmup:
                elapsed.clear()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            totals.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"stages": {k: v / iters for k, v in elapsed.items()}, "total": sum(totals[warmup:]) / iters,
            "median": statistics.median(totals[warmup:]), "peak_mib": peak_mib, "params": params}


def run_in_fresh_process(*args):
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_one, *args).result()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="preset names (default: all full presets)")
    parser.add_argument("--iters", type=int, default=3, help="timed forwards per preset")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (these compute the ranks)")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
                        choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU intra-op threads")
    parser.add_argument("--num-points", type=int, default=250000, help="LiDAR points (10 sweeps in range)")
    args = parser.parse_args()
    for name in args.presets:
        get_config(name)  # unknown names fail before any work
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device is available")
    runs = [(p, d, fp16) for p in args.presets for d in args.devices for fp16 in ((False, True) if d == "cuda" else (False,))]
    rows = []
    for preset, device, fp16 in tqdm(runs, desc="presets"):
        result = run_in_fresh_process(preset, device, fp16, args.iters, args.warmup, args.threads, args.num_points)
        rows.append((preset, device, "fp16" if fp16 else "fp32", result))
    device_name = torch.cuda.get_device_name() if "cuda" in args.devices else f"CPU, {args.threads} threads"
    print(f"\nbatch 1, full resolution, {args.iters} timed forwards after {args.warmup} warm-up; {device_name}; "
          f"times in ms")
    print("| preset | params (M) | device | precision | image | view | lidar | bev | head | total | peak mem (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset, device, precision, r in rows:
        stages = " | ".join(f"{r['stages'][s] * 1e3:.0f}" if s in r["stages"] else "-" for s in STAGES)
        print(f"| {preset} | {r['params'] / 1e6:.2f} | {device} | {precision} | {stages} | {r['total'] * 1e3:.0f} | "
              f"{r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
