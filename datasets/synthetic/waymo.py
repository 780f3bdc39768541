"""The synthetic world seen through a Waymo-like rig, written in the Occ3D-Waymo layout.

The same procedural scenes as the nuScenes-format world (world.py, raycast.py, lidar.py,
camera.py, occupancy.py); only the rig, the classes and the files differ (docs/data.md#occ3d-waymo):
  - frames at 10 Hz (0.1 s); per frame one LiDAR sweep and the 5 cameras, all at the frame's time
    and ego pose (no per-camera exposure offset);
  - LiDAR: the 32-beam scanner of lidar.py, mounted on the roof at `LIDAR_TRANSLATION` with no
    rotation; its points are written in the vehicle frame as float32 x 6: x, y, z, intensity
    (reflectivity-based, ~0..2, unbounded like Waymo's), elongation (grows with range and
    incidence), range-image index (row * azimuth steps + column, row 0 = the top beam). The real
    top LiDAR has 64 beams and 4 more LiDARs add points; here one 32-beam scan stands in;
  - cameras: FRONT, FRONT_LEFT, FRONT_RIGHT, SIDE_LEFT, SIDE_RIGHT looking at 0, +45, -45, +90,
    -90 degrees of yaw, focal length 2055 px for 1920 px wide images (about 50 degrees of
    horizontal field of view each), so the back of the car is outside every camera (`infov`);
  - ground truth (0.4 m grid, vehicle frame, Waymo classes, free stored as 23):
    voxel_label from the parts (`waymo_classes`), origin_voxel_state = voxels crossed by or
    holding the end of a ray of this frame's sweep (occupancy.lidar_mask), final_voxel_state =
    those not hidden from some camera (occupancy.camera_mask), infov = voxel centre inside the
    image of some camera (no occlusion test);
  - scenes: the last round(0.2 N) of N >= 2 scenes (at least one) are validation, the others
    training, each numbered from 0 inside its split;
  - info files as the original loader reads them: waymo_infos_<train|val>.pkl (mmdet3d
    KITTI-format style records: image, point_cloud, calib, pose, timestamp) and the camera poses
    cam_infos.pkl (training) / cam_infos_vali.pkl (validation), pose_all[scene][frame] = list of
    5 {intrinsics 3x3, sensor2ego 4x4 (OpenCV camera axes: x right, y down, z forward)} in image
    order; plus training/pose/<image_idx:07d>.txt (4x4 vehicle -> global).
"""
import math
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from datasets.synthetic import camera, catalog as C, lidar, occupancy, world as W
from datasets.synthetic.generate import JPEG_QUALITY, ego_to_global, run_tasks, scene_sun
from datasets.synthetic.world import Parts, World
from occ import occ3d, waymo

FRAME_INTERVAL_S = 0.1  # 10 Hz
BASE_TIMESTAMP_US = 1550083467346370
LIDAR_TRANSLATION = (1.43, 0.0, 2.184)  # roof LiDAR in the vehicle frame (identity rotation)
FOCAL_PX = 2055.0  # at 1920 px image width
# yaw (degrees, left positive) and mounting (x, y, z) of each camera in the vehicle frame
CAMERA_MOUNTS = {"FRONT": (0.0, (1.54, -0.02, 2.12)), "FRONT_LEFT": (45.0, (1.50, 0.10, 2.12)),
                 "FRONT_RIGHT": (-45.0, (1.49, -0.10, 2.12)), "SIDE_LEFT": (90.0, (1.43, 0.12, 2.12)),
                 "SIDE_RIGHT": (-90.0, (1.43, -0.12, 2.12))}
INFO_FILES = {"train": "waymo_infos_train.pkl", "val": "waymo_infos_val.pkl"}
CAM_INFO_FILES = {"train": "cam_infos.pkl", "val": "cam_infos_vali.pkl"}
CODE_OFFSET = 32  # parts carry 32 + Waymo class through occupancy.semantics_and_instances
# Occ3D-coded grid value -> stored Waymo label: ground classes, free, and the coded part classes.
CODE_TO_STORED = np.full(256, waymo.STORED_FREE, dtype=np.uint8)
CODE_TO_STORED[[C.DRIVEABLE, C.OTHER_FLAT, C.SIDEWALK, C.TERRAIN]] = [13, 14, 14, 14]  # road, walkable x 3
CODE_TO_STORED[CODE_OFFSET:CODE_OFFSET + waymo.FREE] = np.arange(waymo.FREE)
OCC3D_THING_TO_WAYMO = {C.CAR: 1, C.TRUCK: 1, C.BUS: 1, C.TRAILER: 1, C.CONSTRUCTION: 1, C.PEDESTRIAN: 3,
                        C.CONE: 7, C.BICYCLE: 8, C.MOTORCYCLE: 9, C.BARRIER: 0, C.OTHERS: 0}


@dataclass(frozen=True)
class WaymoOptions:
    out: str
    scenes: int = 10
    frames_per_scene: int = 20
    seed: int = 0
    image_size: tuple = waymo.IMAGE_SIZES["FRONT"]  # (W, H) of the front cameras; the sides keep 886/1280
    workers: int = 2


def validate(options):
    """Raise ValueError naming the bad argument."""
    if not 1 <= options.scenes <= 999:
        raise ValueError(f"--scenes must be in 1..999, got {options.scenes}")
    if not 1 <= options.frames_per_scene <= 999:
        raise ValueError(f"--samples-per-scene (frames per scene) must be in 1..999, got {options.frames_per_scene}")
    if options.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {options.seed}")
    width, height = options.image_size
    if width < 64 or height < 48:
        raise ValueError(f"--image-size must be at least 64x48, got {width}x{height}")
    if options.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {options.workers}")


def scene_splits(num_scenes):
    """[(split, scene number inside the split)] per world scene index: the last round(0.2 N)
    scenes (at least one when N >= 2) are validation."""
    num_val = max(1, round(0.2 * num_scenes)) if num_scenes >= 2 else 0
    num_train = num_scenes - num_val
    return [("train", i) if i < num_train else ("val", i - num_train) for i in range(num_scenes)]


def camera_size(name, front_size):
    """(W, H) of camera `name` when the front cameras are `front_size`."""
    width, height = front_size
    return width, max(1, round(height * waymo.IMAGE_SIZES[name][1] / waymo.IMAGE_SIZES["FRONT"][1]))


def camera_intrinsics(name, size):
    width, height = size
    focal = FOCAL_PX * width / waymo.IMAGE_SIZES[name][0]
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def camera_to_ego(name):
    """4x4 camera (OpenCV axes: x right, y down, z forward) -> vehicle frame."""
    yaw_deg, translation = CAMERA_MOUNTS[name]
    yaw = math.radians(yaw_deg)
    facing = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # camera axes in a yaw-0 car
    c, s = math.cos(yaw), math.sin(yaw)
    transform = np.eye(4)
    transform[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ facing
    transform[:3, 3] = translation
    return transform


def lidar_to_ego():
    transform = np.eye(4)
    transform[:3, 3] = LIDAR_TRANSLATION
    return transform


@lru_cache(maxsize=4)
def build_world(seed, scene_index, frames):
    rng = np.random.default_rng([seed, scene_index])
    return World(rng, duration=frames * FRAME_INTERVAL_S)


def waymo_classes(world, parts):
    """(P,) Waymo class of every part: things by their Occ3D class (a bicycle's rider is a
    BICYCLIST), poles / signs / buildings / trunks / crowns by their texture."""
    out = np.zeros(len(parts.cls), dtype=np.uint8)
    for occ_cls, waymo_cls in OCC3D_THING_TO_WAYMO.items():
        out[parts.cls == occ_cls] = waymo_cls
    out[(parts.cls == C.BICYCLE) & (parts.texture == W.CLOTH)] = 2  # BICYCLIST
    manmade = parts.cls == C.MANMADE
    out[manmade & (parts.texture == W.WINDOWS)] = 10  # BUILDING
    out[manmade & (parts.texture == W.PLAIN)] = 6  # POLE
    out[manmade & (parts.texture == W.STRIPES)] = 4  # SIGN
    vegetation = parts.cls == C.VEGETATION
    out[vegetation] = 11  # VEGETATION
    out[vegetation & (parts.texture == W.BARK)] = 12  # TREE_TRUNK
    return out


def voxel_labels(world, parts, ego2global):
    """voxel_label (200, 200, 16) uint8 in Waymo classes, free = 23."""
    coded = Parts(parts.centre, parts.half, parts.yaw, CODE_OFFSET + waymo_classes(world, parts), parts.instance,
                  parts.colour, parts.texture, parts.reflectivity)
    semantics, _ = occupancy.semantics_and_instances(world, coded, ego2global)
    return CODE_TO_STORED[semantics]


def field_of_view(cameras):
    """infov (200, 200, 16) bool: voxel centre in front of and inside the image of some camera.
    cameras: list of (ego2cam 4x4, intrinsics 3x3, (W, H))."""
    centres = occupancy.voxel_centres()
    inside_any = np.zeros(len(centres), dtype=bool)
    for ego2cam, intrinsics, (width, height) in cameras:
        p = centres @ ego2cam[:3, :3].T.astype(np.float32) + ego2cam[:3, 3].astype(np.float32)
        front = p[:, 2] > 0.1
        z = np.where(front, p[:, 2], 1.0)
        u = (intrinsics[0, 0] * p[:, 0] + intrinsics[0, 2] * p[:, 2]) / z
        v = (intrinsics[1, 1] * p[:, 1] + intrinsics[1, 2] * p[:, 2]) / z
        inside_any |= front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return inside_any.reshape(occ3d.GRID_SHAPE)


def lidar_features(scan, origin_lidar):
    """(N, 6) float32 vehicle-frame points of a lidar.Scan: x, y, z, intensity, elongation, range-image index."""
    xyz = scan.points[:, :3].astype(np.float64) + origin_lidar
    distance = np.linalg.norm(scan.points[:, :3], axis=1)
    intensity = scan.points[:, 3] / 255.0 * 2.0
    elongation = 0.02 + 0.3 * (distance / C.LIDAR_MAX_RANGE) ** 2
    step = 2 * np.pi / C.LIDAR_AZIMUTH_STEPS
    azimuth = np.arctan2(scan.points[:, 1], scan.points[:, 0])
    column = np.rint((azimuth - scan.first_azimuth) / step).astype(np.int64) % C.LIDAR_AZIMUTH_STEPS
    row = 31 - scan.points[:, 4].astype(np.int64)
    index = row * C.LIDAR_AZIMUTH_STEPS + column
    return np.concatenate([xyz, intensity[:, None], elongation[:, None], index[:, None]], 1).astype(np.float32)


def frame_task(args):
    """Files of one frame; returns its info record and camera poses."""
    options, world_index, split, scene, frame = args
    seed = options.seed
    world = build_world(seed, world_index, options.frames_per_scene)
    t = frame * FRAME_INTERVAL_S
    index = waymo.image_idx(split, scene, frame)
    ego2global = ego_to_global(world, t)
    lidar2ego = lidar_to_ego()
    result = lidar.scan(world, t, ego2global @ lidar2ego, np.random.default_rng([seed, world_index, frame, 1]))
    points = lidar_features(result, np.array(LIDAR_TRANSLATION))
    points.tofile(os.path.join(options.out, waymo.lidar_path(index)))
    np.savetxt(os.path.join(options.out, "training", "pose", f"{index:07d}.txt"), ego2global)

    sun = scene_sun(seed, world_index)
    camera_views, fov_views, cam_poses, calib = [], [], [], {}
    for number, name in enumerate(waymo.CAMERA_NAMES):
        size = camera_size(name, options.image_size)
        k_matrix = camera_intrinsics(name, size)
        cam2ego = camera_to_ego(name)
        image = camera.render(world, t, ego2global @ cam2ego, k_matrix, size, sun)
        rgb = Image.fromarray(image.rgb)
        if rgb.size != tuple(size):
            rgb = rgb.resize(tuple(size), Image.BILINEAR)
        rgb.save(os.path.join(options.out, waymo.image_path(number, index)), quality=JPEG_QUALITY)
        k_internal = k_matrix.copy()
        k_internal[:2] *= image.scale
        ego2cam = np.linalg.inv(cam2ego)
        camera_views.append((ego2cam, k_internal, image.depth))
        fov_views.append((ego2cam, k_matrix, size))
        cam_poses.append({"intrinsics": k_matrix, "sensor2ego": cam2ego})
        projection = np.eye(4)
        projection[:3, :3] = k_matrix
        calib[f"P{number}"] = projection
        calib[f"Tr_velo_to_cam_{number}"] = ego2cam  # the points are in the vehicle frame
    calib["Tr_velo_to_cam"] = calib["Tr_velo_to_cam_0"]
    calib["R0_rect"] = np.eye(4)

    parts = world.parts_at(t, near=ego2global[:3, 3], radius=60.0)
    voxel_label = voxel_labels(world, parts, ego2global)
    global2ego = np.linalg.inv(ego2global)
    hits_ego = result.points_global @ global2ego[:3, :3].T + global2ego[:3, 3]
    origin_state = occupancy.lidar_mask([(np.linalg.inv(lidar2ego), result.ranges, result.first_azimuth)], hits_ego)
    final_state = occupancy.camera_mask(camera_views, origin_state)
    infov = field_of_view(fov_views)
    gt_file = waymo.gt_path(options.out, split, scene, frame)
    os.makedirs(os.path.dirname(gt_file), exist_ok=True)
    np.savez_compressed(gt_file, voxel_label=voxel_label, origin_voxel_state=origin_state,
                        final_voxel_state=final_state, infov=infov)
    front = camera_size("FRONT", options.image_size)
    record = {
        "image": {"image_idx": index, "image_path": waymo.image_path(0, index), "image_shape": (front[1], front[0])},
        "point_cloud": {"num_features": waymo.POINT_DIMS, "velodyne_path": waymo.lidar_path(index)},
        "calib": calib, "pose": ego2global, "sample_idx": index,
        "timestamp": BASE_TIMESTAMP_US + world_index * 3600 * 10 ** 6 + int(round(t * 1e6)),
    }
    return split, scene, frame, record, cam_poses


def generate_waymo(options, progress=True):
    """Write the whole Occ3D-Waymo-layout world under options.out."""
    validate(options)
    out = options.out
    if os.path.exists(os.path.join(out, waymo.GT_DIR)):
        raise FileExistsError(f"{os.path.join(out, waymo.GT_DIR)} already exists; choose an empty --out")
    for folder in ["training/velodyne", "training/pose"] + [f"training/image_{c}" for c in range(waymo.NUM_CAMERAS)]:
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    tasks = [(options, i, split, scene, f) for i, (split, scene) in enumerate(scene_splits(options.scenes))
             for f in range(options.frames_per_scene)]
    results = run_tasks(frame_task, tasks, options.workers, "synthetic Waymo frames", progress)
    infos = {"train": [], "val": []}
    poses = {"train": {}, "val": {}}
    for split, scene, frame, record, cam_poses in results:
        infos[split].append(record)
        poses[split].setdefault(scene, {})[frame] = cam_poses
    for split in ("train", "val"):
        with open(os.path.join(out, INFO_FILES[split]), "wb") as f:
            pickle.dump(infos[split], f)
        with open(os.path.join(out, CAM_INFO_FILES[split]), "wb") as f:
            pickle.dump(poses[split], f)
