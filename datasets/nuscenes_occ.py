"""Occ3D-nuScenes dataset: info records (datasets/prepare_nuscenes.py) -> tensors, and the collate.

One sample (the batch dict of the project without its batch axis), N cameras, input H x W:
    images      float32 (N, 3, H, W)  RGB, ImageNet-normalised, augmented
    cam2ego     float32 (N, 4, 4)     camera -> KEY-FRAME ego frame (the LiDAR's ego pose):
                                      inv(key ego2global) @ camera ego2global @ camera calibration,
                                      un-augmented
    intrinsics  float32 (N, 3, 3)
    post_rot    float32 (N, 3, 3), post_tran float32 (N, 3): [u', v'] = post_rot[:2, :2] @ [u, v]
                                      + post_tran[:2]
    bda         float32 (4, 4)        BEV flips, applied after cam2ego
    points      float32 (P, 5)        x, y, z, intensity, time_lag in the augmented ego frame: the
                                      key frame (time_lag 0) + the sweeps, whose points with
                                      |x|, |y| < 1 m in their own sensor frame (the ego body) are
                                      dropped (SPEC 1.1)
    depth_maps  float32 (N, H, W)     nearest LiDAR depth per input pixel, 0 = none, in [1, 45) m
    semantics   int64 (200, 200, 16), mask_camera, mask_lidar bool (200, 200, 16),
    flow        float32 (200, 200, 16, 2) when the GT file has it; all indexed [x, y, z], flipped
    sample_token, scene_name  str
Camera keys are present when images or depth maps are loaded, GT keys when load_gt is set.
"""
import logging
import os
import pickle

import numpy as np
import torch

from datasets import transforms
from occ.geometry import bda_matrix, invert_transform

logger = logging.getLogger(__name__)

INFO_KEYS = ["token", "scene_name", "scene_token", "timestamp", "prev", "next", "lidar_path",
             "lidar_token", "lidar2ego", "ego2global", "sweeps", "cams", "boxes", "occ_path"]
GRID_SHAPE = (200, 200, 16)


def load_infos(path):
    """The list of info records of an info file, after checking its layout (clear errors)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"info file not found: {path} (run datasets/prepare_nuscenes.py)")
    with open(path, "rb") as f:
        data = pickle.load(f)
    if not isinstance(data, dict) or "infos" not in data:
        raise ValueError(f"bad info file {path}: expected a dict with 'version', 'split', 'infos'")
    for index, info in enumerate(data["infos"]):
        missing = [key for key in INFO_KEYS if key not in info]
        if missing:
            raise ValueError(f"bad info file {path}: record {index} lacks {missing}")
    return data["infos"]


def load_occ_gt(path):
    """Occ3D / OpenOcc labels.npz -> {semantics int64, mask_camera bool, mask_lidar bool[, flow
    float32 (..., 2)]}; raises naming the file when it is missing or malformed. Semantics are
    returned as stored: Occ3D classes (17 = free) or, for OpenOcc v2 files, the OpenOcc order
    (16 = free, SPEC 7)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"occupancy GT not found: {path}")
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"unreadable occupancy GT {path}: {error}") from error
    gt = {}
    for key in ["semantics", "mask_camera", "mask_lidar"]:
        if key not in arrays:
            raise ValueError(f"occupancy GT {path} lacks '{key}' (has {sorted(arrays)})")
        if arrays[key].shape != GRID_SHAPE:
            raise ValueError(f"occupancy GT {path}: '{key}' has shape {arrays[key].shape}, expected {GRID_SHAPE}")
    gt["semantics"] = arrays["semantics"].astype(np.int64)
    gt["mask_camera"] = arrays["mask_camera"].astype(bool)
    gt["mask_lidar"] = arrays["mask_lidar"].astype(bool)
    if "flow" in arrays:
        if arrays["flow"].shape != GRID_SHAPE + (2,):
            raise ValueError(f"occupancy GT {path}: 'flow' has shape {arrays['flow'].shape}, expected {GRID_SHAPE + (2,)}")
        gt["flow"] = arrays["flow"].astype(np.float32)
    return gt


class NuScenesOccDataset(torch.utils.data.Dataset):
    """Key frames of an info file as sample dicts (module docstring).

    train: random image augmentation, BEV flips (when bev_flip) and a random choice of
    `num_sweeps` sweeps; otherwise deterministic: no augmentation, the `num_sweeps` nearest sweeps.
    Image size and camera count come from the data; resize = image_size W / source W.
    skip_bad_samples: a sample whose files are missing or corrupt is logged (logging.warning naming
    the file) and replaced by the next one; `num_skipped` counts them (per process: each DataLoader
    worker holds its own copy). Otherwise the error propagates.
    """

    def __init__(self, data_root, info_path, train, image_size=(256, 704), num_sweeps=9,
                 load_points=True, load_depth=True, load_images=True, load_gt=True,
                 occ_gt_dir="gts", bev_flip=True, image_aug=transforms.IMAGE_AUG_DEFAULTS,
                 skip_bad_samples=False):
        unknown = set(image_aug) - set(transforms.IMAGE_AUG_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown image_aug keys {sorted(unknown)}; "
                             f"expected {sorted(transforms.IMAGE_AUG_DEFAULTS)}")
        if num_sweeps < 0:
            raise ValueError(f"num_sweeps must be >= 0, got {num_sweeps}")
        self.data_root = data_root
        self.infos = load_infos(info_path)
        self.train = train
        self.image_height, self.image_width = image_size
        self.num_sweeps = num_sweeps
        self.load_points = load_points
        self.load_depth = load_depth
        self.load_images = load_images
        self.load_gt = load_gt
        self.occ_gt_dir = occ_gt_dir
        self.bev_flip = bev_flip
        self.image_aug = {**transforms.IMAGE_AUG_DEFAULTS, **image_aug}
        self.skip_bad_samples = skip_bad_samples
        self.num_skipped = 0

    def __len__(self):
        return len(self.infos)

    def __getitem__(self, index):
        if not self.skip_bad_samples:
            return self.load_sample(index)
        for offset in range(len(self.infos)):
            current = (index + offset) % len(self.infos)
            try:
                return self.load_sample(current)
            except (OSError, ValueError) as error:
                self.num_skipped += 1
                logger.warning("skipping bad sample %d (%s): %s [%d skipped so far]",
                               current, self.infos[current]["token"], error, self.num_skipped)
        raise RuntimeError(f"every sample of the dataset is bad ({len(self.infos)} tried)")

    def gt_path(self, info):
        return os.path.join(self.data_root, self.occ_gt_dir, info["scene_name"], info["token"], "labels.npz")

    def load_sample(self, index):
        info = self.infos[index]
        # Train draws from torch's generator, which DataLoader seeds differently per worker.
        rng = np.random.default_rng(int(torch.randint(2**31, ()))) if self.train else None
        sample = {"sample_token": info["token"], "scene_name": info["scene_name"]}

        points = None
        if self.load_points or self.load_depth:
            sweeps = transforms.choose_sweeps(len(info["sweeps"]), self.num_sweeps, rng)
            points = transforms.load_multisweep_points(self.data_root, info, sweeps)

        if self.load_images or self.load_depth:
            sample.update(self.load_cameras(info, points, rng))

        flip_x = flip_y = False
        if self.train and self.bev_flip:
            flip_x, flip_y = bool(rng.uniform() < 0.5), bool(rng.uniform() < 0.5)
        bda = bda_matrix(flip_x, flip_y)
        sample["bda"] = torch.from_numpy(bda.astype(np.float32))
        if self.load_points:
            points[:, :3] = transforms.transform_xyz(points, bda)
            sample["points"] = torch.from_numpy(points)
        if self.load_gt:
            gt = load_occ_gt(self.gt_path(info))
            for key, grid in gt.items():
                flipped = transforms.flip_flow(grid, flip_x, flip_y) if key == "flow" else \
                    transforms.flip_grid(grid, flip_x, flip_y)
                sample[key] = torch.from_numpy(flipped)
        return sample

    def load_cameras(self, info, points_ego, rng):
        """Per-camera geometry, augmented images and depth maps of one key frame."""
        if not info["cams"]:
            raise ValueError(f"sample {info['token']} ({info['scene_name']}) has no cameras; "
                             f"use load_images=False, load_depth=False for LiDAR-only data")
        global2keyego = invert_transform(info["ego2global"])
        height, width = self.image_height, self.image_width
        geometry = {"cam2ego": [], "intrinsics": [], "post_rot": [], "post_tran": []}
        images = []
        for cam in info["cams"].values():
            path = os.path.join(self.data_root, cam["path"])
            src_width, src_height = transforms.image_size(path)
            post_rot, post_tran = transforms.sample_image_aug(src_width, src_height, width, height, rng,
                                                              self.image_aug)
            cam2ego = global2keyego @ cam["ego2global"] @ cam["cam2ego"]
            geometry["cam2ego"].append(cam2ego)
            geometry["intrinsics"].append(cam["intrinsics"])
            geometry["post_rot"].append(post_rot)
            geometry["post_tran"].append(post_tran)
            if self.load_images:
                image = transforms.load_image(path, post_rot, post_tran, width, height)
                images.append(transforms.normalize_image(image))
        if self.load_depth:
            depth_maps = transforms.lidar_depth_maps(points_ego, geometry["cam2ego"], geometry["intrinsics"],
                                                     geometry["post_rot"], geometry["post_tran"], height, width)
        out = {key: torch.from_numpy(np.stack(values).astype(np.float32)) for key, values in geometry.items()}
        if self.load_images:
            out["images"] = torch.from_numpy(np.stack(images))
        if self.load_depth:
            out["depth_maps"] = torch.from_numpy(depth_maps)
        return out


def collate(samples):
    """List of sample dicts -> batch dict: tensors stacked on a new batch axis, `points` kept as a
    list (variable point counts), strings as lists. Every sample must have the same keys."""
    keys = samples[0].keys()
    for sample in samples[1:]:
        if sample.keys() != keys:
            raise ValueError(f"cannot batch samples with different keys: {sorted(keys)} vs {sorted(sample.keys())} "
                             f"(sample {sample['sample_token']})")
    batch = {}
    for key in keys:
        values = [sample[key] for sample in samples]
        if key == "points" or isinstance(values[0], str):
            batch[key] = values
        else:
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot batch '{key}' of different shapes {sorted(shapes)} "
                                 f"(different camera counts or image sizes?)")
            batch[key] = torch.stack(values)
    return batch
