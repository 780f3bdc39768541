"""Occ-BEV pre-training targets: hand-made scans, the devkit transform chain on real nuScenes
samples, the cache format and the CLI."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from pyquaternion import Quaternion

from datasets import prepare_occbev
from datasets.occbev_targets import (lidar_chain, load_occbev_target, occbev_target, occupancy_from_scans,
                                     save_occbev_target)
from datasets.transforms import remove_ego_body
from occ.geometry import make_transform, yaw_to_quaternion

REPO = Path(__file__).resolve().parents[1]
REAL_ROOT = REPO.parent / "shared" / "nuscenes-real"
LOWER = np.array([-40.0, -40.0, -1.0])
IDENTITY = np.eye(4)


def voxel_centre(index):
    """Occ3D voxel centre (docs/data.md#occ3d-nuscenes-ground-truth): idx * 0.4 + 0.2 + [-40, -40, -1]."""
    return np.asarray(index) * 0.4 + 0.2 + LOWER


def rotate_z(points, angle):
    """Rotate (N, 3) points about +z by `angle` radians, written out with cos/sin."""
    c, s = math.cos(angle), math.sin(angle)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return np.stack([c * x - s * y, s * x + c * y, z], axis=1)


def occupied_voxels(grid):
    return set(map(tuple, np.argwhere(grid)))


# ---------------------------------------------------------------- hand-made scans

def test_a_point_inside_a_voxel_marks_that_voxel_only():
    voxel = (123, 45, 7)
    corner = voxel_centre(voxel) - 0.2
    points = np.array([voxel_centre(voxel), corner + 0.01, corner + 0.39])  # all inside `voxel`
    grid = occupancy_from_scans([(points, IDENTITY, IDENTITY)], IDENTITY)
    assert grid.dtype == bool and grid.shape == (200, 200, 16)
    assert occupied_voxels(grid) == {voxel}


def test_a_point_from_a_moved_ego_pose_lands_where_the_transform_chain_says():
    # Scan i: LiDAR yawed 90 deg on its ego, mounted at (1, 0.5, 1.8); ego i at yaw 45 deg, (105, 52, 0.3).
    # Key frame ego at yaw 30 deg, (100, 50, 0).
    sensor2ego = make_transform(yaw_to_quaternion(math.pi / 2), [1.0, 0.5, 1.8])
    ego2global = make_transform(yaw_to_quaternion(math.pi / 4), [105.0, 52.0, 0.3])
    key_ego2global = make_transform(yaw_to_quaternion(math.pi / 6), [100.0, 50.0, 0.0])
    points_sensor = np.array([[10.0, 2.0, 0.55, 7.0, 3.0], [-6.0, 3.0, -1.05, 1.0, 0.0]])

    # By hand: sensor -> ego(t_i) -> global -> ego(t).
    points_ego = rotate_z(points_sensor[:, :3], math.pi / 2) + [1.0, 0.5, 1.8]
    points_global = rotate_z(points_ego, math.pi / 4) + [105.0, 52.0, 0.3]
    points_key = rotate_z(points_global - [100.0, 50.0, 0.0], -math.pi / 6)
    expected = set(map(tuple, np.floor((points_key - LOWER) / 0.4).astype(int)))
    # Dropping the sensor->ego translation (a quirk of the original) would give other voxels.
    points_key_no_mount = rotate_z(rotate_z(rotate_z(points_sensor[:, :3], math.pi / 2), math.pi / 4)
                                   + [105.0, 52.0, 0.3] - [100.0, 50.0, 0.0], -math.pi / 6)
    assert expected != set(map(tuple, np.floor((points_key_no_mount - LOWER) / 0.4).astype(int)))

    grid = occupancy_from_scans([(points_sensor, sensor2ego, ego2global)], key_ego2global)
    assert occupied_voxels(grid) == expected


def test_ego_body_points_are_removed_in_the_scans_own_sensor_frame():
    # The sensor sits 5 m ahead of the ego origin, so sensor-frame and ego-frame rules disagree.
    sensor2ego = make_transform(np.eye(3), [5.0, 0.0, 0.0])
    points_sensor = np.array([
        [0.5, -0.9, 0.0],    # |x| < 1 and |y| < 1 in the sensor frame: ego body, removed
        [-0.99, 0.99, 3.0],  # removed whatever z is
        [0.5, 1.25, 0.1],    # |y| >= 1: kept
        [1.25, 0.5, 0.1],    # |x| >= 1: kept
        [-5.1, 0.05, 0.1],   # next to the ego origin, but 5 m from the sensor: kept
    ])
    kept = remove_ego_body(points_sensor)
    np.testing.assert_array_equal(kept, points_sensor[2:])
    grid = occupancy_from_scans([(points_sensor, sensor2ego, IDENTITY)], IDENTITY)
    expected = set(map(tuple, np.floor((points_sensor[2:] + [5.0, 0.0, 0.0] - LOWER) / 0.4).astype(int)))
    assert occupied_voxels(grid) == expected


def test_points_outside_the_grid_are_dropped_not_clipped_onto_the_border():
    outside = np.array([
        [40.0, 0.0, 0.0], [45.0, 3.0, 1.0], [0.0, -40.01, 0.0], [0.0, 60.0, 0.0],
        [10.0, 10.0, 5.4], [10.0, 10.0, -1.2], [-80.0, -80.0, 10.0],
    ])
    assert not occupancy_from_scans([(outside, IDENTITY, IDENTITY)], IDENTITY).any()
    border = np.array([[-40.0, -40.0, -1.0], [39.99, 39.99, 5.39]])  # lower bound inclusive
    grid = occupancy_from_scans([(np.concatenate([outside, border]), IDENTITY, IDENTITY)], IDENTITY)
    assert occupied_voxels(grid) == {(0, 0, 0), (199, 199, 15)}


def test_scans_accumulate_as_a_union():
    a, b = (10, 20, 3), (150, 160, 12)
    moved = make_transform(np.eye(3), [0.4 * 7, 0.0, 0.0])  # ego i is 7 voxels ahead of the key ego
    grid = occupancy_from_scans([(voxel_centre(a)[None], IDENTITY, IDENTITY),
                                 (voxel_centre(b)[None], IDENTITY, moved)], IDENTITY)
    assert occupied_voxels(grid) == {a, (b[0] + 7, b[1], b[2])}


# ---------------------------------------------------------------- the sample_data chain

class TinyTables:
    """Just enough of a NuScenes object for `lidar_chain` and `occbev_target`: `get(table, token)`
    and `dataroot`; one LIDAR_TOP sample_data per entry of `key_flags`, all at the same pose."""

    def __init__(self, key_flags, dataroot=""):
        self.dataroot = dataroot
        tokens = [f"sd{i}" for i in range(len(key_flags))]
        self.sample_data = {
            token: {"token": token, "is_key_frame": is_key, "filename": f"{token}.pcd.bin",
                    "calibrated_sensor_token": "lidar", "ego_pose_token": "pose",
                    "prev": tokens[i - 1] if i > 0 else "", "next": tokens[i + 1] if i + 1 < len(tokens) else ""}
            for i, (token, is_key) in enumerate(zip(tokens, key_flags))}
        self.sample = {f"sample_{t}": {"data": {"LIDAR_TOP": t}} for t, k in zip(tokens, key_flags) if k}
        self.calibrated_sensor = {"lidar": {"rotation": [1.0, 0.0, 0.0, 0.0], "translation": [0.0, 0.0, 0.0]}}
        self.ego_pose = {"pose": {"rotation": [1.0, 0.0, 0.0, 0.0], "translation": [0.0, 0.0, 0.0]}}

    def get(self, table, token):
        return getattr(self, table)[token]


def test_lidar_chain_takes_every_sweep_up_to_the_second_key_frame_on_each_side():
    #            0     1      2      3     4      5     6      7     8      9      10    11     12
    flags = [True, False, False, True, False, True, False, True, False, False, True, False, True]
    tables = TinyTables(flags)
    tokens = lambda chain: [record["token"] for record in chain]  # noqa: E731
    # key frames at 0, 3, 5, 7, 10, 12; the target of 5 spans key frames 0..10 exactly
    assert tokens(lidar_chain(tables, "sample_sd5")) == [f"sd{i}" for i in range(0, 11)]
    assert tokens(lidar_chain(tables, "sample_sd7")) == [f"sd{i}" for i in range(3, 13)]
    assert tokens(lidar_chain(tables, "sample_sd0")) == [f"sd{i}" for i in range(0, 6)]  # scene start
    assert tokens(lidar_chain(tables, "sample_sd12")) == [f"sd{i}" for i in range(7, 13)]  # scene end
    assert tokens(lidar_chain(tables, "sample_sd5", frames=1)) == [f"sd{i}" for i in range(3, 8)]
    assert tokens(lidar_chain(tables, "sample_sd5", frames=0)) == ["sd5"]
    with pytest.raises(ValueError, match="frames"):
        lidar_chain(tables, "sample_sd5", frames=-1)


# ---------------------------------------------------------------- files and errors

def test_target_takes_the_sweeps_between_key_frames_and_names_a_corrupt_lidar_file(tmp_path):
    tables = TinyTables([True, False, True, False, True, False, True], dataroot=str(tmp_path))
    voxels = [(10 + 20 * i, 30, 4) for i in range(7)]  # one point per scan, each in its own voxel
    for i, voxel in enumerate(voxels):
        point = np.concatenate([voxel_centre(voxel), [1.0, 0.0]]).astype(np.float32)
        point.tofile(tmp_path / f"sd{i}.pcd.bin")
    # key frames 0, 2, 4, 6: with frames=1, key frame 2 spans sample_data 0..4, sweeps included
    assert occupied_voxels(occbev_target(tables, "sample_sd2", frames=1)) == set(voxels[:5])

    np.array([1.0, 2.0, np.nan, 4.0, 5.0], dtype=np.float32).tofile(tmp_path / "sd3.pcd.bin")
    with pytest.raises(ValueError, match="sd3.pcd.bin.*NaN"):
        occbev_target(tables, "sample_sd2", frames=1)
    (tmp_path / "sd3.pcd.bin").write_bytes(b"\0" * 23)
    with pytest.raises(ValueError, match="sd3.pcd.bin.*multiple of 20"):
        occbev_target(tables, "sample_sd2", frames=1)
    (tmp_path / "sd3.pcd.bin").unlink()
    with pytest.raises(FileNotFoundError, match="sd3.pcd.bin"):
        occbev_target(tables, "sample_sd2", frames=1)


def test_target_file_round_trip_and_errors(tmp_path):
    grid = np.random.default_rng(0).random((200, 200, 16)) < 0.1
    path = tmp_path / "token.npz"
    save_occbev_target(path, grid)
    loaded = load_occbev_target(path)
    assert loaded.dtype == bool
    np.testing.assert_array_equal(loaded, grid)
    assert [p.name for p in tmp_path.iterdir()] == ["token.npz"]  # no temp file left behind

    with pytest.raises(ValueError, match="bool"):
        save_occbev_target(path, grid.astype(np.uint8))
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_occbev_target(tmp_path / "absent.npz")
    np.savez(tmp_path / "wrong_key.npz", semantics=np.zeros((200, 200, 16), np.uint8))
    with pytest.raises(KeyError, match="wrong_key.npz.*occupied"):
        load_occbev_target(tmp_path / "wrong_key.npz")
    np.savez(tmp_path / "wrong_shape.npz", occupied=np.zeros((200, 200, 16), np.uint8))
    with pytest.raises(ValueError, match="wrong_shape.npz.*200, 200, 2"):
        load_occbev_target(tmp_path / "wrong_shape.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="garbage.npz"):
        load_occbev_target(tmp_path / "garbage.npz")


# ---------------------------------------------------------------- real nuScenes samples

@pytest.fixture(scope="module")
def nusc():
    if not REAL_ROOT.is_dir():
        pytest.skip(f"real nuScenes samples not found at {REAL_ROOT}")
    return NuScenes(version="v1.0-trainval", dataroot=str(REAL_ROOT), verbose=False)


def scene_sample_tokens(nusc, scene_name):
    scene = next(s for s in nusc.scene if s["name"] == scene_name)
    tokens, token = [], scene["first_sample_token"]
    while token:
        tokens.append(token)
        token = nusc.get("sample", token)["next"]
    return tokens


def devkit_voxels(nusc, sample_token, key_sample_token):
    """Occ3D voxels hit by the LIDAR_TOP points of `sample_token`, moved into the ego frame of
    `key_sample_token` with the devkit's LidarPointCloud and pyquaternion (the reference)."""
    sample_data = nusc.get("sample_data", nusc.get("sample", sample_token)["data"]["LIDAR_TOP"])
    key_data = nusc.get("sample_data", nusc.get("sample", key_sample_token)["data"]["LIDAR_TOP"])
    cloud = LidarPointCloud.from_file(str(REAL_ROOT / sample_data["filename"]))
    cloud.points = cloud.points.astype(np.float64)
    cloud.remove_close(1.0)  # the devkit's ego-body rule: |x| < 1 and |y| < 1 in the sensor frame
    calibration = nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
    cloud.rotate(Quaternion(calibration["rotation"]).rotation_matrix)
    cloud.translate(np.array(calibration["translation"]))
    pose = nusc.get("ego_pose", sample_data["ego_pose_token"])
    cloud.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    cloud.translate(np.array(pose["translation"]))
    key_pose = nusc.get("ego_pose", key_data["ego_pose_token"])
    cloud.translate(-np.array(key_pose["translation"]))
    cloud.rotate(Quaternion(key_pose["rotation"]).inverse.rotation_matrix)
    indices = np.floor((cloud.points[:3].T - LOWER) / 0.4).astype(int)
    inside = np.all((indices >= 0) & (indices < [200, 200, 16]), axis=1)
    return set(map(tuple, indices[inside]))


@pytest.mark.parametrize("scene_name", ["scene-0061", "scene-0003", "scene-0006"])
def test_key_frame_points_map_to_the_devkit_voxels(nusc, scene_name):
    token = scene_sample_tokens(nusc, scene_name)[0]
    expected = devkit_voxels(nusc, token, token)
    assert len(expected) > 3000  # a real scan, not a trivial comparison
    assert occupied_voxels(occbev_target(nusc, token, frames=0)) == expected


def test_accumulated_target_holds_the_neighbouring_key_frames_through_the_devkit_chain(nusc):
    tokens = scene_sample_tokens(nusc, "scene-0006")
    assert len(tokens) == 11
    middle = tokens[5]
    plus_minus_2 = set().union(*(devkit_voxels(nusc, t, middle) for t in tokens[3:8]))
    plus_minus_3 = plus_minus_2.union(*(devkit_voxels(nusc, t, middle) for t in (tokens[2], tokens[8])))
    assert plus_minus_3 != plus_minus_2  # the frame count is visible in the target
    target = occupied_voxels(occbev_target(nusc, middle))
    assert target == plus_minus_2
    assert len(target) > len(devkit_voxels(nusc, middle, middle))
    # scene start: only the key frame and the next two exist
    first = tokens[0]
    assert occupied_voxels(occbev_target(nusc, first)) == set().union(
        *(devkit_voxels(nusc, t, first) for t in tokens[:3]))


def test_cli_writes_every_key_frame_and_keeps_existing_files(nusc, tmp_path, capsys):
    out = tmp_path / "targets"
    args = ["--root", str(REAL_ROOT), "--version", "v1.0-trainval", "--out", str(out)]
    subprocess.run([sys.executable, str(REPO / "datasets" / "prepare_occbev.py")] + args,
                   check=True, capture_output=True, cwd=tmp_path)
    assert sorted(p.stem for p in out.iterdir()) == sorted(s["token"] for s in nusc.sample)
    middle = scene_sample_tokens(nusc, "scene-0006")[5]
    np.testing.assert_array_equal(load_occbev_target(out / f"{middle}.npz"), occbev_target(nusc, middle))

    save_occbev_target(out / f"{middle}.npz", np.zeros((200, 200, 16), bool))
    prepare_occbev.main(args)  # in process from here on: faster than a second interpreter
    assert "0 written, 13 already there" in capsys.readouterr().out
    assert not load_occbev_target(out / f"{middle}.npz").any()
    prepare_occbev.main(args + ["--force"])
    assert "13 written, 0 already there" in capsys.readouterr().out
    np.testing.assert_array_equal(load_occbev_target(out / f"{middle}.npz"), occbev_target(nusc, middle))


def test_cli_rejects_a_missing_table_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare_occbev.main(["--root", str(tmp_path), "--version", "v1.0-nothing"])
    assert "v1.0-nothing" in capsys.readouterr().err


def test_cli_on_the_synthetic_world_accumulates_sweeps_that_agree_with_its_occ3d_gt(synthetic_root, tmp_path):
    """The synthetic world has real sweeps (9 between key frames) and an independently voxelised
    Occ3D GT: accumulated points must land on GT-occupied voxels (ignoring ego motion would put
    about half of them on free space), apart from the smear of moving agents."""
    out = tmp_path / "targets"
    subprocess.run([sys.executable, str(REPO / "datasets" / "prepare_occbev.py"), "--root", synthetic_root,
                    "--version", "v1.0-mini", "--out", str(out)], check=True, capture_output=True, cwd=tmp_path)
    nusc = NuScenes(version="v1.0-mini", dataroot=synthetic_root, verbose=False)
    assert sorted(p.stem for p in out.iterdir()) == sorted(s["token"] for s in nusc.sample)
    hits = total = 0
    for sample in nusc.sample:
        chain = lidar_chain(nusc, sample["token"])
        assert len(chain) > sum(record["is_key_frame"] for record in chain)  # sweeps are in
        target = load_occbev_target(out / f"{sample['token']}.npz")
        key_frame_only = occbev_target(nusc, sample["token"], frames=0)
        assert target.sum() > key_frame_only.sum() and target[key_frame_only].all()
        scene_name = nusc.get("scene", sample["scene_token"])["name"]
        with np.load(Path(synthetic_root) / "gts" / scene_name / sample["token"] / "labels.npz") as gt:
            gt_occupied = gt["semantics"] != 17
        hits += int((target & gt_occupied).sum())
        total += int(target.sum())
    assert hits / total > 0.85
