import numpy as np
import pytest
import torch

from occ import metrics, occ3d, openocc

FREE = occ3d.FREE
OTHERS, BICYCLE, CAR, DRIVEABLE, VEGETATION = 0, 2, 4, 11, 16


def test_miou_on_a_hand_made_grid():
    gt = np.array([CAR, CAR, FREE, DRIVEABLE, FREE, OTHERS])
    pred = np.array([CAR, FREE, FREE, CAR, BICYCLE, OTHERS])
    metric = metrics.OccupancyMetric()
    metric.update(pred, gt)
    result = metric.compute()
    iou = result["iou"]
    assert len(iou) == 17  # free excluded
    assert iou[CAR] == pytest.approx(1 / 3)  # tp 1, gt 2, pred 2
    assert iou[DRIVEABLE] == 0.0  # in GT, never predicted
    assert iou[BICYCLE] == 0.0  # absent from GT but predicted: counts 0
    assert iou[OTHERS] == 1.0
    assert np.isnan(iou[VEGETATION])  # absent from both: NaN, skipped
    assert result["miou"] == pytest.approx((1 / 3 + 0 + 0 + 1) / 4)
    # geometry: occupied GT {0, 1, 3, 5}, occupied pred {0, 3, 4, 5}, both {0, 3, 5}
    assert result["geometry_iou"] == pytest.approx(3 / 5)


def test_mask_is_respected():
    gt = np.array([CAR, CAR, VEGETATION, FREE])
    pred = np.array([CAR, BICYCLE, BICYCLE, CAR])
    mask = np.array([1, 0, 0, 0], dtype=np.uint8)  # only the first voxel is camera-visible
    metric = metrics.OccupancyMetric()
    metric.update(pred, gt, mask)
    result = metric.compute()
    assert result["iou"][CAR] == 1.0
    assert np.isnan(result["iou"][BICYCLE]) and np.isnan(result["iou"][VEGETATION])
    assert result["miou"] == 1.0
    assert metric.confusion.sum() == 1


def test_confusion_is_accumulated_globally_not_averaged_per_sample():
    metric = metrics.OccupancyMetric()
    # sample 1: car perfect on 1 voxel (per-sample IoU 1); sample 2: car 1 of 3 right (IoU 1/3)
    metric.update(np.array([CAR]), np.array([CAR]))
    metric.update(np.array([CAR, FREE, FREE]), np.array([CAR, CAR, CAR]))
    result = metric.compute()
    assert result["iou"][CAR] == pytest.approx(2 / 4)  # global: tp 2, gt 4, pred 2
    assert result["iou"][CAR] != pytest.approx((1 + 1 / 3) / 2)


def test_accepts_torch_tensors_and_full_grids():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, occ3d.NUM_CLASSES, size=occ3d.GRID_SHAPE).astype(np.uint8)
    mask = rng.random(gt.shape) < 0.5
    metric = metrics.OccupancyMetric()
    metric.update(torch.from_numpy(gt), torch.from_numpy(gt), torch.from_numpy(mask))
    result = metric.compute()
    assert result["miou"] == 1.0 and result["geometry_iou"] == 1.0
    assert metric.confusion.sum() == mask.sum()


def test_bad_inputs_raise_clear_errors():
    metric = metrics.OccupancyMetric()
    with pytest.raises(ValueError, match="prediction holds labels outside"):
        metric.update(np.array([18]), np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mask shape"):
        metric.update(np.zeros(3), np.zeros(3), np.ones(2))


def test_table_lists_classes_and_mean():
    metric = metrics.OccupancyMetric()
    metric.update(np.array([CAR, FREE]), np.array([CAR, CAR]))
    table = metric.table()
    lines = table.splitlines()
    car_line = next(line for line in lines if line.startswith("car "))
    assert car_line.split()[-1] == "50.00"
    assert next(line for line in lines if line.startswith("bus ")).split()[-1] == "nan"
    assert lines[-1].split() == ["MEAN", "50.00"]
    assert not any(line.startswith("free") for line in lines)


def test_ssc_metric_openoccupancy():
    ignore = openocc.OPENOCCUPANCY_IGNORE
    gt = np.array([0, 0, 1, 1, 16, ignore, 5])
    pred = np.array([0, 1, 1, 0, 16, 3, 5])
    metric = metrics.SSCMetric()
    metric.update(pred, gt)
    result = metric.compute()
    assert len(result["iou"]) == 16  # classes 1..16
    assert result["iou"][0] == pytest.approx(1 / 3)  # class 1: tp 1, gt 2, pred 2
    assert result["iou"][15] == 1.0 and result["iou"][4] == 1.0  # class 16 and class 5
    assert np.isnan(result["iou"][2])  # class 3 only predicted on an ignored voxel
    assert result["ssc_miou"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    # non-empty GT {2, 3, 4, 6}, non-empty pred {1, 2, 4, 6}, both {2, 4, 6}
    assert result["sc_iou"] == pytest.approx(3 / 5)


def test_upsample_logits_to_openoccupancy_grid():
    logits = torch.zeros(1, 17, 4, 4, 2)
    logits[:, 3] = 5.0
    up = metrics.upsample_logits(logits, size=(16, 16, 8))
    assert up.shape == (1, 17, 16, 16, 8)
    assert (up.argmax(1) == 3).all()
    ramp = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 4, 2).contiguous()
    up = metrics.upsample_logits(ramp, size=(8, 4, 2))  # linear along x, half-voxel aligned
    np.testing.assert_allclose(up[0, 0, :, 0, 0].numpy(), [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
