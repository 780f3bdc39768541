"""Occ3D-Waymo: the synthetic world in the Waymo layout, prepare_waymo, the dataset, the OHEM loss,
the scorer and their errors. One small world per module: 2 scenes (1 training, 1 validation) x 2
frames, 192 x 128 front images."""
import json
import math
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from datasets import prepare_waymo
from datasets.nuscenes_occ import collate, load_infos
from datasets.synthetic import waymo as synthetic_waymo
from datasets.waymo_occ import WaymoOccDataset, load_waymo_gt, load_waymo_points
from occ import waymo
from occ.config import get_config
from occ.data import select_frames
from occ.errors import DataError, UsageError
from occ.losses import ohem_cross_entropy
from scoring import waymo as scoring_waymo

FRONT_SIZE = (192, 128)


@pytest.fixture(scope="module")
def waymo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("waymo") / "root")
    synthetic_waymo.generate_waymo(synthetic_waymo.WaymoOptions(root, scenes=2, frames_per_scene=2,
                                                                image_size=FRONT_SIZE, workers=1), progress=False)
    prepare_waymo.prepare(root)
    return root


def copy_root(root, tmp_path):
    """A writable copy of the small world (for the tests that break a file)."""
    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    return copy


def voxel_index(xyz):
    ijk = np.floor((xyz - waymo.GRID_MIN) / waymo.VOXEL_SIZE).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < waymo.GRID_SHAPE), axis=1)
    return ijk[inside]


def test_layout_and_splits(waymo_root):
    # 2 scenes -> 1 training (prefix 0) and 1 validation (prefix 1); validation files under training/
    for index in (0, 1, 1000000, 1000001):
        assert os.path.isfile(os.path.join(waymo_root, "training", "velodyne", f"{index:07d}.bin"))
        for camera in range(5):
            assert os.path.isfile(os.path.join(waymo_root, "training", f"image_{camera}", f"{index:07d}.jpg"))
    assert os.path.isfile(os.path.join(waymo_root, "voxel04", "training", "000", "001_04.npz"))
    assert os.path.isfile(os.path.join(waymo_root, "voxel04", "validation", "000", "001_04.npz"))
    arrays = np.load(os.path.join(waymo_root, "voxel04", "validation", "000", "000_04.npz"))
    assert sorted(arrays.files) == ["final_voxel_state", "infov", "origin_voxel_state", "voxel_label"]
    assert arrays["voxel_label"].dtype == np.uint8 and arrays["voxel_label"].shape == (200, 200, 16)
    assert set(np.unique(arrays["voxel_label"])) <= set(range(15)) | {23}
    # camera-visible voxels are LiDAR-observed and inside the field of view; the back is outside it
    final, origin, infov = (arrays[k].astype(bool) for k in ("final_voxel_state", "origin_voxel_state", "infov"))
    assert final.any() and not (final & ~origin).any() and not (final & ~infov).any()
    assert not infov[:60, 90:110].any() and infov[150:, 90:110].all()  # 16-40 m behind / ahead of the car
    train = load_infos(os.path.join(waymo_root, "occ_infos_train.pkl"))
    val = load_infos(os.path.join(waymo_root, "occ_infos_val.pkl"))
    assert [i["token"] for i in train] == ["000_000", "000_001"] and [i["split"] for i in val] == ["val", "val"]
    assert train[0]["next"] == "000_001" and train[1]["prev"] == "000_000"


def test_points_land_in_occupied_voxels(waymo_root):
    for info in load_infos(os.path.join(waymo_root, "occ_infos_train.pkl")):
        raw = np.fromfile(os.path.join(waymo_root, info["lidar_path"]), dtype=np.float32).reshape(-1, 6)
        points = load_waymo_points(os.path.join(waymo_root, info["lidar_path"]))
        np.testing.assert_allclose(points[:, 3:5], np.tanh(raw[:, 3:5]), rtol=1e-6)
        assert points.shape == (len(raw), 5) and raw[:, 3].max() > 1.0  # tanh matters
        assert raw[:, 5].min() >= 0 and raw[:, 5].max() < 32 * 1084  # range-image index
        label = np.load(os.path.join(waymo_root, info["occ_path"]))["voxel_label"]
        ijk = voxel_index(points[:, :3])
        assert len(ijk) > 5000
        occupied = label[ijk[:, 0], ijk[:, 1], ijk[:, 2]] != waymo.STORED_FREE
        assert occupied.mean() >= 0.95


def test_camera_calibration_chain(waymo_root):
    """Each camera's record: the image file has its size, the calibration looks where the camera
    is mounted (left = +y), and LiDAR points ahead of the camera project inside its image."""
    info = load_infos(os.path.join(waymo_root, "occ_infos_train.pkl"))[0]
    points = load_waymo_points(os.path.join(waymo_root, info["lidar_path"]))
    assert list(info["cams"]) == list(waymo.CAMERA_NAMES)
    expected_yaw = {"FRONT": 0, "FRONT_LEFT": 45, "FRONT_RIGHT": -45, "SIDE_LEFT": 90, "SIDE_RIGHT": -90}
    for name, cam in info["cams"].items():
        width, height = cam["image_size"]
        side_height = round(FRONT_SIZE[1] * 886 / 1280)
        assert (width, height) == (FRONT_SIZE[0], FRONT_SIZE[1] if name.startswith("FRONT") else side_height)
        axis = cam["cam2ego"][:3, 2]  # optical axis in the vehicle frame
        assert math.degrees(math.atan2(axis[1], axis[0])) == pytest.approx(expected_yaw[name], abs=1e-6)
        centre = cam["cam2ego"][:3, 3]
        rel = points[:, :3] - centre
        azimuth = np.degrees(np.arctan2(rel[:, 1], rel[:, 0]))
        ahead = (np.abs((azimuth - expected_yaw[name] + 180) % 360 - 180) < 20) & (np.hypot(rel[:, 0], rel[:, 1]) > 3) \
            & (np.abs(rel[:, 2]) < 0.2 * np.hypot(rel[:, 0], rel[:, 1]))
        assert ahead.sum() > 100, name
        ego2cam = np.linalg.inv(cam["cam2ego"])
        p = points[ahead, :3] @ ego2cam[:3, :3].T + ego2cam[:3, 3]
        uv = p @ cam["intrinsics"].T
        u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        assert (p[:, 2] > 0).all()
        assert ((u >= 0) & (u < width) & (v >= 0) & (v < height)).mean() > 0.99, name
    # the dataset resizes both sizes to the input and its depth maps see points in every camera
    dataset = WaymoOccDataset(waymo_root, os.path.join(waymo_root, "occ_infos_train.pkl"), train=False,
                              image_size=(64, 176), load_gt=False)
    sample = dataset[0]
    assert sample["images"].shape == (5, 3, 64, 176)
    assert ((sample["depth_maps"] > 0).flatten(1).sum(1) > 20).all()


def test_remap_free_23_to_15(waymo_root):
    info = load_infos(os.path.join(waymo_root, "occ_infos_val.pkl"))[1]
    path = os.path.join(waymo_root, info["occ_path"])
    stored = np.load(path)
    gt = load_waymo_gt(path)
    label = stored["voxel_label"]
    assert (gt["semantics"][label == 23] == 15).all()
    assert (gt["semantics"][label != 23] == label[label != 23]).all()
    assert gt["semantics"].max() == 15 and gt["semantics"].dtype == np.int64
    np.testing.assert_array_equal(gt["mask_camera"], stored["infov"] & stored["final_voxel_state"].astype(bool))
    np.testing.assert_array_equal(gt["mask_lidar"], stored["origin_voxel_state"].astype(bool))


def test_bev_flips_flip_every_grid(waymo_root):
    info_path = os.path.join(waymo_root, "occ_infos_train.pkl")
    options = dict(load_points=False, load_depth=False, load_images=False)
    plain = WaymoOccDataset(waymo_root, info_path, train=False, **options)[0]
    train = WaymoOccDataset(waymo_root, info_path, train=True, **options)
    seen = set()
    for epoch in range(40):
        train.set_epoch(epoch)
        sample = train[0]
        flip_x, flip_y = bool(sample["bda"][0, 0] < 0), bool(sample["bda"][1, 1] < 0)
        seen.add((flip_x, flip_y))
        for key in ("semantics", "mask_camera", "mask_lidar", "infov"):
            expected = plain[key]
            if flip_x:
                expected = expected.flip(0)
            if flip_y:
                expected = expected.flip(1)
            assert torch.equal(sample[key], expected), (key, flip_x, flip_y)
        if len(seen) == 4:
            break
    assert seen == {(False, False), (True, False), (False, True), (True, True)}
    assert not torch.equal(plain["infov"].flip(0), plain["infov"].flip(1))  # the test can tell the axes apart


def test_ohem_loss_by_hand():
    # 5 voxels, 3 classes, zero logits: CE = ln 3 everywhere; weights w = (1, 2, 4)
    logits = torch.zeros(1, 5, 1, 1, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 2, 1]).view(1, 5, 1, 1)
    mask = torch.tensor([True, True, True, False, True]).view(1, 5, 1, 1)
    weights = torch.tensor([1.0, 2.0, 4.0])
    loss = ohem_cross_entropy(logits, labels, mask, weights, top_ratio=0.2, top_weight=4.0)
    ln3 = math.log(3)
    per_voxel = [1 * ln3, 2 * ln3, 4 * ln3, 0.0, 2 * ln3]
    expected = sum(per_voxel) / 5 + 4.0 * 4 * ln3  # the top 20 % = int(0.2 * 5) = 1 voxel, the largest
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 3].abs().sum() == 0  # the masked voxel gets no gradient
    # the top 40 %: the two largest (4 ln 3 and 2 ln 3)
    loss = ohem_cross_entropy(logits, labels, mask, weights, top_ratio=0.4, top_weight=4.0)
    assert loss.item() == pytest.approx(sum(per_voxel) / 5 + 4.0 * 3 * ln3, rel=1e-6)
    with pytest.raises(ValueError, match="class_weights"):
        ohem_cross_entropy(logits, labels, mask, torch.ones(4))


def test_presets_and_model_with_five_cameras(waymo_root):
    cfg = get_config("effocc_waymo_fusion_r18")
    assert (cfg.data.benchmark, cfg.model.num_classes, cfg.train.loss, cfg.train.lr) == ("waymo", 16, "ohem", 1e-4)
    assert get_config("effocc_waymo_lidar_tiny").model.modality == "lidar"
    from datasets.build import dataset_from_config
    from occ.models import build_model
    cfg = get_config("effocc_waymo_fusion_r18_tiny")
    dataset = dataset_from_config(cfg, waymo_root, os.path.join(waymo_root, "occ_infos_train.pkl"), train=True)
    batch = collate([dataset[0]])
    assert batch["images"].shape == (1, 5, 3, 128, 352) and batch["points"][0].shape[1] == 5
    torch.manual_seed(0)
    with torch.no_grad():
        logits = build_model(cfg).eval()(batch)["occ_logits"]
    assert logits.shape == (1, 200, 200, 16, 16)
    loss = ohem_cross_entropy(logits, batch["semantics"], batch["mask_camera"], torch.tensor(waymo.CLASS_WEIGHTS))
    assert torch.isfinite(loss)


def test_select_frames_every_fifth():
    class Infos:
        infos = [{"scene_token": scene, "frame": f} for scene in ("a", "b") for f in range(12)]
    data = Infos()
    select_frames(data, 5)
    assert [(i["scene_token"], i["frame"]) for i in data.infos] == [("a", 0), ("a", 5), ("a", 10), ("b", 0),
                                                                    ("b", 5), ("b", 10)]
    with pytest.raises(UsageError, match="frames-every"):
        select_frames(data, 0)


def write_predictions(root, folder, split, transform):
    os.makedirs(folder, exist_ok=True)
    for info in load_infos(os.path.join(root, f"occ_infos_{split}.pkl")):
        semantics = load_waymo_gt(os.path.join(root, info["occ_path"]))["semantics"]
        np.savez_compressed(os.path.join(folder, f"{info['token']}.npz"), semantics=transform(semantics))


def test_scoring_prediction_folder(waymo_root, tmp_path):
    perfect = str(tmp_path / "perfect")
    write_predictions(waymo_root, perfect, "val", lambda s: s.astype(np.uint8))
    out = str(tmp_path / "m.json")
    metrics = scoring_waymo.main(["--pred-dir", perfect, "--data-root", waymo_root, "--out", out])
    assert metrics["miou"] == pytest.approx(1.0) and metrics["num_samples"] == 2
    assert json.load(open(out))["miou"] == pytest.approx(1.0)
    assert metrics["per_class"]["TRAFFIC_LIGHT"]["iou"] != metrics["per_class"]["TRAFFIC_LIGHT"]["iou"]  # NaN: absent
    # all free: every present class scores 0
    free = str(tmp_path / "free")
    write_predictions(waymo_root, free, "train", lambda s: np.full(s.shape, 15, np.uint8))
    assert scoring_waymo.main(["--pred-dir", free, "--data-root", waymo_root, "--split", "train"])["miou"] == 0.0
    # a prediction with a label beyond free is refused, naming the file
    bad = str(tmp_path / "bad")
    write_predictions(waymo_root, bad, "val", lambda s: np.full(s.shape, 16, np.uint8))
    with pytest.raises(DataError, match="000_000.npz.*outside"):
        scoring_waymo.main(["--pred-dir", bad, "--data-root", waymo_root])


def test_bad_gt_files(waymo_root, tmp_path):
    arrays = dict(np.load(os.path.join(waymo_root, "voxel04", "training", "000", "000_04.npz")))
    path = str(tmp_path / "gt.npz")
    np.savez(path, **{**arrays, "infov": arrays["infov"][:, :, :8]})
    with pytest.raises(DataError, match=r"gt.npz.*'infov' has shape \(200, 200, 8\)"):
        load_waymo_gt(path)
    label = arrays["voxel_label"].copy()
    label[0, 0, 0] = 17
    np.savez(path, **{**arrays, "voxel_label": label})
    with pytest.raises(DataError, match=r"gt.npz.*outside \{0..14, 23\}: \[17\]"):
        load_waymo_gt(path)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "final_voxel_state"})
    with pytest.raises(DataError, match="lacks 'final_voxel_state'"):
        load_waymo_gt(path)


def test_bad_calibration(waymo_root, tmp_path):
    root = copy_root(waymo_root, tmp_path)
    cam_file = os.path.join(root, "cam_infos.pkl")
    pose_all = pickle.load(open(cam_file, "rb"))
    pose_all[0][1] = pose_all[0][1][:4]
    pickle.dump(pose_all, open(cam_file, "wb"))
    with pytest.raises(DataError, match="scene 0 frame 1 has 4 camera entries, expected 5"):
        prepare_waymo.prepare(root, force=True)
    del pose_all[0][1]
    pickle.dump(pose_all, open(cam_file, "wb"))
    with pytest.raises(DataError, match="cam_infos.pkl has no entry for scene 0 frame 1"):
        prepare_waymo.prepare(root, force=True)
    # an info record with 4 cameras is refused by the dataset
    infos = load_infos(os.path.join(waymo_root, "occ_infos_train.pkl"))
    del infos[0]["cams"]["SIDE_RIGHT"]
    info_path = str(tmp_path / "four.pkl")
    pickle.dump({"version": "waymo", "split": "train", "infos": infos}, open(info_path, "wb"))
    with pytest.raises(UsageError, match="000_000.*4 cameras, expected 5"):
        WaymoOccDataset(waymo_root, info_path, train=False)[0]


def test_train_one_step_and_score_the_checkpoint(waymo_root, tmp_path, capsys):
    """train_fusion.py on the Waymo world (--frames-every, the OHEM loss, validation with the Waymo
    classes), then evaluate.py --benchmark waymo on its checkpoint."""
    import evaluate
    import train_fusion
    from occ.checkpoint import latest_checkpoint
    work_dir = str(tmp_path / "run")
    position = train_fusion.main(["--config", "effocc_waymo_lidar_tiny", "--data-root", waymo_root, "--work-dir",
                                  work_dir, "--max-steps", "1", "--val-every", "1", "--frames-every", "2",
                                  "--set", "train.warmup_iters=0", "train.log_interval=1"])
    assert position.step == 1
    assert "1 training samples" in capsys.readouterr().out  # frame 0 of the one training scene
    logged = b"".join(open(os.path.join(folder, name), "rb").read() for folder, _, names in os.walk(work_dir)
                      for name in names if name.startswith("events.out.tfevents"))
    assert b"train/loss_ohem" in logged  # the TensorBoard scalar of the OHEM loss
    assert b"val_iou/VEGETATION" in logged and b"val/bev_gt_vs_pred" in logged  # validated with the Waymo classes
    out = str(tmp_path / "m.json")
    metrics = evaluate.main(["--benchmark", "waymo", "--ckpt", str(latest_checkpoint(work_dir)),
                             "--data-root", waymo_root, "--out", out, "--device", "cpu"])
    assert metrics["num_samples"] == 2 and 0.0 <= metrics["miou"] <= 1.0
    assert list(metrics["per_class"]) == list(waymo.CLASS_NAMES[:waymo.FREE])
    assert json.load(open(out))["benchmark"] == "waymo"
    with pytest.raises(UsageError, match="train.loss = 'ohem' uses the Occ3D-Waymo class weights"):
        train_fusion.main(["--config", "effocc_lidar_tiny", "--data-root", waymo_root, "--work-dir", work_dir,
                           "--no-val", "--max-steps", "1", "--set", "train.loss=ohem"])
