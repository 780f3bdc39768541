"""OpenOccupancy (nuScenes-Occupancy) training losses: the four losses of `occ.losses` on the
512 x 512 x 40 grid, written to fit in memory (docs/training.md#openoccupancy).

logits (B, X, Y, Z, 17) with class 0 = empty; labels (B, X, Y, Z) int64 in 0..16 or 255 (ignored).
Every loss counts the voxels whose label is not 255 (no camera mask). One sample has 10.5 M voxels
and 178 M logits, so the losses share one softmax, never build one-hot (N, C) targets and sort
one class at a time: same values and gradients as `occ.losses` (tests/test_openoccupancy.py), in
about a third of the memory.
"""
import torch
import torch.nn.functional as F

from occ import openocc
from occ.losses import _neg_log_ratio as _neg_log

# Class-weighted CE weights of classes 0..16 (empty first), the published values.
CE_CLASS_WEIGHTS = (0.0352, 0.0586, 0.0701, 0.0582, 0.0524, 0.0603, 0.0686, 0.0585, 0.0658, 0.0576, 0.0551,
                    0.0464, 0.0563, 0.0493, 0.0486, 0.0474, 0.047)
EMPTY = 0


def _lovasz_gradient_weights(probs, labels, present):
    """(N, C) float32 d(Lovasz)/d(probs) without autograd, and the loss value: per present class,
    errors |[label == c] - p_c| sorted in decreasing order, dotted with the Lovasz gradient of the
    Jaccard loss (occ.losses._lovasz_jaccard_gradient); mean over the present classes."""
    weights = torch.zeros_like(probs)
    value = probs.new_zeros(())
    for c in present.nonzero().flatten().tolist():
        is_class = labels == c                                       # (N,)
        p = probs[:, c]
        errors = torch.where(is_class, 1 - p, p)
        # Other-class voxels with an error below every error of the class sort after the class's last
        # voxel, where the Jaccard loss stays 1: zero gradient, zero contribution. Sort only the rest.
        candidates = (is_class | (errors >= errors[is_class].min())).nonzero()[:, 0]
        errors_sorted, order = errors[candidates].sort(descending=True)
        order = candidates[order]
        is_class_sorted = is_class[order].float()
        num_positive = is_class_sorted.sum()
        jaccard = 1 - (num_positive - is_class_sorted.cumsum(0)) / (num_positive + (1 - is_class_sorted).cumsum(0))
        gradient = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        value = value + (errors_sorted * gradient).sum()
        # d error / d p = -1 on the class's voxels, +1 elsewhere
        weights[order, c] = torch.where(is_class[order], -gradient, gradient)
    num_present = max(int(present.sum()), 1)
    return weights / num_present, value / num_present


def openoccupancy_losses(logits, labels, class_weights=CE_CLASS_WEIGHTS):
    """{"loss_ce", "loss_sem_scal", "loss_geo_scal", "loss_lovasz"}, each weight 1, over the voxels
    whose label is not 255: class-weighted CE (sum of w[label] * CE / number of voxels),
    sem_scal, geo_scal (empty = class 0) and Lovasz-softmax, as defined in `occ.losses`."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}: the model's output "
                         f"grid must be the ground truth's {openocc.OPENOCCUPANCY_GRID_SHAPE}")
    num_classes = logits.shape[-1]
    valid = (labels != openocc.OPENOCCUPANCY_IGNORE).reshape(-1)
    flat_logits, target = logits.reshape(-1, num_classes).float(), labels.reshape(-1)   # (N, C), (N,)
    if not valid.all():   # copies; skipped when nothing is ignored
        flat_logits, target = flat_logits[valid], target[valid]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"labels must be 0..{num_classes - 1} or {openocc.OPENOCCUPANCY_IGNORE}")
    count = max(target.numel(), 1)
    weight = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    ce = F.cross_entropy(flat_logits, target, weight=weight, reduction="sum") / count

    probs = flat_logits.softmax(-1)                                    # (N, C), shared below
    target_sum = torch.bincount(target, minlength=num_classes).float()  # (C,) sum(t)
    hit = torch.zeros(num_classes, device=logits.device).index_add(0, target, probs.gather(1, target[:, None])[:, 0])
    prob_sum = probs.sum(0)
    negative_sum = target.numel() - target_sum
    present = target_sum > 0
    per_class = (_neg_log(hit / prob_sum.clamp(min=1e-12), prob_sum > 0)
                 + _neg_log(hit / target_sum.clamp(min=1), present)
                 + _neg_log((negative_sum - prob_sum + hit) / negative_sum.clamp(min=1), negative_sum > 0))
    sem_scal = (per_class * present).sum() / present.sum().clamp(min=1)

    empty_prob = probs[:, EMPTY]
    occupied = target != EMPTY
    empty_on_occupied = empty_prob[occupied].sum()
    occupied_count, empty_count = occupied.sum().float(), (~occupied).sum().float()
    occupied_prob_sum = target.numel() - empty_prob.sum()
    hit_geo = occupied_count - empty_on_occupied                       # sum((1 - p_empty) o)
    true_empty = empty_prob.sum() - empty_on_occupied                  # sum(p_empty (1 - o))
    geo_scal = (_neg_log(hit_geo / occupied_prob_sum.clamp(min=1e-12), occupied_prob_sum > 0)
                + _neg_log(hit_geo / occupied_count.clamp(min=1), occupied_count > 0)
                + _neg_log(true_empty / empty_count.clamp(min=1), empty_count > 0))

    with torch.no_grad():
        lovasz_weights, lovasz_value = _lovasz_gradient_weights(probs.detach(), target, present)
    linear = (probs * lovasz_weights).sum()    # the same gradient as the sorted sum; value fixed below
    lovasz = linear + (lovasz_value - linear).detach()
    return {"loss_ce": ce, "loss_sem_scal": sem_scal, "loss_geo_scal": geo_scal, "loss_lovasz": lovasz}
