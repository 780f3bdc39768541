"""OpenOccupancy (nuScenes-Occupancy): GT reader, LiDAR-frame loading, presets, losses, upsampled
scoring and evaluate.py --benchmark openoccupancy."""
import json
import os

import numpy as np
import pytest
import torch

import evaluate
from datasets.nuscenes_occ import NuScenesOccDataset, load_infos
from datasets.openoccupancy import gt_path, load_openoccupancy_gt
from datasets.prepare_nuscenes import info_path
from occ import losses, openocc
from occ.checkpoint import save_checkpoint
from occ.config import get_config
from occ.ema import EMA
from occ.errors import DataError
from occ.metrics import SSCMetric
from occ.models import build_model
from occ.models.occnet import occ_grid_shape
from occ.openoccupancy_evaluation import logits_to_prediction
from occ.ssc_losses import CE_CLASS_WEIGHTS, openoccupancy_losses

GRID = openocc.OPENOCCUPANCY_GRID_SHAPE


def write_rows(path, rows, dtype=np.uint16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.asarray(rows, dtype=dtype))
    return str(path)


# ------------------------------------------------------------------------------------- reader
def test_reader_round_trip(tmp_path):
    rows = [[0, 0, 0, 5], [39, 511, 511, 16], [10, 20, 30, 0], [3, 4, 500, 1]]  # [z, y, x, class]; class 0 = noise
    grid = load_openoccupancy_gt(write_rows(tmp_path / "a.npy", rows))
    assert grid.shape == GRID and grid.dtype == np.uint8
    assert grid[0, 0, 0] == 5 and grid[511, 511, 39] == 16 and grid[500, 4, 3] == 1
    assert grid[30, 20, 10] == openocc.OPENOCCUPANCY_IGNORE  # noise -> 255
    assert np.count_nonzero(grid) == 4  # every other voxel is empty (0)
    assert (load_openoccupancy_gt(write_rows(tmp_path / "b.npy", rows, np.int64)) == grid).all()


@pytest.mark.parametrize("rows, message", [
    ([[0, 0, 512, 3]], "outside"),       # x = 512
    ([[40, 0, 0, 3]], "outside"),        # z = 40
    ([[0, -1, 0, 3]], "outside"),
    ([[0, 0, 0, 17]], "classes"),
    ([[0, 0, 0]], "shape"),
])
def test_reader_rejects_bad_rows_naming_the_file(tmp_path, rows, message):
    path = write_rows(tmp_path / "bad.npy", rows, np.int64)
    with pytest.raises(DataError, match=message) as error:
        load_openoccupancy_gt(path)
    assert path in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_openoccupancy_gt(str(tmp_path / "missing.npy"))


# ---------------------------------------------------------------------------------- metric
def test_ssc_metric_on_a_hand_made_confusion():
    gt = np.array([0, 0, 1, 1, 2, 255, 0])
    pred = np.array([0, 1, 1, 2, 2, 3, 0])  # the 255 voxel predicts 3: ignored, so 3 is absent
    metric = SSCMetric()
    metric.update(pred, gt)
    result = metric.compute()
    # non-empty: GT {2, 3, 4}, prediction {1, 2, 3, 4} -> 3 / (3 + 4 - 3)
    assert result["sc_iou"] == pytest.approx(0.75)
    assert result["iou"][0] == pytest.approx(1 / 3)  # class 1: tp 1, gt 2, pred 2
    assert result["iou"][1] == pytest.approx(1 / 2)  # class 2: tp 1, gt 1, pred 2
    assert np.isnan(result["iou"][2])                # class 3 only on the ignored voxel
    assert result["ssc_miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def ground_truth_of_split(data_root, split="mini_val"):
    infos = load_infos(info_path(data_root, split))
    return infos, {info["token"]: load_openoccupancy_gt(gt_path(data_root, info["scene_token"], info["lidar_token"]))
                   for info in infos}


def test_gt_as_prediction_scores_one_and_bad_predictions_raise(data_root, tmp_path):
    infos, gts = ground_truth_of_split(data_root)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for token, gt in gts.items():
        np.savez_compressed(pred_dir / f"{token}.npz", semantics=np.where(gt == 255, 0, gt).astype(np.uint8))
    out = tmp_path / "metrics.json"
    metrics = evaluate.main(["--benchmark", "openoccupancy", "--pred-dir", str(pred_dir), "--data-root", data_root,
                             "--out", str(out)])
    assert metrics["sc_iou"] == 1.0 and metrics["ssc_miou"] == 1.0
    saved = json.loads(out.read_text())
    assert saved["sc_iou"] == 1.0 and saved["ssc_miou"] == 1.0 and len(saved["per_class"]) == 16

    token = infos[0]["token"]
    for bad, message in ((np.zeros((200, 200, 16), np.uint8), "shape"), (np.full(GRID, 17, np.uint8), "outside")):
        np.savez_compressed(pred_dir / f"{token}.npz", semantics=bad)
        with pytest.raises(DataError, match=message) as error:
            evaluate.main(["--benchmark", "openoccupancy", "--pred-dir", str(pred_dir), "--data-root", data_root])
        assert f"{token}.npz" in str(error.value)


# ------------------------------------------------------------------------------- LiDAR frame
def test_keyframe_points_land_in_occupied_voxels_through_the_loader(data_root):
    """The key-frame points (time lag 0) of the project's own loader, in the LiDAR frame and with
    random BEV flips, fall into non-empty voxels of the (equally flipped) OpenOccupancy GT."""
    dataset = NuScenesOccDataset(data_root, info_path(data_root, "mini_train"), train=True, num_sweeps=0,
                                 load_depth=False, load_images=False, benchmark="openoccupancy")
    flips = set()
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            flips.add(tuple(sample["bda"].diagonal()[:2].tolist()))
            points, semantics = sample["points"].numpy(), sample["semantics"].numpy()
            assert semantics.shape == GRID
            key = points[points[:, 4] == 0, :3]
            ijk = np.floor((key - openocc.OPENOCCUPANCY_GRID_MIN) / openocc.OPENOCCUPANCY_VOXEL_SIZE).astype(int)
            ijk = ijk[np.all((ijk >= 0) & (ijk < GRID), axis=1)]
            assert len(ijk) > 1000
            assert np.mean(semantics[ijk[:, 0], ijk[:, 1], ijk[:, 2]] != 0) >= 0.95
    assert len(flips) > 1  # the check covered flipped samples


def test_cameras_and_points_share_the_lidar_frame(data_root):
    """LiDAR depth maps need points and camera poses in one frame: the ego-frame (Occ3D) and the
    LiDAR-frame (OpenOccupancy) samples give the same maps, and cam2ego differs by lidar2ego."""
    common = dict(train=False, num_sweeps=0, load_images=False, load_gt=False, image_size=(64, 176))
    path = info_path(data_root, "mini_val")
    ego = NuScenesOccDataset(data_root, path, **common)[0]
    lidar = NuScenesOccDataset(data_root, path, benchmark="openoccupancy", **common)[0]
    lidar2ego = torch.from_numpy(load_infos(path)[0]["lidar2ego"]).float()
    assert torch.allclose(lidar2ego @ lidar["cam2ego"], ego["cam2ego"], atol=1e-4)
    assert not torch.allclose(lidar["points"][:, :3], ego["points"][:, :3], atol=1e-2)
    same = (lidar["depth_maps"] - ego["depth_maps"]).abs() < 1e-3
    assert same.float().mean() > 0.999 and (ego["depth_maps"] > 0).sum() > 100


# ----------------------------------------------------------------------------- model and loss
def test_presets_build_the_512_x_512_x_40_model():
    cfg = get_config("effocc_openoccupancy_r18")
    assert (cfg.data.benchmark, cfg.train.loss, cfg.train.lr, cfg.train.epochs) == ("openoccupancy", "four", 1e-4, 24)
    model = build_model(cfg)
    assert occ_grid_shape(cfg.model) == GRID
    assert model.view_transformer.bev_hw == (512, 512) and model.view_transformer.num_depth == 59
    assert model.lidar_branch.encoder.sparse_shape == [41, 4096, 4096]
    assert model.lidar_branch.encoder.out_shape == [2, 512, 512]
    assert model.head.mlp[-1].out_features == 40 * 17
    r50 = get_config("effocc_openoccupancy_r50")
    assert (r50.model.backbone, r50.data.image_size, r50.train.epochs) == ("resnet50", (512, 1408), 15)
    tiny = get_config("effocc_openoccupancy_r18_tiny")
    assert occ_grid_shape(tiny.model) == GRID
    tiny_model = build_model(tiny)
    assert tiny_model.lidar_branch.encoder.out_shape[1:] == [512, 512]
    assert tiny_model.head.mlp[-1].out_features == 680


def test_lean_losses_equal_the_reference_losses():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5, 4, 17, requires_grad=True)
    labels = torch.randint(0, 17, (2, 6, 5, 4))
    labels[labels > 12] = 0
    labels[0, 0, 0, :2] = 255
    mask = labels != 255
    as_ref = labels.where(mask, torch.zeros_like(labels))
    weights = torch.tensor(CE_CLASS_WEIGHTS)
    reference = {"loss_ce": losses.masked_cross_entropy(logits, as_ref, mask, weights),
                 "loss_sem_scal": losses.sem_scal_loss(logits, as_ref, mask),
                 "loss_geo_scal": losses.geo_scal_loss(logits, as_ref, mask, free_class=0),
                 "loss_lovasz": losses.lovasz_softmax_loss(logits, as_ref, mask)}
    lean = openoccupancy_losses(logits, labels)
    assert lean.keys() == reference.keys()
    for key in reference:
        assert lean[key].item() == pytest.approx(reference[key].item(), rel=1e-5), key
        expected, = torch.autograd.grad(reference[key], logits, retain_graph=True)
        got, = torch.autograd.grad(lean[key], logits, retain_graph=True)
        assert torch.allclose(got, expected, atol=1e-6), key


def test_coarse_logits_are_upsampled_trilinearly_along_x_y_z():
    """A prediction at half resolution (256 x 256 x 20): class 1 for x < 128, 2 beyond, 3 for
    z >= 10, as logits; after upsampling to 512 x 512 x 40 the boundaries fall exactly between
    fine voxels 255 | 256 and 19 | 20 (axes kept in [x, y, z] order)."""
    coarse = torch.ones(256, 256, 20, dtype=torch.long)
    coarse[128:] = 2
    coarse[:, :, 10:] = 3
    coarse[:, 200:, :] = 4   # y >= 200 -> 4 (fine y >= 400)
    logits = 5 * torch.nn.functional.one_hot(coarse, 17).float()[None]
    pred = logits_to_prediction(logits)[0].numpy()
    assert pred.shape == GRID
    expected = np.ones(GRID, np.uint8)
    expected[256:] = 2
    expected[:, :, 20:] = 3
    expected[:, 400:, :] = 4
    assert (pred == expected).all()


@pytest.mark.slow
def test_checkpoint_of_a_coarse_model_is_scored_on_the_full_grid(data_root, tmp_path):
    """A LiDAR-only model with a 0.8 m output grid (128 x 128 x 10) whose EMA head predicts
    driveable surface at two heights and empty elsewhere: evaluate.py scores it after upsampling
    exactly as that prediction made by hand on the 512 x 512 x 40 grid."""
    cfg = get_config("effocc_openoccupancy_r18_tiny")
    cfg.model.modality, cfg.model.occ_voxel_size = "lidar", 0.8
    cfg.model.voxel_size, cfg.model.sparse_down_strides = (0.8, 0.8, 0.4), ((2, 1, 1), (2, 1, 1), (1, 1, 1))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert occ_grid_shape(cfg.model) == (128, 128, 10)
    ema = EMA(model)
    bias = ema.state["head.mlp.2.bias"].view(10, 17)
    ema.state["head.mlp.2.weight"].zero_()
    bias.zero_()
    bias[:, 0] = 10.0
    bias[3:5, 11] = 20.0   # driveable surface in coarse z 3..4 (-2.6 .. -1 m, the ground below the LiDAR)
    ckpt = tmp_path / "step_00000001.pt"
    save_checkpoint(ckpt, model=model.state_dict(), ema=ema.state_dict(), optimizer={}, scheduler={}, step=1,
                    epoch=0, config=cfg)
    metrics = evaluate.main(["--benchmark", "openoccupancy", "--ckpt", str(ckpt), "--data-root", data_root,
                             "--device", "cpu"])
    # upsampled along z, class 11 (logit 20 vs 10) wins from fine z 12 (coarse 2.625) to 19 (coarse 4.375)
    expected = np.zeros(GRID, np.uint8)
    expected[:, :, 12:20] = 11
    metric = SSCMetric()
    for gt in ground_truth_of_split(data_root)[1].values():
        metric.update(expected, gt)
    result = metric.compute()
    assert metrics["num_samples"] == 3 and 0 < result["sc_iou"] < 1
    assert metrics["sc_iou"] == pytest.approx(result["sc_iou"])
    assert metrics["ssc_miou"] == pytest.approx(result["ssc_miou"])
