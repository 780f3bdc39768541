"""Losses: occupancy cross-entropy (docs/training.md#losses), the optional four-loss variant,
DistillOcc (docs/training.md#distillocc) and the Occ-BEV focal loss
(docs/training.md#occ-bev-pre-training).

Shapes used throughout (Occ3D grid indexed [x, y, z] in the ego frame):
  logits     (B, X, Y, Z, C)  float, C = 18 classes, class 17 = free
  labels     (B, X, Y, Z)     int64 in [0, C)
  mask       (B, X, Y, Z)     bool, e.g. mask_camera
  BEV feature (B, C_bev, Y, X) float (rows = y, columns = x: the BEV layout of
              docs/architecture.md#grid-and-classes)
Every loss is computed in float32 and returns a scalar tensor connected to the logits, so a batch
with an empty mask gives 0 with a (zero) gradient rather than NaN.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from occ import occ3d


def _check_grid(logits, labels, mask):
    if logits.shape[:-1] != labels.shape or labels.shape != mask.shape:
        raise ValueError(f"shape mismatch: logits {tuple(logits.shape)} need labels and mask of shape "
                         f"{tuple(logits.shape[:-1])}, got labels {tuple(labels.shape)}, "
                         f"mask {tuple(mask.shape)}")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64, got {labels.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    num_classes = logits.shape[-1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), found values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def masked_cross_entropy(logits, labels, mask, class_weights=None):
    """Cross-entropy with per-voxel weight mask (docs/training.md#losses):

        sum_v mask_v * w[label_v] * CE_v / max(sum_v mask_v, 1)

    with w = 1 (the released config) or `class_weights` (C,). The normaliser is the number of
    masked voxels in both cases, so class weights change the balance between classes, not the
    overall scale convention. Only the masked voxels are computed (mask_camera is about a seventh
    of the grid on the synthetic world).
    """
    _check_grid(logits, labels, mask)
    return _cross_entropy(logits[mask].float(), labels[mask], class_weights)


def _cross_entropy(logits, labels, class_weights=None):
    """Mean (class-weighted) CE over the rows of logits (N, C), labels (N,); 0 with a gradient for N = 0."""
    num_classes = logits.shape[-1]
    ce = F.cross_entropy(logits, labels, reduction="none")          # (N,)
    if class_weights is not None:
        if class_weights.shape != (num_classes,):
            raise ValueError(f"class_weights must have shape ({num_classes},), got "
                             f"{tuple(class_weights.shape)}")
        ce = ce * class_weights.to(ce.device, torch.float32)[labels]
    return ce.sum() / max(labels.shape[0], 1)


# ------------------------------------------------------------------ the optional four-loss variant

def count_class_voxels(labels, mask, num_classes=occ3d.NUM_CLASSES):
    """Voxel count per class (num_classes,) int64 of `labels` inside `mask`.

    Class frequencies for `class_weights_from_frequencies` are these counts summed over every
    sample of the training split (raw counts, not normalised: the weight formula depends on the
    scale), counted inside mask_camera, i.e. over the voxels the loss sees.
    """
    return torch.bincount(labels[mask].reshape(-1), minlength=num_classes)[:num_classes]


def class_weights_from_frequencies(frequencies):
    """w_c = 1 / ln(freq_c + 0.001) from raw per-class voxel counts (see `count_class_voxels`).

    A count <= 1 would give a non-positive or infinite weight, so it is refused.
    """
    freq = np.asarray(frequencies, dtype=np.float64)
    if (freq <= 1).any():
        raise ValueError(f"class frequencies must be raw voxel counts > 1 (1/ln(f) is not a weight "
                         f"otherwise); classes {np.nonzero(freq <= 1)[0].tolist()} have {freq[freq <= 1]}")
    return torch.from_numpy(1.0 / np.log(freq + 0.001)).float()


def _neg_log_ratio(ratio, valid):
    """-log(ratio) where `valid` (its denominator was positive), else 0. Like torch's BCE(x, 1),
    log is clamped at -100, here by clamping the ratio so no gradient becomes NaN."""
    ratio = torch.where(valid, ratio, torch.ones_like(ratio))
    return -ratio.clamp(min=math.exp(-100), max=1.0).log()


def sem_scal_loss(logits, labels, mask):
    """MonoScene semantic scene-class affinity loss over the masked voxels.

    probs = softmax(logits). For each class c present among the masked labels, with p = probs[:, c]
    and t = [label == c]: precision = sum(p t)/sum(p), recall = sum(p t)/sum(t),
    specificity = sum((1-p)(1-t))/sum(1-t); each term -log(.) is added when its denominator is
    positive. The result is the mean over the present classes (0 when none is present).
    """
    _check_grid(logits, labels, mask)
    return _sem_scal(logits[mask].float().softmax(-1), labels[mask])


def _sem_scal(probs, labels):
    """sem_scal_loss on the masked voxels' probabilities (N, C) and labels (N,)."""
    target = F.one_hot(labels, probs.shape[-1]).float()             # (N, C)
    hit = (probs * target).sum(0)                                   # (C,) sum(p t)
    prob_sum, target_sum = probs.sum(0), target.sum(0)
    negative_sum = target.shape[0] - target_sum                     # sum(1 - t)
    true_negative = negative_sum - prob_sum + hit                   # sum((1-p)(1-t))
    present = target_sum > 0
    per_class = (_neg_log_ratio(hit / prob_sum.clamp(min=1e-12), prob_sum > 0)
                 + _neg_log_ratio(hit / target_sum.clamp(min=1), present)
                 + _neg_log_ratio(true_negative / negative_sum.clamp(min=1), negative_sum > 0))
    return (per_class * present).sum() / present.sum().clamp(min=1)


def geo_scal_loss(logits, labels, mask, free_class=occ3d.FREE):
    """MonoScene geometry scene-class affinity loss over the masked voxels.

    Occupied probability q = 1 - softmax(logits)[free_class], target o = [label != free_class]:
    -log(precision) - log(recall) - log(specificity) with precision = sum(q o)/sum(q),
    recall = sum(q o)/sum(o), specificity = sum((1-q)(1-o))/sum(1-o); a term whose denominator is
    0 (no occupied / no free voxel in the mask) is left out. 0 for an empty mask.
    """
    _check_grid(logits, labels, mask)
    return _geo_scal(logits[mask].float().softmax(-1), labels[mask], free_class)


def _geo_scal(probs, labels, free_class):
    """geo_scal_loss on the masked voxels' probabilities (N, C) and labels (N,)."""
    free_prob = probs[:, free_class]                                # (N,)
    occupied = (labels != free_class).float()
    occupied_prob = 1 - free_prob
    hit = (occupied_prob * occupied).sum()
    prob_sum, occupied_sum, free_sum = occupied_prob.sum(), occupied.sum(), (1 - occupied).sum()
    true_free = (free_prob * (1 - occupied)).sum()
    return (_neg_log_ratio(hit / prob_sum.clamp(min=1e-12), prob_sum > 0)
            + _neg_log_ratio(hit / occupied_sum.clamp(min=1), occupied_sum > 0)
            + _neg_log_ratio(true_free / free_sum.clamp(min=1), free_sum > 0))


def _lovasz_jaccard_gradient(is_class_sorted):
    """Gradient of the Lovasz extension of the Jaccard loss for errors sorted in decreasing order
    along dim 0 (Berman et al. 2018, Alg. 1): g_1 = J_1, g_i = J_i - J_{i-1}, with J_i the Jaccard
    loss when the i largest-error voxels are predicted wrongly. is_class_sorted (N, C)."""
    num_positive = is_class_sorted.sum(0)
    intersection = num_positive - is_class_sorted.cumsum(0)
    union = num_positive + (1 - is_class_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax_loss(logits, labels, mask):
    """Lovasz-softmax (Berman et al. 2018) over the masked voxels of the whole batch.

    For each class c present among the masked labels: errors e_v = |[label_v == c] - p_v,c|,
    sorted in decreasing order, dotted with the Lovasz gradient of the Jaccard loss; the result is
    the mean over present classes (0 when none is present).
    """
    _check_grid(logits, labels, mask)
    return _lovasz(logits[mask].float().softmax(-1), labels[mask])


def _lovasz(probs, labels):
    """lovasz_softmax_loss on the masked voxels' probabilities (N, C) and labels (N,)."""
    if labels.shape[0] == 0:
        return probs.sum() * 0.0
    target = F.one_hot(labels, probs.shape[-1]).float()             # (N, C)
    errors_sorted, order = (target - probs).abs().sort(dim=0, descending=True)
    per_class = (errors_sorted * _lovasz_jaccard_gradient(target.gather(0, order))).sum(0)   # (C,)
    present = target.sum(0) > 0
    return (per_class * present).sum() / present.sum().clamp(min=1)


def four_losses(logits, labels, mask, class_weights):
    """The optional "all four losses" variant of docs/training.md#losses, each weight 1, all restricted to `mask`:
    class-weighted CE (w = `class_weights_from_frequencies`), sem_scal, geo_scal, Lovasz-softmax.
    The masked voxels are selected and their softmax taken once for all four."""
    _check_grid(logits, labels, mask)
    selected, target = logits[mask].float(), labels[mask]           # (N, C), (N,)
    probs = selected.softmax(-1)
    return {
        "loss_ce": _cross_entropy(selected, target, class_weights),
        "loss_sem_scal": _sem_scal(probs, target),
        "loss_geo_scal": _geo_scal(probs, target, occ3d.FREE),
        "loss_lovasz": _lovasz(probs, target),
    }


# ------------------------------------------------ Occ3D-Waymo OHEM cross-entropy (docs/training.md#occ3d-waymo)

def ohem_cross_entropy(logits, labels, mask, class_weights, top_ratio=0.2, top_weight=4.0):
    """The original's OHEM cross-entropy: per-voxel losses l_v = mask_v * w[label_v] * CE_v over
    EVERY voxel of the batch (the mask is a per-voxel weight, so masked-out voxels count as 0), then

        mean_v(l_v) + top_weight * mean(the int(top_ratio * V) largest l_v)

    with V the number of voxels of the batch (at least one voxel in the top set). class_weights (C,)
    (occ.waymo.CLASS_WEIGHTS for Occ3D-Waymo). 0 (with gradient) when the mask is empty."""
    _check_grid(logits, labels, mask)
    num_classes = logits.shape[-1]
    if class_weights.shape != (num_classes,):
        raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}")
    if not 0.0 < top_ratio <= 1.0:
        raise ValueError(f"top_ratio must be in (0, 1], got {top_ratio}")
    ce = F.cross_entropy(logits.float().reshape(-1, num_classes), labels.reshape(-1), reduction="none")
    weight = mask.reshape(-1).float() * class_weights.to(ce.device, torch.float32)[labels.reshape(-1)]
    losses = ce * weight  # (V,)
    top = torch.topk(losses, max(1, int(top_ratio * losses.numel()))).values
    return losses.mean() + top_weight * top.mean()


# ------------------------------------------------------------------------- DistillOcc (docs/training.md#distillocc)

def distill_masks(labels):
    """Disjoint fg / bg / empty masks from a label grid (GT or teacher argmax) (B, X, Y, Z).

    3-D voxel masks (B, X, Y, Z): fg = class <= 10, bg = 11..16, empty = 17 (free).
    2-D column masks (B, X, Y): fg_col = the column has a voxel of class <= 10;
    bg_col = it has no such voxel but has one in 11..16; empty_col = all its voxels are free.
    (The original's bg column mask overlapped fg; these are disjoint and cover every column.)
    """
    fg = labels <= occ3d.LAST_THING
    bg = (labels > occ3d.LAST_THING) & (labels < occ3d.FREE)
    empty = labels == occ3d.FREE
    fg_col = fg.any(-1)
    return {"fg": fg, "bg": bg, "empty": empty,
            "fg_col": fg_col, "bg_col": bg.any(-1) & ~fg_col, "empty_col": empty.all(-1)}


def bev_feature_mse(student_bev, teacher_bev, column_mask):
    """sum(mse * mask) / sum(mask) / C for BEV features (B, C, Y, X) and a column mask (B, X, Y).

    The column mask is indexed [x, y] like the label grid, so it is transposed to the feature's
    [y, x] layout here. 0 (with gradient) when the mask is empty.
    """
    mask = column_mask.transpose(1, 2).unsqueeze(1).float()   # (B, 1, Y, X)
    if student_bev.shape != teacher_bev.shape or student_bev.shape[2:] != mask.shape[2:] \
            or student_bev.shape[0] != mask.shape[0]:
        raise ValueError(f"BEV features must both be (B, C, Y, X) = (B, C, {mask.shape[2]}, "
                         f"{mask.shape[3]}); got student {tuple(student_bev.shape)}, "
                         f"teacher {tuple(teacher_bev.shape)}")
    mse = (student_bev.float() - teacher_bev.detach().float()) ** 2
    num_channels = student_bev.shape[1]
    return (mse * mask).sum() / mask.sum().clamp(min=1) / num_channels


def logit_cosine_distance(student_logits, teacher_logits, voxel_mask):
    """Mean over `voxel_mask` (B, X, Y, Z) of 1 - cos(student, teacher) over the class axis."""
    cos = F.cosine_similarity(student_logits.float(), teacher_logits.detach().float(), dim=-1)
    mask = voxel_mask.float()
    return ((1 - cos) * mask).sum() / mask.sum().clamp(min=1)


def distill_losses(student_bev, student_logits, teacher_bev, teacher_logits, semantics,
                   mask_camera, labelled, loss="ce", class_weights=None):
    """The seven DistillOcc losses (docs/training.md#distillocc), each weight 1, as a dict of named scalars.

    student_bev, teacher_bev: (B, 512, Y, X); student_logits, teacher_logits: (B, X, Y, Z, 18);
    semantics (B, X, Y, Z) int64 and mask_camera (B, X, Y, Z) bool, read only for samples with
    labelled[b] True (B,) bool. Masks come from GT on labelled samples and from the teacher's
    argmax on the others. The supervised term covers the camera-visible voxels of the labelled
    samples (0 when none is): with loss "ce" (DistillOcc) loss_ce, the masked CE; with "four" the
    four losses of `four_losses` (class-weighted by `class_weights`) in its place, as a camera-only
    model trained with them gets. The feature and logit terms use all samples and no camera mask.
    """
    batch = student_logits.shape[0]
    if labelled.shape != (batch,) or labelled.dtype != torch.bool:
        raise ValueError(f"labelled must be a bool tensor of shape ({batch},), got "
                         f"{labelled.dtype} {tuple(labelled.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} differ in shape")
    per_sample = labelled.view(batch, 1, 1, 1)
    labels = torch.where(per_sample, semantics, teacher_logits.detach().argmax(-1))
    masks = distill_masks(labels)
    supervised = mask_camera & per_sample
    if loss == "four":
        supervised_losses = four_losses(student_logits, labels, supervised, class_weights)
    elif loss == "ce":
        supervised_losses = {"loss_ce": masked_cross_entropy(student_logits, labels, supervised)}
    else:
        raise ValueError(f"the supervised term of the distillation losses is 'ce' or 'four', got {loss!r}")
    return {
        **supervised_losses,
        "loss_feat_fg": bev_feature_mse(student_bev, teacher_bev, masks["fg_col"]),
        "loss_feat_bg": bev_feature_mse(student_bev, teacher_bev, masks["bg_col"]),
        "loss_feat_empty": bev_feature_mse(student_bev, teacher_bev, masks["empty_col"]),
        "loss_logit_fg": logit_cosine_distance(student_logits, teacher_logits, masks["fg"]),
        "loss_logit_bg": logit_cosine_distance(student_logits, teacher_logits, masks["bg"]),
        "loss_logit_empty": logit_cosine_distance(student_logits, teacher_logits, masks["empty"]),
    }


# ------------------------------------------------ Occ-BEV focal (docs/training.md#occ-bev-pre-training)

def occupancy_focal_loss(logits, occupied, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss for Occ-BEV geometry pre-training.

    logits (..., 2): channel 0 = empty, channel 1 = occupied, each an independent sigmoid;
    occupied (...) bool. Targets are one-hot over the 2 channels: t = (1 - occ, occ). Per element
    with p = sigmoid(x): p_t = p if t = 1 else 1 - p, alpha_t = alpha if t = 1 else 1 - alpha,
    FL = -alpha_t (1 - p_t)^gamma log(p_t).
    Normalisation: the sum of FL over all voxels and both channels, divided by the number of
    voxels (i.e. the per-voxel sum over the 2 channels, averaged over every voxel).
    """
    if logits.shape[-1] != 2 or logits.shape[:-1] != occupied.shape:
        raise ValueError(f"focal loss needs logits (..., 2) and targets (...); got "
                         f"{tuple(logits.shape)} and {tuple(occupied.shape)}")
    target = F.one_hot(occupied.long(), 2).float()
    x = logits.float()
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, target, reduction="none")   # -log(p_t), stable
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    focal = alpha_t * (1 - p_t) ** gamma * ce
    return focal.sum() / max(occupied.numel(), 1)


# ------------------------------------------- depth supervision of camera models (docs/training.md#depth-supervision)

def depth_bin_count(depth_bins):
    """D of `model.depth_bins` (start, stop, step): the frustum's depths are arange(start, stop, step)."""
    return len(torch.arange(*depth_bins, dtype=torch.float32))


def depth_targets(depth_maps, downsample, depth_bins):
    """The depth bin each image-feature cell is supervised with.

    depth_maps (B, N, H, W): LiDAR depth in metres per input pixel, 0 = no point. A feature cell
    covers a downsample x downsample patch; its depth is the nearest (smallest) valid depth of the
    patch and its bin the frustum depth closest to it, floor((d - start) / step + 1/2). Returns int64
    (B, N, H / downsample, W / downsample), -1 where the patch has no depth or it falls outside the
    bins' [start - step / 2, start + (D - 1/2) step).
    """
    B, N, H, W = depth_maps.shape
    if H % downsample or W % downsample:
        raise ValueError(f"depth maps of {H} x {W} pixels do not divide into {downsample} x {downsample} patches")
    patches = depth_maps.float().view(B, N, H // downsample, downsample, W // downsample, downsample)
    nearest = torch.where(patches > 0, patches, torch.full_like(patches, float("inf"))).amin(dim=(3, 5))
    start, _, step = depth_bins
    index = torch.floor((nearest - start) / step + 0.5)  # nearest bin, halves rounded up
    valid = torch.isfinite(nearest) & (index >= 0) & (index < depth_bin_count(depth_bins))
    return torch.where(valid, index, torch.full_like(index, -1)).long()


def depth_loss(depth_probs, depth_maps, downsample, depth_bins):
    """BEVDepth-style depth supervision: binary cross-entropy between the predicted depth
    distribution and the one-hot bin of `depth_targets`, summed over the D bins and averaged over
    the feature cells that have a target. Cells without LiDAR depth contribute nothing (zero
    gradient); with no target at all the loss is 0.

    depth_probs (B, N, D, H_f, W_f), the softmax output of the view transformer (OccNet's `depth`);
    depth_maps (B, N, H, W) metres, 0 = none.
    """
    target = depth_targets(depth_maps, downsample, depth_bins)  # (B, N, H_f, W_f)
    num_bins = depth_probs.shape[2]
    if target.shape != depth_probs.shape[:2] + depth_probs.shape[3:] or num_bins != depth_bin_count(depth_bins):
        raise ValueError(f"depth distribution {tuple(depth_probs.shape)} does not match the depth targets "
                         f"{tuple(target.shape)} with {depth_bin_count(depth_bins)} bins")
    valid = target >= 0
    with torch.autocast(depth_probs.device.type, enabled=False):  # BCE is unsafe under autocast
        probs = depth_probs.float().permute(0, 1, 3, 4, 2)[valid]  # (V, D)
        one_hot = F.one_hot(target[valid], num_bins).float()
        bce = F.binary_cross_entropy(probs, one_hot, reduction="sum")
    return bce / valid.sum().clamp(min=1)


def camera_depth_loss(outputs, batch, model_cfg):
    """{"loss_depth": model.depth_loss_weight x depth_loss} for a camera model trained with depth
    supervision, {} when the weight is 0 (the published presets). `outputs` of OccNet.forward;
    batch["depth_maps"] holds the LiDAR depth of the (augmented) input images."""
    if model_cfg.depth_loss_weight == 0:
        return {}
    if "depth_maps" not in batch:
        raise KeyError("model.depth_loss_weight > 0 needs batch['depth_maps'] (LiDAR depth of the input images)")
    loss = depth_loss(outputs["depth"], batch["depth_maps"], model_cfg.downsample, model_cfg.depth_bins)
    return {"loss_depth": model_cfg.depth_loss_weight * loss}
