"""Occ3D-Waymo dataset: info records (datasets/prepare_waymo.py) -> the batch dict of datasets/nuscenes_occ.py.

One sample, N = 5 cameras (FRONT, FRONT_LEFT, FRONT_RIGHT, SIDE_LEFT, SIDE_RIGHT; 1920 x 1280 and
1920 x 886 sources, each resized by its own width to the network input):
    images, cam2ego, intrinsics, post_rot, post_tran, depth_maps   as in nuscenes_occ.py
    bda         float32 (4, 4)   BEV flips
    points      float32 (P, 5)   one sweep, vehicle frame: x, y, z, tanh(intensity), tanh(elongation)
    semantics   int64 (200, 200, 16)  Waymo classes 0..15, free stored as 23 remapped to 15
    mask_camera bool  infov AND final_voxel_state: the voxels of the loss and the metric
    mask_lidar  bool  origin_voxel_state (LiDAR-observed)
    infov       bool  inside the 5 cameras' field of view
    sample_token "<scene:03d>_<frame:03d>", scene_name "<training|validation>/<scene:03d>"
Every grid is mirrored with the BEV flips along its own axis (flip x reverses axis 0, flip y axis 1;
the original flipped `infov` along x under a y flip). Augmentation, seeding, skip_bad_samples:
as NuScenesOccDataset, which this class extends.
"""
import os

import numpy as np
import torch

from datasets import transforms
from datasets.nuscenes_occ import NuScenesOccDataset, check_mask, read_npz
from occ import waymo
from occ.errors import DataError, UsageError

GT_KEYS = ("voxel_label", "origin_voxel_state", "final_voxel_state", "infov")


def load_waymo_points(path):
    """A Waymo .bin (float32 x 6) as float32 (P, 5): x, y, z, tanh(intensity), tanh(elongation);
    FileNotFoundError / DataError naming the file when it is missing, empty, not a whole number of
    24-byte points or holds non-finite values."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"point cloud not found: {path}")
    size = os.path.getsize(path)
    point_bytes = 4 * waymo.POINT_DIMS
    if size == 0 or size % point_bytes:
        raise DataError(f"corrupt point cloud {path}: {size} bytes is not a positive multiple of {point_bytes} "
                        f"(float32 x {waymo.POINT_DIMS} per point: x, y, z, intensity, elongation, index)")
    raw = np.fromfile(path, dtype=np.float32).reshape(-1, waymo.POINT_DIMS)
    if not np.isfinite(raw[:, :5]).all():
        raise DataError(f"corrupt point cloud {path}: NaN/inf in x, y, z, intensity or elongation")
    points = raw[:, :5].copy()
    points[:, 3:5] = np.tanh(points[:, 3:5])
    return points


def load_waymo_gt(path):
    """An Occ3D-Waymo <frame>_04.npz -> {semantics int64 (0..15), mask_camera (infov AND
    final_voxel_state), mask_lidar (origin_voxel_state), infov} on the (200, 200, 16) grid.
    FileNotFoundError when missing; DataError naming the file for a missing key, a wrong shape,
    labels outside {0..14, 23} or masks that are not bool / 0-1."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"occupancy GT not found: {path}")
    arrays = read_npz(path, "Occ3D-Waymo GT")
    for key in GT_KEYS:
        if key not in arrays:
            raise DataError(f"Occ3D-Waymo GT {path} lacks '{key}' (has {sorted(arrays)})")
        if arrays[key].shape != waymo.GRID_SHAPE:
            raise DataError(f"Occ3D-Waymo GT {path}: '{key}' has shape {arrays[key].shape}, "
                            f"expected {waymo.GRID_SHAPE}")
    label = arrays["voxel_label"]
    if not np.issubdtype(label.dtype, np.integer):
        raise DataError(f"Occ3D-Waymo GT {path}: 'voxel_label' has dtype {label.dtype}, expected integer labels")
    bad = ~np.isin(label, waymo.STORED_LABELS)
    if bad.any():
        raise DataError(f"Occ3D-Waymo GT {path}: 'voxel_label' holds labels outside {{0..14, 23}}: "
                        f"{sorted(np.unique(label[bad]).tolist())[:10]}")
    for key in GT_KEYS[1:]:
        check_mask(path, key, arrays[key])
    infov = arrays["infov"].astype(bool)
    return {"semantics": waymo.remap_labels(label).astype(np.int64),
            "mask_camera": infov & arrays["final_voxel_state"].astype(bool),
            "mask_lidar": arrays["origin_voxel_state"].astype(bool), "infov": infov}


class WaymoOccDataset(NuScenesOccDataset):
    """Frames of an Occ3D-Waymo info file (datasets/prepare_waymo.py) as sample dicts (module
    docstring). Same options as NuScenesOccDataset; num_sweeps is ignored (one sweep)."""

    def gt_path(self, info):
        return waymo.gt_path(self.data_root, info["split"], info["scene"], info["frame"])

    def load_sample(self, index):
        info = self.infos[index]
        rng = self.sample_rng(index)
        sample = {"sample_token": info["token"], "scene_name": info["scene_name"]}
        points = None
        if self.load_points or self.load_depth:
            points = load_waymo_points(os.path.join(self.data_root, info["lidar_path"]))
        if self.load_images or self.load_depth:
            if len(info["cams"]) != waymo.NUM_CAMERAS:
                raise UsageError(f"frame {info['token']} ({info['scene_name']}) has {len(info['cams'])} cameras, "
                                 f"expected {waymo.NUM_CAMERAS} ({', '.join(waymo.CAMERA_NAMES)})")
            sample.update(self.load_cameras(info, points, rng))
        flip_x, flip_y = self.bev_augment(sample, points, rng)
        if self.load_gt:
            for key, grid in load_waymo_gt(self.gt_path(info)).items():
                sample[key] = torch.from_numpy(transforms.flip_grid(grid, flip_x, flip_y))
        return sample
