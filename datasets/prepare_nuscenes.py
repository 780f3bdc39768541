"""Info files for occupancy training from a nuScenes-format root, through nuscenes-devkit.

    python datasets/prepare_nuscenes.py --root DIR --version v1.0-trainval [--out-dir OUT] [--force]

writes DIR/occ_infos_<split>.pkl (OUT/... with --out-dir, e.g. for a read-only root) for each split of the version that has scenes in the database
(v1.0-trainval -> train, val; v1.0-mini -> mini_train, mini_val; v1.0-test -> test; scenes are
assigned with `nuscenes.utils.splits.create_splits_scenes`). Each file is a dict
{"version", "split", "infos"}; `infos` holds one record per key frame, ordered by scene name then
timestamp, made of plain Python / numpy values:

    token, scene_name, scene_token, timestamp (us), prev, next (sample tokens or "")
    lidar_path (relative to the root), lidar_token, lidar2ego (4x4), ego2global (4x4, the ego pose
        of the key-frame LiDAR sample_data)
    sweeps: up to 10 earlier LiDAR sample_data, nearest first, each {path, sensor2lidar (4x4 into
        the key-frame LiDAR frame), time_lag (s, >= 0)}
    cams: {CAM_NAME: {path, intrinsics (3x3), cam2ego (4x4, into that camera's own ego frame),
        ego2global (4x4, the ego pose at the camera's timestamp), timestamp, sample_data_token}}
        (empty for LiDAR-only samples)
    boxes: {centers (M,3), sizes (M,3) as w, l, h, yaws (M,), names (list), velocities (M,2) vx, vy
        in m/s (NaN where the devkit cannot estimate them), num_lidar_pts (M,), tokens (list)},
        all in the KEY-FRAME EGO frame (the ego pose of the key-frame LiDAR sample_data); yaw is
        about +z from the ego x axis.
    occ_path: "gts/<scene_name>/<token>/labels.npz" (relative to the root) when that file exists,
        else None.
    openocc_path: "openocc_v2/<scene_name>/<token>/labels.npz" (OpenOcc v2 occupancy + flow) when
        that file exists, else None (absent from info files written before it was added).
    openoccupancy_path: "nuScenes-Occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy"
        (OpenOccupancy) when that file exists, else None (likewise; the dataset derives the path itself).

Re-running is cheap: a split whose info file is newer than every table (and than the gts folder)
is skipped unless --force is given.

Errors name what to fix: a missing version folder, table, or sensor file (FileNotFoundError), a
table that is not valid JSON or tables that do not fit together (occ.errors.DataError); the script
prints them as one line. The Occ3D gts folder is optional (occ_path is None without it).
"""
import argparse
import math
import os
import pickle
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from occ import occ3d, openocc  # noqa: E402
from occ.errors import DataError, UsageError  # noqa: E402
from occ.geometry import invert_transform, make_transform  # noqa: E402
from datasets.openoccupancy import GT_DIR as OPENOCCUPANCY_GT_DIR, gt_path as openoccupancy_gt_path  # noqa: E402

VERSION_SPLITS = {
    "v1.0-trainval": ["train", "val"],
    "v1.0-mini": ["mini_train", "mini_val"],
    "v1.0-test": ["test"],
}
TABLES = ["attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
          "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility"]
MAX_SWEEPS = 10


def table_paths(root, version):
    """Paths of the JSON tables; raises naming the first one that is missing."""
    table_dir = os.path.join(root, version)
    if not os.path.isdir(table_dir):
        raise FileNotFoundError(f"nuScenes table folder not found: {table_dir} (wrong --root or --version?)")
    paths = [os.path.join(table_dir, f"{name}.json") for name in TABLES]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"nuScenes table missing: {path}")
    return paths


def check_version(version):
    if version not in VERSION_SPLITS:
        raise UsageError(f"unknown --version {version!r}; expected one of {sorted(VERSION_SPLITS)}")


def load_nuscenes(root, version):
    """The devkit's NuScenes of root/version (verbose off), its errors naming what to fix: a
    missing folder or table (FileNotFoundError), a table that is not a JSON list of records, or
    tables that do not fit together (a dangling token, a missing field, a missing map: DataError)."""
    from nuscenes.nuscenes import NuScenes

    table_paths(root, version)  # the folder and every table exist

    class CheckedNuScenes(NuScenes):
        def __load_table__(self, table_name):
            path = os.path.join(self.table_root, f"{table_name}.json")
            try:
                table = super().__load_table__(table_name)
            except FileNotFoundError as error:
                raise FileNotFoundError(f"nuScenes table missing: {path}") from error
            except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, UnicodeDecodeError
                raise DataError(f"corrupt nuScenes table {path}: {type(error).__name__}: {error}") from error
            if not isinstance(table, list) or not all(isinstance(record, dict) for record in table):
                raise DataError(f"corrupt nuScenes table {path}: expected a JSON list of records, "
                                f"got {type(table).__name__}")
            return table

    try:
        return CheckedNuScenes(version=version, dataroot=root, verbose=False)
    except (KeyError, TypeError, IndexError, AssertionError) as error:
        # the devkit's reverse index (dangling tokens, missing fields) and its asserts (map files,
        # lidarseg label counts)
        raise DataError(f"nuScenes tables in {os.path.join(root, version)} do not fit together: "
                        f"{type(error).__name__}: {error}") from error


def info_path(out_dir, split):
    return os.path.join(out_dir, f"occ_infos_{split}.pkl")


def is_up_to_date(output_path, input_paths):
    if not os.path.isfile(output_path):
        return False
    newest_input = max(os.path.getmtime(p) for p in input_paths if os.path.exists(p))
    return os.path.getmtime(output_path) > newest_input


def checked_path(root, relative_path, what):
    """`relative_path` if the file exists under root, else a FileNotFoundError naming it."""
    if not os.path.isfile(os.path.join(root, relative_path)):
        raise FileNotFoundError(f"{what} referenced by the tables is missing: {os.path.join(root, relative_path)}")
    return relative_path


def sensor_transforms(nusc, sample_data):
    """(sensor2ego, ego2global) 4x4 of one sample_data record."""
    calib = nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sample_data["ego_pose_token"])
    return (make_transform(calib["rotation"], calib["translation"]),
            make_transform(pose["rotation"], pose["translation"]))


def lidar_sweeps(nusc, root, lidar_data, lidar2ego, ego2global):
    """Up to MAX_SWEEPS earlier LiDAR sample_data (nearest first) with their transform into the
    key-frame LiDAR frame: sweep sensor -> sweep ego -> global -> key ego -> key LiDAR."""
    global2keylidar = invert_transform(lidar2ego) @ invert_transform(ego2global)
    sweeps = []
    record = lidar_data
    while record["prev"] and len(sweeps) < MAX_SWEEPS:
        record = nusc.get("sample_data", record["prev"])
        sweep2ego, sweep_ego2global = sensor_transforms(nusc, record)
        sweeps.append({
            "path": checked_path(root, record["filename"], "LiDAR sweep"),
            "sensor2lidar": global2keylidar @ sweep_ego2global @ sweep2ego,
            "time_lag": (lidar_data["timestamp"] - record["timestamp"]) * 1e-6,
        })
    return sweeps


def camera_infos(nusc, root, sample):
    cams = {}
    for channel, token in sorted(sample["data"].items()):
        record = nusc.get("sample_data", token)
        if record["sensor_modality"] != "camera":
            continue
        calib = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        cam2ego, ego2global = sensor_transforms(nusc, record)
        cams[channel] = {
            "path": checked_path(root, record["filename"], f"{channel} image"),
            "intrinsics": np.array(calib["camera_intrinsic"], dtype=np.float64),
            "cam2ego": cam2ego,
            "ego2global": ego2global,
            "timestamp": record["timestamp"],
            "sample_data_token": token,
        }
    return cams


def box_infos(nusc, sample, ego2global):
    """The sample's annotations in the key-frame ego frame."""
    global2ego = invert_transform(ego2global)
    centers, sizes, yaws, names, velocities, num_lidar_pts, tokens = [], [], [], [], [], [], []
    for token in sample["anns"]:
        ann = nusc.get("sample_annotation", token)
        box2ego = global2ego @ make_transform(ann["rotation"], ann["translation"])
        centers.append(box2ego[:3, 3])
        sizes.append(ann["size"])  # w, l, h
        yaws.append(math.atan2(box2ego[1, 0], box2ego[0, 0]))
        names.append(ann["category_name"])
        velocity_global = nusc.box_velocity(token)
        velocities.append((global2ego[:3, :3] @ velocity_global)[:2])
        num_lidar_pts.append(ann["num_lidar_pts"])
        tokens.append(token)
    return {
        "centers": np.array(centers, dtype=np.float64).reshape(-1, 3),
        "sizes": np.array(sizes, dtype=np.float64).reshape(-1, 3),
        "yaws": np.array(yaws, dtype=np.float64),
        "names": names,
        "velocities": np.array(velocities, dtype=np.float64).reshape(-1, 2),
        "num_lidar_pts": np.array(num_lidar_pts, dtype=np.int64),
        "tokens": tokens,
    }


def sample_info(nusc, root, sample, scene):
    """One info record (see the module docstring) for one key frame."""
    lidar_data = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar2ego, ego2global = sensor_transforms(nusc, lidar_data)
    occ_path = occ3d.gt_path("", scene["name"], sample["token"])
    openocc_path = occ3d.gt_path("", scene["name"], sample["token"], openocc.GT_DIR)
    openoccupancy_path = openoccupancy_gt_path("", scene["token"], lidar_data["token"])
    return {
        "token": sample["token"],
        "scene_name": scene["name"],
        "scene_token": scene["token"],
        "timestamp": sample["timestamp"],
        "prev": sample["prev"],
        "next": sample["next"],
        "lidar_path": checked_path(root, lidar_data["filename"], "LiDAR key frame"),
        "lidar_token": lidar_data["token"],
        "lidar2ego": lidar2ego,
        "ego2global": ego2global,
        "sweeps": lidar_sweeps(nusc, root, lidar_data, lidar2ego, ego2global),
        "cams": camera_infos(nusc, root, sample),
        "boxes": box_infos(nusc, sample, ego2global),
        "occ_path": occ_path if os.path.isfile(os.path.join(root, occ_path)) else None,
        "openocc_path": openocc_path if os.path.isfile(os.path.join(root, openocc_path)) else None,
        "openoccupancy_path": openoccupancy_path if os.path.isfile(os.path.join(root, openoccupancy_path)) else None,
    }


def scenes_by_split(nusc, version):
    """{split: [scene records sorted by name]} for the version's splits that hold scenes here;
    scenes in none of them are reported on stderr."""
    from nuscenes.utils.splits import create_splits_scenes
    check_version(version)
    split_names = create_splits_scenes()
    by_split = {split: [] for split in VERSION_SPLITS[version]}
    unassigned = []
    for scene in sorted(nusc.scene, key=lambda s: s["name"]):
        splits = [s for s in by_split if scene["name"] in split_names[s]]
        if splits:
            by_split[splits[0]].append(scene)
        else:
            unassigned.append(scene["name"])
    if unassigned:
        print(f"warning: {len(unassigned)} scene(s) in no {version} split, not written: "
              f"{', '.join(unassigned)}", file=sys.stderr)
    return {split: scenes for split, scenes in by_split.items() if scenes}


def prepare(root, version, out_dir=None, force=False):
    """Write the info files into `out_dir` (default: the root); returns {split: path}."""
    out_dir = root if out_dir is None else out_dir
    check_version(version)
    tables = table_paths(root, version)
    freshness_inputs = tables + [os.path.join(root, occ3d.GT_DIR), os.path.join(root, openocc.GT_DIR),
                                 os.path.join(root, OPENOCCUPANCY_GT_DIR)]
    # The devkit is slow to load the full tables: skip it when every output is up to date.
    existing = {s: info_path(out_dir, s) for s in VERSION_SPLITS.get(version, [])
                if os.path.isfile(info_path(out_dir, s))}
    if existing and not force and all(is_up_to_date(p, freshness_inputs) for p in existing.values()):
        for path in existing.values():
            print(f"up to date: {path} (use --force to rebuild)")
        return existing

    nusc = load_nuscenes(root, version)
    written = {}
    for split, scenes in scenes_by_split(nusc, version).items():
        samples_by_scene = {scene["token"]: [] for scene in scenes}
        for sample in nusc.sample:
            if sample["scene_token"] in samples_by_scene:
                samples_by_scene[sample["scene_token"]].append(sample)
        infos = []
        total = sum(len(v) for v in samples_by_scene.values())
        with tqdm(total=total, desc=f"{version} {split}", unit="sample") as bar:
            for scene in scenes:
                for sample in sorted(samples_by_scene[scene["token"]], key=lambda s: s["timestamp"]):
                    try:
                        infos.append(sample_info(nusc, root, sample, scene))
                    except (KeyError, TypeError, IndexError) as error:
                        raise DataError(f"nuScenes tables in {os.path.join(root, version)}: key frame "
                                        f"{sample['token']} of {scene['name']} refers to a missing record or "
                                        f"field ({type(error).__name__}: {error})") from error
                    bar.update()
        os.makedirs(out_dir, exist_ok=True)
        path = info_path(out_dir, split)
        with open(path + ".tmp", "wb") as f:
            pickle.dump({"version": version, "split": split, "infos": infos}, f)
        os.replace(path + ".tmp", path)
        print(f"wrote {len(infos)} infos ({len(scenes)} scenes) to {path}")
        written[split] = path
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="nuScenes root (holds the VERSION table folder, samples/, sweeps/)")
    parser.add_argument("--version", default="v1.0-trainval", choices=sorted(VERSION_SPLITS))
    parser.add_argument("--out-dir", default=None, help="where to write the info files (default: --root)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the info files are up to date")
    args = parser.parse_args(argv)
    prepare(args.root, args.version, args.out_dir, args.force)


if __name__ == "__main__":
    try:
        main()
    except (UsageError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
