"""Occ3D-Waymo facts, defined once, in the style of `occ.occ3d`: classes, free, grid, cameras, file layout.

Grid: the Occ3D grid (`occ.occ3d`): vehicle frame, x, y in [-40, 40), z in [-1, 5.4), 0.4 m voxels
-> (200, 200, 16), indexed [x, y, z].
Classes: 15 semantic classes 0..14 and free. The ground-truth files store free as 23
(`STORED_FREE`); the loader remaps it to 15 (`FREE`), so the network has 16 outputs.
Files (docs/data.md#occ3d-waymo):
  <root>/training/velodyne/<image_idx:07d>.bin          float32 (P, 6) x, y, z, intensity, elongation,
                                                         range-image index; vehicle frame
  <root>/training/image_<cam>/<image_idx:07d>.jpg        cam = 0..4 (`CAMERA_NAMES` order)
  <root>/voxel04/<split dir>/<scene:03d>/<frame:03d>_04.npz   voxel_label, origin_voxel_state,
                                                         final_voxel_state, infov
  image_idx = prefix * 1e6 + scene * 1000 + frame, prefix 0 training, 1 validation (validation
  sensor files also lie under training/).
"""
import os

import numpy as np

from occ import occ3d

CLASS_NAMES = (
    "GENERALOBJECT", "VEHICLE", "BICYCLIST", "PEDESTRIAN", "SIGN", "TRAFFIC_LIGHT", "POLE",
    "CONSTRUCTION_CONE", "BICYCLE", "MOTORCYCLE", "BUILDING", "VEGETATION", "TREE_TRUNK", "ROAD",
    "WALKABLE", "FREE",
)
NUM_CLASSES = len(CLASS_NAMES)  # 16, free included
FREE = CLASS_NAMES.index("FREE")  # 15, the last class (what the network predicts for free)
STORED_FREE = 23  # free as stored in voxel_label
STORED_LABELS = tuple(range(FREE)) + (STORED_FREE,)  # the values a voxel_label may hold

# The published OHEM cross-entropy class weights, classes 0..15 (free last).
CLASS_WEIGHTS = (21.997, 7.504, 10.598, 12.181, 15.144, 13.036, 9.861, 13.644, 15.121, 21.997, 6.202,
                 5.742, 9.769, 3.461, 4.152, 1.0)
OHEM_TOP_RATIO = 0.2  # the hardest 20 % of the voxel losses ...
OHEM_TOP_WEIGHT = 4.0  # ... added with this weight

GRID_RANGE = occ3d.GRID_RANGE  # the 0.4 m Occ3D-Waymo grid is the Occ3D-nuScenes one
VOXEL_SIZE = occ3d.VOXEL_SIZE
GRID_SHAPE = occ3d.GRID_SHAPE
GRID_MIN = occ3d.GRID_MIN

# Cameras in image_0 .. image_4 order, with their source image sizes (W, H).
CAMERA_NAMES = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")
NUM_CAMERAS = len(CAMERA_NAMES)
IMAGE_SIZES = {"FRONT": (1920, 1280), "FRONT_LEFT": (1920, 1280), "FRONT_RIGHT": (1920, 1280),
               "SIDE_LEFT": (1920, 886), "SIDE_RIGHT": (1920, 886)}
POINT_DIMS = 6  # x, y, z, intensity, elongation, range-image index in the .bin files

SPLIT_DIRS = {"train": "training", "val": "validation"}  # GT folder of each split
SPLIT_PREFIX = {"train": 0, "val": 1}  # the first digit of image_idx
GT_DIR = "voxel04"

# RGB per class, CLASS_NAMES order (free drawn white), for pictures.
PALETTE = np.array([
    [0, 0, 0], [0, 150, 245], [255, 192, 203], [255, 0, 0], [255, 240, 150], [255, 120, 50],
    [200, 180, 0], [255, 170, 60], [220, 110, 160], [160, 32, 240], [230, 230, 250], [0, 175, 0],
    [135, 60, 0], [255, 0, 255], [75, 0, 75], [255, 255, 255]], dtype=np.uint8)
PALETTE.flags.writeable = False

# (256,) stored label -> network label: 0..14 kept, 23 -> 15; every other value maps to 255 (invalid).
STORED_TO_LABEL = np.full(256, 255, dtype=np.uint8)
STORED_TO_LABEL[list(range(FREE))] = np.arange(FREE)
STORED_TO_LABEL[STORED_FREE] = FREE
STORED_TO_LABEL.flags.writeable = False


def image_idx(split, scene, frame):
    """The KITTI-format file index of frame `frame` of scene `scene` of split "train" / "val"."""
    return SPLIT_PREFIX[split] * 1000000 + scene * 1000 + frame


def gt_path(data_root, split, scene, frame):
    """<data_root>/voxel04/<training|validation>/<scene:03d>/<frame:03d>_04.npz ("" root: relative)."""
    return os.path.join(data_root, GT_DIR, SPLIT_DIRS[split], f"{scene:03d}", f"{frame:03d}_04.npz")


def lidar_path(image_index):
    return os.path.join("training", "velodyne", f"{image_index:07d}.bin")


def image_path(camera, image_index):
    """Path of camera `camera` (0..4) of a frame, relative to the root."""
    return os.path.join("training", f"image_{camera}", f"{image_index:07d}.jpg")


def remap_labels(voxel_label):
    """Stored labels (0..14, 23) -> network labels (0..15) as uint8; the caller checks the values."""
    return STORED_TO_LABEL[np.asarray(voxel_label, dtype=np.uint8)]
