"""Occ3D-nuScenes dataset: info records (datasets/prepare_nuscenes.py) -> tensors, and the collate.

One sample (the batch dict of the project without its batch axis), N cameras, input H x W:
    images      float32 (N, 3, H, W)  RGB (BGR with color_order "bgr"), ImageNet-normalised, augmented
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
                                      dropped (docs/data.md#points-and-sweeps)
    depth_maps  float32 (N, H, W)     nearest LiDAR depth per input pixel, 0 = none, in [1, max_depth) m
                                      (the key frame alone when points are not loaded)
    semantics   int64 (200, 200, 16), mask_camera, mask_lidar bool (200, 200, 16),
    flow        float32 (200, 200, 16, 2) when the GT file has it; all indexed [x, y, z], flipped
                benchmark "openoccupancy": semantics int64 (512, 512, 40) only (0 empty, 1..16, 255
                ignored), and points, cam2ego and the grid in the key frame's LIDAR frame, not its ego frame
    gt_boxes    float32 (M, 9), gt_labels int64 (M,)   with load_boxes (detection): the info record's
                                      boxes of the 10 detection classes that hold LiDAR points, x, y, z,
                                      l, w, h, yaw, vx, vy in the augmented ego frame (occ/detection.py)
    sample_token, scene_name  str
    num_skipped int64 ()              only with skip_bad_samples: bad samples skipped to produce this one
Camera keys are present when images or depth maps are loaded, GT keys when load_gt is set.
`points`, `gt_boxes` and `gt_labels` collate to lists (their lengths vary).
Train-mode augmentation depends only on (seed, epoch, sample index) (NuScenesOccDataset).
Info files are read with a restricted unpickler: plain data and numpy arrays only, never code.
"""
import logging
import operator
import os
import pickle
import zipfile
import zlib

import numpy as np
import torch

from datasets import openoccupancy, transforms
from occ import occ3d, openocc
from occ.detection import boxes_from_info
from occ.errors import DataError, UsageError
from occ.geometry import bda_matrix, invert_transform

logger = logging.getLogger(__name__)

INFO_KEYS = ["token", "scene_name", "scene_token", "timestamp", "prev", "next", "lidar_path",
             "lidar_token", "lidar2ego", "ego2global", "sweeps", "cams", "boxes", "occ_path"]


# The globals an info file may name: what pickle needs for plain containers (sets, bytearrays and
# complex numbers are pickled through their constructor; protocols 0-2 write `__builtin__` and
# encode bytes with `_codecs.encode`) and what numpy 1.x / 2.x need for arrays, dtypes and scalars.
SAFE_PICKLE_GLOBALS = frozenset(
    [(module, name) for module in ("builtins", "__builtin__")
     for name in ("set", "frozenset", "bytearray", "complex")]
    + [("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")]
    + [(f"numpy.{core}.{module}", name) for core in ("core", "_core")
       for module, name in [("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")]])


class InfoUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, numbers, strings, bytes and numpy arrays /
    scalars: an info file is data and never runs code (any other global -> DataError naming it)."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise DataError(f"info file {self.path} tries to load '{module}.{name}'; info files may hold only "
                            f"plain containers, numbers, strings and numpy arrays")
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as error:  # e.g. a numpy 2 pickle read by numpy 1.x
            raise DataError(f"info file {self.path} needs '{module}.{name}', which numpy "
                            f"{np.__version__} lacks ({error}); re-run datasets/prepare_nuscenes.py") from error

    def persistent_load(self, pid):
        raise DataError(f"info file {self.path} holds a persistent id; info files may hold only plain "
                        f"containers, numbers, strings and numpy arrays")


def load_info_file(path):
    """The object stored in an info file, read by `InfoUnpickler` (no code runs); DataError naming
    the file when it is empty, truncated, not a pickle or names a forbidden global."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"info file not found: {path} (run datasets/prepare_nuscenes.py)")
    if os.path.getsize(path) == 0:
        raise DataError(f"info file {path} is empty (0 bytes); re-run datasets/prepare_nuscenes.py")
    try:
        with open(path, "rb") as f:
            return InfoUnpickler(f, path).load()
    except DataError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            OverflowError) as error:
        raise DataError(f"corrupt info file {path} ({type(error).__name__}: {error}); "
                        f"re-run datasets/prepare_nuscenes.py") from error


def load_infos(path):
    """The list of info records of an info file, after checking its layout (DataError naming the
    file; FileNotFoundError when it is missing). The file is read by `load_info_file`: it may hold
    only plain data, never code."""
    data = load_info_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("infos"), list):
        raise DataError(f"bad info file {path}: expected a dict with 'version', 'split' and an 'infos' list")
    if not data["infos"]:
        raise DataError(f"info file {path} holds no samples")
    for index, info in enumerate(data["infos"]):
        if not isinstance(info, dict):
            raise DataError(f"bad info file {path}: record {index} is a {type(info).__name__}, not a dict")
        missing = [key for key in INFO_KEYS if key not in info]
        if missing:
            raise DataError(f"bad info file {path}: record {index} lacks {missing}")
    return data["infos"]


# What np.load and reading the members of an .npz raise for an empty, truncated or corrupt file.
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def read_npz(path, what):
    """{name: array} of an .npz archive, every array read; DataError naming the file (as `what`)
    when it is empty, truncated, corrupt, pickled or a single .npy array."""
    try:
        with open(path, "rb") as f:
            loaded = np.load(f)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise DataError(f"{what} {path} is a single .npy array, not an .npz archive")
            with loaded:
                return {key: loaded[key] for key in loaded.files}
    except (DataError, FileNotFoundError):
        raise
    except NPZ_ERRORS as error:
        raise DataError(f"unreadable {what} {path} ({type(error).__name__}: {error})") from error


def check_mask(path, key, mask):
    """DataError naming the file unless `mask` is bool or integers 0 / 1."""
    if mask.dtype == bool:
        return
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"occupancy GT {path}: '{key}' has dtype {mask.dtype}, expected bool or 0/1 integers")
    if int(mask.min()) < 0 or int(mask.max()) > 1:
        raise DataError(f"occupancy GT {path}: '{key}' holds values other than 0 and 1 "
                        f"(min {mask.min()}, max {mask.max()})")


def load_occ_gt(path):
    """Occ3D / OpenOcc labels.npz -> {semantics int64, mask_camera bool, mask_lidar bool[, flow
    float32 (..., 2)]}. FileNotFoundError when it is missing, DataError naming the file when it is
    unreadable (empty, truncated, corrupt), lacks a key, has a wrong shape, non-integer semantics
    or labels out of range, or masks that are not bool / 0-1 integers. Semantics are returned as
    stored: Occ3D classes (0..17, 17 = free) or, for OpenOcc v2 files (the ones with `flow`), the
    OpenOcc order (0..16, 16 = free, docs/data.md#openocc-v2-occupancy-and-flow), whose masks may
    be absent (then all True)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"occupancy GT not found: {path}")
    arrays = read_npz(path, "occupancy GT")
    grid = occ3d.GRID_SHAPE
    if "flow" in arrays:  # OpenOcc v2: the masks are optional (the benchmark uses none), all True when absent
        for key in ["mask_camera", "mask_lidar"]:
            arrays.setdefault(key, np.ones(grid, dtype=bool))
    for key in ["semantics", "mask_camera", "mask_lidar"]:
        if key not in arrays:
            raise DataError(f"occupancy GT {path} lacks '{key}' (has {sorted(arrays)})")
        if arrays[key].shape != grid:
            raise DataError(f"occupancy GT {path}: '{key}' has shape {arrays[key].shape}, expected {grid}")
    semantics = arrays["semantics"]
    if not np.issubdtype(semantics.dtype, np.integer):
        raise DataError(f"occupancy GT {path}: 'semantics' has dtype {semantics.dtype}, expected integer labels")
    kind, free = ("OpenOcc v2", openocc.FREE) if "flow" in arrays else ("Occ3D", occ3d.FREE)
    if int(semantics.min()) < 0 or int(semantics.max()) > free:
        raise DataError(f"occupancy GT {path}: 'semantics' holds labels outside [0, {free}] ({kind}): "
                        f"min {semantics.min()}, max {semantics.max()}")
    check_mask(path, "mask_camera", arrays["mask_camera"])
    check_mask(path, "mask_lidar", arrays["mask_lidar"])
    gt = {"semantics": semantics.astype(np.int64),
          "mask_camera": arrays["mask_camera"].astype(bool),
          "mask_lidar": arrays["mask_lidar"].astype(bool)}
    if "flow" in arrays:
        flow = arrays["flow"]
        if flow.shape != grid + (2,):
            raise DataError(f"occupancy GT {path}: 'flow' has shape {flow.shape}, expected {grid + (2,)}")
        if not np.issubdtype(flow.dtype, np.floating):
            raise DataError(f"occupancy GT {path}: 'flow' has dtype {flow.dtype}, expected float")
        gt["flow"] = flow.astype(np.float32)
    return gt


# What a bad sample raises (DataError is a ValueError; PIL's UnidentifiedImageError an OSError).
SKIPPABLE_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def check_seed(what, value):
    """`value` as an int >= 0 (a seed or an epoch of `numpy.random.default_rng`), else UsageError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UsageError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


class NuScenesOccDataset(torch.utils.data.Dataset):
    """Key frames of an info file as sample dicts (module docstring).

    train: random image augmentation, BEV flips (when bev_flip) and a random choice of
    `num_sweeps` sweeps; otherwise deterministic: no augmentation, the `num_sweeps` nearest sweeps.
    Image size and camera count come from the data; resize = image_size W / source W.
    color_order "bgr" feeds the channels in BGR order, as the official checkpoints expect
    (`transforms.normalize_image`).

    Reproducible augmentation: every random draw of train sample `index` (sweep choice, image
    augmentation of each camera, BEV flips) comes from one generator,
    `numpy.random.default_rng([seed, epoch, index])` (`sample_rng`), never from a global RNG
    (the global torch / numpy / random states are neither read nor advanced). Sample `index` of
    epoch `epoch` is therefore the same in any process, with any number of DataLoader workers, in
    any request order, and in a resumed run. `set_epoch(epoch)`: the training loop calls it before
    each epoch (the epoch starts at 0); with DataLoader workers it must be called before the
    loader's iterator is created, which is what happens when it is called before
    `for batch in loader` (the workers take a copy of the dataset when the iteration starts, so
    with persistent_workers=True a later set_epoch does not reach them).

    skip_bad_samples: a sample whose files are missing or corrupt (FileNotFoundError / OSError,
    DataError, a corrupt .npz or an undecodable image) is logged (logging.warning naming the file
    and the error) and replaced by the next sample that loads, drawn with that sample's own
    generator. Every sample then carries `num_skipped`, an int64 scalar tensor: the number of bad
    samples skipped to produce it (usually 0). It survives DataLoader workers and collates to a
    (B,) tensor; the training loop sums batch["num_skipped"] and removes the key before the model.
    `self.num_skipped` also counts skips, but only those of this process (each worker holds its own
    copy). Configuration errors (UsageError, e.g. cameras asked of LiDAR-only data) are never
    skipped. Without skip_bad_samples every error propagates.
    """

    def __init__(self, data_root, info_path, train, image_size=(256, 704), num_sweeps=9,
                 load_points=True, load_depth=True, load_images=True, load_gt=True,
                 occ_gt_dir=occ3d.GT_DIR, bev_flip=True, image_aug=transforms.IMAGE_AUG_DEFAULTS,
                 skip_bad_samples=False, seed=0, color_order="rgb", max_depth=45.0, require_flow=False,
                 load_boxes=False, benchmark="occ3d"):
        unknown = set(image_aug) - set(transforms.IMAGE_AUG_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown image_aug keys {sorted(unknown)}; "
                             f"expected {sorted(transforms.IMAGE_AUG_DEFAULTS)}")
        if num_sweeps < 0:
            raise ValueError(f"num_sweeps must be >= 0, got {num_sweeps}")
        if color_order not in transforms.COLOR_SOURCE_CHANNELS:
            raise UsageError(f"color_order must be one of {tuple(transforms.COLOR_SOURCE_CHANNELS)}, "
                             f"got {color_order!r}")
        self.seed = check_seed("seed", seed)
        self.epoch = 0
        self.data_root = data_root
        self.info_path = info_path
        self.infos = load_infos(info_path)
        self.train = train
        self.image_height, self.image_width = image_size
        self.num_sweeps = num_sweeps
        self.load_points = load_points
        self.load_depth = load_depth
        self.max_depth = max_depth  # depth maps keep LiDAR depths in [1, max_depth)
        self.load_images = load_images
        self.load_gt = load_gt
        self.occ_gt_dir = occ_gt_dir
        self.bev_flip = bev_flip
        self.image_aug = {**transforms.IMAGE_AUG_DEFAULTS, **image_aug}
        self.skip_bad_samples = skip_bad_samples
        self.num_skipped = 0
        self.color_order = color_order  # "rgb" | "bgr" (transforms.normalize_image)
        self.require_flow = require_flow  # OpenOcc: a GT file without `flow` is an error
        # "openoccupancy": its dense GT (datasets/openoccupancy.py), and points, cameras and grid in the
        # key frame's LiDAR frame instead of its ego frame
        self.lidar_frame = benchmark == "openoccupancy"
        self.load_boxes = load_boxes  # detection: gt_boxes, gt_labels from the info record

    def __len__(self):
        return len(self.infos)

    def set_epoch(self, epoch):
        """Use the augmentation of epoch `epoch` (an int >= 0) from now on. The training loop calls
        it before each epoch; with DataLoader workers it must be called before the loader's
        iterator is created, which is what happens when it is called before `for batch in loader`."""
        self.epoch = check_seed("epoch", epoch)

    def sample_rng(self, index):
        """The generator of every random draw of sample `index` (train mode):
        numpy.random.default_rng([seed, epoch, index]); None in test mode (no randomness)."""
        return np.random.default_rng([self.seed, self.epoch, index]) if self.train else None

    def __getitem__(self, index):
        index = operator.index(index)
        if index < 0:
            index += len(self.infos)
        if not 0 <= index < len(self.infos):
            raise IndexError(f"sample index {index} out of range for {len(self.infos)} samples")
        if not self.skip_bad_samples:
            return self.load_sample(index)
        error = None
        for offset in range(len(self.infos)):
            current = (index + offset) % len(self.infos)
            try:
                sample = self.load_sample(current)
            except UsageError as usage_error:
                if not isinstance(usage_error, DataError):
                    raise  # a configuration error, not a bad sample
                error = usage_error
            except SKIPPABLE_ERRORS as bad_sample_error:
                error = bad_sample_error
            else:
                sample["num_skipped"] = torch.tensor(offset, dtype=torch.int64)
                return sample
            self.num_skipped += 1
            logger.warning("skipping bad sample %d (%s): %s: %s [%d skipped so far in this process]",
                           current, self.infos[current]["token"], type(error).__name__, error, self.num_skipped)
        raise DataError(f"every sample of {self.info_path} is bad ({len(self.infos)} tried); the last: {error}")

    def gt_path(self, info):
        if self.lidar_frame:
            return openoccupancy.gt_path(self.data_root, info["scene_token"], info["lidar_token"])
        return occ3d.gt_path(self.data_root, info["scene_name"], info["token"], self.occ_gt_dir)

    def ego2frame(self, info):
        """Key-frame ego frame -> the frame of points, cameras and grid: identity, or ego -> LiDAR."""
        return invert_transform(info["lidar2ego"]) if self.lidar_frame else np.eye(4)

    def load_sample(self, index):
        """Sample `index`, every random draw from `sample_rng(index)`; errors propagate."""
        info = self.infos[index]
        rng = self.sample_rng(index)
        sample = {"sample_token": info["token"], "scene_name": info["scene_name"]}

        points = None
        if self.load_points or self.load_depth:
            # points read only for depth maps (camera models with depth supervision): the key frame alone
            sweeps = transforms.choose_sweeps(len(info["sweeps"]), self.num_sweeps, rng) if self.load_points else []
            points = transforms.load_multisweep_points(self.data_root, info, sweeps)
            if self.lidar_frame:
                points[:, :3] = transforms.transform_xyz(points, self.ego2frame(info))

        if self.load_images or self.load_depth:
            sample.update(self.load_cameras(info, points, rng))

        flip_x, flip_y = self.bev_augment(sample, points, rng)
        if self.load_gt and self.lidar_frame:
            semantics = openoccupancy.load_openoccupancy_gt(self.gt_path(info))
            sample["semantics"] = torch.from_numpy(transforms.flip_grid(semantics, flip_x, flip_y).astype(np.int64))
        elif self.load_gt:
            gt = load_occ_gt(self.gt_path(info))
            if self.require_flow and "flow" not in gt:
                raise DataError(f"occupancy GT {self.gt_path(info)} has no 'flow': the OpenOcc benchmark needs "
                                f"OpenOcc v2 labels (data.occ_gt_dir = '{openocc.GT_DIR}')")
            for key, grid in gt.items():
                flipped = transforms.flip_flow(grid, flip_x, flip_y) if key == "flow" else \
                    transforms.flip_grid(grid, flip_x, flip_y)
                sample[key] = torch.from_numpy(flipped)
        if self.load_boxes:
            boxes, labels = boxes_from_info(info["boxes"])
            sample["gt_boxes"] = torch.from_numpy(transforms.transform_boxes(boxes, bda_matrix(flip_x, flip_y)))
            sample["gt_labels"] = torch.from_numpy(labels)
        return sample

    def bev_augment(self, sample, points, rng):
        """Draws the BEV flips of a training sample (none otherwise), puts their matrix in
        sample["bda"] and, when points are loaded, the flipped points in sample["points"];
        returns (flip_x, flip_y) for the ground truth."""
        flip_x = flip_y = False
        if self.train and self.bev_flip:
            flip_x, flip_y = bool(rng.uniform() < 0.5), bool(rng.uniform() < 0.5)
        bda = bda_matrix(flip_x, flip_y)
        sample["bda"] = torch.from_numpy(bda.astype(np.float32))
        if self.load_points:
            points[:, :3] = transforms.transform_xyz(points, bda)
            sample["points"] = torch.from_numpy(points)
        return flip_x, flip_y

    def load_cameras(self, info, points_ego, rng):
        """Per-camera geometry, augmented images and depth maps of one key frame."""
        if not info["cams"]:
            raise UsageError(f"sample {info['token']} ({info['scene_name']}) has no cameras; "
                             f"use load_images=False, load_depth=False for LiDAR-only data")
        global2keyego = self.ego2frame(info) @ invert_transform(info["ego2global"])
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
                images.append(transforms.normalize_image(image, self.color_order))
        if self.load_depth:
            depth_maps = transforms.lidar_depth_maps(points_ego, geometry["cam2ego"], geometry["intrinsics"],
                                                     geometry["post_rot"], geometry["post_tran"], height, width,
                                                     max_depth=self.max_depth)
        out = {key: torch.from_numpy(np.stack(values).astype(np.float32)) for key, values in geometry.items()}
        if self.load_images:
            out["images"] = torch.from_numpy(np.stack(images))
        if self.load_depth:
            out["depth_maps"] = torch.from_numpy(depth_maps)
        return out


LIST_KEYS = ("points", "gt_boxes", "gt_labels")  # per-sample lengths vary: collated to lists


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
        if key in LIST_KEYS or isinstance(values[0], str):
            batch[key] = values
        else:
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot batch '{key}' of different shapes {sorted(shapes)} "
                                 f"(different camera counts or image sizes?)")
            batch[key] = torch.stack(values)
    return batch
