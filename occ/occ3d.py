"""Occ3D-nuScenes facts, defined once: classes, the free label, the grid, the palette, the GT layout.

Everything that reads, writes, scores or draws Occ3D labels (the datasets, the synthetic world, the
metrics, the losses, the pictures, the scripts) imports these names instead of restating them.

Grid: ego frame of the key frame, x, y in [-40, 40), z in [-1, 5.4), 0.4 m voxels -> (200, 200, 16),
indexed [x, y, z]; voxel centre = index * VOXEL_SIZE + VOXEL_SIZE / 2 + GRID_MIN.

Palette: the Occ3D / FlashOcc visualisation colours (FlashOcc tools/vis_occ.py `color_map`, RGB,
alpha dropped), with free drawn white. For `other_flat` this is dark red [175, 0, 75], the colour
FlashOcc's own visualiser uses. Some SurroundOcc-derived scripts comment that row out and draw
other_flat grey [139, 137, 137] instead; the grey is not used here because it is not FlashOcc's
convention, and because a grey class would look like the grey that `occ.visualize` blends into
columns the cameras do not see.

GT layout: <data_root>/gts/<scene_name>/<sample_token>/labels.npz holding `semantics`,
`mask_lidar`, `mask_camera` (uint8 (200, 200, 16)); see `gt_path`.
"""
import os

import numpy as np

CLASS_NAMES = (
    "others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
    "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat",
    "sidewalk", "terrain", "manmade", "vegetation", "free",
)
NUM_CLASSES = len(CLASS_NAMES)  # 18, free included
FREE = CLASS_NAMES.index("free")  # 17, the last class
LAST_THING = CLASS_NAMES.index("truck")  # 0..10 are things (objects), 11..16 stuff (surfaces)

GRID_RANGE = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)  # metres, ego frame: (x0, y0, z0, x1, y1, z1)
VOXEL_SIZE = 0.4  # metres, the same along x, y and z
GRID_SHAPE = (200, 200, 16)  # cells along [x, y, z] = (GRID_MAX - GRID_MIN) / VOXEL_SIZE
GRID_MIN = np.array(GRID_RANGE[:3])  # lower corner
GRID_MAX = np.array(GRID_RANGE[3:])  # upper corner
GRID_MIN.flags.writeable = False
GRID_MAX.flags.writeable = False

# RGB per class, in CLASS_NAMES order (see the module docstring for other_flat).
PALETTE = np.array([
    [0, 0, 0],        # others
    [255, 120, 50],   # barrier
    [255, 192, 203],  # bicycle
    [255, 255, 0],    # bus
    [0, 150, 245],    # car
    [0, 255, 255],    # construction_vehicle
    [200, 180, 0],    # motorcycle
    [255, 0, 0],      # pedestrian
    [255, 240, 150],  # traffic_cone
    [135, 60, 0],     # trailer
    [160, 32, 240],   # truck
    [255, 0, 255],    # driveable_surface
    [175, 0, 75],     # other_flat
    [75, 0, 75],      # sidewalk
    [150, 240, 80],   # terrain
    [230, 230, 250],  # manmade
    [0, 175, 0],      # vegetation
    [255, 255, 255],  # free
], dtype=np.uint8)
PALETTE.flags.writeable = False

GT_DIR = "gts"  # Occ3D ground truth folder inside a nuScenes root
GT_FILE = "labels.npz"


def gt_path(data_root, scene_name, token, gt_dir=GT_DIR):
    """<data_root>/<gt_dir>/<scene_name>/<token>/labels.npz. data_root "" gives the path relative to
    the root; gt_dir "openocc_v2" (`occ.openocc.GT_DIR`) the OpenOcc v2 file, which has the same layout."""
    return os.path.join(data_root, gt_dir, scene_name, token, GT_FILE)
