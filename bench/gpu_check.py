"""One command that proves the project on a GPU (docs/gpu.md): the CUDA kernels against the
CPU reference, every tiny preset trained, resumed and evaluated in fp32 / fp16 / bf16, the batch-1
latency of every full-size preset, and BEV pooling against the index_add reference.

    .venv/bin/python bench/gpu_check.py                        # on a GPU after `make setup` (sized for < 6 min)
    .venv/bin/python bench/gpu_check.py --device cpu --quick   # the CPU smoke form (< 1 min; the test suite's)
    .venv/bin/python bench/gpu_check.py --device cpu           # the same flow at tiny sizes on the CPU
        [--out table.json] [--checks kernels train latency bev_pool] [--presets P ...]
        [--precisions fp32 fp16 bf16] [--steps 20 --resume-steps 5] [--jobs N] [--threads N]
        [--timeout S] [--world DIR] [--keep DIR]

Prints ONE summary table at the end (one row per check: name, PASS / FAIL / SKIP, key figures)
and exits 1 when any row FAILs. A failing check does not stop the others: its exception is
caught, the tail of its traceback (and of its log) is recorded and printed, and the run goes on.

Checks (families):
  kernels   occ.ops on --device (compiled kernels) against the pure-PyTorch references run on the
            CPU: bev_pool_v2 forward and backward (max abs difference to a float64 reference,
            tolerance 1e-4 x (1 + max |reference|)), voxelize and dynamic_voxelize (bit-exact,
            voxel order included). Fusion-R18 sizes (bench/ops.py); --quick: small ones.
  train     every *_tiny preset (train_fusion.py, train_distill.py with the tiny fusion run's step-25
            checkpoint as teacher, pretrain_occbev.py with datasets/prepare_occbev.py targets) in
            each precision, driven through the scripts' main(argv): 20 steps, --resume to 25, then
            evaluate.py (occupancy models) or the script's own validation (Occ-BEV geometry IoU,
            read back from TensorBoard). PASS: every call returns, every logged loss is finite,
            step_00000025.pt exists, every metric is a finite number.
  latency   batch-1 inference of every full-size preset in fp32 and fp16 (bench/latency.py:
            median of 20 forwards after 3 warm-ups, per-stage means, peak memory); on the CPU the
            tiny presets in fp32.
  bev_pool  the BEV pooling kernel against the index_add reference on --device (bench/ops.py):
            median time of forward and backward, peak memory of forward and forward+backward.

Data: a small synthetic world (datasets.synthetic.generate: 2 scenes x 3 key frames, 400x225
images; --quick 2 x 2) in a temporary folder, with its info files (datasets.prepare_nuscenes) and
Occ-BEV targets; --world DIR links an existing v1.0-mini world instead. In the full form every task
runs in its own process (--jobs at a time; CUDA errors and crashes stay contained, one precision
per process as Accelerate requires); --quick runs them in this process, one after the other.
"""
import argparse
import contextlib
import gc
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# spconv 2.3.6 decorates with the deprecated torch.cuda.amp API and indexes with lists: nothing to act on
warnings.filterwarnings("ignore", category=FutureWarning, module="spconv")
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import evaluate  # noqa: E402
import pretrain_occbev  # noqa: E402
import train_distill  # noqa: E402
import train_fusion  # noqa: E402
from bench import latency as latency_bench  # noqa: E402
from bench import ops as ops_bench  # noqa: E402
from datasets import make_synthetic, prepare_nuscenes, prepare_occbev  # noqa: E402  (scripts: main(argv) only)
from occ.checkpoint import checkpoint_path  # noqa: E402
from occ.config import PRESETS, get_config  # noqa: E402
from occ.models.example_inputs import example_points  # noqa: E402
from occ.ops import (bev_pool_v2, bev_pool_v2_reference, dynamic_voxelize, dynamic_voxelize_reference,  # noqa: E402
                     voxelize, voxelize_reference)
from occ.ops.extension import kernels_for  # noqa: E402

FAMILIES = ("kernels", "train", "latency", "bev_pool")
PRECISIONS = ("fp32", "fp16", "bf16")
MIXED_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}   # --mixed-precision of the scripts
TINY_PRESETS = [name + "_tiny" for name in PRESETS]
TEACHER = "effocc_fusion_r18_tiny"
# every step's losses go to TensorBoard; checkpoints only when the step budget stops a run; no
# epoch-end validation (the tiny world has 2-3 samples per epoch)
TRAIN_SETTINGS = ["train.log_interval=1", "train.ckpt_interval=1000", "train.val_interval=1000"]
BEV_TOLERANCE = 1e-4          # x (1 + max |reference|): float32 kernels against a float64 reference
QUICK_BEV_SIZES = dict(feat_h=8, feat_w=22, depth_step=2.0, channels=16)   # D = 22
QUICK_NUM_POINTS = 20_000
FULL_NUM_POINTS = 350_000     # like ten merged nuScenes sweeps (bench/ops.py's real cloud: 347,296)
ERROR_TAIL_LINES = 12


# ------------------------------------------------------------------------------------- rows
def row(family, name, status, figures="", error=None, **data):
    return {"family": family, "name": name, "status": status, "figures": figures, "error": error, "data": data}


def error_tail(lines=ERROR_TAIL_LINES):
    """The last lines of the traceback being handled."""
    return "\n".join(traceback.format_exc().rstrip().splitlines()[-lines:])


def checked(family, name, function, *args, **kwargs):
    """function(*args, **kwargs) -> (status, figures, data dict); an exception becomes a FAIL row
    holding the traceback tail instead of stopping the run."""
    start = time.monotonic()
    try:
        status, figures, data = function(*args, **kwargs)
        result = row(family, name, status, figures, **data)
    except (Exception, SystemExit) as error:  # SystemExit: argparse and sys.exit in the scripts
        result = row(family, name, "FAIL", f"{type(error).__name__}: {error}"[:200], error=error_tail())
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- kernels
def compiled_kernels_or_raise(device):
    """The ops fall back to the references silently (one warning) without kernels for a device:
    then comparing them with the references would prove nothing."""
    if kernels_for(device) is None:
        raise RuntimeError(f"occ._C has no kernels for {device.type} tensors (not built, or built without a CUDA "
                           f"toolkit): run `make setup` where the CUDA toolkit is installed")


def max_abs_diff(ours, reference):
    return float((ours.detach().cpu().double() - reference.detach().cpu().double()).abs().max())


def within_tolerance(ours, reference):
    diff = max_abs_diff(ours, reference)
    tolerance = BEV_TOLERANCE * (1.0 + float(reference.detach().abs().max()))
    return diff, tolerance, diff <= tolerance


def bev_pool_cases(device, sizes):
    """The kernel forward and backward on `device` and the float64 reference on the CPU, same inputs."""
    compiled_kernels_or_raise(device)
    depth, feat, ranks = ops_bench.bev_pool_inputs(torch.device("cpu"), requires_grad=False, **sizes)
    B, Z, Y, X = ops_bench.BEV_SHAPE
    out_grad = torch.randn(B, feat.shape[-1], Z, Y, X, generator=torch.Generator().manual_seed(1))
    reference_inputs = [t.double().requires_grad_() for t in (depth, feat)]
    reference = bev_pool_v2_reference(*reference_inputs, *ranks, ops_bench.BEV_SHAPE)
    reference.backward(out_grad.double())
    ours_inputs = [t.to(device).requires_grad_() for t in (depth, feat)]
    ours = bev_pool_v2(*ours_inputs, *[r.to(device) for r in ranks], ops_bench.BEV_SHAPE)
    ours.backward(out_grad.to(device))
    sync(device)
    return {"out": (ours, reference), "depth_grad": (ours_inputs[0].grad, reference_inputs[0].grad),
            "feat_grad": (ours_inputs[1].grad, reference_inputs[1].grad), "points": len(ranks[0]),
            "shape": tuple(depth.shape)}


def check_bev_pool_forward(cases):
    ours, reference = cases["out"]
    if ours.dtype != torch.float32 or ours.shape != reference.shape:
        return "FAIL", f"output {ours.dtype} {tuple(ours.shape)}, expected float32 {tuple(reference.shape)}", {}
    diff, tolerance, ok = within_tolerance(ours, reference)
    B, N, D, H, W = cases["shape"]
    figures = (f"max|diff| {diff:.2e} (tol {tolerance:.1e}); N={N} D={D} H={H} W={W} "
               f"C={ours.shape[1]}, {cases['points']} points -> {ops_bench.BEV_SHAPE[2]}x{ops_bench.BEV_SHAPE[3]}")
    return ("PASS" if ok else "FAIL"), figures, {"max_abs_diff": diff, "tolerance": tolerance}


def check_bev_pool_backward(cases):
    figures, data, ok = [], {}, True
    for name in ("depth_grad", "feat_grad"):
        diff, tolerance, passed = within_tolerance(*cases[name])
        ok &= passed
        figures.append(f"{name} max|diff| {diff:.2e} (tol {tolerance:.1e})")
        data[name] = {"max_abs_diff": diff, "tolerance": tolerance}
    return ("PASS" if ok else "FAIL"), "; ".join(figures), data


def kernel_point_cloud(num_points):
    """(P, 5) LiDAR-like points (occ.models.example_inputs.example_points), seeded."""
    return example_points(num_points, torch.Generator().manual_seed(0))


def sorted_by_cell(voxels, coords, num_points):
    order = torch.argsort((coords[:, 0].long() * 100_000 + coords[:, 1].long()) * 100_000 + coords[:, 2].long())
    return voxels[order], coords[order], num_points[order]


def check_voxelize(device, points, max_voxels):
    """Bit-exact against the reference (first-come voxel order included); a second line says whether
    at least the voxel sets agree when the order does not."""
    compiled_kernels_or_raise(device)
    args = (ops_bench.VOXEL_SIZE, ops_bench.PC_RANGE, ops_bench.MAX_POINTS, max_voxels)
    reference = voxelize_reference(points, *args)
    ours = [t.cpu() for t in voxelize(points.to(device), *args)]
    sync(device)
    names = ("voxels", "coords_zyx", "num_points")
    different = [n for n, a, b in zip(names, ours, reference) if a.dtype != b.dtype or a.shape != b.shape
                 or not torch.equal(a, b)]
    figures = (f"{len(points)} points -> {len(reference[0])} voxels (max {max_voxels}"
               f"{', limit hit' if len(reference[0]) == max_voxels else ''}): ")
    if not different:
        return "PASS", figures + "identical (order, coords, counts, contents)", {"num_voxels": len(reference[0])}
    same_set = (len(ours[0]) == len(reference[0])
                and all(torch.equal(a, b) for a, b in zip(sorted_by_cell(*ours), sorted_by_cell(*reference))))
    return "FAIL", figures + f"{', '.join(different)} differ; same voxel set in another order: {same_set}", \
        {"num_voxels": len(reference[0]), "different": different, "same_set": same_set}


def check_dynamic_voxelize(device, points):
    compiled_kernels_or_raise(device)
    reference = dynamic_voxelize_reference(points, ops_bench.VOXEL_SIZE, ops_bench.PC_RANGE)
    ours = dynamic_voxelize(points.to(device), ops_bench.VOXEL_SIZE, ops_bench.PC_RANGE).cpu()
    mismatched = int((ours != reference).any(dim=1).sum()) if ours.shape == reference.shape else len(points)
    in_range = int((reference[:, 0] >= 0).sum())
    figures = f"{len(points)} points ({in_range} in range): {mismatched} with another voxel"
    ok = mismatched == 0 and ours.dtype == reference.dtype
    return ("PASS" if ok else "FAIL"), figures, {"mismatched": mismatched}


def task_kernels(device, quick):
    device = torch.device(device)
    sizes = QUICK_BEV_SIZES if quick else {}
    where = f"{device.type} kernel vs CPU reference"
    rows = []
    cases = {}

    def run_cases():
        cases.update(bev_pool_cases(device, sizes))
        return "PASS", "", {}

    setup = checked("kernels", f"bev_pool_v2 ({where})", run_cases)
    if setup["status"] == "FAIL":
        rows.append(setup)
    else:
        rows.append(checked("kernels", f"bev_pool_v2 forward ({where})", check_bev_pool_forward, cases))
        rows.append(checked("kernels", f"bev_pool_v2 backward ({where})", check_bev_pool_backward, cases))
    points = kernel_point_cloud(QUICK_NUM_POINTS if quick else FULL_NUM_POINTS)
    rows.append(checked("kernels", f"voxelize, max {ops_bench.MAX_VOXELS} voxels ({where})", check_voxelize, device,
                        points, ops_bench.MAX_VOXELS))
    # a second case where the voxel budget runs out: which cells are kept depends on the order
    num_cells = len(dynamic_voxelize_reference(points, ops_bench.VOXEL_SIZE, ops_bench.PC_RANGE).unique(dim=0))
    rows.append(checked("kernels", f"voxelize, max {num_cells // 2} voxels ({where})", check_voxelize, device,
                        points, max(1, num_cells // 2)))
    rows.append(checked("kernels", f"dynamic_voxelize ({where})", check_dynamic_voxelize, device, points))
    return rows


# ----------------------------------------------------------------------------------- world
def task_world(root, quick, world=None, workers=2, occbev_targets=True):
    """A small synthetic world at `root` (or links to `world`), its info files and Occ-BEV targets."""
    def build():
        start = time.monotonic()
        os.makedirs(root, exist_ok=True)
        if world:
            for entry in os.listdir(world):
                if entry.startswith("occ_infos_") or entry == "occbev_targets":
                    continue   # ours are written below
                os.symlink(os.path.join(os.path.abspath(world), entry), os.path.join(root, entry))
            made = f"linked {world}"
        else:
            samples_per_scene = 2 if quick else 3
            make_synthetic.main(["--out", root, "--scenes", "2", "--samples-per-scene", str(samples_per_scene),
                                 "--seed", "0", "--image-size", "400x225", "--workers", str(workers)])
            made = f"generated 2 scenes x {samples_per_scene} key frames, 400x225"
        generated = time.monotonic() - start
        prepare_nuscenes.main(["--root", root, "--version", "v1.0-mini"])
        if occbev_targets:
            prepare_occbev.main(["--root", root, "--version", "v1.0-mini"])
        splits = sorted(name[len("occ_infos_"):-len(".pkl")] for name in os.listdir(root)
                        if name.startswith("occ_infos_"))
        return "PASS", (f"{made} in {generated:.0f} s; info files {splits}"
                        + ("; Occ-BEV targets" if occbev_targets else "")), {}

    return [checked("setup", "synthetic world", build)]


# ----------------------------------------------------------------------------------- train
SCRIPTS = {"train_fusion": train_fusion, "train_distill": train_distill, "pretrain_occbev": pretrain_occbev}


def script_for(preset):
    """(module name, kind) of the script that trains a preset."""
    cfg = get_config(preset)
    if cfg.distill.teacher is not None:
        return "train_distill", "distill"
    if cfg.model.head == "geometry":
        return "pretrain_occbev", "occbev"
    return "train_fusion", "occupancy"


def tensorboard_scalars(log_dir):
    """{tag: [(step, value), ...]} of every event file under log_dir, in step order."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(values) for tag, values in scalars.items()}


def task_train(preset, precision, device, data_root, work_root, steps, resume_steps, teacher_ckpt=None,
               keep_checkpoints=False):
    """Train `steps` steps, resume to steps + resume_steps, check losses and the checkpoint, evaluate."""
    script_name, kind = script_for(preset)
    name = f"{preset} {precision}"
    work_dir = os.path.join(work_root, f"{preset}-{precision}")
    total = steps + resume_steps
    timings, figures, stage = {}, [], {"now": None}

    def run():
        script = SCRIPTS[script_name]
        common = ["--config", preset, "--data-root", data_root, "--work-dir", work_dir,
                  "--mixed-precision", MIXED_PRECISION[precision]]
        if device == "cpu":
            common.append("--cpu")
        if kind == "distill":
            if not teacher_ckpt or not os.path.isfile(teacher_ckpt):
                raise RuntimeError(f"no teacher checkpoint: the {TEACHER} {precision} run did not write {teacher_ckpt}")
            common += ["--teacher-ckpt", teacher_ckpt]
        common += ["--set", *TRAIN_SETTINGS]
        resumed_validation = ["--val-every", str(total)] if kind == "occbev" else ["--no-val"]
        for name_of_stage, extra in (("train", ["--max-steps", str(steps), "--no-val"]),
                                     ("resume", ["--max-steps", str(total), "--resume", *resumed_validation])):
            start, stage["now"] = time.monotonic(), f"{script_name}.main ({name_of_stage})"
            script.main(extra + common)
            timings[name_of_stage] = time.monotonic() - start
        stage["now"] = None
        checkpoint = str(checkpoint_path(work_dir, total))
        if not os.path.isfile(checkpoint):
            raise RuntimeError(f"no checkpoint at step {total}: {checkpoint} is missing "
                               f"(there: {sorted(os.listdir(work_dir))})")
        scalars = tensorboard_scalars(os.path.join(work_dir, "tensorboard"))
        loss_tags = sorted(tag for tag in scalars if tag.startswith("train/loss"))
        if "train/loss" not in scalars:
            raise RuntimeError(f"no train/loss logged to TensorBoard (tags: {sorted(scalars)})")
        bad = {tag: [(s, v) for s, v in scalars[tag] if not math.isfinite(v)] for tag in loss_tags}
        bad = {tag: values for tag, values in bad.items() if values}
        losses = scalars["train/loss"]
        logged_steps = sorted({s for s, _ in losses})
        data = {"steps_logged": len(logged_steps), "last_step": logged_steps[-1], "loss_first": losses[0][1],
                "loss_last": losses[-1][1], "checkpoint": os.path.basename(checkpoint)}
        figures.append(f"steps {steps}+{resume_steps} -> {os.path.basename(checkpoint)}; "
                       f"loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f} ({len(loss_tags)} loss tags finite)")
        problems = []
        if bad:
            problems.append(f"non-finite losses: {bad}")
        if logged_steps[-1] != total:
            problems.append(f"the last logged step is {logged_steps[-1]}, not {total}")
        start, stage["now"] = time.monotonic(), "evaluation" if kind != "occbev" else None
        if kind == "occbev":
            iou = [v for s, v in scalars.get("val/geometry_IoU", []) if s == total]
            if not iou:
                problems.append(f"no val/geometry_IoU at step {total} in TensorBoard")
            else:
                data["geometry_iou"] = iou[-1]
                figures.append(f"val geometry IoU {100 * iou[-1]:.2f}")
                if not math.isfinite(iou[-1]):
                    problems.append(f"val geometry IoU {iou[-1]}")
        else:
            metrics = evaluate.main(["--ckpt", checkpoint, "--data-root", data_root, "--device", device,
                                     "--out", os.path.join(work_dir, "metrics.json")])
            keys = ("miou", "geometry_iou", "rayiou")
            data.update({key: metrics.get(key) for key in keys})
            figures.append("eval " + ", ".join(f"{key} {100 * metrics[key]:.2f}" if finite(metrics.get(key))
                                               else f"{key} {metrics.get(key)}" for key in keys))
            problems += [f"{key} = {metrics.get(key)!r} is not a finite number" for key in keys
                         if not finite(metrics.get(key))]
        timings["evaluate"] = time.monotonic() - start
        figures.append("s: " + "/".join(f"{timings[k]:.0f}" for k in ("train", "resume", "evaluate")))
        data["seconds"] = {k: round(v, 1) for k, v in timings.items()}
        if problems:
            return "FAIL", "; ".join(figures + problems), data
        return "PASS", "; ".join(figures), data

    result = checked("train", name, run)
    if result["status"] == "FAIL" and result["error"]:   # an exception: say where, after what passed
        result["figures"] = "; ".join(figures + [f"{stage['now'] or 'checks'} raised {result['figures']}"])
    if not keep_checkpoints and preset != TEACHER:   # large; the teacher's are needed by distillation
        for path in glob.glob(os.path.join(work_dir, "*.pt")):
            os.remove(path)
    return [result]


# --------------------------------------------------------------------------------- latency
def task_latency(device, presets, precisions, iters, warmup, num_points, fresh_process):
    rows = []
    for preset in presets:
        for precision in precisions:
            def measure(preset=preset, precision=precision):
                args = (preset, device, precision == "fp16", iters, warmup, torch.get_num_threads(), num_points)
                if fresh_process:   # peak RSS on the CPU is per process
                    result = latency_bench.run_in_fresh_process(*args)
                else:
                    result = latency_bench.run_one(*args)
                if device == "cuda":
                    gc.collect()
                    torch.cuda.empty_cache()
                median_ms = result["median"] * 1e3
                stages = " ".join(f"{stage} {result['stages'][stage] * 1e3:.1f}" for stage in latency_bench.STAGES
                                  if stage in result["stages"])
                if device == "cuda" or fresh_process:
                    peak = f"peak {result['peak_mib']:.0f} MiB ({'allocated' if device == 'cuda' else 'RSS'})"
                else:
                    peak = "peak memory n/a (in-process)"
                figures = (f"median {median_ms:.1f} ms ({1e3 / median_ms:.1f} FPS) of {iters}; {peak}; "
                           f"stage ms: {stages}")
                data = {"median_ms": median_ms, "fps": 1e3 / median_ms, "peak_mib": result["peak_mib"],
                        "stages_ms": {k: v * 1e3 for k, v in result["stages"].items()}, "params": result["params"]}
                return ("PASS" if finite(median_ms) and median_ms > 0 else "FAIL"), figures, data

            rows.append(checked("latency", f"{preset} {precision} ({device}, batch 1)", measure))
    return rows


# -------------------------------------------------------------------------------- bev_pool
def cuda_peak_mib(call, device):
    """Peak CUDA memory allocated by call() beyond what was allocated before it, MiB."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20


def task_bev_pool(device, quick, repeats):
    device = torch.device(device)
    sizes = QUICK_BEV_SIZES if quick else {}

    def measure():
        compiled_kernels_or_raise(device)
        times = ops_bench.time_bev_pool(device, repeats, **sizes)
        data = {"ms": times}
        figures = []
        for step in ("forward", "backward"):
            ours, reference = times[f"ours {step}"], times[f"reference {step}"]
            figures.append(f"{step} {ours:.2f} vs {reference:.2f} ms (x{reference / ours:.1f})")
        memory = {}
        if device.type == "cuda":
            depth, feat, ranks = ops_bench.bev_pool_inputs(device, requires_grad=True, **sizes)
            for name, op in (("ours", bev_pool_v2), ("reference", bev_pool_v2_reference)):
                def forward(op=op):
                    op(depth, feat, *ranks, ops_bench.BEV_SHAPE)

                def forward_backward(op=op):
                    depth.grad = feat.grad = None
                    out = op(depth, feat, *ranks, ops_bench.BEV_SHAPE)
                    out.backward(torch.ones_like(out))

                memory[f"{name} forward"] = cuda_peak_mib(forward, device)
                memory[f"{name} forward+backward"] = cuda_peak_mib(forward_backward, device)
        elif not quick:   # RSS high-water mark of a fresh process per call (Fusion-R18 sizes only)
            for call in ("ours forward", "reference forward", "ours forward+backward", "reference forward+backward"):
                memory[call] = ops_bench.measured_peak_mib(call)
        for step in ("forward", "forward+backward"):
            if memory:
                ours, reference = memory[f"ours {step}"], memory[f"reference {step}"]
                figures.append(f"peak {step} {ours:.1f} vs {reference:.1f} MiB")
        if not memory:
            figures.append("peak memory: not measured in --quick on the CPU")
        data["peak_mib"] = memory
        ok = all(finite(v) and v > 0 for v in times.values())
        return ("PASS" if ok else "FAIL"), "ours vs index_add: " + "; ".join(figures), data

    label = "Fusion-R18 sizes" if not quick else "small sizes"
    return [checked("bev_pool", f"bev_pool_v2 vs index_add reference ({device.type}, {label}, median of {repeats})",
                    measure)]


# ------------------------------------------------------------------------------- scheduling
TASKS = {"kernels": task_kernels, "world": task_world, "train": task_train, "latency": task_latency,
         "bev_pool": task_bev_pool}


class Task:
    def __init__(self, task_id, kind, params, needs=(), exclusive=False, threads=None):
        self.id, self.kind, self.params = task_id, kind, params
        self.needs, self.exclusive, self.threads = list(needs), exclusive, threads
        self.rows, self.process, self.started, self.log = None, None, None, None


def run_in_process(task, folder):
    """Run a task here with its output captured to its log file."""
    task.log = os.path.join(folder, f"{task.id}.log")
    with open(task.log, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            task.rows = TASKS[task.kind](**task.params)
        except (Exception, SystemExit) as error:
            task.rows = [row(task.kind, task.id, "FAIL", f"{type(error).__name__}: {error}"[:200], error=error_tail())]


def start_process(task, folder):
    spec = os.path.join(folder, f"{task.id}.task.json")
    with open(spec, "w") as f:
        json.dump({"kind": task.kind, "params": task.params, "result": os.path.join(folder, f"{task.id}.rows.json"),
                   "threads": task.threads}, f)
    task.log = os.path.join(folder, f"{task.id}.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if task.threads:
        env["OMP_NUM_THREADS"] = str(task.threads)
    with open(task.log, "w") as log:
        task.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--task", spec], stdout=log,
                                        stderr=subprocess.STDOUT, cwd=REPO, env=env)
    task.started = time.monotonic()
    task.result_path = os.path.join(folder, f"{task.id}.rows.json")


def log_tail(path, lines=ERROR_TAIL_LINES):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().rstrip().splitlines()[-lines:])
    except OSError:
        return ""


def finish_process(task, timed_out=False):
    rc = task.process.returncode
    rows = None
    if os.path.isfile(task.result_path):
        with open(task.result_path) as f:
            rows = json.load(f)
    if rows is None or rc != 0:
        why = "timed out and was killed" if timed_out else f"exited with status {rc}"
        rows = (rows or []) + [row(task.kind, task.id, "FAIL", f"task process {why} (log: {task.log})",
                                   error=log_tail(task.log))]
    task.rows = rows


def run_tasks(tasks, folder, jobs, in_process, timeout_s, echo):
    """Run tasks (in order, `needs` first, `exclusive` ones alone) and return all rows in task order."""
    pending, running, done = list(tasks), [], {}
    while pending or running:
        for task in list(pending):
            failed_needs = [n for n in task.needs if n in done and any(r["status"] == "FAIL" for r in done[n].rows)]
            if failed_needs:
                pending.remove(task)
                name = task.id[len("train "):] if task.kind == "train" else task.id
                task.rows = [row(task.kind, name, "FAIL", f"not run: {', '.join(failed_needs)} failed")]
                done[task.id] = task
                continue
            if any(n not in done for n in task.needs):
                continue
            if len(running) >= jobs or (running and (task.exclusive or any(t.exclusive for t in running))):
                break
            pending.remove(task)
            echo(f"[{time.strftime('%H:%M:%S')}] start {task.id}")
            if in_process:
                run_in_process(task, folder)
                done[task.id] = task
                echo(f"[{time.strftime('%H:%M:%S')}] done  {task.id}: {summary_of(task.rows)}")
                print_failures(task.rows, echo)
            else:
                start_process(task, folder)
                running.append(task)
        for task in list(running):
            timed_out = time.monotonic() - task.started > timeout_s
            if timed_out:
                task.process.kill()
                task.process.wait()
            if task.process.poll() is None:
                continue
            finish_process(task, timed_out)
            running.remove(task)
            done[task.id] = task
            echo(f"[{time.strftime('%H:%M:%S')}] done  {task.id} ({time.monotonic() - task.started:.0f} s): "
                 f"{summary_of(task.rows)}")
            print_failures(task.rows, echo)
        if running:
            time.sleep(0.2)
    return [r for task in tasks for r in done[task.id].rows]


def summary_of(rows):
    counts = {status: sum(r["status"] == status for r in rows) for status in ("PASS", "FAIL", "SKIP")}
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n)


def print_failures(rows, echo):
    for r in rows:
        if r["status"] == "FAIL" and r.get("error"):
            echo(f"  FAIL {r['family']}: {r['name']}\n" + "\n".join("    " + line for line in r["error"].splitlines()))


def child_main(spec_path):
    """--task: run one task and write its rows as JSON (the parent reads them)."""
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    try:
        rows = TASKS[spec["kind"]](**spec["params"])
    except (Exception, SystemExit) as error:
        rows = [row(spec["kind"], spec["kind"], "FAIL", f"{type(error).__name__}: {error}"[:200], error=error_tail())]
    with open(spec["result"], "w") as f:
        json.dump(rows, f, default=str)
    return 0


# ------------------------------------------------------------------------------------ plan
def plan(args, device, folder):
    """(tasks, rows of what is skipped) for the options."""
    quick, cuda = args.quick, device == "cuda"
    skipped = []
    precisions = args.precisions or (["fp32"] if quick else ["fp32", "fp16", "bf16"])
    if not args.precisions and "train" in args.checks:
        if quick:
            skipped.append(row("train", "fp16, bf16", "SKIP", "--quick trains in fp32 only (run without --quick)"))
        elif not cuda:
            problem = cpu_float16_autocast_problem()
            if problem:
                precisions.remove("fp16")
                skipped.append(row("train", "fp16", "SKIP", f"CPU float16 autocast does not work here: {problem}"))
    presets = args.presets or (["effocc_lidar_tiny"] if quick else TINY_PRESETS)
    tasks = []
    if "kernels" in args.checks:
        tasks.append(Task("kernels", "kernels", dict(device=device, quick=quick)))
    world_root = os.path.join(folder, "world", "nuscenes")
    if "train" in args.checks:
        tasks.append(Task("world", "world", dict(root=world_root, quick=quick, world=args.world,
                                                  workers=max(1, min(6, os.cpu_count() or 1)),
                                                  occbev_targets=any(script_for(p)[1] == "occbev" for p in presets))))
        steps = args.steps or (3 if quick else 20)
        resume_steps = args.resume_steps or (1 if quick else 5)

        def add_training(preset, precision, needs, teacher=None):
            task_id = f"train {preset} {precision}"
            if task_id not in [t.id for t in tasks]:
                params = dict(preset=preset, precision=precision, device=device, data_root=world_root,
                              work_root=os.path.join(folder, "runs"), steps=steps, resume_steps=resume_steps,
                              teacher_ckpt=teacher, keep_checkpoints=bool(args.keep))
                tasks.append(Task(task_id, "train", params, needs=needs, threads=args.threads))
            return task_id

        for preset in sorted(presets, key=lambda p: script_for(p)[1] == "distill"):   # teachers first
            for precision in precisions:
                if script_for(preset)[1] == "distill":   # the teacher: the tiny fusion run of this precision
                    teacher_task = add_training(TEACHER, precision, ["world"])
                    teacher = os.path.join(folder, "runs", f"{TEACHER}-{precision}",
                                           f"step_{steps + resume_steps:08d}.pt")
                    add_training(preset, precision, ["world", teacher_task], teacher)
                else:
                    add_training(preset, precision, ["world"])
    if "bev_pool" in args.checks:
        repeats = 5 if quick else 10 if cuda else 3
        tasks.append(Task("bev_pool", "bev_pool", dict(device=device, quick=quick, repeats=repeats), exclusive=True))
    if "latency" in args.checks:
        chosen = [p[:-len("_tiny")] for p in args.presets] if args.presets else None
        if cuda:
            latency_presets, latency_precisions = chosen or list(PRESETS), ["fp32", "fp16"]
            params = dict(iters=20, warmup=3, num_points=250_000, fresh_process=False)
        else:
            latency_presets = args.presets or (["effocc_fusion_r18_tiny"] if quick else TINY_PRESETS)
            latency_precisions = ["fp32"]
            params = (dict(iters=2, warmup=1, num_points=30_000, fresh_process=False) if quick
                      else dict(iters=3, warmup=1, num_points=250_000, fresh_process=True))
            why = ("--quick: one tiny preset, 2 forwards" if quick
                   else "full-size presets take minutes per forward here: the tiny ones are timed")
            skipped.append(row("latency", "fp16", "SKIP", f"fp16 latency is measured on the GPU only; {why}"))
        tasks.append(Task("latency", "latency", dict(device=device, presets=latency_presets,
                                                     precisions=latency_precisions, **params), exclusive=True))
    return tasks, skipped


def cpu_float16_autocast_problem():
    """None if a convolution runs under CPU float16 autocast (torch >= 2.3 has it), else why not."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            out = torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
        return None if out.dtype == torch.float16 else f"a convolution came out as {out.dtype}"
    except RuntimeError as error:
        return str(error).splitlines()[0][:120]


# ------------------------------------------------------------------------------------ table
def format_table(rows, header):
    columns = [("check", [r["family"] for r in rows]), ("name", [r["name"] for r in rows]),
               ("status", [r["status"] for r in rows]), ("figures", [r["figures"] for r in rows])]
    widths = [max(len(title), *(len(v) for v in values)) if values else len(title) for title, values in columns]
    lines = [header, "  ".join(title.ljust(w) for (title, _), w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    for i in range(len(rows)):
        lines.append("  ".join(str(values[i]).ljust(w) for (_, values), w in zip(columns, widths)).rstrip())
    counts = {status: sum(r["status"] == status for r in rows) for status in ("PASS", "FAIL", "SKIP")}
    lines.append(f"RESULT: {'FAIL' if counts['FAIL'] else 'PASS'} ({counts['PASS']} PASS, {counts['FAIL']} FAIL, "
                 f"{counts['SKIP']} SKIP)")
    return "\n".join(lines)


def device_description(device, threads):
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})"
    return f"cpu ({os.cpu_count()} cores, {threads} thread{'s' if threads > 1 else ''} per task)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the CPU smoke form: small kernels, one tiny preset in "
                                                              "fp32 (2 steps + 1 resumed), one latency")
    parser.add_argument("--out", help="write the table (and the details of each row) as JSON here")
    parser.add_argument("--checks", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="check families to run")
    parser.add_argument("--presets", nargs="+", help="tiny presets to train (default: all; --quick: "
                                                     "effocc_lidar_tiny); latency then times these (cpu) or their "
                                                     "full-size versions (cuda)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS,
                        help="training precisions (default: fp32 fp16 bf16; on the CPU fp16 only if float16 autocast "
                             "works there; --quick: fp32)")
    parser.add_argument("--steps", type=int, help="training steps before the resume (default 20; --quick 3)")
    parser.add_argument("--resume-steps", type=int, help="steps after --resume (default 5; --quick 1)")
    parser.add_argument("--jobs", type=int, help="tasks run at once (default on cuda: cores / 2, at most 6; on cpu 1)")
    parser.add_argument("--threads", type=int, help="CPU threads of each task (default: cores / jobs; --quick: 1, "
                                                    "which also keeps a busy 2-core machine from thrashing)")
    parser.add_argument("--timeout", type=float, help="seconds after which a task is killed and FAILs "
                                                      "(default: 300 on cuda, 3600 on cpu)")
    parser.add_argument("--world", help="use this nuScenes-format v1.0-mini world (linked, read-only) instead of "
                                        "generating one")
    parser.add_argument("--keep", help="keep the work folder (world, runs, logs) here instead of a temporary one")
    parser.add_argument("--task", help=argparse.SUPPRESS)   # internal: run one task in this process
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu)")
    if args.jobs is None:
        args.jobs = 1 if args.quick or args.device == "cpu" else max(1, min(6, (os.cpu_count() or 1) // 2))
    if args.timeout is None:
        args.timeout = 300 if args.device == "cuda" else 3600
    if args.world and not os.path.isdir(args.world):
        parser.error(f"--world {args.world}: no such folder")
    if args.presets:
        unknown = [p for p in args.presets if p not in TINY_PRESETS]
        if unknown:
            parser.error(f"--presets {unknown}: not tiny presets ({', '.join(TINY_PRESETS)})")
    if args.threads is None:
        args.threads = 1 if args.quick else max(1, (os.cpu_count() or 1) // args.jobs)
    if any(value is not None and value < 1 for value in (args.steps, args.resume_steps, args.jobs, args.threads)):
        parser.error("--steps, --resume-steps, --jobs and --threads must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.task:
        return child_main(args.task)
    start, started_at = time.monotonic(), datetime.now().astimezone()
    folder = args.keep or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(folder, exist_ok=True)

    def echo(message):
        print(message, flush=True)

    mode = "quick" if args.quick else "full"
    described = f"{device_description(args.device, args.threads)}, torch {torch.__version__}"
    echo(f"gpu_check ({mode}) on {described}; work folder {folder}")
    tasks, skipped = plan(args, args.device, folder)
    threads = torch.get_num_threads()
    try:
        if args.quick:   # in this process
            torch.set_num_threads(args.threads)
        rows = run_tasks(tasks, folder, args.jobs, in_process=args.quick, timeout_s=args.timeout, echo=echo)
    finally:
        torch.set_num_threads(threads)
    rows = sorted(rows + skipped, key=lambda r: (["setup", *FAMILIES].index(r["family"])
                                                  if r["family"] in ("setup", *FAMILIES) else 99))
    wall = time.monotonic() - start
    failed = any(r["status"] == "FAIL" for r in rows)
    header = (f"\ngpu_check summary ({mode}, {described}, "
              f"{started_at:%Y-%m-%d %H:%M %Z}, checks took {wall:.0f} s)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"mode": mode, "device": device_description(args.device, args.threads),
                       "torch": torch.__version__, "started": started_at.isoformat(timespec="seconds"),
                       "wall_s": round(wall, 1), "ok": not failed, "rows": rows}, f, indent=2, default=str)
        echo(f"table written to {args.out}")
    if args.keep:
        echo(f"work folder kept: {folder}")
    elif failed:
        for path in glob.glob(os.path.join(folder, "runs", "*", "*.pt")):   # large; the logs are what helps
            os.remove(path)
        echo(f"logs of this run kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    echo(format_table(rows, header))   # last: the one summary table
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
