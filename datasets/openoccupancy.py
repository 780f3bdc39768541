"""OpenOccupancy (nuScenes-Occupancy v0.1) ground truth: where the files are and how to read them.

    <root>/nuScenes-Occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy

holds sparse rows [z, y, x, class] (any integer dtype) of the 512 x 512 x 40 grid over
[-51.2, 51.2]^2 x [-5, 3] m at 0.2 m in the key frame's LiDAR frame (docs/data.md#openoccupancy-nuscenes-occupancy).
`load_openoccupancy_gt` makes the dense grid the model and the metric use: uint8 (512, 512, 40)
indexed [x, y, z], 0 = empty (every voxel without a row), 1..16 the semantic classes, and raw class
0 (noise) -> 255 (ignored).
"""
import os

import numpy as np

from occ import openocc
from occ.errors import DataError

GT_DIR = "nuScenes-Occupancy"
NUM_CLASSES = len(openocc.OPENOCCUPANCY_CLASS_NAMES)  # 17: empty + 16


def gt_path(data_root, scene_token, lidar_token):
    """<data_root>/nuScenes-Occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy ("" = relative)."""
    return os.path.join(data_root, GT_DIR, f"scene_{scene_token}", "occupancy", f"{lidar_token}.npy")


def rows_to_grid(rows, path="rows"):
    """Sparse rows (M, 4) [z, y, x, class] -> dense uint8 (512, 512, 40) [x, y, z]; DataError naming
    `path` for a bad shape, non-integer values, an index outside the grid or a class above 16."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise DataError(f"OpenOccupancy GT {path}: expected rows of [z, y, x, class] with shape (M, 4), "
                        f"got {rows.shape}")
    if not np.issubdtype(rows.dtype, np.integer):
        if not np.issubdtype(rows.dtype, np.floating) or not np.array_equal(rows, np.round(rows)):
            raise DataError(f"OpenOccupancy GT {path}: rows of dtype {rows.dtype} are not integers")
    rows = rows.astype(np.int64)
    X, Y, Z = openocc.OPENOCCUPANCY_GRID_SHAPE
    z, y, x, cls = rows.T
    outside = (x < 0) | (x >= X) | (y < 0) | (y >= Y) | (z < 0) | (z >= Z)
    if outside.any():
        first = rows[np.argmax(outside)].tolist()
        raise DataError(f"OpenOccupancy GT {path}: {int(outside.sum())} row(s) index outside the "
                        f"{X} x {Y} x {Z} grid, e.g. [z, y, x, class] = {first}")
    bad_class = (cls < 0) | (cls >= NUM_CLASSES)
    if bad_class.any():
        raise DataError(f"OpenOccupancy GT {path}: classes must be 0 (noise) ... {NUM_CLASSES - 1}, found "
                        f"{sorted(set(cls[bad_class].tolist()))[:5]}")
    grid = np.zeros((X, Y, Z), dtype=np.uint8)
    grid[x, y, z] = np.where(cls == 0, openocc.OPENOCCUPANCY_IGNORE, cls)
    return grid


def load_openoccupancy_gt(path):
    """The dense GT grid of one .npy file (module docstring); FileNotFoundError when it is missing,
    DataError naming the file when it is unreadable or its rows are bad (`rows_to_grid`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"OpenOccupancy GT not found: {path}")
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"unreadable OpenOccupancy GT {path} ({type(error).__name__}: {error})") from error
    if not isinstance(rows, np.ndarray):
        rows.close()
        raise DataError(f"OpenOccupancy GT {path} is an .npz archive, expected one .npy array of rows")
    return rows_to_grid(rows, path)
