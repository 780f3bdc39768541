"""OpenOcc v2 occupancy and flow: the flow head, the loss, flow under BEV flips, and the scoring of
evaluate.py --benchmark openocc (scoring/openocc.py) on a hand-made world whose answers are known."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import train_fusion
from bench.flow import flow_on_gt_voxels
from datasets import transforms
from datasets.nuscenes_occ import NuScenesOccDataset, load_occ_gt
from occ import occ3d, openocc
from occ.checkpoint import CheckpointError, save_checkpoint
from occ.config import apply_overrides, get_config
from occ.ema import EMA
from occ.errors import DataError, UsageError
from occ.flow import flow_l1_loss, flow_voxel_weights
from occ.geometry import bda_matrix, make_transform
from occ.models import build_model
from occ.models.heads import FlowHead, OccHead
from occ.openocc_evaluation import score_openocc
from scoring import openocc as scoring_openocc

CAR, PEDESTRIAN, DRIVEABLE, FREE = 0, 7, 10, openocc.FREE
CAR_FLOW, PEDESTRIAN_FLOW, FLOOR_FLOW = (3.0, 4.0), (0.0, 1.0), (2.0, 0.0)  # speeds 5, 1 and 2 m/s
ORIGIN = (0.0, 0.0, 1.0)  # metres, ego frame: voxel (100, 100, 5)


# ------------------------------------------------------------------------------ model and loss
def test_flow_head_shape_and_preset():
    head, flow_head = OccHead(8, 4, num_z=3, num_classes=17), FlowHead(4, num_z=3)
    bev = torch.randn(2, 8, 5, 6)  # (B, C, Y, X)
    feature = head.feature(bev)
    assert feature.shape == (2, 6, 5, 4)
    assert flow_head(feature).shape == (2, 6, 5, 3, 2)
    assert torch.equal(head.classify(feature), head(bev))

    cfg = get_config("effocc_fusion_r18_flow")
    assert (cfg.data.benchmark, cfg.data.occ_gt_dir, cfg.model.num_classes) == ("openocc", "openocc_v2", 17)
    model = build_model(cfg)
    linears = [m for m in model.flow_head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 512), (512, 32)]
    assert model.head.num_classes == 17
    tiny = get_config("effocc_fusion_r18_flow_tiny")
    assert tiny.model.flow_head and tiny.model.num_classes == 17


def test_flow_config_errors():
    with pytest.raises(UsageError, match="num_classes"):
        apply_overrides(get_config("effocc_fusion_r18_flow"), ["model.num_classes=18"])
    with pytest.raises(UsageError, match="flow_head"):
        apply_overrides(get_config("effocc_fusion_r18"), ["model.flow_head=true"])
    with pytest.raises(UsageError, match="flow_loss_voxels"):
        apply_overrides(get_config("effocc_fusion_r18_flow"), ["train.flow_loss_voxels=some"])


def test_flow_loss_on_hand_made_tensors():
    semantics = torch.tensor([CAR, FREE, PEDESTRIAN, FREE]).view(1, 2, 2, 1)
    gt_flow = torch.zeros(1, 2, 2, 1, 2)
    flow = torch.tensor([[1.0, -2.0], [5.0, 5.0], [0.0, 0.5], [0.0, 0.0]]).view(1, 2, 2, 1, 2)
    # |error| summed over (vx, vy): car 3, free 10, pedestrian 0.5, free 0
    def loss(which):
        return flow_l1_loss(flow, gt_flow, flow_voxel_weights(semantics, gt_flow, which)).item()
    assert loss("occupied") == pytest.approx(3.5 / 4)
    assert loss("all") == pytest.approx(13.5 / 8)
    assert loss("balanced") == pytest.approx(3.5 / 4)  # nothing moves: "balanced" is "occupied"

    cfg = get_config("effocc_fusion_r18_flow_tiny")
    logits = torch.randn(1, 2, 2, 1, 17)
    batch = {"semantics": semantics, "flow": gt_flow, "mask_camera": torch.zeros(1, 2, 2, 1, dtype=torch.bool)}
    losses = train_fusion.make_loss_fn(cfg)(lambda b: {"occ_logits": logits, "flow": flow}, batch)
    assert set(losses) == {"loss_ce", "loss_flow"}
    assert losses["loss_flow"].item() == pytest.approx(0.25 * 3.5 / 4)
    # OpenOcc: CE over every voxel, although mask_camera is empty here
    expected_ce = F.cross_entropy(logits.view(-1, 17), semantics.view(-1))
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-6)


def test_balanced_flow_loss_gives_moving_and_static_voxels_half_each():
    # one moving car voxel, three static occupied voxels (a parked car, two pedestrians), four free
    semantics = torch.tensor([CAR, CAR, PEDESTRIAN, PEDESTRIAN, FREE, FREE, FREE, FREE]).view(1, 2, 4, 1)
    gt_flow = torch.zeros(1, 2, 4, 1, 2)
    gt_flow[0, 0, 0, 0] = torch.tensor([6.0, -8.0])   # 10 m/s
    gt_flow[0, 0, 3, 0] = torch.tensor([0.05, 0.0])   # a pedestrian below MOVING_SPEED: static
    weights = flow_voxel_weights(semantics, gt_flow, "balanced")
    assert weights.flatten().tolist() == pytest.approx([1 / 2, 1 / 6, 1 / 6, 1 / 6, 0, 0, 0, 0])
    flow = torch.zeros_like(gt_flow)
    flow[0, 0, 1, 0] = torch.tensor([1.0, 1.0])       # error 2 on the parked car
    # moving voxel: |0 - 6| + |0 + 8| = 14 -> 14 / 2 / 2; static: (2 + 0 + 0.05) / 3 / 2 / 2
    expected = 14 / 4 + 2.05 / 12
    assert flow_l1_loss(flow, gt_flow, weights).item() == pytest.approx(expected)
    # a label mask keeps only the voxels it sets, and the halves are shared by what is left
    keep = torch.zeros(1, 2, 4, 1, dtype=torch.bool)
    keep[0, 0, :2] = True
    assert flow_voxel_weights(semantics, gt_flow, "balanced", keep).flatten().tolist() == \
        pytest.approx([1 / 2, 1 / 2, 0, 0, 0, 0, 0, 0])
    # no voxel chosen: zero weights, zero loss
    nothing = flow_voxel_weights(semantics, gt_flow, "balanced", torch.zeros_like(keep))
    assert nothing.sum().item() == 0 and flow_l1_loss(flow, gt_flow, nothing).item() == 0
    # through the training loss, with the config switch
    cfg = apply_overrides(get_config("effocc_fusion_r18_flow_tiny"), ["train.flow_loss_voxels=balanced"])
    batch = {"semantics": semantics, "flow": gt_flow, "mask_camera": torch.ones(1, 2, 4, 1, dtype=torch.bool)}
    outputs = {"occ_logits": torch.zeros(1, 2, 4, 1, 17), "flow": flow}
    losses = train_fusion.make_loss_fn(cfg)(lambda b: outputs, batch)
    assert losses["loss_flow"].item() == pytest.approx(0.25 * expected)


def test_flow_on_gt_voxels_summary():
    semantics = np.array([CAR, CAR, PEDESTRIAN, FREE], dtype=np.uint8).reshape(2, 2, 1)
    gt_flow = np.zeros((2, 2, 1, 2), dtype=np.float32)
    gt_flow[0, 0, 0] = (3.0, 4.0)                     # the only moving voxel, 5 m/s
    flow = np.zeros_like(gt_flow)
    flow[0, 0, 0] = (0.0, 4.0)                        # speed 4, error 3, cosine 16 / 20
    flow[0, 1, 0] = (1.0, 0.0)                        # static car voxel, speed 1
    flow[1, 1, 0] = (9.0, 9.0)                        # free voxel: not counted
    summary = flow_on_gt_voxels([{}, {}], lambda s: (semantics, gt_flow), lambda s: flow)
    assert summary == pytest.approx({"moving": 2, "speed": 4.0, "epe": 3.0, "zero_flow_epe": 5.0, "cosine": 0.8,
                                     "static": 4, "static_speed": 0.5})


# ------------------------------------------------------------------------------------ BEV flips
def test_flip_flow_moves_like_the_points():
    """A voxel's flow after a flip is the flipped velocity: bda @ (p + v dt) = bda @ p + flow' dt."""
    flow = np.zeros(occ3d.GRID_SHAPE + (2,), dtype=np.float32)
    flow[150, 20, 3] = (3.0, -1.0)
    centre = np.array([150, 20, 3]) * occ3d.VOXEL_SIZE + occ3d.VOXEL_SIZE / 2 + occ3d.GRID_MIN
    for flip_x, flip_y in ((True, False), (False, True), (True, True)):
        flipped = transforms.flip_flow(flow, flip_x, flip_y)
        bda = bda_matrix(flip_x, flip_y)
        moved = bda[:3, :3] @ (centre + np.array([3.0, -1.0, 0.0]))  # one second later, flipped
        new_centre = bda[:3, :3] @ centre
        index = tuple(np.floor((new_centre - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE).astype(int))
        assert np.abs(flipped).sum() == np.abs(flow).sum()  # the one moving voxel, moved
        np.testing.assert_allclose(flipped[index], (moved - new_centre)[:2])


def test_dataset_flips_openocc_flow_with_sign(data_root):
    dataset = NuScenesOccDataset(data_root, os.path.join(data_root, "occ_infos_mini_train.pkl"), train=True,
                                 load_points=False, load_depth=False, load_images=False,
                                 occ_gt_dir=openocc.GT_DIR, require_flow=True)
    index = next(i for i, info in enumerate(dataset.infos)
                 if np.abs(load_occ_gt(dataset.gt_path(info))["flow"]).max() > 0.5)  # a frame with motion
    gt = load_occ_gt(dataset.gt_path(dataset.infos[index]))
    seen = set()
    for epoch in range(16):
        dataset.set_epoch(epoch)
        sample = dataset[index]
        signs = np.diag(sample["bda"].numpy())[:2]  # -1 on a flipped axis
        flip_x, flip_y = bool(signs[0] < 0), bool(signs[1] < 0)
        seen.add((flip_x, flip_y))
        np.testing.assert_array_equal(sample["semantics"].numpy(), transforms.flip_grid(gt["semantics"], flip_x, flip_y))
        np.testing.assert_array_equal(sample["flow"].numpy(), transforms.flip_grid(gt["flow"], flip_x, flip_y) * signs)
    assert {(True, False), (False, True)} <= seen  # both flips exercised
    assert int(sample["semantics"].max()) <= FREE  # the OpenOcc class order, kept


# ---------------------------------------------------------------------------------------- scoring
def shell_world():
    """A closed box of voxels around the origin: floor driveable (static, but with a nonzero flow that
    must not count), walls and ceiling car (3, 4) m/s where x index >= 100, pedestrian (0, 1) m/s
    behind. Every ray from ORIGIN stops in this shell."""
    semantics = np.full(occ3d.GRID_SHAPE, FREE, dtype=np.uint8)
    flow = np.zeros(occ3d.GRID_SHAPE + (2,), dtype=np.float32)
    box = (slice(90, 110), slice(90, 110), slice(0, 16))
    semantics[box] = CAR
    semantics[91:109, 91:109, 1:15] = FREE  # hollow
    shell = semantics != FREE
    semantics[:100][shell[:100]] = PEDESTRIAN
    flow[semantics == CAR] = CAR_FLOW
    flow[semantics == PEDESTRIAN] = PEDESTRIAN_FLOW
    floor = shell & (np.arange(16) == 0)[None, None, :]
    semantics[floor], flow[floor] = DRIVEABLE, FLOOR_FLOW
    return semantics, flow


def write_world(root, semantics, flow):
    """One sample 'a0' of scene 'scene-a': OpenOcc GT without masks and an info file whose LiDAR
    sits at ORIGIN."""
    gt_dir = os.path.join(root, openocc.GT_DIR, "scene-a", "a0")
    os.makedirs(gt_dir)
    np.savez_compressed(os.path.join(gt_dir, "labels.npz"), semantics=semantics, flow=flow)
    info = {"token": "a0", "scene_name": "scene-a", "scene_token": "scene-a", "timestamp": 0, "prev": "",
            "next": "", "lidar_path": "samples/LIDAR_TOP/a0.pcd.bin", "lidar_token": "lidar-a0",
            "lidar2ego": make_transform([1, 0, 0, 0], list(ORIGIN)), "ego2global": np.eye(4), "sweeps": [],
            "cams": {}, "boxes": {}, "occ_path": None, "openocc_path": "openocc_v2/scene-a/a0/labels.npz"}
    with open(os.path.join(root, "occ_infos_val.pkl"), "wb") as f:
        pickle.dump({"version": "test", "split": "val", "infos": [info]}, f)
    return info


def write_prediction(folder, semantics, flow=None):
    """<folder>/a0.npz holding `semantics` and, unless None, `flow`."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "a0.npz")
    np.savez_compressed(path, semantics=semantics, **({} if flow is None else {"flow": flow}))
    return path


def test_ground_truth_scores_one_and_zero_flow_scores_the_mean_speed(tmp_path):
    semantics, flow = shell_world()
    write_world(tmp_path, semantics, flow)
    write_prediction(tmp_path / "gt", semantics, flow)
    out = tmp_path / "metrics.json"
    common = ["--benchmark", "openocc", "--data-root", str(tmp_path)]
    metrics = evaluate.main(common + ["--pred-dir", str(tmp_path / "gt"), "--out", str(out)])
    assert metrics["rayiou"] == 1.0 and metrics["mave"] == 0.0 and metrics["occ_score"] == 1.0
    saved = json.loads(out.read_text())
    assert {"rayiou", "rayiou@1", "rayiou@2", "rayiou@4", "mave", "occ_score"} <= set(saved)
    assert saved["per_class"]["car"]["ave"] == 0.0 and saved["per_class"]["driveable_surface"]["ave"] is None

    # zero flow: AVE per dynamic class = its GT speed over its true-positive rays (5 m/s cars, 1 m/s
    # pedestrians; the moving floor is static and not scored) -> mAVE = 3
    write_prediction(tmp_path / "zero", semantics, np.zeros_like(flow))
    metrics = evaluate.main(common + ["--pred-dir", str(tmp_path / "zero")])
    assert metrics["per_class"]["car"]["ave"] == pytest.approx(5.0)
    assert metrics["per_class"]["pedestrian"]["ave"] == pytest.approx(1.0)
    assert metrics["mave"] == pytest.approx(3.0) and metrics["rayiou"] == 1.0
    assert metrics["occ_score"] == pytest.approx(0.9)  # 0.9 RayIoU + 0.1 max(1 - 3, 0)


def test_mave_counts_only_true_positive_rays():
    semantics, flow = shell_world()
    pred = semantics.copy()
    pred[pred == PEDESTRIAN] = CAR  # pedestrian rays are no longer true positives, for either class
    pred_flow = flow.copy()
    pred_flow[semantics == CAR] += (0.0, 2.0)  # 2 m/s error on the car voxels
    sample = {"sample_token": "a0", "pred": pred, "pred_flow": pred_flow, "semantics": semantics, "flow": flow}
    metrics = score_openocc([sample], {"a0": np.array([ORIGIN])}, progress=False)
    assert metrics["per_class"]["car"]["ave"] == pytest.approx(2.0)
    assert np.isnan(metrics["per_class"]["pedestrian"]["ave"])
    assert metrics["mave"] == pytest.approx(2.0)
    assert metrics["per_class"]["pedestrian"]["rayiou@2"] == 0.0 and metrics["rayiou"] < 1.0


def test_bad_prediction_files_are_named(tmp_path):
    semantics, flow = shell_world()
    bad = {"no_flow": dict(flow=None), "shape": dict(flow=flow[:, :, :8]),
           "nan": dict(flow=np.where(semantics[..., None] == CAR, np.nan, flow)),
           "labels": dict(semantics=np.full_like(semantics, 17)), "int_flow": dict(flow=flow.astype(np.int32))}
    messages = {"no_flow": "lacks \\['flow'\\]", "shape": "'flow' has shape", "nan": "NaN",
                "labels": "outside \\[0, 16\\]", "int_flow": "expected float"}
    for name, change in bad.items():
        arrays = {"semantics": semantics, "flow": flow, **change}
        path = write_prediction(tmp_path / name, arrays["semantics"], arrays["flow"])
        with pytest.raises(DataError, match=messages[name]) as error:
            scoring_openocc.load_prediction(path)
        assert path in str(error.value)

    write_world(tmp_path / "root", semantics, flow)  # the same error through evaluate.py
    with pytest.raises(DataError, match="no_flow"):
        evaluate.main(["--benchmark", "openocc", "--pred-dir", str(tmp_path / "no_flow"),
                       "--data-root", str(tmp_path / "root")])


def lidar_checkpoint(path, preset, overrides=()):
    cfg = apply_overrides(get_config(preset), list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(path, model=model.state_dict(), ema=EMA(model).state_dict(), optimizer={}, scheduler={},
                    step=1, epoch=0, config=cfg)
    return path


def test_checkpoint_of_another_benchmark_is_refused(tmp_path):
    semantics, flow = shell_world()
    write_world(tmp_path, semantics, flow)
    ckpt = lidar_checkpoint(tmp_path / "occ3d.pt", "effocc_lidar_tiny")
    with pytest.raises(CheckpointError, match="occ3d"):
        evaluate.main(["--benchmark", "openocc", "--ckpt", str(ckpt), "--data-root", str(tmp_path)])


def test_checkpoint_mode_predicts_flow_and_saves_it(tmp_path):
    """A LiDAR-only OpenOcc model with a flow head, end to end: --save-pred writes what --pred-dir
    reads back to the same scores, and --vis-dir draws the flow picture."""
    semantics, flow = shell_world()
    write_world(tmp_path, semantics, flow)
    points = np.random.default_rng(0).uniform([-40, -40, -1, 0, 0], [40, 40, 5, 1, 31], (3000, 5))
    os.makedirs(tmp_path / "samples" / "LIDAR_TOP")
    points.astype(np.float32).tofile(tmp_path / "samples" / "LIDAR_TOP" / "a0.pcd.bin")
    ckpt = lidar_checkpoint(tmp_path / "flow.pt", "effocc_fusion_r18_flow_tiny", ["model.modality=lidar"])
    common = ["--benchmark", "openocc", "--data-root", str(tmp_path)]
    metrics = evaluate.main(common + ["--ckpt", str(ckpt), "--save-pred", str(tmp_path / "pred"),
                                      "--vis-dir", str(tmp_path / "vis")])
    pred_semantics, pred_flow = scoring_openocc.load_prediction(str(tmp_path / "pred" / "a0.npz"))
    assert pred_flow.shape == (200, 200, 16, 2) and np.abs(pred_flow).max() > 0
    assert sorted(os.listdir(tmp_path / "vis")) == ["a0_3d.png", "a0_flow.png"]
    rescored = evaluate.main(common + ["--pred-dir", str(tmp_path / "pred")])
    for key in ("rayiou", "mave", "occ_score"):
        assert rescored[key] == metrics[key] or (np.isnan(rescored[key]) and np.isnan(metrics[key]))
    with pytest.raises(UsageError, match="--benchmark openocc"):  # the Occ3D scorer refuses it
        evaluate.main(["--ckpt", str(ckpt), "--data-root", str(tmp_path)])


def test_training_logs_both_losses_and_validates_with_the_openocc_metric(tmp_path):
    """train_fusion.py on OpenOcc: loss_ce and loss_flow in TensorBoard, and the validation's
    RayIoU, mAVE and OccScore (a LiDAR-only flow model, one step on the hand-made world)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    semantics, flow = shell_world()
    write_world(tmp_path, semantics, flow)
    os.symlink(tmp_path / "occ_infos_val.pkl", tmp_path / "occ_infos_train.pkl")
    points = np.random.default_rng(0).uniform([-40, -40, -1, 0, 0], [40, 40, 5, 1, 31], (3000, 5))
    os.makedirs(tmp_path / "samples" / "LIDAR_TOP")
    points.astype(np.float32).tofile(tmp_path / "samples" / "LIDAR_TOP" / "a0.pcd.bin")
    train_fusion.main(["--config", "effocc_fusion_r18_flow_tiny", "--data-root", str(tmp_path), "--work-dir",
                       str(tmp_path / "work"), "--max-steps", "1", "--val-every", "1", "--cpu",
                       "--set", "model.modality=lidar", "train.log_interval=1"])
    events = EventAccumulator(str(tmp_path / "work" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_ce", "train/loss_flow", "val/RayIoU", "val/RayIoU@2", "val/OccScore"} <= tags
    assert "val/bev_flow_gt_vs_pred" in events.Tags()["images"]
    assert 0.0 <= events.Scalars("val/OccScore")[0].value <= 1.0
