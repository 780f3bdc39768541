"""datasets/prepare_nuscenes.py on the real nuScenes samples in ../shared/nuscenes-real."""
import os
import pickle

import numpy as np
import pytest
from pyquaternion import Quaternion

from datasets import prepare_nuscenes
from datasets.nuscenes_occ import load_infos

REAL_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "nuscenes-real")
VERSION = "v1.0-trainval"
pytestmark = pytest.mark.skipif(not os.path.isdir(REAL_ROOT), reason="../shared/nuscenes-real not present")


@pytest.fixture(scope="module")
def nusc():
    from nuscenes.nuscenes import NuScenes
    return NuScenes(version=VERSION, dataroot=REAL_ROOT, verbose=False)


@pytest.fixture(scope="module")
def info_paths(tmp_path_factory):
    return prepare_nuscenes.prepare(REAL_ROOT, VERSION, out_dir=str(tmp_path_factory.mktemp("infos")))


def all_infos(info_paths):
    return [info for path in info_paths.values() for info in load_infos(path)]


def transform_of(record):
    out = np.eye(4)
    out[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    out[:3, 3] = record["translation"]
    return out


def test_splits_and_order(info_paths):
    assert sorted(info_paths) == ["train", "val"]
    train = load_infos(info_paths["train"])
    val = load_infos(info_paths["val"])
    assert {i["scene_name"] for i in train} == {"scene-0006", "scene-0061"}
    assert [i["token"] for i in val] == ["fd8420396768425eabec9bdddf7e64b6"]
    keys = [(i["scene_name"], i["timestamp"]) for i in train]
    assert keys == sorted(keys) and len(train) == 12
    with open(info_paths["val"], "rb") as f:
        data = pickle.load(f)
    assert data["version"] == VERSION and data["split"] == "val"


def test_records_match_the_devkit(info_paths, nusc):
    for info in all_infos(info_paths):
        sample = nusc.get("sample", info["token"])
        assert (info["prev"], info["next"], info["timestamp"]) == (sample["prev"], sample["next"], sample["timestamp"])
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        assert info["lidar_path"] == lidar["filename"] and info["lidar_token"] == lidar["token"]
        np.testing.assert_allclose(info["lidar2ego"], transform_of(nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])), atol=1e-12)
        np.testing.assert_allclose(info["ego2global"], transform_of(nusc.get("ego_pose", lidar["ego_pose_token"])), atol=1e-9)
        channels = [c for c in sample["data"] if c.startswith("CAM")]
        assert sorted(info["cams"]) == sorted(channels)
        for channel, cam in info["cams"].items():
            record = nusc.get("sample_data", sample["data"][channel])
            calib = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
            np.testing.assert_allclose(cam["intrinsics"], calib["camera_intrinsic"])
            np.testing.assert_allclose(cam["cam2ego"], transform_of(calib), atol=1e-12)
            # each camera carries its own ego pose, not the LiDAR's
            np.testing.assert_allclose(cam["ego2global"], transform_of(nusc.get("ego_pose", record["ego_pose_token"])), atol=1e-9)
            assert not np.allclose(cam["ego2global"], info["ego2global"], atol=1e-6)
            assert cam["path"] == record["filename"] and cam["timestamp"] == record["timestamp"]
        assert info["occ_path"] is None  # the real samples have no Occ3D GT


def test_boxes_are_in_the_key_frame_ego_frame(info_paths, nusc):
    for info in all_infos(info_paths)[:3] + all_infos(info_paths)[-2:]:
        _, devkit_boxes, _ = nusc.get_sample_data(info["lidar_token"])  # LiDAR frame
        boxes = info["boxes"]
        assert boxes["tokens"] == [b.token for b in devkit_boxes]
        lidar2ego = info["lidar2ego"]
        for i, box in enumerate(devkit_boxes):
            np.testing.assert_allclose(boxes["centers"][i], lidar2ego[:3, :3] @ box.center + lidar2ego[:3, 3], atol=1e-6)
            heading = lidar2ego[:3, :3] @ box.orientation.rotation_matrix[:, 0]
            assert abs(np.angle(np.exp(1j * (boxes["yaws"][i] - np.arctan2(heading[1], heading[0]))))) < 1e-6
            np.testing.assert_allclose(boxes["sizes"][i], box.wlh)
            assert boxes["names"][i] == box.name
        assert boxes["velocities"].shape == (len(devkit_boxes), 2)


def test_sweeps_follow_the_lidar_chain(info_paths, nusc):
    """scene-0006: the LiDAR prev chain links earlier key frames; sensor2lidar must equal the
    devkit's chain sweep sensor -> sweep ego -> global -> key ego -> key LiDAR."""
    scene = [i for i in all_infos(info_paths) if i["scene_name"] == "scene-0006"]
    assert [len(i["sweeps"]) for i in scene] == list(range(11))
    last = scene[-1]
    previous = [i["lidar_path"] for i in scene[:-1]][::-1]  # nearest first
    assert [s["path"] for s in last["sweeps"]] == previous
    lags = [s["time_lag"] for s in last["sweeps"]]
    assert lags == sorted(lags) and lags[0] > 0
    key = nusc.get("sample_data", last["lidar_token"])
    global2key = np.linalg.inv(transform_of(nusc.get("ego_pose", key["ego_pose_token"])) @
                               transform_of(nusc.get("calibrated_sensor", key["calibrated_sensor_token"])))
    record = key
    for sweep in last["sweeps"]:
        record = nusc.get("sample_data", record["prev"])
        expected = global2key @ transform_of(nusc.get("ego_pose", record["ego_pose_token"])) @ \
            transform_of(nusc.get("calibrated_sensor", record["calibrated_sensor_token"]))
        np.testing.assert_allclose(sweep["sensor2lidar"], expected, atol=1e-9)
        assert sweep["time_lag"] == pytest.approx((key["timestamp"] - record["timestamp"]) * 1e-6)


def test_rerun_is_skipped_unless_forced(info_paths, capsys):
    out_dir = os.path.dirname(info_paths["train"])
    before = os.path.getmtime(info_paths["train"])
    prepare_nuscenes.prepare(REAL_ROOT, VERSION, out_dir=out_dir)
    assert "up to date" in capsys.readouterr().out
    assert os.path.getmtime(info_paths["train"]) == before
    prepare_nuscenes.prepare(REAL_ROOT, VERSION, out_dir=out_dir, force=True)
    assert os.path.getmtime(info_paths["train"]) > before


def mirror_root(tmp_path, skip=()):
    """A root of symlinks to the real files, leaving out the relative paths in `skip`."""
    for folder, _, files in os.walk(REAL_ROOT):
        for name in files:
            relative = os.path.relpath(os.path.join(folder, name), REAL_ROOT)
            if relative in skip:
                continue
            os.makedirs(os.path.dirname(tmp_path / relative), exist_ok=True)
            os.symlink(os.path.join(folder, name), tmp_path / relative)
    return str(tmp_path)


def test_missing_table_is_a_clear_error(tmp_path):
    root = mirror_root(tmp_path, skip={os.path.join(VERSION, "ego_pose.json")})
    with pytest.raises(FileNotFoundError, match="ego_pose.json"):
        prepare_nuscenes.prepare(root, VERSION)


def test_missing_sensor_file_is_a_clear_error(tmp_path):
    image = "samples/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg"
    root = mirror_root(tmp_path, skip={image})
    with pytest.raises(FileNotFoundError, match="CAM_FRONT__1532402927612460.jpg"):
        prepare_nuscenes.prepare(root, VERSION)


def test_scene_in_no_split_is_reported(tmp_path, capsys):
    import json
    root = mirror_root(tmp_path, skip={os.path.join(VERSION, "scene.json")})
    with open(os.path.join(REAL_ROOT, VERSION, "scene.json")) as f:
        scenes = json.load(f)
    scenes[1]["name"] = "scene-9999"  # was scene-0003, the only val scene
    with open(os.path.join(root, VERSION, "scene.json"), "w") as f:
        json.dump(scenes, f)
    written = prepare_nuscenes.prepare(root, VERSION)
    assert sorted(written) == ["train"]
    assert "scene-9999" in capsys.readouterr().err
    assert all(i["scene_name"] != "scene-9999" for i in load_infos(written["train"]))
