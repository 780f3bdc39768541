"""Writes synthetic worlds as a nuScenes v1.0-mini dataset with Occ3D / OpenOcc / OpenOccupancy GT.

One task per key frame (run in a process pool): it ray-casts the LiDAR scans since the previous key
frame (the key frame's scan and its 9 sweeps), renders the 6 cameras, voxelises the ground truth,
writes those files and returns the table rows; the main process links rows (prev/next, instances,
scenes) and writes the JSON tables. Every random draw comes from a numpy Generator seeded by
(seed, scene index[, scan or key frame index]), so the output does not depend on scheduling.
"""
import hashlib
import json
import math
import multiprocessing
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from datasets.synthetic import camera, catalog as C, lidar, occupancy
from datasets.synthetic.world import World
from occ import occ3d, openocc
from occ.geometry import make_transform, yaw_to_quaternion

VERSION = "v1.0-mini"
BASE_TIMESTAMP_US = 1532402927647951  # first key frame of the first scene (a real nuScenes time)
SCENE_SPACING_US = 3600 * 1000000
SWEEPS_PER_KEYFRAME = C.KEYFRAME_INTERVAL_US // C.SWEEP_INTERVAL_US  # 10 LiDAR scans per sample
ANNOTATION_RANGE = 55.0  # m from the ego; objects farther away are not annotated
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Options:
    out: str
    scenes: int = 10
    samples_per_scene: int = 20
    seed: int = 0
    image_size: tuple = C.SOURCE_IMAGE_SIZE  # (W, H)
    workers: int = 2


def validate(options):
    """Raise ValueError naming the bad argument."""
    if not 1 <= options.scenes <= len(C.MINI_SCENES):
        raise ValueError(f"--scenes must be in 1..{len(C.MINI_SCENES)} (the v1.0-mini scene names), "
                         f"got {options.scenes}")
    if options.samples_per_scene < 1:
        raise ValueError(f"--samples-per-scene must be >= 1, got {options.samples_per_scene}")
    if options.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {options.seed}")
    width, height = options.image_size
    if width < 64 or height < 36:
        raise ValueError(f"--image-size must be at least 64x36, got {width}x{height}")
    if options.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {options.workers}")


def token(seed, *keys):
    """Deterministic 32-hex token."""
    return hashlib.md5("/".join(str(k) for k in (seed,) + keys).encode()).hexdigest()


@lru_cache(maxsize=4)
def build_world(seed, scene_index, samples_per_scene):
    rng = np.random.default_rng([seed, scene_index])
    return World(rng, duration=samples_per_scene * C.KEYFRAME_INTERVAL_US / 1e6)


def scene_sun(seed, scene_index):
    rng = np.random.default_rng([seed, scene_index, 7])
    azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.1)
    return np.array([math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation),
                     math.sin(elevation)])


def ego_to_global(world, t):
    xy, yaw = world.ego_pose(t)
    return make_transform(yaw_to_quaternion(yaw), [xy[0], xy[1], 0.0])


def sensor_to_ego(channel):
    translation, rotation, _ = C.CALIBRATION[channel]
    return make_transform(rotation, translation)


def intrinsics_for(channel, image_size):
    k = np.array(C.CALIBRATION[channel][2], dtype=np.float64)
    k[0] *= image_size[0] / C.SOURCE_IMAGE_SIZE[0]
    k[1] *= image_size[1] / C.SOURCE_IMAGE_SIZE[1]
    return k


def scene_name(index):
    return C.MINI_SCENES[index]


def log_name(index):
    return f"n015-synthetic-{index:02d}+0800"


def timestamp_us(scene_index, scan_index):
    return BASE_TIMESTAMP_US + scene_index * SCENE_SPACING_US + scan_index * C.SWEEP_INTERVAL_US


def pose_row(tok, ts, ego2global):
    return {"token": tok, "timestamp": ts, "translation": ego2global[:3, 3].tolist(),
            "rotation": _rotation(ego2global)}


def _rotation(transform):
    yaw = math.atan2(transform[1, 0], transform[0, 0])
    return yaw_to_quaternion(yaw).tolist()


def points_in_box(points, centre, size, yaw):
    """Number of (N, 3) global points inside a box (centre, size [w, l, h], yaw), like the devkit."""
    rel = points - centre
    c, s = math.cos(yaw), math.sin(yaw)
    along, across = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
    w, l, h = size
    return int(np.count_nonzero((np.abs(along) <= l / 2) & (np.abs(across) <= w / 2) & (np.abs(rel[:, 2]) <= h / 2)))


def keyframe_task(args):
    """Files of key frame k of one scene, and its table rows (prev/next filled in later)."""
    options, scene_index, k = args
    seed = options.seed
    world = build_world(seed, scene_index, options.samples_per_scene)
    name, log = scene_name(scene_index), log_name(scene_index)
    sample_tok = token(seed, "sample", scene_index, k)
    key_scan = k * SWEEPS_PER_KEYFRAME
    scans = [key_scan] if k == 0 else list(range(key_scan - SWEEPS_PER_KEYFRAME + 1, key_scan + 1))
    t_key = key_scan * C.SWEEP_INTERVAL_US / 1e6
    lidar2ego = sensor_to_ego("LIDAR_TOP")
    rows = {"sample_data": [], "ego_pose": [], "sample_annotation": [], "lidarseg": []}

    lidar_views, ray_ends, accumulated, accumulated_cls = [], [], [], []
    ego2global_key = ego_to_global(world, t_key)
    for s in scans:
        t = s * C.SWEEP_INTERVAL_US / 1e6
        ego2global = ego_to_global(world, t)
        result = lidar.scan(world, t, ego2global @ lidar2ego, np.random.default_rng([seed, scene_index, s, 1]))
        is_key = s == key_scan
        ts = timestamp_us(scene_index, s)
        filename = f"{'samples' if is_key else 'sweeps'}/LIDAR_TOP/{log}__LIDAR_TOP__{ts}.pcd.bin"
        result.points.tofile(os.path.join(options.out, filename))
        sd_tok = token(seed, "sample_data", scene_index, "LIDAR_TOP", s)
        rows["sample_data"].append({
            "token": sd_tok, "sample_token": sample_tok, "ego_pose_token": sd_tok,
            "calibrated_sensor_token": token(seed, "calibrated_sensor", scene_index, "LIDAR_TOP"),
            "timestamp": ts, "fileformat": "pcd", "is_key_frame": is_key, "height": 0, "width": 0,
            "filename": filename, "prev": "", "next": "", "channel": "LIDAR_TOP"})
        rows["ego_pose"].append(pose_row(sd_tok, ts, ego2global))
        lidar_views.append((np.linalg.inv(ego2global @ lidar2ego) @ ego2global_key, result.ranges,
                            result.first_azimuth))
        ray_ends.append(result.points_global)
        # Points on moving objects travel with their object to the key frame's time.
        moved = result.points_global.copy()
        on_object = result.instance >= 0
        moved[on_object] += world.obj_velocity[result.instance[on_object]] * (t_key - t)
        accumulated.append(moved)
        accumulated_cls.append(result.cls)
        if is_key:
            key_result, key_sd_tok = result, sd_tok
            seg_file = f"lidarseg/{VERSION}/{sd_tok}_lidarseg.bin"
            result.category.tofile(os.path.join(options.out, seg_file))
            rows["lidarseg"].append({"token": sd_tok, "sample_data_token": sd_tok, "filename": seg_file})

    # Cameras (key frames only), each at its own exposure time and ego pose.
    sun = scene_sun(seed, scene_index)
    visible = np.zeros((len(world.obj_cls), 2))
    camera_views = []
    for channel in C.CAMERAS:
        ts = timestamp_us(scene_index, key_scan) + C.CAMERA_TIME_OFFSET_US[channel]
        t = (ts - timestamp_us(scene_index, 0)) / 1e6
        ego2global = ego_to_global(world, t)
        cam2global = ego2global @ sensor_to_ego(channel)
        k_matrix = intrinsics_for(channel, options.image_size)
        image = camera.render(world, t, cam2global, k_matrix, options.image_size, sun)
        rgb = Image.fromarray(image.rgb)
        if rgb.size != tuple(options.image_size):
            rgb = rgb.resize(tuple(options.image_size), Image.BILINEAR)
        filename = f"samples/{channel}/{log}__{channel}__{ts}.jpg"
        rgb.save(os.path.join(options.out, filename), quality=JPEG_QUALITY)
        sd_tok = token(seed, "sample_data", scene_index, channel, k)
        rows["sample_data"].append({
            "token": sd_tok, "sample_token": sample_tok, "ego_pose_token": sd_tok,
            "calibrated_sensor_token": token(seed, "calibrated_sensor", scene_index, channel),
            "timestamp": ts, "fileformat": "jpg", "is_key_frame": True, "height": options.image_size[1],
            "width": options.image_size[0], "filename": filename, "prev": "", "next": "", "channel": channel})
        rows["ego_pose"].append(pose_row(sd_tok, ts, ego2global))
        for obj, (seen, total) in image.visible.items():
            visible[obj] += (seen, total)
        k_internal = k_matrix.copy()
        k_internal[:2] *= image.scale
        camera_views.append((np.linalg.inv(cam2global) @ ego2global_key, k_internal, image.depth))

    # Ground truth in the key frame's ego frame.
    parts = world.parts_at(t_key, near=ego2global_key[:3, 3], radius=60.0)
    semantics, instance = occupancy.semantics_and_instances(world, parts, ego2global_key)
    global2ego_key = np.linalg.inv(ego2global_key)
    hits_ego = np.concatenate(ray_ends) @ global2ego_key[:3, :3].T + global2ego_key[:3, 3]
    mask_lidar = occupancy.lidar_mask(lidar_views, hits_ego)
    mask_camera = occupancy.camera_mask(camera_views, mask_lidar)
    flow = occupancy.flow_grid(world, instance, ego2global_key)
    gt_file = occ3d.gt_path(options.out, name, sample_tok)
    os.makedirs(os.path.dirname(gt_file), exist_ok=True)
    np.savez_compressed(gt_file, semantics=semantics, mask_lidar=mask_lidar, mask_camera=mask_camera)
    openocc_file = occ3d.gt_path(options.out, name, sample_tok, openocc.GT_DIR)
    os.makedirs(os.path.dirname(openocc_file), exist_ok=True)
    np.savez_compressed(openocc_file, semantics=openocc.OCC3D_TO_OPENOCC[semantics],
                        flow=flow, mask_lidar=mask_lidar, mask_camera=mask_camera)
    global2lidar_key = np.linalg.inv(ego2global_key @ lidar2ego)
    points_lidar = np.concatenate(accumulated) @ global2lidar_key[:3, :3].T + global2lidar_key[:3, 3]
    rows_oo = occupancy.openoccupancy_rows(points_lidar, np.concatenate(accumulated_cls))
    scene_tok = token(seed, "scene", scene_index)
    oo_dir = os.path.join(options.out, "nuScenes-Occupancy", f"scene_{scene_tok}", "occupancy")
    os.makedirs(oo_dir, exist_ok=True)
    np.save(os.path.join(oo_dir, f"{key_sd_tok}.npy"), rows_oo)

    # Annotations of the objects near the ego.
    centres, yaws, _ = world.objects_at(t_key)
    near = np.linalg.norm(centres[:, :2] - ego2global_key[:2, 3], axis=1) < ANNOTATION_RANGE
    for obj in np.flatnonzero(near & world.obj_annotated):
        fraction = visible[obj, 0] / visible[obj, 1] if visible[obj, 1] > 0 else 0.0
        attribute = world.obj_attribute[obj]
        w, l, h = world.obj_size[obj]
        rows["sample_annotation"].append({
            "object": int(obj), "token": token(seed, "sample_annotation", scene_index, int(obj), k),
            "sample_token": sample_tok, "instance_token": token(seed, "instance", scene_index, int(obj)),
            "visibility_token": str(1 + int(np.searchsorted([0.4, 0.6, 0.8], fraction, side="right"))),
            "attribute_tokens": [C.ATTRIBUTE_TOKEN[attribute]] if attribute else [],
            "translation": centres[obj].tolist(), "size": [float(w), float(l), float(h)],
            "rotation": yaw_to_quaternion(yaws[obj]).tolist(), "prev": "", "next": "",
            "num_lidar_pts": points_in_box(key_result.points_global, centres[obj], world.obj_size[obj], yaws[obj]),
            "num_radar_pts": 0})
    gt_info = {
        "timestamp": timestamp_us(scene_index, key_scan),
        "ego_pose": {"translation": ego2global_key[:3, 3].tolist(), "rotation": _rotation(ego2global_key)},
        "gt_path": occ3d.gt_path("", name, sample_tok), "lidar_token": key_sd_tok,
        "openocc_path": occ3d.gt_path("", name, sample_tok, openocc.GT_DIR),
        "openoccupancy_path": f"nuScenes-Occupancy/scene_{scene_tok}/occupancy/{key_sd_tok}.npy",
    }
    return scene_index, k, rows, gt_info


def generate(options, progress=True):
    """Write the whole dataset under options.out."""
    validate(options)
    out = options.out
    if os.path.exists(os.path.join(out, VERSION)):
        raise FileExistsError(f"{os.path.join(out, VERSION)} already exists; choose an empty --out")
    for folder in [VERSION, "maps", "samples/LIDAR_TOP", "sweeps/LIDAR_TOP", f"lidarseg/{VERSION}"] + \
                  [f"samples/{c}" for c in C.CAMERAS]:
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    tasks = [(options, i, k) for i in range(options.scenes) for k in range(options.samples_per_scene)]
    write_tables(options, run_tasks(keyframe_task, tasks, options.workers, "synthetic key frames", progress))


def run_tasks(task_fn, tasks, workers, desc, progress=True):
    """[task_fn(task) for task in tasks], in order, in a pool of `workers` forked processes (in this
    process when 1), with a progress bar of frames."""
    results = []
    bar = tqdm(total=len(tasks), desc=desc, unit="frame", disable=not progress)
    # One BLAS thread per process: the (640k x 3) @ (3 x 3) products gain nothing from more, and
    # idle BLAS threads spinning beside the worker processes doubled the CPU time.
    with threadpool_limits(limits=1, user_api="blas"):
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for result in pool.imap(task_fn, tasks):
                    results.append(result)
                    bar.update()
        else:
            for task in tasks:
                results.append(task_fn(task))
                bar.update()
    bar.close()
    return results


def _link(rows, key):
    """Fill prev/next of rows sharing `key`, in timestamp order (rows are dicts, edited in place)."""
    groups = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    for group in groups.values():
        group.sort(key=lambda r: r["timestamp"])
        for a, b in zip(group[:-1], group[1:]):
            a["next"], b["prev"] = b["token"], a["token"]


def write_tables(options, results):
    seed, out = options.seed, options.out
    tables = {name: [] for name in ("sample_data", "ego_pose", "sample_annotation", "lidarseg", "sample")}
    gt_infos = {}
    for scene_index, k, rows, gt_info in results:
        for name, table in rows.items():
            tables[name].extend(table)
        name = scene_name(scene_index)
        sample_tok = token(seed, "sample", scene_index, k)
        tables["sample"].append({"token": sample_tok, "timestamp": gt_info["timestamp"], "prev": "", "next": "",
                                 "scene_token": token(seed, "scene", scene_index)})
        gt_infos.setdefault(name, {})[sample_tok] = gt_info

    # sample_data: prev/next per scene and channel, through key frames and sweeps.
    scene_of = {row["token"]: row["scene_token"] for row in tables["sample"]}
    _link(tables["sample_data"], lambda r: (scene_of[r["sample_token"]], r["channel"]))
    for row in tables["sample_data"]:
        del row["channel"]
    _link(tables["sample"], lambda r: r["scene_token"])
    sample_by_token = {row["token"]: row for row in tables["sample"]}
    for scene in gt_infos.values():
        for tok, info in scene.items():
            info["prev"], info["next"] = sample_by_token[tok]["prev"], sample_by_token[tok]["next"]

    # Annotations: link per instance, in time order.
    sample_time = {row["token"]: row["timestamp"] for row in tables["sample"]}
    annotations = tables["sample_annotation"]
    for row in annotations:
        row["timestamp"] = sample_time[row["sample_token"]]
    _link(annotations, lambda r: r["instance_token"])
    instances = {}
    scene_index_of = {token(seed, "scene", i): i for i in range(options.scenes)}
    for row in sorted(annotations, key=lambda r: r["timestamp"]):
        scene_index = scene_index_of[scene_of[row["sample_token"]]]
        world = build_world(seed, scene_index, options.samples_per_scene)
        inst = instances.setdefault(row["instance_token"], {
            "token": row["instance_token"], "category_token": C.CATEGORY_TOKEN[world.obj_category[row["object"]]],
            "nbr_annotations": 0, "first_annotation_token": row["token"], "last_annotation_token": ""})
        inst["nbr_annotations"] += 1
        inst["last_annotation_token"] = row["token"]
    for row in annotations:
        del row["timestamp"], row["object"]

    scenes, logs, calibrated = [], [], []
    for i in range(options.scenes):
        samples = sorted((r for r in tables["sample"] if r["scene_token"] == token(seed, "scene", i)),
                         key=lambda r: r["timestamp"])
        scenes.append({"token": token(seed, "scene", i), "log_token": token(seed, "log", i), "name": scene_name(i),
                       "description": "synthetic drive", "nbr_samples": len(samples),
                       "first_sample_token": samples[0]["token"], "last_sample_token": samples[-1]["token"]})
        logs.append({"token": token(seed, "log", i), "logfile": log_name(i), "vehicle": "n015",
                     "date_captured": "2018-07-24", "location": C.LOCATIONS[i % len(C.LOCATIONS)]})
        for sensor_tok, channel, modality in C.SENSORS:
            translation, rotation, _ = C.CALIBRATION[channel]
            calibrated.append({
                "token": token(seed, "calibrated_sensor", i, channel), "sensor_token": sensor_tok,
                "translation": translation, "rotation": rotation,
                "camera_intrinsic": intrinsics_for(channel, options.image_size).tolist() if modality == "camera" else []})
    maps = []
    for location in sorted({log["location"] for log in logs}):
        map_tok = token(seed, "map", location)
        filename = f"maps/{map_tok}.png"
        Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(os.path.join(out, filename))
        maps.append({"token": map_tok, "category": "semantic_prior", "filename": filename,
                     "log_tokens": [log["token"] for log in logs if log["location"] == location]})

    tables.update({
        "scene": scenes, "log": logs, "calibrated_sensor": calibrated, "map": maps,
        "instance": sorted(instances.values(), key=lambda r: r["token"]),
        "sensor": [{"token": t, "channel": ch, "modality": m} for t, ch, m in C.SENSORS],
        "category": [{"token": t, "name": n, "description": n, "index": i} for t, n, i in C.CATEGORIES],
        "attribute": [{"token": t, "name": n, "description": d} for t, n, d in C.ATTRIBUTES],
        "visibility": [{"token": t, "level": lv, "description": d} for t, lv, d in C.VISIBILITY],
    })
    for name, rows in tables.items():
        with open(os.path.join(out, VERSION, f"{name}.json"), "w") as f:
            json.dump(rows, f, sort_keys=True)

    from nuscenes.utils.splits import create_splits_scenes
    splits = create_splits_scenes()
    names = [scene_name(i) for i in range(options.scenes)]
    annotations = {"train_split": [n for n in names if n in splits["mini_train"]],
                   "val_split": [n for n in names if n in splits["mini_val"]], "scene_infos": gt_infos}
    with open(os.path.join(out, occ3d.GT_DIR, "annotations.json"), "w") as f:
        json.dump(annotations, f, sort_keys=True)
