"""Speed and memory of the compiled ops at the Fusion-R18 sizes (docs/architecture.md).

    python bench/ops.py [--repeats 10] [--nuscenes-root ../shared/nuscenes-real]

BEV pooling: B=1, N=6, D=88, H=32, W=88, C=64 into a 1x1x200x200 grid, with the frustum of six
nuScenes-like cameras (256x704 input from 1600x900, depth bins 1..45 m by 0.5 m), against the
plain-PyTorch reference. Voxelisation: ten real nuScenes LiDAR key frames from --nuscenes-root
merged into one ego frame (~350k points, features x, y, z, intensity, time lag), 0.05x0.05x0.16 m
over [-40,-40,-1,40,40,5.4], max 10 points, 120k voxels, against spconv's PointToVoxel.

Times are medians over --repeats runs after one warm-up. Peak memory of a call = the process's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) minus its resident set
just before the call, measured in a fresh subprocess per call with glibc's mmap threshold fixed at
64 KiB so that large buffers are taken from and returned to the OS. On a GPU it also times the
CUDA kernels (torch.cuda.synchronize around each run). "forward kernel alone" is occ._C's forward
without the input checks and autograd bookkeeping of occ.ops.bev_pool_v2.
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from occ.geometry import image_aug_matrix, invert_transform, make_transform  # noqa: E402
from occ.ops import (bev_pool_prepare, bev_pool_v2, bev_pool_v2_reference, voxelize,  # noqa: E402
                     voxelize_reference)
from occ.ops.extension import kernels_for  # noqa: E402

# Fusion-R18 sizes
NUM_CAMERAS, DEPTH_BINS, FEAT_H, FEAT_W, CHANNELS = 6, 88, 32, 88, 64
BEV_SHAPE = (1, 1, 200, 200)
BEV_LOWER, BEV_VOXEL = np.array([-40.0, -40.0, -1.0]), np.array([0.4, 0.4, 6.4])
VOXEL_SIZE, PC_RANGE, MAX_POINTS, MAX_VOXELS = [0.05, 0.05, 0.16], [-40, -40, -1, 40, 40, 5.4], 10, 120_000
# (yaw of the optical axis in the ego frame in degrees, x, y, z of the camera in metres, focal length px)
CAMERAS = [(0, 1.70, 0.0, 1.5, 1266), (-55, 1.55, -0.5, 1.5, 1260), (55, 1.50, 0.5, 1.5, 1272),
           (180, 0.05, 0.0, 1.6, 800), (-110, 1.05, -0.5, 1.5, 1256), (110, 1.05, 0.5, 1.5, 1260)]


def camera_frustum_coords(feat_h=FEAT_H, feat_w=FEAT_W, depth_step=0.5):
    """BEV voxel indices (1, N, D, H, W, 3) of the frustum points of the six cameras; D = the depth
    bins 1..45 m by `depth_step` (88 at the Fusion-R18 step of 0.5 m)."""
    post_rot, post_tran = image_aug_matrix(0.44, (0, 140), False, 0.0, 704, 256)  # 1600x900 -> 256x704
    u, v = np.linspace(0, 703, feat_w), np.linspace(0, 255, feat_h)
    d = np.arange(1.0, 45.0, depth_step)
    dd, vv, uu = np.meshgrid(d, v, u, indexing="ij")  # (D, H, W)
    uv_aug = np.stack([uu, vv], -1).reshape(-1, 2)
    uv = (uv_aug - post_tran[:2]) @ np.linalg.inv(post_rot[:2, :2]).T  # back to source pixels
    depth = dd.reshape(-1, 1)
    cam_axes_to_ego = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # x right, y down, z forward
    coords = []
    for yaw, x, y, z, focal in CAMERAS:
        cos, sin = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        yaw_rot = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        cam2ego = make_transform(yaw_rot @ cam_axes_to_ego, [x, y, z])
        points_cam = np.concatenate([(uv - [800.0, 450.0]) / focal * depth, depth], axis=1)
        points_ego = points_cam @ cam2ego[:3, :3].T + cam2ego[:3, 3]
        coords.append(np.floor((points_ego - BEV_LOWER) / BEV_VOXEL))
    coords = np.stack(coords).reshape(1, NUM_CAMERAS, len(d), feat_h, feat_w, 3)
    return torch.from_numpy(coords).long()


def bev_pool_inputs(device, requires_grad, feat_h=FEAT_H, feat_w=FEAT_W, depth_step=0.5, channels=CHANNELS):
    """depth (1, N, D, H, W) (softmax over D), feat (1, N, H, W, C) and the ranks of the six-camera
    frustum; the defaults are the Fusion-R18 sizes (bench/gpu_check.py --quick uses smaller ones)."""
    generator = torch.Generator().manual_seed(0)
    coords = camera_frustum_coords(feat_h, feat_w, depth_step)
    ranks = [r.to(device) for r in bev_pool_prepare(coords, BEV_SHAPE)]
    logits = torch.randn(*coords.shape[:5], generator=generator)
    depth = logits.softmax(dim=2).to(device).requires_grad_(requires_grad)
    feat = torch.randn(1, NUM_CAMERAS, feat_h, feat_w, channels, generator=generator).to(device)
    return depth, feat.requires_grad_(requires_grad), ranks


def multi_sweep_cloud(nuscenes_root, num_sweeps=10):
    """(P, 5) float32 points of the last `num_sweeps` LiDAR key frames in the ego frame of the newest."""
    tables = os.path.join(nuscenes_root, "v1.0-trainval")
    if not os.path.isdir(tables):
        raise FileNotFoundError(f"--nuscenes-root {nuscenes_root}: no v1.0-trainval tables there")

    def load(name):
        with open(os.path.join(tables, f"{name}.json")) as f:
            return {row["token"]: row for row in json.load(f)}

    sample_data, poses, calibrations = load("sample_data"), load("ego_pose"), load("calibrated_sensor")
    lidar = sorted((sd for sd in sample_data.values() if "LIDAR_TOP" in sd["filename"] and sd["is_key_frame"]),
                   key=lambda sd: sd["timestamp"])
    # the drive log (file name prefix) with the most LiDAR key frames; take its newest ones
    logs = [os.path.basename(sd["filename"]).split("__")[0] for sd in lidar]
    frames = [sd for sd, log in zip(lidar, logs) if log == max(set(logs), key=logs.count)][-num_sweeps:]
    if len(frames) < num_sweeps:
        raise FileNotFoundError(f"--nuscenes-root {nuscenes_root}: needs {num_sweeps} LiDAR key frames of one "
                                f"scene, found {len(frames)}")

    def lidar2global(sd):
        calib, pose = calibrations[sd["calibrated_sensor_token"]], poses[sd["ego_pose_token"]]
        return (make_transform(pose["rotation"], pose["translation"])
                @ make_transform(calib["rotation"], calib["translation"]))

    newest = frames[-1]
    global2ego = invert_transform(make_transform(poses[newest["ego_pose_token"]]["rotation"],
                                                 poses[newest["ego_pose_token"]]["translation"]))
    clouds = []
    for sd in frames:
        points = np.fromfile(os.path.join(nuscenes_root, sd["filename"]), dtype=np.float32).reshape(-1, 5)
        lidar2ego = global2ego @ lidar2global(sd)
        xyz = points[:, :3].astype(np.float64) @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
        time_lag = np.full((len(points), 1), (newest["timestamp"] - sd["timestamp"]) * 1e-6)
        clouds.append(np.concatenate([xyz, points[:, 3:4], time_lag], axis=1))
    return torch.from_numpy(np.concatenate(clouds).astype(np.float32))


def median_ms(fn, repeats, device, setup=None):
    """Median wall time of fn() in milliseconds after one warm-up; setup() runs untimed before each."""
    times = []
    for _ in range(repeats + 1):
        if setup is not None:
            setup()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def time_bev_pool(device, repeats, **sizes):
    """{name: ms} for forward and backward of the kernels and of the reference; `sizes`: keyword
    arguments of bev_pool_inputs (default: the Fusion-R18 sizes)."""
    depth, feat, ranks = bev_pool_inputs(device, requires_grad=True, **sizes)
    results = {}
    for name, op in (("ours", bev_pool_v2), ("reference", bev_pool_v2_reference)):
        results[f"{name} forward"] = median_ms(lambda: op(depth, feat, *ranks, BEV_SHAPE), repeats, device)
        state = {}

        def forward():
            depth.grad = feat.grad = None
            state["out"] = op(depth, feat, *ranks, BEV_SHAPE)
            state["grad"] = torch.ones_like(state["out"])

        results[f"{name} backward"] = median_ms(lambda: state["out"].backward(state["grad"]), repeats, device,
                                                setup=forward)
    kernels = kernels_for(device)
    num_cells = math.prod(BEV_SHAPE)
    results["kernel forward"] = median_ms(lambda: kernels.bev_pool_forward(depth.detach(), feat.detach(), *ranks,
                                                                           num_cells), repeats, device)
    return results


def cell_independent_of_rounding(points):
    """Mask of the points whose cell is the same in float32 arithmetic (spconv) and float64 (ours)."""
    lower, size = torch.tensor(PC_RANGE[:3]), torch.tensor(VOXEL_SIZE)
    cells32 = torch.floor((points[:, :3] - lower.float()) / size.float())
    cells64 = torch.floor((points[:, :3].double() - lower.double()) / size.double())
    return (cells32 == cells64).all(dim=1)


def time_voxelize(points, device, repeats):
    """{name: ms} for our kernel, spconv's PointToVoxel and the reference, and a line on agreement:
    on the CPU with spconv (same first-come pass; points on a float32/float64 cell border left out),
    on the GPU with our CPU kernel (spconv's GPU voxel order is not first-come)."""
    from spconv.pytorch.utils import PointToVoxel
    spconv_voxelizer = PointToVoxel(vsize_xyz=VOXEL_SIZE, coors_range_xyz=PC_RANGE, num_point_features=5,
                                    max_num_voxels=MAX_VOXELS, max_num_points_per_voxel=MAX_POINTS,
                                    device=device)
    if device.type == "cpu":
        same_cell = cell_independent_of_rounding(points)
        ours = voxelize(points[same_cell], VOXEL_SIZE, PC_RANGE, MAX_POINTS, MAX_VOXELS)
        identical = all(torch.equal(a, b) for a, b in zip(ours, spconv_voxelizer(points[same_cell])))
        agreement = (f"identical to spconv: {identical} (on the {int(same_cell.sum())} points whose cell does "
                     f"not depend on float32 rounding; {int((~same_cell).sum())} left out)")
    else:
        ours = voxelize(points.to(device), VOXEL_SIZE, PC_RANGE, MAX_POINTS, MAX_VOXELS)
        cpu = voxelize(points, VOXEL_SIZE, PC_RANGE, MAX_POINTS, MAX_VOXELS)
        agreement = f"identical to our CPU kernel: {all(torch.equal(a.cpu(), b) for a, b in zip(ours, cpu))}"
    points = points.to(device)
    num_voxels = len(voxelize(points, VOXEL_SIZE, PC_RANGE, MAX_POINTS, MAX_VOXELS)[0])
    results = {
        "ours": median_ms(lambda: voxelize(points, VOXEL_SIZE, PC_RANGE, MAX_POINTS, MAX_VOXELS), repeats, device),
        "spconv PointToVoxel": median_ms(lambda: spconv_voxelizer(points), repeats, device),
        "reference": median_ms(lambda: voxelize_reference(points, VOXEL_SIZE, PC_RANGE, MAX_POINTS, MAX_VOXELS),
                               max(1, repeats // 3), device),
    }
    return results, agreement, len(points), num_voxels


def resident_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory_of(call):
    """Run in a fresh subprocess: print the peak RSS growth (MiB) of one CPU call (see the module doc)."""
    depth, feat, ranks = bev_pool_inputs(torch.device("cpu"), requires_grad=True)
    op = bev_pool_v2 if call.startswith("ours") else bev_pool_v2_reference
    op(depth, feat, *ranks, BEV_SHAPE).sum().backward()  # warm-up: thread pools, first-use buffers
    depth.grad = feat.grad = None
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = resident_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    out = op(depth, feat, *ranks, BEV_SHAPE)
    if call.endswith("backward"):
        out.backward(torch.ones_like(out))
    print((resident_kib("VmHWM") - before) / 1024)


def measured_peak_mib(call):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--peak-memory-of", call], env=env,
                            capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--nuscenes-root", default=os.path.join(os.path.dirname(REPO), "shared", "nuscenes-real"))
    parser.add_argument("--peak-memory-of", choices=["ours forward", "reference forward",
                                                     "ours forward+backward", "reference forward+backward"],
                        help=argparse.SUPPRESS)  # internal: one memory measurement in a fresh process
    args = parser.parse_args()
    if args.peak_memory_of:
        peak_memory_of(args.peak_memory_of)
        return

    if kernels_for(torch.device("cpu")) is None:
        sys.exit("bench/ops.py measures the compiled kernels: build them first with `make extension`")
    cloud = multi_sweep_cloud(args.nuscenes_root)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    num_points = len(bev_pool_prepare(camera_frustum_coords(), BEV_SHAPE)[0])
    print(f"\nbev_pool: B=1 N={NUM_CAMERAS} D={DEPTH_BINS} H={FEAT_H} W={FEAT_W} C={CHANNELS} -> "
          f"{BEV_SHAPE}, {num_points} frustum points in the grid; median ms over {args.repeats} runs")
    for device in devices:
        times = time_bev_pool(device, args.repeats)
        for step in ("forward", "backward"):
            print(f"  {device.type:4s} {step:8s}  ours {times[f'ours {step}']:8.2f}  reference "
                  f"{times[f'reference {step}']:8.2f}  speed-up x{times[f'reference {step}'] / times[f'ours {step}']:.1f}")
        print(f"  {device.type:4s} forward kernel alone (no input checks, no autograd): {times['kernel forward']:.3f}")
    print("  cpu  peak memory growth of one call (MiB, RSS high-water mark in a fresh process):")
    for step in ("forward", "forward+backward"):
        ours, reference = measured_peak_mib(f"ours {step}"), measured_peak_mib(f"reference {step}")
        print(f"       {step:17s} ours {ours:7.1f}  reference {reference:7.1f}  ratio 1/{reference / max(ours, 0.1):.0f}")

    print(f"\nvoxelize: 0.05x0.05x0.16 m over {PC_RANGE}, max {MAX_POINTS} points, {MAX_VOXELS} voxels; "
          f"median ms over {args.repeats} runs")
    for device in devices:
        times, agreement, num_points, num_voxels = time_voxelize(cloud, device, args.repeats)
        print(f"  {device.type:4s} {num_points} points -> {num_voxels} voxels: ours {times['ours']:.2f}  "
              f"spconv {times['spconv PointToVoxel']:.2f}  reference {times['reference']:.2f}  "
              f"spconv/ours x{times['spconv PointToVoxel'] / times['ours']:.1f}")
        print(f"       {agreement}")


if __name__ == "__main__":
    main()
