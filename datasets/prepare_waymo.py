"""Info files for the Occ3D-Waymo loader (datasets/waymo_occ.py) from a root in the Occ3D-Waymo layout.

    python datasets/prepare_waymo.py --root DIR [--out-dir OUT] [--force]

Reads DIR/waymo_infos_<train|val>.pkl (one record per frame: image.image_idx, pose 4x4 vehicle ->
global, timestamp) and the camera poses DIR/cam_infos.pkl (train) / DIR/cam_infos_vali.pkl (val),
pose_all[scene][frame] = 5 x {intrinsics 3x3, sensor2ego 4x4} in image_0 .. image_4 order, and
writes OUT/occ_infos_<train|val>.pkl (OUT defaults to DIR): {"version": "waymo", "split", "infos"},
one record per frame, ordered by scene then frame, with the keys of the nuScenes info records
(datasets/nuscenes_occ.py INFO_KEYS, so every script reads them) plus `scene`, `frame`,
`image_idx`, `split`:
    token         "<scene:03d>_<frame:03d>" (the prediction file name)
    scene_name, scene_token   "<training|validation>/<scene:03d>"
    lidar_path    training/velodyne/<image_idx:07d>.bin; lidar2ego identity (vehicle frame); no sweeps
    ego2global    the frame's pose
    cams          {FRONT, FRONT_LEFT, FRONT_RIGHT, SIDE_LEFT, SIDE_RIGHT: {path, intrinsics, cam2ego,
                  ego2global (= the frame's), image_size (W, H) read from the file}}
    occ_path      voxel04/<training|validation>/<scene:03d>/<frame:03d>_04.npz
A split whose info file is missing is skipped with a note. Missing files, a wrong camera count or a
missing calibration entry are errors naming the file and the frame.
"""
import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from datasets.nuscenes_occ import load_info_file  # noqa: E402
from datasets.prepare_nuscenes import info_path  # noqa: E402
from occ import waymo  # noqa: E402
from occ.errors import DataError  # noqa: E402

SOURCE_INFO_FILES = {"train": "waymo_infos_train.pkl", "val": "waymo_infos_val.pkl"}
CAM_INFO_FILES = {"train": "cam_infos.pkl", "val": "cam_infos_vali.pkl"}


def matrix(value, shape, what):
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape or not np.isfinite(array).all():
        raise DataError(f"{what} must be a finite {shape[0]}x{shape[1]} matrix, got shape {array.shape}")
    return array


def camera_entries(pose_all, scene, frame, cam_file):
    """The 5 {intrinsics, sensor2ego} of a frame from pose_all; DataError naming what is missing."""
    try:
        entries = pose_all[scene][frame]
    except (KeyError, IndexError, TypeError):
        raise DataError(f"camera calibration file {cam_file} has no entry for scene {scene} frame {frame} "
                        f"(pose_all[scene][frame])") from None
    if not isinstance(entries, (list, tuple)) or len(entries) != waymo.NUM_CAMERAS:
        count = len(entries) if isinstance(entries, (list, tuple)) else type(entries).__name__
        raise DataError(f"camera calibration file {cam_file}: scene {scene} frame {frame} has {count} camera "
                        f"entries, expected {waymo.NUM_CAMERAS} ({', '.join(waymo.CAMERA_NAMES)})")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "intrinsics" not in entry or "sensor2ego" not in entry:
            raise DataError(f"camera calibration file {cam_file}: scene {scene} frame {frame} camera {number} "
                            f"({waymo.CAMERA_NAMES[number]}) lacks 'intrinsics' or 'sensor2ego'")
    return entries


def frame_record(root, split, source, pose_all, cam_file, source_file):
    index = int(source["image"]["image_idx"])
    prefix, scene, frame = index // 1000000, index // 1000 % 1000, index % 1000
    if prefix != waymo.SPLIT_PREFIX[split]:
        raise DataError(f"{source_file}: image_idx {index} has prefix {prefix}, expected {waymo.SPLIT_PREFIX[split]} "
                        f"for the {split} split")
    where = f"{source_file} frame {index:07d}"
    ego2global = matrix(source["pose"], (4, 4), f"{where}: pose")
    cams = {}
    for number, (name, entry) in enumerate(zip(waymo.CAMERA_NAMES, camera_entries(pose_all, scene, frame, cam_file))):
        path = waymo.image_path(number, index)
        full = os.path.join(root, path)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"image not found: {full} ({where}, camera {name})")
        with Image.open(full) as image:
            size = image.size
        what = f"{cam_file} scene {scene} frame {frame} camera {name}"
        cams[name] = {"path": path, "intrinsics": matrix(entry["intrinsics"], (3, 3), f"{what}: intrinsics"),
                      "cam2ego": matrix(entry["sensor2ego"], (4, 4), f"{what}: sensor2ego"),
                      "ego2global": ego2global, "image_size": size}
    lidar = waymo.lidar_path(index)
    if not os.path.isfile(os.path.join(root, lidar)):
        raise FileNotFoundError(f"point cloud not found: {os.path.join(root, lidar)} ({where})")
    occ_path = waymo.gt_path("", split, scene, frame)
    scene_name = f"{waymo.SPLIT_DIRS[split]}/{scene:03d}"
    return {
        "token": f"{scene:03d}_{frame:03d}", "scene_name": scene_name, "scene_token": scene_name,
        "timestamp": int(source.get("timestamp", 0)), "prev": "", "next": "",
        "lidar_path": lidar, "lidar_token": f"{index:07d}", "lidar2ego": np.eye(4), "ego2global": ego2global,
        "sweeps": [], "cams": cams, "boxes": {},
        "occ_path": occ_path if os.path.isfile(os.path.join(root, occ_path)) else None,
        "split": split, "scene": scene, "frame": frame, "image_idx": index,
    }


def prepare_split(root, split):
    """The info records of one split (sorted by scene, frame, linked prev / next inside a scene)."""
    source_file = os.path.join(root, SOURCE_INFO_FILES[split])
    cam_file = os.path.join(root, CAM_INFO_FILES[split])
    sources = load_info_file(source_file)
    if not isinstance(sources, list):
        raise DataError(f"{source_file}: expected a list of frame records, got {type(sources).__name__}")
    pose_all = load_info_file(cam_file)
    records = []
    for number, source in enumerate(sources):
        if not isinstance(source, dict) or "image" not in source or "pose" not in source:
            raise DataError(f"{source_file}: record {number} lacks 'image' or 'pose'")
        records.append(frame_record(root, split, source, pose_all, cam_file, source_file))
    records.sort(key=lambda r: (r["scene"], r["frame"]))
    for a, b in zip(records[:-1], records[1:]):
        if a["scene"] == b["scene"]:
            a["next"], b["prev"] = b["token"], a["token"]
    return records


def prepare(root, out_dir=None, force=False):
    """Write occ_infos_<split>.pkl for every split whose source info file exists; returns their paths."""
    out_dir = out_dir or root
    written = []
    for split in ("train", "val"):
        if not os.path.isfile(os.path.join(root, SOURCE_INFO_FILES[split])):
            print(f"note: no {SOURCE_INFO_FILES[split]} in {root}; split {split} skipped")
            continue
        path = info_path(out_dir, split)
        if os.path.isfile(path) and not force:
            written.append(path)
            continue
        records = prepare_split(root, split)
        os.makedirs(out_dir, exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            pickle.dump({"version": "waymo", "split": split, "infos": records}, f)
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(records)} frames")
        written.append(path)
    if not written:
        raise FileNotFoundError(f"no {' or '.join(SOURCE_INFO_FILES.values())} in {root}")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="Occ3D-Waymo-layout root")
    parser.add_argument("--out-dir", help="where to write the info files (default: --root)")
    parser.add_argument("--force", action="store_true", help="rewrite existing info files")
    args = parser.parse_args(argv)
    prepare(args.root, args.out_dir, args.force)


if __name__ == "__main__":
    import cli
    cli.run_main(lambda: main())
