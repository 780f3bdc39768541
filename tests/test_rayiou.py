import math

import numpy as np
import pytest

from occ import metrics, occ3d, openocc
from occ.geometry import make_transform, yaw_to_quaternion

FREE = occ3d.FREE
CAR, DRIVEABLE, MANMADE, VEGETATION = 4, 11, 15, 16


def brute_force_first_hit(occupied, origin_m, direction):
    """Independent definition: intersect the ray with every occupied voxel's box (slab method);
    the first box entered (smallest entry distance, clamped at 0 for the box holding the origin)
    is the hit, its exit distance the depth. No hit: exit distance of the whole grid, voxel None;
    a ray that misses the grid: (None, None)."""
    origin = (np.asarray(origin_m) - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE
    direction = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / direction

    def slab(lower, upper):
        t1, t2 = (lower - origin) * inverse, (upper - origin) * inverse
        return np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)

    boxes = np.argwhere(occupied)
    t_near, t_far = slab(boxes.astype(np.float64), boxes + 1.0)
    t_near = np.maximum(t_near, 0.0)
    crossed = t_far > t_near
    if crossed.any():
        first = np.flatnonzero(crossed)[np.argmin(t_near[crossed])]
        return t_far[first] * occ3d.VOXEL_SIZE, tuple(boxes[first])
    grid_entry, grid_exit = slab(np.zeros(3), np.array(occupied.shape, np.float64))
    if grid_exit > max(grid_entry, 0.0):
        return grid_exit * occ3d.VOXEL_SIZE, None
    return None, None


def test_lidar_ray_directions_follow_sparseocc():
    directions = metrics.lidar_ray_directions()
    assert directions.shape == (39 * 360, 3)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-6)
    pitch = np.arcsin(directions[::360, 2].astype(np.float64))
    for k in range(1, 11):  # the first ten pitches: -(90 deg - atan(k))
        assert pitch[k - 1] == pytest.approx(-(math.pi / 2 - math.atan(k)), abs=1e-6)
    spacing = math.atan(10) - math.atan(9)
    np.testing.assert_allclose(np.diff(pitch[9:]), spacing, atol=1e-6)
    assert pitch[-2] < 0.21 <= pitch[-1]  # continued until the top of the LiDAR field of view
    azimuth = np.degrees(np.arctan2(directions[:360, 1], directions[:360, 0])) % 360
    np.testing.assert_allclose(azimuth, np.arange(360), atol=1e-4)


def test_cast_rays_matches_brute_force_box_intersection():
    rng = np.random.default_rng(0)
    grid_shape = (24, 20, 10)
    occupied = np.stack([rng.random(grid_shape) < 0.04, rng.random(grid_shape) < 0.01])
    # origins inside the grid, plus two below it whose rays enter through the floor; the voxel
    # above the last one is occupied (an origin truncated toward zero would start inside it)
    origins = np.array([[-35.0, -33.0, 1.5], [-32.3, -36.1, 0.2], [-38.7, -39.5, 2.9],
                        [-33.0, -34.0, -2.5], [-34.1, -35.0, -1.2]])
    occupied[:, 14, 12, 0] = True
    directions = rng.normal(size=(750, 3))
    ray_origins = np.repeat(origins, 150, axis=0)
    depth, voxel = metrics.cast_rays(occupied, ray_origins, directions)
    entered = 0
    for g in range(2):
        for r in range(len(directions)):
            expect_depth, expect_voxel = brute_force_first_hit(occupied[g], ray_origins[r], directions[r])
            if expect_voxel is not None:
                assert tuple(voxel[g, r]) == expect_voxel, (g, r)
                assert depth[g, r] == pytest.approx(expect_depth, abs=1e-4)
            elif expect_depth is not None:  # crossed the grid without a hit
                entered += 1
                assert depth[g, r] == pytest.approx(expect_depth, abs=1e-4)
                assert not occupied[g][tuple(voxel[g, r])]
            else:  # never entered the grid
                assert np.isnan(depth[g, r]) and (voxel[g, r] == -1).all()
    assert entered > 50


def wall_scene(wall_index, label=CAR):
    grid = np.full(occ3d.GRID_SHAPE, FREE, dtype=np.uint8)
    grid[wall_index, :, :] = label  # a wall filling the plane x = wall_index
    return grid


def forward_rays_metric():
    return metrics.RayIoUMetric(directions=[[1.0, 0.0, 0.0]])  # rays along +x only


ORIGINS = np.array([[0.1, 0.0, 1.8], [0.1, -10.0, 1.8], [2.3, 7.0, 0.5]])


def test_wall_at_known_distance_depth():
    gt = wall_scene(150)  # x from 20.0 m to 20.4 m
    depth, voxel = metrics.cast_rays((gt != FREE)[None], ORIGINS, np.tile([[1.0, 0, 0]], (3, 1)))
    np.testing.assert_allclose(depth[0], 20.4 - ORIGINS[:, 0], atol=1e-4)  # exit of the wall voxel
    assert (voxel[0, :, 0] == 150).all()


def test_perfect_wall_prediction_scores_one():
    metric = forward_rays_metric()
    metric.update(wall_scene(150), wall_scene(150), ORIGINS)
    result = metric.compute()
    assert result["rayiou"] == 1.0
    assert result["iou@1"][CAR] == 1.0
    assert np.isnan(result["iou@1"][VEGETATION])  # absent from both: skipped


def test_wall_shifted_by_1_6m_is_a_hit_at_2_and_4_m_only():
    metric = forward_rays_metric()
    metric.update(wall_scene(154), wall_scene(150), ORIGINS)  # 4 voxels = 1.6 m too far
    result = metric.compute()
    assert result["rayiou@1"] == 0.0
    assert result["rayiou@2"] == 1.0 and result["rayiou@4"] == 1.0
    assert result["rayiou"] == pytest.approx(2 / 3)


def test_wrong_class_or_missed_wall_scores_zero():
    for pred in (wall_scene(150, label=VEGETATION), np.full(occ3d.GRID_SHAPE, FREE, np.uint8)):
        metric = forward_rays_metric()
        metric.update(pred, wall_scene(150), ORIGINS)
        result = metric.compute()
        assert result["rayiou"] == 0.0
        assert result["iou@4"][CAR] == 0.0


def test_rays_with_free_gt_are_dropped():
    pred = wall_scene(150)
    pred[10, :, :] = MANMADE  # behind the origins: the +x rays never see it
    pred[190, :, :] = MANMADE  # beyond the GT wall: the rays stop at the wall first
    metric = metrics.RayIoUMetric(directions=[[1.0, 0, 0], [-1.0, 0, 0]])
    metric.update(pred, wall_scene(150), ORIGINS)  # -x rays: GT free, so not scored
    result = metric.compute()
    assert result["rayiou"] == 1.0
    assert np.isnan(result["iou@1"][MANMADE])


def test_classes_are_counted_per_ray_and_accumulated_over_samples():
    gt = wall_scene(150)
    gt[:, 100:, :] = FREE
    gt[150, 100:, :] = VEGETATION  # y >= 0: vegetation, y < 0: car
    pred = gt.copy()
    pred[150, 100:, :] = MANMADE
    origins = np.array([[0.1, 5.0, 1.8], [0.1, -5.0, 1.8]])
    metric = forward_rays_metric()
    metric.update(pred, gt, origins)
    result = metric.compute()
    # car: 1 TP of 1; vegetation: 1 GT ray, 0 predicted; manmade: 1 predicted, 0 GT
    assert result["iou@1"][CAR] == 1.0
    assert result["iou@1"][VEGETATION] == 0.0 and result["iou@1"][MANMADE] == 0.0
    assert result["rayiou"] == pytest.approx(1 / 3)
    # a second, perfect sample of vegetation only: counts add up (veg 1 TP of 2 GT, 0 preds wrong)
    metric.update(gt, gt, origins[:1])
    result = metric.compute()
    assert result["iou@1"][VEGETATION] == pytest.approx(1 / 2)
    assert result["iou@1"][MANMADE] == 0.0


def test_default_rays_perfect_and_wrong_predictions():
    rng = np.random.default_rng(1)
    gt = np.full(occ3d.GRID_SHAPE, FREE, dtype=np.uint8)
    gt[:, :, :2] = DRIVEABLE
    gt[rng.random(occ3d.GRID_SHAPE) < 0.01] = CAR
    origins = np.array([[0.9, 0.0, 1.8], [-12.0, 3.0, 1.9]])
    perfect = metrics.RayIoUMetric()
    perfect.update(gt, gt, origins)
    assert perfect.compute()["rayiou"] == 1.0
    wrong = metrics.RayIoUMetric()
    wrong.update(np.where(gt == FREE, FREE, MANMADE).astype(np.uint8), gt, origins)
    result = wrong.compute()
    assert result["rayiou"] == 0.0
    assert perfect.gt_count[CAR] > 0 and perfect.gt_count[DRIVEABLE] > 0
    # every ray from an origin above a full floor hits something: downward rays all count
    assert perfect.gt_count.sum() >= 2 * 10 * 360


def test_mave_and_occ_score_on_openocc_classes():
    car, free = 0, openocc.FREE
    gt = np.full(occ3d.GRID_SHAPE, free, dtype=np.uint8)
    gt[150] = car
    gt_flow = np.zeros(occ3d.GRID_SHAPE + (2,), np.float32)
    gt_flow[150] = [3.0, 0.0]
    pred_flow = gt_flow.copy()
    pred_flow[150] = [3.0, 0.5]
    metric = metrics.RayIoUMetric(openocc.CLASS_NAMES, openocc.DYNAMIC_CLASSES,
                                  directions=[[1.0, 0, 0]])
    metric.update(gt, gt, ORIGINS, pred_flow, gt_flow)
    result = metric.compute()
    assert result["ave"][car] == pytest.approx(0.5)
    assert np.isnan(result["ave"][10])  # driveable_surface: static, never scored
    assert result["mave"] == pytest.approx(0.5)
    assert result["occ_score"] == pytest.approx(0.9 * 1.0 + 0.1 * 0.5)
    with pytest.raises(ValueError, match="pred_flow"):
        metric.update(gt, gt, ORIGINS)


def scene_infos(order):
    """A scene driving 5 m per frame along global +y with the ego facing +y (yaw 90 deg), so frame
    k lies at ego x = 5 * (k - ref) in the frame of sample ref."""
    lidar2ego = make_transform([1, 0, 0, 0], [0.9, 0.0, 1.8])
    infos = []
    for k in order:
        infos.append({"token": f"t{k}", "scene_name": "scene-1", "timestamp": 1000 * k,
                      "lidar2ego": lidar2ego,
                      "ego2global": make_transform(yaw_to_quaternion(math.pi / 2), [100.0, 5.0 * k, 0.0])})
    return infos


def test_scene_lidar_origins_filter_and_pick_eight():
    infos = scene_infos(order=[5, 3, 0, 1, 2, 4, 6, 7, 8, 9, 10, 11])  # shuffled on purpose
    origins = metrics.scene_lidar_origins(infos)
    # sample 0: frames 0..7 are within 39 m (x = 0.9 .. 35.9), frame 8 (40.9 m) is not: all 8 kept
    np.testing.assert_allclose(origins["t0"][:, 0], 0.9 + 5.0 * np.arange(8), atol=1e-9)
    np.testing.assert_allclose(origins["t0"][:, 1:], [[0.0, 1.8]] * 8, atol=1e-9)
    # sample 6: all 12 frames are within range (x = -29.1 .. 25.9) -> indices round(linspace(0, 11, 8))
    picked = [0, 2, 3, 5, 6, 8, 9, 11]
    np.testing.assert_allclose(origins["t6"][:, 0], 0.9 + 5.0 * (np.array(picked) - 6), atol=1e-9)
