"""Occupancy metrics (docs/metrics.md): Occ3D mIoU and geometry IoU, RayIoU with mAVE / OccScore,
and the OpenOccupancy SC IoU / SSC mIoU.

Every metric is an accumulator: `update(...)` once per sample, `compute()` once per split. Counts
are kept as integer numpy arrays (`confusion`, `gt_count`, ...) so that a distributed caller can
sum them across processes before calling `compute()`.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from occ import occ3d, openocc

RAY_THRESHOLDS = (1.0, 2.0, 4.0)  # metres
AVE_THRESHOLD = 2.0  # AVE is measured on the rays that are true positives at 2 m
MAX_ORIGINS = 8  # RayIoU casts from at most this many LiDAR origins per sample
ORIGIN_XY_LIMIT = 39.0  # an origin is used only if |x| and |y| are below this (metres, ego frame)


def to_numpy(array):
    """A tensor (any device; bfloat16, which numpy lacks, as float32) or array-like -> numpy array."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        return (array.float() if array.dtype == torch.bfloat16 else array).numpy()
    return np.asarray(array)


def check_labels(labels, num_classes, what):
    """Raises if an integer label array holds values outside [0, num_classes)."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} holds labels outside [0, {num_classes - 1}]: "
                         f"min {labels.min()}, max {labels.max()}")


def iou_from_counts(tp, gt_count, pred_count):
    """tp / (gt + pred - tp) per class; NaN where the class is absent from both GT and prediction."""
    union = gt_count.astype(np.float64) + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def nanmean(values):
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def format_table(class_names, columns, mean_row):
    """A plain-text table: one row per class, one column per entry of `columns` (name -> values as
    fractions, shown in percent), then a MEAN row from `mean_row` (name -> value)."""
    width = max(len(name) for name in list(class_names) + ["MEAN"])
    header = f"{'class':<{width}} " + " ".join(f"{name:>9}" for name in columns)
    lines = [header, "-" * len(header)]

    def cell(value):
        return f"{'nan':>9}" if value is None or math.isnan(value) else f"{100 * value:>9.2f}"

    for i, name in enumerate(class_names):
        lines.append(f"{name:<{width}} " + " ".join(cell(values[i]) for values in columns.values()))
    lines.append("-" * len(header))
    lines.append(f"{'MEAN':<{width}} " + " ".join(cell(mean_row.get(name)) for name in columns))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Occ3D mIoU
class OccupancyMetric:
    """Occ3D mIoU and geometry IoU over a split (docs/metrics.md#occ3d-miou).

    One global confusion matrix (rows GT, columns prediction) is accumulated over every sample;
    per-class IoU comes from it at the end, never from per-sample averages. Only voxels with
    mask set count (Occ3D uses mask_camera; pass mask_lidar or None for the other protocols).
    The mean is over classes 0..num_classes-2 (free, the last class, is excluded); a class absent
    from both GT and prediction is NaN and skipped, one absent from GT but predicted scores 0.
    """

    def __init__(self, class_names=occ3d.CLASS_NAMES):
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.free_label = self.num_classes - 1
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, gt, mask=None):
        """pred, gt: integer label grids of the same shape; mask: same shape, nonzero = counted."""
        pred, gt = to_numpy(pred), to_numpy(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from GT shape {gt.shape}")
        if mask is not None:
            mask = to_numpy(mask)
            if mask.shape != gt.shape:
                raise ValueError(f"mask shape {mask.shape} differs from GT shape {gt.shape}")
            keep = mask.astype(bool)
            pred, gt = pred[keep], gt[keep]
        pred = pred.reshape(-1).astype(np.int64)
        gt = gt.reshape(-1).astype(np.int64)
        check_labels(pred, self.num_classes, "prediction")
        check_labels(gt, self.num_classes, "ground truth")
        pairs = gt * self.num_classes + pred
        self.confusion += np.bincount(pairs, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def compute(self):
        """{'iou': per-class IoU (free excluded, NaN = absent), 'miou', 'geometry_iou'}."""
        tp = np.diag(self.confusion)
        iou = iou_from_counts(tp, self.confusion.sum(1), self.confusion.sum(0))[:self.free_label]
        occupied = np.arange(self.num_classes) != self.free_label
        occupied_tp = self.confusion[np.ix_(occupied, occupied)].sum()
        geometry_iou = iou_from_counts(np.array([occupied_tp]), np.array([self.confusion[occupied].sum()]),
                                       np.array([self.confusion[:, occupied].sum()]))[0]
        return {"iou": iou.tolist(), "miou": nanmean(iou), "geometry_iou": float(geometry_iou)}

    def table(self, result=None):
        result = result or self.compute()
        return format_table(self.class_names[:self.free_label], {"IoU": result["iou"]},
                            {"IoU": result["miou"]})


# --------------------------------------------------------------------------------------------
# RayIoU (SparseOcc) and mAVE / OccScore (OpenOcc)
def lidar_ray_directions():
    """The (39 * 360, 3) float32 unit ray directions of SparseOcc's RayIoU, pitch-major.

    Pitches: -(pi/2 - atan(k)) for k = 1..10 (-45 deg up to -5.7 deg), then continued with the
    last spacing while below 0.21 rad (the top of the nuScenes LiDAR field of view): 39 pitches.
    Azimuths: every whole degree 0..359.
    """
    pitches = [-(math.pi / 2 - math.atan(k)) for k in range(1, 11)]
    while pitches[-1] < 0.21:
        pitches.append(pitches[-1] + (pitches[-1] - pitches[-2]))
    pitch = np.array(pitches)[:, None]
    azimuth = np.deg2rad(np.arange(360))[None, :]
    directions = np.stack([np.cos(pitch) * np.cos(azimuth), np.cos(pitch) * np.sin(azimuth),
                           np.sin(pitch) * np.ones_like(azimuth)], axis=-1)
    return directions.reshape(-1, 3).astype(np.float32)


def cast_rays(occupied, origins, directions, max_steps=1000):
    """First occupied voxel along each ray, by a 3-D DDA vectorised over rays.

    occupied: (G, X, Y, Z) bool, G grids traversed by the same rays (e.g. prediction and GT).
    origins: (R, 3), directions: (R, 3), in metres in the grid's frame (directions need not be unit).
    Returns depth (G, R) float32 metres and voxel (G, R, 3) int64 indices.

    The definition (SparseOcc's CPU/CUDA `render_forward` in test mode, reproduced exactly): the
    walk starts in the voxel holding the origin and visits every voxel the ray crosses, choosing
    the axis with the smallest crossing distance (ties as the reference: tx == ty -> y,
    tx == tz -> z, ty == tz -> z). For the first
    visited in-grid occupied voxel, depth = the distance at which the ray EXITS that voxel. A ray
    that leaves the grid without a hit gets the exit distance and index of the last in-grid voxel
    it crossed. Positions are rounded to float32 before the walk and the depth is float32, as in
    the reference. **quirk**: the reference truncates the origin's voxel coordinates toward zero,
    which misplaces origins below the grid (z < -1 m); we take the floor. A ray that never enters
    the grid gets depth NaN and voxel index -1 (the reference returns voxel (0, 0, 0) there); the
    RayIoU treats it as free, so it is dropped.
    """
    num_grids, grid_shape = occupied.shape[0], np.array(occupied.shape[1:])
    # Voxel units, float32 like the reference; direction = normalised (end - origin) in float64.
    origin_vox = ((origins - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE).astype(np.float32).astype(np.float64)
    end_vox = ((origins + directions - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE).astype(np.float32).astype(np.float64)
    ray = end_vox - origin_vox
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    num_rays = len(ray)

    voxel = np.floor(origin_vox).astype(np.int64)  # (R, 3) current voxel
    step = np.where(ray >= 0, 1, -1)
    with np.errstate(divide="ignore"):
        t_max = np.where(ray != 0, (voxel + (step > 0) - origin_vox) / ray, np.inf)  # next crossing
        t_delta = np.where(ray != 0, step / ray, np.inf)  # distance between crossings per axis

    depth_vox = np.full((num_grids, num_rays), np.nan)
    hit_voxel = np.full((num_grids, num_rays, 3), -1, dtype=np.int64)
    found = np.zeros((num_grids, num_rays), dtype=bool)
    was_inside = np.zeros(num_rays, dtype=bool)
    last_voxel = np.zeros((num_rays, 3), dtype=np.int64)  # last in-grid voxel and its exit distance
    last_exit = np.zeros(num_rays)

    def finish_unfound(rays):
        """Rays leaving the grid: grids without a hit take the last in-grid voxel."""
        for g in range(num_grids):
            open_rays = rays[~found[g, rays] & was_inside[rays]]
            depth_vox[g, open_rays] = last_exit[open_rays]
            hit_voxel[g, open_rays] = last_voxel[open_rays]

    active = np.arange(num_rays)
    for _ in range(max_steps + 1):
        if active.size == 0:
            break
        current = voxel[active]
        inside = ((current >= 0) & (current < grid_shape)).all(1)
        leaving = ~inside & was_inside[active]
        finish_unfound(active[leaving])
        active, current, inside = active[~leaving], current[~leaving], inside[~leaving]

        t = t_max[active]
        axis = np.where(t[:, 0] < t[:, 1], np.where(t[:, 0] < t[:, 2], 0, 2),
                        np.where(t[:, 1] < t[:, 2], 1, 2))
        exit_distance = t[np.arange(len(active)), axis]

        rays_in, voxels_in = active[inside], current[inside]
        was_inside[rays_in] = True
        last_voxel[rays_in] = voxels_in
        last_exit[rays_in] = exit_distance[inside]
        for g in range(num_grids):
            hit = occupied[g][voxels_in[:, 0], voxels_in[:, 1], voxels_in[:, 2]] & ~found[g, rays_in]
            new_rays = rays_in[hit]
            found[g, new_rays] = True
            depth_vox[g, new_rays] = exit_distance[inside][hit]
            hit_voxel[g, new_rays] = voxels_in[hit]

        voxel[active, axis] += step[active, axis]
        t_max[active, axis] += t_delta[active, axis]
        active = active[~found[:, active].all(0)]
    finish_unfound(active)
    depth = depth_vox.astype(np.float32) * np.float32(occ3d.VOXEL_SIZE)
    return depth, hit_voxel


def scene_lidar_origins(infos):
    """RayIoU ray origins for every sample: {token: (T, 3) float64, T <= 8}.

    For a sample, the LiDAR origins of all key frames of its scene (itself included) are
    expressed in its ego frame; those with |x| and |y| below 39 m are kept (in time order) and,
    when more than 8 remain, 8 are picked at indices round(linspace(0, n - 1, 8)).
    infos: records with token, scene_name, timestamp, lidar2ego (4x4), ego2global (4x4).
    """
    scenes = {}
    for info in infos:
        scenes.setdefault(info["scene_name"], []).append(info)
    origins = {}
    for frames in scenes.values():
        frames = sorted(frames, key=lambda info: info["timestamp"])
        # (F, 3) LiDAR origins in the global frame
        lidar_global = np.stack([(np.asarray(f["ego2global"]) @ np.asarray(f["lidar2ego"]))[:3, 3]
                                 for f in frames])
        for ref in frames:
            global2ego = np.linalg.inv(np.asarray(ref["ego2global"]))
            in_ego = lidar_global @ global2ego[:3, :3].T + global2ego[:3, 3]
            keep = in_ego[(np.abs(in_ego[:, 0]) < ORIGIN_XY_LIMIT) & (np.abs(in_ego[:, 1]) < ORIGIN_XY_LIMIT)]
            if len(keep) > MAX_ORIGINS:
                keep = keep[np.round(np.linspace(0, len(keep) - 1, MAX_ORIGINS)).astype(np.int64)]
            origins[ref["token"]] = keep
    return origins


class RayIoUMetric:
    """RayIoU over a split (docs/metrics.md#rayiou, SparseOcc), and with flow, mAVE and OccScore (OpenOcc).

    Per sample, the rays of `lidar_ray_directions()` are cast from each origin through the
    prediction and the GT; a ray's label is the class of the voxel where it stops. Rays whose GT
    label is free are dropped. Per class: gt / pred = rays with that GT / predicted label, TP at
    threshold th = rays with both labels equal to the class and |depth_pred - depth_gt| < th.
    IoU = TP / (gt + pred - TP); RayIoU@th = nanmean over non-free classes; RayIoU = mean over th.
    With flow, AVE per dynamic class = mean L2 error between the flows of the two stopping voxels
    over the rays that are TP at 2 m; mAVE = nanmean; OccScore = 0.9 RayIoU + 0.1 max(1 - mAVE, 0),
    where an undefined mAVE (no dynamic-class TP ray at all) counts as the worst, a term of 0.
    """

    def __init__(self, class_names=occ3d.CLASS_NAMES, dynamic_classes=None, directions=None):
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.free_label = self.num_classes - 1
        self.dynamic_classes = list(dynamic_classes) if dynamic_classes is not None else None
        self.directions = lidar_ray_directions() if directions is None else np.asarray(directions, np.float32)
        self.gt_count = np.zeros(self.num_classes, dtype=np.int64)
        self.pred_count = np.zeros(self.num_classes, dtype=np.int64)
        self.tp_count = np.zeros((len(RAY_THRESHOLDS), self.num_classes), dtype=np.int64)
        self.flow_error_sum = np.zeros(self.num_classes)
        self.flow_error_count = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred, gt, origins, pred_flow=None, gt_flow=None):
        """pred, gt: (200, 200, 16) labels; origins: (T, 3) metres, ego frame;
        pred_flow, gt_flow: (200, 200, 16, 2) m/s, required when dynamic_classes was given."""
        pred, gt = to_numpy(pred).astype(np.int64), to_numpy(gt).astype(np.int64)
        if pred.shape != occ3d.GRID_SHAPE or gt.shape != occ3d.GRID_SHAPE:
            raise ValueError(f"RayIoU needs {occ3d.GRID_SHAPE} grids, got prediction {pred.shape}, GT {gt.shape}")
        check_labels(pred, self.num_classes, "prediction")
        check_labels(gt, self.num_classes, "ground truth")
        origins = np.asarray(to_numpy(origins), dtype=np.float64).reshape(-1, 3)
        if len(origins) == 0:
            raise ValueError("RayIoU needs at least one ray origin per sample")
        if self.dynamic_classes is not None and (pred_flow is None or gt_flow is None):
            raise ValueError("this RayIoUMetric scores flow: pass pred_flow and gt_flow")

        num_dirs = len(self.directions)
        ray_origins = np.repeat(origins, num_dirs, axis=0)
        ray_dirs = np.tile(self.directions, (len(origins), 1))
        depth, voxel = cast_rays(np.stack([pred != self.free_label, gt != self.free_label]),
                                 ray_origins, ray_dirs)

        def labels_at(grid, index):
            entered = index[:, 0] >= 0
            out = np.full(len(index), self.free_label, dtype=np.int64)
            out[entered] = grid[index[entered, 0], index[entered, 1], index[entered, 2]]
            return out

        pred_label, gt_label = labels_at(pred, voxel[0]), labels_at(gt, voxel[1])
        keep = gt_label != self.free_label
        pred_label, gt_label = pred_label[keep], gt_label[keep]
        depth_error = np.abs(depth[0, keep] - depth[1, keep])

        self.gt_count += np.bincount(gt_label, minlength=self.num_classes)
        self.pred_count += np.bincount(pred_label, minlength=self.num_classes)
        same_class = pred_label == gt_label
        for j, threshold in enumerate(RAY_THRESHOLDS):
            tp = same_class & (depth_error < threshold)
            self.tp_count[j] += np.bincount(gt_label[tp], minlength=self.num_classes)

        if self.dynamic_classes is not None:
            pred_voxel, gt_voxel = voxel[0][keep], voxel[1][keep]
            tp = same_class & (depth_error < AVE_THRESHOLD)
            pred_flow, gt_flow = to_numpy(pred_flow), to_numpy(gt_flow)
            flow_p = pred_flow[pred_voxel[tp, 0], pred_voxel[tp, 1], pred_voxel[tp, 2]]
            flow_g = gt_flow[gt_voxel[tp, 0], gt_voxel[tp, 1], gt_voxel[tp, 2]]
            error = np.linalg.norm(flow_p.astype(np.float64) - flow_g, axis=1)
            self.flow_error_sum += np.bincount(gt_label[tp], weights=error, minlength=self.num_classes)
            self.flow_error_count += np.bincount(gt_label[tp], minlength=self.num_classes)

    def compute(self):
        """{'iou@1', 'iou@2', 'iou@4': per-class lists; 'rayiou@1/2/4'; 'rayiou'} and, with flow,
        {'ave': per-class list (NaN for static or unmatched classes), 'mave', 'occ_score'}."""
        result = {}
        means = []
        for j, threshold in enumerate(RAY_THRESHOLDS):
            iou = iou_from_counts(self.tp_count[j], self.gt_count, self.pred_count)[:self.free_label]
            result[f"iou@{threshold:g}"] = iou.tolist()
            result[f"rayiou@{threshold:g}"] = nanmean(iou)
            means.append(result[f"rayiou@{threshold:g}"])
        result["rayiou"] = float(np.mean(means))
        if self.dynamic_classes is not None:
            ave = np.full(self.free_label, np.nan)
            for c in self.dynamic_classes:
                if self.flow_error_count[c] > 0:
                    ave[c] = self.flow_error_sum[c] / self.flow_error_count[c]
            result["ave"] = ave.tolist()
            result["mave"] = nanmean(ave)
            mave_term = 0.0 if math.isnan(result["mave"]) else max(1.0 - result["mave"], 0.0)
            result["occ_score"] = 0.9 * result["rayiou"] + 0.1 * mave_term
        return result

    def table(self, result=None):
        result = result or self.compute()
        columns = {f"Ray@{t:g}": result[f"iou@{t:g}"] for t in RAY_THRESHOLDS}
        means = {f"Ray@{t:g}": result[f"rayiou@{t:g}"] for t in RAY_THRESHOLDS}
        return format_table(self.class_names[:self.free_label], columns, means)


# --------------------------------------------------------------------------------------------
# OpenOccupancy (nuScenes-Occupancy)
def upsample_logits(logits, size=openocc.OPENOCCUPANCY_GRID_SHAPE):
    """(B, C, X, Y, Z) logits -> (B, C, *size), trilinear (align_corners=False), as OpenOccupancy
    scores a coarser prediction on its 512 x 512 x 40 grid."""
    return F.interpolate(logits, size=size, mode="trilinear", align_corners=False)


class SSCMetric:
    """OpenOccupancy SC IoU (empty vs non-empty) and SSC mIoU (classes 1..16) over a split, from
    one dataset-global confusion matrix; GT voxels labelled 255 are ignored. Predictions must
    already be at the GT resolution (see `upsample_logits`)."""

    def __init__(self, class_names=openocc.OPENOCCUPANCY_CLASS_NAMES, ignore_label=openocc.OPENOCCUPANCY_IGNORE):
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_label = ignore_label
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, gt):
        pred, gt = to_numpy(pred).reshape(-1).astype(np.int64), to_numpy(gt).reshape(-1).astype(np.int64)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.size} voxels, GT {gt.size}: upsample first")
        keep = gt != self.ignore_label
        pred, gt = pred[keep], gt[keep]
        check_labels(pred, self.num_classes, "prediction")
        check_labels(gt, self.num_classes, "ground truth")
        self.confusion += np.bincount(gt * self.num_classes + pred, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def compute(self):
        """{'sc_iou', 'iou': classes 1..16 (NaN = absent from both), 'ssc_miou'}."""
        tp = np.diag(self.confusion)
        iou = iou_from_counts(tp, self.confusion.sum(1), self.confusion.sum(0))[1:]
        sc_tp = self.confusion[1:, 1:].sum()
        sc_iou = iou_from_counts(np.array([sc_tp]), np.array([self.confusion[1:].sum()]),
                                 np.array([self.confusion[:, 1:].sum()]))[0]
        return {"sc_iou": float(sc_iou), "iou": iou.tolist(), "ssc_miou": nanmean(iou)}
