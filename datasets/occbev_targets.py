"""Occ-BEV pre-training targets: binary occupancy from accumulated, unlabelled LiDAR (docs/data.md#occ-bev-targets).

The target of a key frame t lives on the Occ3D grid in the ego frame of t's LIDAR_TOP sample_data:
x, y in [-40, 40), z in [-1, 5.4), 0.4 m voxels -> (200, 200, 16) indexed [x, y, z]. A voxel is
occupied when any accumulated LiDAR point falls in it, else empty (no ray casting, no masks).

Accumulated scans: the key frame, the previous and next `frames` key frames and every sweep between
them, found by walking the LIDAR_TOP sample_data prev/next chain (at a scene end, what exists).
Each scan goes sensor -> ego(t_i) (its calibrated_sensor) -> global (its own ego_pose) -> ego(t)
(inverse of the key frame's ego pose). Ego-body points are removed from every scan, the key frame
included, in that scan's own sensor frame: a point goes when |x| < 1 m AND |y| < 1 m (strict, z not
looked at; docs/data.md#points-and-sweeps, `datasets.transforms.remove_ego_body`). Points outside the grid are dropped,
never clipped onto the border voxels, and the voxel of a point p is floor((p - lower) / 0.4) with
no range/(N-1) voxel size (the quirks of the original, docs/differences.md#occ-bev).
"""
import os
from pathlib import Path

import numpy as np

from datasets.nuscenes_occ import read_npz
from datasets.prepare_nuscenes import sensor_transforms
from datasets.transforms import load_points, remove_ego_body
from occ import occ3d
from occ.errors import DataError
from occ.geometry import invert_transform, transform_points


class MissingArrayError(DataError, KeyError):
    """A target file without its `occupied` array: a DataError (one line naming the file) that is
    also the KeyError it always was."""
    __str__ = BaseException.__str__  # KeyError's would quote the message


def voxel_indices(points_ego):
    """Ego-frame points (N, 3+) -> int64 (M, 3) [x, y, z] voxel indices of the points inside the
    grid, floor((p - lower) / 0.4); points outside are dropped."""
    indices = np.floor((points_ego[:, :3] - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE).astype(np.int64)
    inside = np.all((indices >= 0) & (indices < np.array(occ3d.GRID_SHAPE)), axis=1)
    return indices[inside]


def occupancy_from_scans(scans, key_ego2global):
    """Binary occupancy in the key frame's ego frame from a list of LiDAR scans.

    scans: list of (points_sensor (N, 3+), sensor2ego (4, 4), ego2global (4, 4)), each scan with
        its own calibration and its own ego pose.
    key_ego2global: (4, 4) ego pose of the key frame's LiDAR sample_data.
    Each scan first loses its ego-body points (|x| < 1 m and |y| < 1 m in its sensor frame), then
    goes sensor -> ego(t_i) -> global -> ego(t) as one composed 4x4.
    Returns bool (200, 200, 16) [x, y, z].
    """
    global2key_ego = invert_transform(np.asarray(key_ego2global, dtype=np.float64))
    occupied = np.zeros(occ3d.GRID_SHAPE, dtype=bool)
    for points_sensor, sensor2ego, ego2global in scans:
        points_sensor = remove_ego_body(np.asarray(points_sensor))
        sensor2key_ego = global2key_ego @ ego2global @ sensor2ego
        points_key_ego = transform_points(sensor2key_ego, points_sensor[:, :3].astype(np.float64))
        x, y, z = voxel_indices(points_key_ego).T
        occupied[x, y, z] = True
    return occupied


def lidar_chain(nusc, sample_token, frames=2):
    """The LIDAR_TOP sample_data records that make the target of `sample_token`, in time order:
    back along `prev` up to and including the `frames`-th previous key frame, the key frame, and
    forward along `next` up to and including the `frames`-th next key frame (fewer at scene ends).
    `nusc` only needs `get(table, token)` (a nuscenes-devkit NuScenes)."""
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    sample = nusc.get("sample", sample_token)
    if "LIDAR_TOP" not in sample["data"]:
        raise KeyError(f"sample {sample_token} has no LIDAR_TOP sample_data")
    key = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])

    def walk(direction):
        records, key_frames_seen, token = [], 0, key[direction]
        while token and key_frames_seen < frames:
            record = nusc.get("sample_data", token)
            records.append(record)
            key_frames_seen += bool(record["is_key_frame"])
            token = record[direction]
        return records

    return walk("prev")[::-1] + [key] + walk("next")


def occbev_target(nusc, sample_token, frames=2):
    """Occ-BEV target of one key frame: bool (200, 200, 16) in its LiDAR ego frame, from the
    key frame and +-`frames` key frames with every sweep between them."""
    chain = lidar_chain(nusc, sample_token, frames)
    scans = []
    for sample_data in chain:
        points = load_points(Path(nusc.dataroot) / sample_data["filename"])
        scans.append((points, *sensor_transforms(nusc, sample_data)))
    key_sample_data = nusc.get("sample_data", nusc.get("sample", sample_token)["data"]["LIDAR_TOP"])
    _, key_ego2global = sensor_transforms(nusc, key_sample_data)
    return occupancy_from_scans(scans, key_ego2global)


def occbev_target_path(targets_dir, sample_token):
    """Where the target of `sample_token` is cached: `<targets_dir>/<sample_token>.npz`."""
    return Path(targets_dir) / f"{sample_token}.npz"


def save_occbev_target(path, occupied):
    """Write bool (200, 200, 16) as `occupied` = np.packbits along z -> uint8 (200, 200, 2), in a
    compressed .npz, atomically (temp file + rename)."""
    occupied = np.asarray(occupied)
    if occupied.dtype != bool or occupied.shape != occ3d.GRID_SHAPE:
        raise ValueError(f"occupancy must be bool {occ3d.GRID_SHAPE}, got {occupied.dtype} {occupied.shape}")
    path = Path(path)
    temp_path = path.with_name(path.name + ".tmp")
    with open(temp_path, "wb") as f:
        np.savez_compressed(f, occupied=np.packbits(occupied, axis=-1))
    os.replace(temp_path, path)


def load_occbev_target(path):
    """Read a target written by `save_occbev_target` -> bool (200, 200, 16) [x, y, z];
    FileNotFoundError when it is missing, DataError naming the file when it is empty, truncated,
    corrupt, lacks `occupied` (MissingArrayError, also a KeyError) or has the wrong dtype / shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Occ-BEV target {path} does not exist "
                                "(run datasets/prepare_occbev.py first)")
    arrays = read_npz(path, "Occ-BEV target")
    if "occupied" not in arrays:
        raise MissingArrayError(f"Occ-BEV target {path} has no 'occupied' array (has {sorted(arrays)})")
    packed = arrays["occupied"]
    packed_shape = occ3d.GRID_SHAPE[:2] + (occ3d.GRID_SHAPE[2] // 8,)
    if packed.dtype != np.uint8 or packed.shape != packed_shape:
        raise DataError(f"Occ-BEV target {path}: 'occupied' must be packed uint8 {packed_shape}, "
                        f"got {packed.dtype} {packed.shape}")
    return np.unpackbits(packed, axis=-1, count=occ3d.GRID_SHAPE[2]).astype(bool)
