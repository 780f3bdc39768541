"""Camera 3-D detection: Gaussian targets, encode / decode, rotated NMS, BEV flips of boxes, the
presets and their Occ-BEV transfer, the dataset's boxes, and nuScenes scoring through the devkit."""
import json
import math

import numpy as np
import pytest
import torch
from nuscenes.eval.detection.utils import category_to_detection_name

from datasets.nuscenes_occ import NuScenesOccDataset, collate, load_infos
from datasets.prepare_nuscenes import info_path, load_nuscenes
from datasets.transforms import transform_boxes
from occ.checkpoint import load_partial
from occ.config import apply_overrides, get_config
from occ.detection import (CLASS_NAMES, REGRESSION_OUTPUTS, DetectionGrid, boxes_from_info, build_targets, decode,
                           detection_loss, gaussian_radius, heatmap_radius, nms_rotated, rotated_iou_bev)
from occ.errors import DataError, UsageError
from occ.geometry import bda_matrix
from occ.models import build_model
from occ.models.example_inputs import example_batch
from scoring import detection as scoring

GRID = DetectionGrid(x_min=-51.2, y_min=-51.2, cell_size=0.8, size_x=128, size_y=128)


# ---------------------------------------------------------------------------------- targets
def test_gaussian_radius_by_hand():
    # 4 x 2 cells: the third CornerNet case, (-1.2 + sqrt(1.44 + 4 * 0.4 * 7.2)) / 2 = (-1.2 + 3.6) / 2
    assert gaussian_radius(4, 2) == pytest.approx(1.2)
    assert heatmap_radius(4, 2) == 2  # max(2, int(1.2))
    # 40 x 20 cells: (-12 + sqrt(144 + 1152)) / 2 = 12 (the radius grows linearly with the size)
    assert gaussian_radius(40, 20) == pytest.approx(12.0)
    assert heatmap_radius(40, 20) == 12


def test_heatmap_of_hand_made_boxes():
    # a car centred in cell (x 70, y 60), 4.0 x 1.6 m = 5 x 2 cells -> radius 2, sigma 5 / 6
    car = [70.5 * 0.8 - 51.2, 60.25 * 0.8 - 51.2, 0.5, 4.0, 1.6, 1.5, 0.0, 0.0, 0.0]
    # a pedestrian in the corner cell (0, 0): its Gaussian is clipped at the border
    pedestrian = [-51.0, -50.9, 0.9, 0.6, 0.6, 1.7, 1.0, 0.0, 0.0]
    outside = [60.0, 0.0, 0.5, 4.0, 1.6, 1.5, 0.0, 0.0, 0.0]  # beyond the grid: no target
    heatmap, indices, targets = build_targets(torch.tensor([car, pedestrian, outside]), torch.tensor([0, 8, 0]), GRID)
    assert heatmap.shape == (10, 128, 128)
    assert indices.tolist() == [60 * 128 + 70, 0]
    car_map = heatmap[0]
    sigma = 5 / 6
    assert car_map[60, 70] == 1
    assert car_map[60, 71].item() == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-6)
    assert car_map[62, 72].item() == pytest.approx(math.exp(-8 / (2 * sigma ** 2)), rel=1e-6)
    assert car_map[60, 73] == 0 and car_map[63, 70] == 0  # beyond the radius
    assert (car_map > 0).sum() == 25
    assert heatmap[8, 0, 0] == 1 and (heatmap[8] > 0).sum() == 9  # the 3 x 3 quarter inside the grid
    assert heatmap[1:8].sum() == 0 and heatmap[9].sum() == 0
    # regression targets at the object's cell: offsets in cells, z, log sizes, sin / cos, velocity
    assert targets[0].tolist() == pytest.approx([0.5, 0.25, 0.5, math.log(4.0), math.log(1.6), math.log(1.5),
                                                 0.0, 1.0, 0.0, 0.0], abs=1e-5)
    # two cars in neighbouring cells: the kernels merge by their maximum
    other = list(car)
    other[0] += 0.8
    merged = build_targets(torch.tensor([car, other]), torch.tensor([0, 0]), GRID)[0][0]
    assert merged[60, 70] == 1 and merged[60, 71] == 1
    assert merged[60, 69].item() == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-6)


def head_outputs_from_targets(boxes, labels, grid, logit=8.0):
    """Head maps (batch 1) holding the regression targets of the boxes at their cells and a high
    heatmap logit for their class there, everything else at -10."""
    heatmap, indices, targets = build_targets(boxes, labels, grid)
    preds = {"heatmap": torch.full((1, 10, grid.size_y, grid.size_x), -10.0)}
    preds["heatmap"].view(1, 10, -1)[0, labels, indices] = logit
    regression = torch.zeros(1, 10, grid.size_y * grid.size_x)
    regression[0][:, indices] = targets.t()
    start = 0
    for name, channels in REGRESSION_OUTPUTS.items():
        preds[name] = regression[:, start:start + channels].view(1, channels, grid.size_y, grid.size_x)
        start += channels
    return preds


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    # 30 boxes on distinct cells, far enough apart that NMS keeps all, anywhere inside the grid
    cells = torch.randperm(32 * 32, generator=g)[:30]
    xy = torch.stack([cells % 32, cells // 32], dim=1).float() * 3.2 - 51.2 + torch.rand(30, 2, generator=g) * 0.8
    boxes = torch.cat([xy, torch.rand(30, 1, generator=g) * 3 - 1,
                       0.3 + torch.rand(30, 3, generator=g) * 1.5, (torch.rand(30, 1, generator=g) * 2 - 1) * math.pi,
                       torch.randn(30, 2, generator=g) * 3], dim=1)
    labels = torch.randint(0, 10, (30,), generator=g)
    found = decode(head_outputs_from_targets(boxes, labels, GRID), GRID)[0]
    assert len(found["boxes"]) == 30
    order = [int(torch.nonzero((found["boxes"][:, :2] - box[:2]).abs().sum(1) < 1e-3)[0]) for box in boxes]
    assert torch.allclose(found["boxes"][order], boxes, atol=1e-4)
    assert torch.equal(found["labels"][order], labels)
    assert torch.allclose(found["scores"], torch.sigmoid(torch.tensor(8.0)))


def test_decoding_drops_low_scores_and_far_centres():
    boxes = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0],
                          [20.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]])
    preds = head_outputs_from_targets(boxes, torch.tensor([0, 0]), GRID)
    preds["heatmap"].view(1, 10, -1)[0, 0, build_targets(boxes, torch.tensor([0, 0]), GRID)[1][1]] = -2.3  # 0.091
    assert len(decode(preds, GRID)[0]["boxes"]) == 1
    preds["height"][:] = 12.0  # z outside [-10, 10]
    assert len(decode(preds, GRID)[0]["boxes"]) == 0


def test_detection_loss_vanishes_at_the_targets():
    boxes = torch.tensor([[3.1, -7.9, 0.4, 4.2, 1.8, 1.6, 0.7, 1.0, -2.0]])
    preds = head_outputs_from_targets(boxes, torch.tensor([2]), GRID, logit=30.0)
    losses = detection_loss(preds, [boxes], [torch.tensor([2])], GRID)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    preds["vel"] = preds["vel"] + 1.0  # velocity error 1 in vx and vy: 0.25 * 0.2 * 2 per object
    assert detection_loss(preds, [boxes], [torch.tensor([2])], GRID)["loss_bbox"].item() == \
        pytest.approx(0.1, rel=1e-3)


# --------------------------------------------------------------------------------------- NMS
def test_rotated_iou_by_hand():
    square = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])
    others = torch.tensor([[1.0, 0.0, 2.0, 2.0, 0.0],  # half overlap: 2 / 6
                           [0.0, 0.0, 2.0, 2.0, math.pi / 4],  # octagon 8 (sqrt 2 - 1) / (8 - that)
                           [1.0, 1.0, 2.0, 2.0, 0.0],  # 1 / 7
                           [5.0, 5.0, 1.0, 1.0, 0.3],  # apart
                           [0.0, 0.0, 2.0, 2.0, math.pi / 2]])  # the same square
    octagon = 8 * (math.sqrt(2) - 1)
    assert rotated_iou_bev(square, others)[0].tolist() == pytest.approx(
        [1 / 3, octagon / (8 - octagon), 1 / 7, 0.0, 1.0], abs=1e-5)


def test_nms_on_hand_made_overlaps():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0],  # 0.8
                          [0.5, 0.0, 4.0, 2.0, 0.1],  # 0.9: overlaps box 0 heavily
                          [10.0, 0.0, 4.0, 2.0, 0.0],  # 0.7: alone
                          [3.5, 0.0, 4.0, 2.0, 0.0]])  # 0.6: IoU with box 1 = 1 / 7 < 0.2, kept
    kept = nms_rotated(boxes, torch.tensor([0.8, 0.9, 0.7, 0.6]), iou_threshold=0.2)
    assert kept.tolist() == [1, 2, 3]
    assert nms_rotated(boxes, torch.tensor([0.8, 0.9, 0.7, 0.6]), 0.2, post_max=2).tolist() == [1, 2]


def test_decoding_scales_traffic_cones_before_nms():
    # two cones 0.5 m apart do not overlap, but at 3.5 x their size they do: one is kept
    cones = torch.tensor([[0.1, 0.1, 0.0, 0.4, 0.4, 1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.4, 0.4, 1.0, 0.0, 0.0, 0.0]])
    assert len(decode(head_outputs_from_targets(cones, torch.tensor([9, 9]), GRID), GRID)[0]["boxes"]) == 1
    # as cars (scale 1) both stay
    assert len(decode(head_outputs_from_targets(cones, torch.tensor([0, 0]), GRID), GRID)[0]["boxes"]) == 2


# ------------------------------------------------------------------------------------- flips
def bev_corners_of(boxes):
    cos, sin = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * 0.5
    local = signs[None] * boxes[:, None, 3:5]
    return np.stack([cos[:, None] * local[..., 0] - sin[:, None] * local[..., 1] + boxes[:, None, 0],
                     sin[:, None] * local[..., 0] + cos[:, None] * local[..., 1] + boxes[:, None, 1]], axis=-1)


@pytest.mark.parametrize("flip_x, flip_y", [(True, False), (False, True), (True, True)])
def test_flips_move_boxes_yaws_and_velocities(flip_x, flip_y):
    boxes = np.array([[10.0, 5.0, 0.5, 4.0, 2.0, 1.5, 0.3, 2.0, -1.0], [-3.0, 7.0, 1.0, 0.8, 0.6, 1.8, -2.5, 0.0, 1.5]])
    flipped = transform_boxes(boxes, bda_matrix(flip_x, flip_y))
    sx, sy = (-1 if flip_x else 1), (-1 if flip_y else 1)
    assert flipped[:, 0].tolist() == pytest.approx((sx * boxes[:, 0]).tolist())
    assert flipped[:, 1].tolist() == pytest.approx((sy * boxes[:, 1]).tolist())
    assert flipped[:, 7].tolist() == pytest.approx((sx * boxes[:, 7]).tolist())
    assert flipped[:, 8].tolist() == pytest.approx((sy * boxes[:, 8]).tolist())
    yaw = boxes[:, 6]
    expected = np.pi - yaw if flip_x else yaw
    expected = -expected if flip_y else expected
    assert np.allclose(np.cos(flipped[:, 6]), np.cos(expected), atol=1e-6)
    assert np.allclose(np.sin(flipped[:, 6]), np.sin(expected), atol=1e-6)
    # the flipped box covers the mirrored footprint (corners as a set), sizes and z unchanged
    mirrored = bev_corners_of(boxes) * np.array([sx, sy])
    for a, b in zip(bev_corners_of(flipped.astype(np.float64)), mirrored):
        assert np.abs(a[:, None] - b[None]).sum(-1).min(axis=1).max() < 1e-4
    assert np.allclose(flipped[:, 2:6], boxes[:, 2:6])


def test_dataset_yields_flipped_boxes_of_the_detection_classes(data_root):
    path = info_path(data_root, "mini_train")
    dataset = NuScenesOccDataset(data_root, path, train=True, load_points=False, load_depth=False,
                                 load_images=False, load_gt=False, load_boxes=True)
    info = dataset.infos[0]
    boxes, labels = boxes_from_info(info["boxes"])
    # the devkit's category -> class map, boxes with LiDAR points only
    expected = [category_to_detection_name(name) for name, points in
                zip(info["boxes"]["names"], info["boxes"]["num_lidar_pts"]) if points > 0]
    assert [CLASS_NAMES[label] for label in labels] == [name for name in expected if name is not None]
    assert len(labels) > 0 and (info["boxes"]["num_lidar_pts"] == 0).any()
    flips = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        bda = sample["bda"].numpy()
        flips.add((bda[0, 0] < 0, bda[1, 1] < 0))
        assert np.allclose(sample["gt_boxes"].numpy(), transform_boxes(boxes, bda), atol=1e-5)
        assert torch.equal(sample["gt_labels"], torch.from_numpy(labels))
    assert len(flips) > 1
    batch = collate([dataset[0], dataset[1]])
    assert isinstance(batch["gt_boxes"], list) and len(batch["gt_boxes"]) == 2
    assert isinstance(batch["gt_labels"], list)


# ----------------------------------------------------------------------------------- presets
def test_bevdet_preset_geometry_and_head_shapes():
    cfg = get_config("bevdet_r50_tiny")
    assert DetectionGrid.from_model_config(cfg.model) == GRID
    torch.manual_seed(0)
    model = build_model(apply_overrides(cfg, ["data.image_size=(64, 176)"])).train()
    assert model.view_transformer.num_depth == 59 and model.view_transformer.bev_hw == (128, 128)
    preds = model(example_batch(cfg, num_points=1000))["det_preds"]
    assert {k: tuple(v.shape) for k, v in preds.items()} == {
        "heatmap": (1, 10, 128, 128), "reg": (1, 2, 128, 128), "height": (1, 1, 128, 128), "dim": (1, 3, 128, 128),
        "rot": (1, 2, 128, 128), "vel": (1, 2, 128, 128)}
    boxes = torch.tensor([[3.1, -7.9, 0.4, 4.2, 1.8, 1.6, 0.7, 1.0, -2.0]])
    losses = detection_loss(preds, [boxes], [torch.tensor([0])], GRID)
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert model.head.branches["heatmap"][-1].bias.detach().sub(-2.19).abs().max() < 1e-6
    full = get_config("bevdet_r50")
    assert (full.model.head_hidden, full.train.lr, full.train.weight_decay, full.model.num_classes) == \
        (64, 2e-4, 1e-7, len(CLASS_NAMES))


def test_occbev_pretraining_transfers_every_tensor_but_the_decoder_to_detection():
    with torch.device("meta"):
        pretrained = build_model(get_config("occbev_pretrain_tiny"))
        detector = build_model(get_config("occbev_det_r50_tiny"))
    report = load_partial(detector.to_empty(device="cpu"), pretrained.to_empty(device="cpu").state_dict())
    assert report.loaded and not report.shape_mismatched
    assert all(key.startswith("head.") for key in report.missing + report.unexpected)
    grid = DetectionGrid.from_model_config(get_config("occbev_det_r50").model)
    assert (grid.size_x, grid.size_y, grid.cell_size) == (200, 200, 0.4)


def test_train_fusion_takes_the_loss_from_the_head():
    import train_fusion
    with pytest.raises(UsageError, match="centerpoint"):
        train_fusion.build_config(train_fusion.parse_args(
            ["--config", "bevdet_r50_tiny", "--data-root", "x", "--work-dir", "y", "--set", "train.loss=ce"]))
    with pytest.raises(UsageError, match="centerpoint"):
        train_fusion.build_config(train_fusion.parse_args(
            ["--config", "flashocc_r50_tiny", "--data-root", "x", "--work-dir", "y",
             "--set", "train.loss=centerpoint"]))
    with pytest.raises(UsageError, match="detection classes"):
        build_model(apply_overrides(get_config("bevdet_r50_tiny"), ["model.num_classes=18"]))


# ----------------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def gt_result_file(data_root, tmp_path_factory):
    """The mini_val GT boxes (detection classes, with LiDAR points) written as a result file."""
    results = {}
    for info in load_infos(info_path(data_root, "mini_val")):
        boxes, labels = boxes_from_info(info["boxes"])
        results[info["token"]] = scoring.result_records(info["token"], info["ego2global"], boxes,
                                                        np.ones(len(labels)), labels)
    path = str(tmp_path_factory.mktemp("detection") / "gt.json")
    scoring.write_results(results, path)
    return path


def test_gt_boxes_as_predictions_score_near_one(data_root, gt_result_file, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    metrics = scoring.main(["--pred-json", gt_result_file, "--data-root", data_root, "--out", str(out)])
    assert metrics["split"] == "mini_val" and metrics["map"] == pytest.approx(1.0)
    for name in ("mATE", "mASE", "mAOE", "mAVE"):
        assert metrics[name] < 1e-3, name
    # the speed rule's attributes match the world's except for parked buses (rule: vehicle.stopped)
    assert metrics["nds"] > 0.95
    assert json.loads(out.read_text())["nds"] == pytest.approx(metrics["nds"])
    text = capsys.readouterr().out
    assert "mAP 100.00" in text and "pedestrian" in text


def test_bad_result_files_are_named(data_root, gt_result_file, tmp_path):
    nusc = load_nuscenes(data_root, "v1.0-mini")
    with open(gt_result_file) as f:
        data = json.load(f)
    token = next(iter(data["results"]))
    missing = {**data, "results": {k: v for k, v in data["results"].items() if k != token}}
    path = tmp_path / "missing.json"
    path.write_text(json.dumps(missing))
    with pytest.raises(DataError, match=f"lacks 1 of the 3 samples.*{token}"):
        scoring.score_results(str(path), nusc, "mini_val")
    nan = json.loads(json.dumps(data))
    nan["results"][token][0]["detection_score"] = float("nan")
    path.write_text(json.dumps(nan))
    with pytest.raises(DataError, match=f"sample {token}, box 0: 'detection_score' is not finite"):
        scoring.score_results(str(path), nusc, "mini_val")


def test_a_result_file_without_boxes_scores_what_the_devkit_gives_a_lone_false_positive(data_root, gt_result_file,
                                                                                       tmp_path):
    """No box at all (a young model under the score threshold): the devkit cannot load such a file,
    so score_results gives its figures for classes without a true positive, checked here against
    the devkit itself on a file whose only box (a car at the ego's own position) matches nothing."""
    nusc = load_nuscenes(data_root, "v1.0-mini")
    with open(gt_result_file) as f:
        data = json.load(f)
    empty = {**data, "results": {token: [] for token in data["results"]}}
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(empty))
    nothing = scoring.score_results(str(path), nusc, "mini_val")
    token = next(iter(data["results"]))
    info = next(i for i in load_infos(info_path(data_root, "mini_val")) if i["token"] == token)
    car_at_ego = np.array([[0.0, 0.0, 0.8, 4.5, 1.9, 1.6, 0.0, 0.0, 0.0]])   # x, y, z, l, w, h, yaw, vx, vy
    lone = scoring.result_records(token, info["ego2global"], car_at_ego, [0.5], [CLASS_NAMES.index("car")])
    path.write_text(json.dumps({**empty, "results": {**empty["results"], token: lone}}))
    devkit = scoring.score_results(str(path), nusc, "mini_val")
    assert devkit["map"] == nothing["map"] == 0 and devkit["nds"] == nothing["nds"] == 0
    for key in ("mATE", "mASE", "mAOE", "mAVE", "mAAE"):
        assert nothing[key] == devkit[key], key
    for name in CLASS_NAMES:
        assert nothing["per_class"][name].keys() == devkit["per_class"][name].keys()
        for key, value in devkit["per_class"][name].items():
            assert nothing["per_class"][name][key] == pytest.approx(value, nan_ok=True), (name, key)


def test_attribute_by_speed():
    assert scoring.attribute_name("car", (0.3, 0.0)) == "vehicle.moving"
    assert scoring.attribute_name("car", (0.1, 0.0)) == "vehicle.parked"
    assert scoring.attribute_name("bus", (0.0, 0.1)) == "vehicle.stopped"
    assert scoring.attribute_name("bicycle", (0.0, 0.5)) == "cycle.with_rider"
    assert scoring.attribute_name("pedestrian", (0.0, 0.0)) == "pedestrian.standing"
    assert scoring.attribute_name("pedestrian", (1.0, 0.0)) == "pedestrian.moving"
    assert scoring.attribute_name("traffic_cone", (1.0, 0.0)) == ""


def test_result_records_move_boxes_to_the_global_frame():
    ego2global = np.eye(4)
    ego2global[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # ego yaw +90 degrees
    ego2global[:3, 3] = [100.0, 200.0, 1.0]
    record = scoring.result_records("t", ego2global, np.array([[10.0, 0.0, 0.5, 4.0, 2.0, 1.5, 0.0, 3.0, 0.0]]),
                                    np.array([0.7]), np.array([0]))[0]
    assert record["translation"] == pytest.approx([100.0, 210.0, 1.5])
    assert record["size"] == pytest.approx([2.0, 4.0, 1.5])  # w, l, h
    assert record["rotation"] == pytest.approx([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)])
    assert record["velocity"] == pytest.approx([0.0, 3.0])
    assert record["attribute_name"] == "vehicle.moving" and record["detection_name"] == "car"
