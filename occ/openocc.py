"""OpenOcc v2 and OpenOccupancy facts, defined once, in the style of `occ.occ3d`.

OpenOcc v2 (occupancy + flow) uses the Occ3D grid (`occ.occ3d.GRID_SHAPE`) and file layout
(<root>/openocc_v2/<scene_name>/<token>/labels.npz, see `occ.occ3d.gt_path`) but its own class
order, with free = 16; Occ3D "others" has no OpenOcc class and becomes free.
OpenOccupancy (nuScenes-Occupancy): 0 empty, 1..16 the Occ3D classes barrier..vegetation, 255
ignored, on a 0.2 m grid of the LiDAR frame, [-51.2, 51.2]^2 x [-5, 3] -> (512, 512, 40).
"""
import numpy as np

from occ import occ3d

CLASS_NAMES = (
    "car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle",
    "pedestrian", "traffic_cone", "barrier", "driveable_surface", "other_flat", "sidewalk",
    "terrain", "manmade", "vegetation", "free",
)
FREE = CLASS_NAMES.index("free")  # 16
DYNAMIC_CLASSES = tuple(range(8))  # car ... pedestrian: the classes scored by AVE
GT_DIR = "openocc_v2"
PALETTE = occ3d.PALETTE[[occ3d.CLASS_NAMES.index(name) for name in CLASS_NAMES]]  # Occ3D colours, OpenOcc order
PALETTE.flags.writeable = False
# (18,) Occ3D label -> OpenOcc label; "others" and free -> free.
OCC3D_TO_OPENOCC = np.array(
    [FREE] + [CLASS_NAMES.index(name) for name in occ3d.CLASS_NAMES[1:occ3d.FREE]] + [FREE], dtype=np.uint8)
OCC3D_TO_OPENOCC.flags.writeable = False

OPENOCCUPANCY_CLASS_NAMES = ("empty",) + occ3d.CLASS_NAMES[1:occ3d.FREE]
OPENOCCUPANCY_IGNORE = 255
OPENOCCUPANCY_GRID_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)  # metres, LiDAR frame: (x0, y0, z0, x1, y1, z1)
OPENOCCUPANCY_GRID_MIN = np.array([-51.2, -51.2, -5.0])  # metres, LiDAR frame
OPENOCCUPANCY_VOXEL_SIZE = 0.2
OPENOCCUPANCY_GRID_SHAPE = (512, 512, 40)  # [x, y, z]
OPENOCCUPANCY_GRID_MIN.flags.writeable = False
