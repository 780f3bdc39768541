"""CPU latency of the plugin-free ONNX export in onnxruntime vs PyTorch, batch 1, full resolution.

    python bench/onnx.py [--presets flashocc_r50 effocc_fusion_r18] [--iters 3] [--warmup 1] [--threads 2]
                         [--num-points 250000]

Per preset (random weights, `occ.models.example_inputs.example_batch`): export with
`occ.deploy.export_onnx`, then time on the same inputs (eval, no_grad, median of --iters after
--warmup):
  - ranks: `occ.deploy.pooling_ranks`, what a new calibration costs (once per calibration);
  - lidar: the fusion model's LiDAR branch (voxelisation + spconv), which stays in PyTorch;
  - torch graph: `occ.deploy.ExportableOccNet` in PyTorch, the exact computation of the graph
    (pooling as gather + index_add);
  - ORT: the ONNX graph in onnxruntime's CPU provider, --threads intra-op threads;
  - torch model: the whole `OccNet.forward` (compiled bev_pool_v2 kernel, cached ranks; the fusion
    model including its LiDAR branch), for reference.
The last columns compare the ORT logits with the PyTorch model's: max |difference| and the
fraction of voxels whose argmax class agrees. Prints a markdown table.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

# the repository root replaces this script's folder on the path: bench/onnx.py would shadow the onnx package
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from occ import deploy  # noqa: E402
from occ.config import get_config  # noqa: E402
from occ.models import build_model  # noqa: E402
from occ.models.example_inputs import example_batch  # noqa: E402


def median_seconds(run, warmup, iters):
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        run()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(preset, folder, warmup, iters, threads, num_points):
    import onnxruntime

    cfg = get_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = example_batch(cfg, num_points=num_points)
    path = os.path.join(folder, f"{preset}.onnx")
    start = time.perf_counter()
    deploy.export_onnx(model, batch, path)
    row = {"export_s": time.perf_counter() - start}
    with torch.no_grad():
        inputs = deploy.graph_inputs(model, batch)

        shifts = iter(range(1, warmup + iters + 1))

        def new_calibration_ranks():  # each call moves the cameras by a millimetre: no cached ranks
            moved = {**batch, "cam2ego": batch["cam2ego"].clone()}
            moved["cam2ego"][..., 0, 3] += 1e-3 * next(shifts)
            deploy.pooling_ranks(model, moved)
        row["ranks"] = median_seconds(new_calibration_ranks, warmup, iters)
        if model.has_lidar:
            row["lidar"] = median_seconds(lambda: model.lidar_branch(batch["points"]), warmup, iters)
        graph = deploy.ExportableOccNet(model).eval()
        row["torch_graph"] = median_seconds(lambda: graph(**inputs), warmup, iters)
        reference = model(batch)["occ_logits"]
        row["torch_model"] = median_seconds(lambda: model(batch), warmup, iters)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}
    row["ort"] = median_seconds(lambda: session.run(None, feed), warmup, iters)
    row["max_abs"], row["agreement"] = deploy.logit_agreement(reference, session.run(None, feed)[0])
    row["points"] = inputs["ranks_bev"].numel()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["flashocc_r50", "effocc_fusion_r18"],
                        help="camera-only or fusion presets")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU intra-op threads (both)")
    parser.add_argument("--num-points", type=int, default=250000, help="LiDAR points of the fusion input")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            rows.append((preset, bench_preset(preset, folder, args.warmup, args.iters, args.threads, args.num_points)))
    print(f"\nbatch 1, full resolution, CPU, {args.threads} threads, median of {args.iters} after {args.warmup} "
          f"warm-up; times in ms (export in s)")
    print("| preset | frustum points | export (s) | ranks | lidar (torch) | torch graph | ORT | ORT speed-up | "
          "torch model | max abs diff | argmax agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset, r in rows:
        lidar = f"{r['lidar'] * 1e3:.0f}" if "lidar" in r else "-"
        print(f"| {preset} | {r['points']:,} | {r['export_s']:.0f} | {r['ranks'] * 1e3:.0f} | {lidar} | "
              f"{r['torch_graph'] * 1e3:.0f} | {r['ort'] * 1e3:.0f} | {r['torch_graph'] / r['ort']:.2f}x | "
              f"{r['torch_model'] * 1e3:.0f} | {r['max_abs']:.1e} | {100 * r['agreement']:.3f} % |")


if __name__ == "__main__":
    main()
