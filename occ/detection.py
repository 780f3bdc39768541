"""Camera 3-D detection with a CenterPoint head (BEVDet-R50 style): the classes, boxes from info
records, heatmap / regression targets, the loss, decoding and rotated BEV NMS, in plain PyTorch.

A box is 9 numbers in the (augmented) key-frame ego frame:
    x, y, z (box centre), l, w, h (length along the heading, width, height; nuScenes stores w, l, h),
    yaw (heading about +z from the ego x axis), vx, vy (m/s).
The detection grid is the model's BEV grid: x, y over model.point_cloud_range in cells of
model.occ_voxel_size; the head's maps are indexed [y, x] like the BEV feature (B, C, Y, X).
docs/architecture.md#detection-head says which published choices this follows.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from occ.errors import DataError

CLASS_NAMES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
               "pedestrian", "traffic_cone")
NUM_CLASSES = len(CLASS_NAMES)
# nuScenes category -> detection class (the devkit's category_to_detection_name); others are no targets
CATEGORY_CLASSES = {
    "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.construction": "construction_vehicle",
    "vehicle.bus.bendy": "bus", "vehicle.bus.rigid": "bus", "vehicle.trailer": "trailer",
    "movable_object.barrier": "barrier", "vehicle.motorcycle": "motorcycle", "vehicle.bicycle": "bicycle",
    "human.pedestrian.adult": "pedestrian", "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian", "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone"}
# the regression maps of the head, in the order of the 10 target values
REGRESSION_OUTPUTS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)  # x/y offset, z, log l/w/h, sin, cos, vx, vy
REGRESSION_WEIGHT = 0.25
MIN_OVERLAP, MIN_RADIUS = 0.1, 2
# box sizes are scaled per class before NMS (BEVDet), in CLASS_NAMES order
NMS_SIZE_SCALES = (1.0, 0.7, 0.7, 0.4, 0.55, 1.1, 1.0, 1.0, 1.5, 3.5)


@dataclass(frozen=True)
class DetectionGrid:
    """The BEV grid of the head's maps: cell (i_x, i_y) covers x_min + [i_x, i_x + 1) * cell_size."""
    x_min: float
    y_min: float
    cell_size: float
    size_x: int
    size_y: int

    @classmethod
    def from_model_config(cls, model_cfg):
        r, cell = model_cfg.point_cloud_range, model_cfg.occ_voxel_size
        return cls(float(r[0]), float(r[1]), float(cell), round((r[3] - r[0]) / cell), round((r[4] - r[1]) / cell))

    def centre_range(self, margin=10.0, z_range=(-10.0, 10.0)):
        """Decoded centres are kept inside the grid grown by `margin` m in x, y and in z_range
        (BEVDet-R50: [-61.2, 61.2]^2 x [-10, 10])."""
        x_max = self.x_min + self.size_x * self.cell_size
        y_max = self.y_min + self.size_y * self.cell_size
        return (self.x_min - margin, self.y_min - margin, z_range[0], x_max + margin, y_max + margin, z_range[1])


# ------------------------------------------------------------------------------------ boxes
def boxes_from_info(info_boxes):
    """The detection targets of an info record's `boxes` (datasets/prepare_nuscenes.py):
    (boxes float32 (M, 9), labels int64 (M,)); boxes of other categories and boxes without LiDAR
    points are left out; NaN velocities become 0. DataError when a key is missing (info files of
    an older datasets/prepare_nuscenes.py)."""
    missing = [key for key in ("centers", "sizes", "yaws", "names", "velocities", "num_lidar_pts")
               if key not in info_boxes]
    if missing:
        raise DataError(f"info record boxes lack {missing}; re-run datasets/prepare_nuscenes.py --force")
    keep = [i for i, name in enumerate(info_boxes["names"])
            if name in CATEGORY_CLASSES and info_boxes["num_lidar_pts"][i] > 0]
    labels = np.array([CLASS_NAMES.index(CATEGORY_CLASSES[info_boxes["names"][i]]) for i in keep], dtype=np.int64)
    w, l, h = (np.asarray(info_boxes["sizes"], dtype=np.float64).reshape(-1, 3)[keep].T)
    boxes = np.concatenate([np.asarray(info_boxes["centers"], dtype=np.float64).reshape(-1, 3)[keep],
                            np.stack([l, w, h], axis=1),
                            np.asarray(info_boxes["yaws"], dtype=np.float64)[keep, None],
                            np.nan_to_num(np.asarray(info_boxes["velocities"], dtype=np.float64).reshape(-1, 2)[keep])],
                           axis=1)
    return boxes.astype(np.float32).reshape(-1, 9), labels


# ---------------------------------------------------------------------------------- targets
def gaussian_radius(length, width, min_overlap=MIN_OVERLAP):
    """CenterNet / CenterPoint's radius (in cells) of a box of `length` x `width` cells: the
    smallest of CornerNet's three quadratic cases, each root taken as (b + sqrt(b^2 - 4ac)) / 2
    (the common implementation's division by 2, not by 2a)."""
    b1, c1 = length + width, width * length * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (length + width), (1 - min_overlap) * width * length
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (length + width), (min_overlap - 1) * width * length
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def heatmap_radius(length, width):
    """max(MIN_RADIUS, int(gaussian_radius)): the radius (cells) a box's Gaussian is drawn with."""
    return max(MIN_RADIUS, int(gaussian_radius(length, width)))


def gaussian_kernel(radius):
    """(2r + 1, 2r + 1) float32 exp(-(dx^2 + dy^2) / (2 sigma^2)), sigma = (2r + 1) / 6, 1 at the
    centre; values below float eps x max are 0."""
    sigma = (2 * radius + 1) / 6
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(d[None, :] ** 2 + d[:, None] ** 2) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(np.float64).eps * kernel.max()] = 0
    return torch.from_numpy(kernel.astype(np.float32))


def draw_gaussian(heatmap, x, y, radius):
    """Max-merge the Gaussian of `radius` centred on cell (x, y) into heatmap (Y, X), in place,
    clipped at the borders."""
    kernel = gaussian_kernel(radius).to(heatmap.device)
    size_y, size_x = heatmap.shape
    left, right = min(x, radius), min(size_x - x, radius + 1)
    top, bottom = min(y, radius), min(size_y - y, radius + 1)
    region = heatmap[y - top:y + bottom, x - left:x + right]
    torch.maximum(region, kernel[radius - top:radius + bottom, radius - left:radius + right], out=region)


def encode_boxes(boxes, cells_x, cells_y):
    """The 10 regression targets (K, 10) of boxes (K, 9) whose x, y are given in cells, at the
    cells (cells_x, cells_y) (K,) that hold their centres:
    [x offset, y offset (cells), z, log l, log w, log h, sin yaw, cos yaw, vx, vy]."""
    return torch.stack([boxes[:, 0] - cells_x, boxes[:, 1] - cells_y, boxes[:, 2],
                        boxes[:, 3].log(), boxes[:, 4].log(), boxes[:, 5].log(),
                        boxes[:, 6].sin(), boxes[:, 6].cos(), boxes[:, 7], boxes[:, 8]], dim=1)


def build_targets(boxes, labels, grid, num_classes=NUM_CLASSES):
    """Targets of one sample: boxes (M, 9), labels (M,) tensors ->
    heatmap (num_classes, Y, X) float32, cell indices (K,) = y * X + x, regression targets (K, 10),
    for the K boxes whose centre lies inside the grid (others are no targets)."""
    heatmap = torch.zeros(num_classes, grid.size_y, grid.size_x, dtype=torch.float32, device=boxes.device)
    boxes = boxes.float()
    centre_x = (boxes[:, 0] - grid.x_min) / grid.cell_size  # (M,) in cells
    centre_y = (boxes[:, 1] - grid.y_min) / grid.cell_size
    cells_x, cells_y = centre_x.floor(), centre_y.floor()
    inside = ((cells_x >= 0) & (cells_x < grid.size_x) & (cells_y >= 0) & (cells_y < grid.size_y)
              & (boxes[:, 3] > 0) & (boxes[:, 4] > 0))
    for i in torch.nonzero(inside).flatten().tolist():
        radius = heatmap_radius(float(boxes[i, 3]) / grid.cell_size, float(boxes[i, 4]) / grid.cell_size)
        draw_gaussian(heatmap[int(labels[i])], int(cells_x[i]), int(cells_y[i]), radius)
    in_cells = torch.cat([centre_x[:, None], centre_y[:, None], boxes[:, 2:]], dim=1)[inside]
    targets = encode_boxes(in_cells, cells_x[inside], cells_y[inside])
    indices = (cells_y[inside] * grid.size_x + cells_x[inside]).long()
    return heatmap, indices, targets


# ------------------------------------------------------------------------------------- loss
def gaussian_focal_loss(pred, target, alpha=2.0, gamma=4.0, eps=1e-12):
    """Elementwise CenterNet focal loss of probabilities `pred` against Gaussian `target` maps:
    -log(p) (1 - p)^alpha where target == 1, -log(1 - p) p^alpha (1 - target)^gamma elsewhere."""
    positive = target.eq(1).float()
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * positive
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * (1 - target).pow(gamma)
    return pos_loss + neg_loss


def detection_loss(preds, gt_boxes, gt_labels, grid):
    """CenterPoint loss of head outputs `preds` ({name: (B, C, Y, X)}) against per-sample lists of
    boxes (M_b, 9) and labels (M_b,): Gaussian focal loss on clamp(sigmoid(heatmap), 1e-4, 1 - 1e-4)
    summed over cells / positive cells, and 0.25 x L1 of the 10 regression values at each object's
    cell with CODE_WEIGHTS, summed / objects. Returns {"loss_heatmap", "loss_bbox"}."""
    heatmap_logits = preds["heatmap"]
    B, num_classes = heatmap_logits.shape[:2]
    heatmaps, gathered, targets = [], [], []
    regression = torch.cat([preds[name] for name in REGRESSION_OUTPUTS], dim=1).flatten(2)  # (B, 10, Y*X)
    for b in range(B):
        heatmap, indices, target = build_targets(gt_boxes[b].to(heatmap_logits.device), gt_labels[b], grid,
                                                 num_classes)
        heatmaps.append(heatmap)
        gathered.append(regression[b][:, indices].t())  # (K, 10)
        targets.append(target)
    heatmap_target = torch.stack(heatmaps)
    pred = heatmap_logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    num_positive = heatmap_target.eq(1).sum().clamp(min=1)
    loss_heatmap = gaussian_focal_loss(pred, heatmap_target).sum() / num_positive
    gathered, targets = torch.cat(gathered).float(), torch.cat(targets)
    weights = gathered.new_tensor(CODE_WEIGHTS)
    loss_bbox = REGRESSION_WEIGHT * ((gathered - targets).abs() * weights).sum() / (len(targets) + 1e-4)
    return {"loss_heatmap": loss_heatmap, "loss_bbox": loss_bbox}


# ----------------------------------------------------------------------------------- decoding
def decode_cells(regression, cells_x, cells_y, grid):
    """Boxes (K, 9) of regression values (K, 10) predicted at cells (cells_x, cells_y) (K,)."""
    x = (cells_x + regression[:, 0]) * grid.cell_size + grid.x_min
    y = (cells_y + regression[:, 1]) * grid.cell_size + grid.y_min
    yaw = torch.atan2(regression[:, 6], regression[:, 7])
    return torch.cat([x[:, None], y[:, None], regression[:, 2:3], regression[:, 3:6].exp(), yaw[:, None],
                      regression[:, 8:10]], dim=1)


@torch.no_grad()
def decode(preds, grid, top_k=500, score_threshold=0.1, nms_iou=0.2, pre_max=1000, post_max=500):
    """Head outputs ({name: (B, C, Y, X)}) -> per sample {"boxes" (K, 9), "scores" (K,), "labels"
    (K,)}, best first: the top_k cells of the sigmoid heatmap over all classes, score >
    score_threshold, centre inside grid.centre_range(), then class-agnostic rotated BEV NMS (IoU >
    nms_iou suppresses) on boxes whose l, w are scaled by NMS_SIZE_SCALES of their class, at most
    pre_max in and post_max out."""
    heat = preds["heatmap"].float().sigmoid()
    B, C, Y, X = heat.shape
    regression = torch.cat([preds[name].float() for name in REGRESSION_OUTPUTS], dim=1).flatten(2)  # (B, 10, Y*X)
    scores, flat = heat.flatten(1).topk(min(top_k, C * Y * X), dim=1)
    labels, cells = flat // (Y * X), flat % (Y * X)
    lower = torch.tensor(grid.centre_range()[:3], device=heat.device)
    upper = torch.tensor(grid.centre_range()[3:], device=heat.device)
    results = []
    for b in range(B):
        boxes = decode_cells(regression[b][:, cells[b]].t(), (cells[b] % X).float(), (cells[b] // X).float(), grid)
        keep = (scores[b] > score_threshold) & ((boxes[:, :3] >= lower) & (boxes[:, :3] <= upper)).all(dim=1)
        boxes, box_scores, box_labels = boxes[keep], scores[b][keep], labels[b][keep]
        scales = boxes.new_tensor(NMS_SIZE_SCALES)[box_labels]
        bev = torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 3] * scales, boxes[:, 4] * scales, boxes[:, 6]], dim=1)
        kept = nms_rotated(bev, box_scores, nms_iou, pre_max, post_max)
        results.append({"boxes": boxes[kept], "scores": box_scores[kept], "labels": box_labels[kept]})
    return results


# ---------------------------------------------------------------------------- rotated BEV NMS
def bev_corners(boxes):
    """(N, 5) x, y, l, w, yaw -> (N, 4, 2) corners, counter-clockwise."""
    signs = boxes.new_tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    local = signs[None] * boxes[:, None, 2:4]  # (N, 4, 2)
    cos, sin = boxes[:, 4].cos()[:, None], boxes[:, 4].sin()[:, None]
    return torch.stack([cos * local[..., 0] - sin * local[..., 1] + boxes[:, None, 0],
                        sin * local[..., 0] + cos * local[..., 1] + boxes[:, None, 1]], dim=-1)


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points, boxes, eps=1e-5):
    """points (..., P, 2) inside boxes (..., 5) (broadcast) -> (..., P) bool."""
    d = points - boxes[..., None, :2]
    cos, sin = boxes[..., None, 4].cos(), boxes[..., None, 4].sin()
    along, across = d[..., 0] * cos + d[..., 1] * sin, -d[..., 0] * sin + d[..., 1] * cos
    return (along.abs() <= boxes[..., None, 2] / 2 + eps) & (across.abs() <= boxes[..., None, 3] / 2 + eps)


def rotated_iou_bev(boxes_a, boxes_b):
    """Pairwise IoU (N, M) of rotated BEV rectangles (N, 5), (M, 5) x, y, l, w, yaw."""
    N, M = len(boxes_a), len(boxes_b)
    pairs_a = boxes_a[:, None].expand(N, M, 5).reshape(-1, 5)
    pairs_b = boxes_b[None].expand(N, M, 5).reshape(-1, 5)
    return paired_rotated_iou(pairs_a, pairs_b).view(N, M)


def paired_rotated_iou(a, b):
    """IoU (P,) of rotated BEV rectangles a[i], b[i] ((P, 5) each, x, y, l, w, yaw): the
    intersection polygon is the convex hull of the corners of each box inside the other and the
    edge crossings, ordered by angle about their mean, its area by the shoelace formula."""
    corners_a, corners_b = bev_corners(a), bev_corners(b)  # (P, 4, 2)
    p, r = corners_a[:, :, None], (corners_a.roll(-1, dims=1) - corners_a)[:, :, None]  # (P, 4, 1, 2)
    q, s = corners_b[:, None], (corners_b.roll(-1, dims=1) - corners_b)[:, None]  # (P, 1, 4, 2)
    denom = _cross(r, s)  # (P, 4, 4)
    safe = torch.where(denom.abs() > 1e-9, denom, torch.ones_like(denom))
    t, u = _cross(q - p, s) / safe, _cross(q - p, r) / safe
    crossing = (denom.abs() > 1e-9) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    crossings = (p + t[..., None] * r).flatten(1, 2)  # (P, 16, 2)
    points = torch.cat([corners_a, corners_b, crossings], dim=1)  # (P, 24, 2)
    valid = torch.cat([_inside(corners_a, b), _inside(corners_b, a), crossing.flatten(1, 2)], dim=1)
    count = valid.sum(-1)
    centre = (points * valid[..., None]).sum(1) / count.clamp(min=1)[:, None]
    angle = torch.atan2(points[..., 1] - centre[:, None, 1], points[..., 0] - centre[:, None, 0])
    order = torch.where(valid, angle, torch.full_like(angle, 10.0)).argsort(dim=-1)
    points = points.gather(1, order[..., None].expand(-1, -1, 2))
    valid = valid.gather(1, order)
    points = torch.where(valid[..., None], points, points[:, :1])  # invalid -> the first point: no area
    area = 0.5 * _cross(points, points.roll(-1, dims=1)).sum(-1).abs()
    area = torch.where(count >= 3, area, torch.zeros_like(area))
    return area / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - area).clamp(min=1e-9)


def nms_rotated(boxes, scores, iou_threshold, pre_max=1000, post_max=500):
    """Greedy NMS of rotated BEV boxes (N, 5) x, y, l, w, yaw: indices (into boxes) of the kept
    ones, best first; the best pre_max are considered, a box is dropped when its IoU with a kept
    one is > iou_threshold, at most post_max are kept. IoUs are computed only for pairs whose
    circumscribed circles meet."""
    order = scores.argsort(descending=True)[:pre_max]
    boxes = boxes[order].float()
    radius = 0.5 * torch.hypot(boxes[:, 2], boxes[:, 3])
    near = torch.cdist(boxes[:, :2], boxes[:, :2]) < radius[:, None] + radius[None]
    first, second = torch.nonzero(near.triu(diagonal=1), as_tuple=True)  # first ranks above second
    overlapping = paired_rotated_iou(boxes[first], boxes[second]) > iou_threshold
    overlaps = np.zeros((len(boxes), len(boxes)), dtype=bool)
    overlaps[first[overlapping].cpu().numpy(), second[overlapping].cpu().numpy()] = True
    suppressed = np.zeros(len(boxes), dtype=bool)
    kept = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        kept.append(i)
        if len(kept) == post_max:
            break
        suppressed |= overlaps[i]
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]
