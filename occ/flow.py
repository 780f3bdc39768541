"""The OpenOcc flow loss (docs/training.md#occupancy-and-flow-openocc).

Shapes (Occ3D grid indexed [x, y, z]): flow and gt_flow (B, X, Y, Z, 2) vx, vy in m/s; semantics
(B, X, Y, Z) int64 in the OpenOcc class order (free = `occ.openocc.FREE`).
"""
import torch

from occ import openocc


MOVING_SPEED = 0.1  # m/s: a GT voxel faster than this is "moving" (flow_loss_voxels "balanced")


def moving_voxels(semantics, gt_flow):
    """bool (B, X, Y, Z): the GT-occupied voxels whose GT speed is above MOVING_SPEED."""
    return (semantics != openocc.FREE) & (gt_flow.float().norm(dim=-1) > MOVING_SPEED)


def flow_voxel_weights(semantics, gt_flow, which, keep=None):
    """Per-voxel weights (B, X, Y, Z) float32 of the L1 flow loss, summing to 1 over the batch (all
    zero when no voxel is chosen). Only voxels set in `keep` (bool, same shape; default all) count.
    "all": every voxel equally (the original); "occupied": the GT-occupied voxels equally;
    "balanced": the occupied voxels, the moving ones (GT speed > MOVING_SPEED) sharing one half of
    the weight and the static ones the other half (all of it when one of the two groups is empty)."""
    if which == "all":
        groups = [torch.ones_like(semantics, dtype=torch.bool)]
    elif which == "occupied":
        groups = [semantics != openocc.FREE]
    elif which == "balanced":
        moving = moving_voxels(semantics, gt_flow)
        groups = [moving, (semantics != openocc.FREE) & ~moving]
    else:
        raise ValueError(f"flow voxels must be 'occupied', 'all' or 'balanced', got {which!r}")
    if keep is not None:
        groups = [group & keep for group in groups]
    groups = [group for group in groups if group.any()]
    weights = torch.zeros(semantics.shape, dtype=torch.float32, device=semantics.device)
    for group in groups:
        weights += group.float() / (group.sum() * len(groups))
    return weights


def flow_l1_loss(flow, gt_flow, weights):
    """Weighted mean of |flow - gt_flow| over the voxels and both components (vx, vy), with the
    per-voxel `weights` (B, X, Y, Z) of `flow_voxel_weights` (summing to 1, or all zero: loss 0 with
    a zero gradient). Computed in float32."""
    if flow.shape != gt_flow.shape or flow.shape[:-1] != weights.shape or flow.shape[-1] != 2:
        raise ValueError(f"shape mismatch: flow {tuple(flow.shape)}, GT flow {tuple(gt_flow.shape)}, "
                         f"weights {tuple(weights.shape)}; expected (B, X, Y, Z, 2) twice and (B, X, Y, Z)")
    error = (flow.float() - gt_flow.float()).abs().sum(-1)  # (B, X, Y, Z)
    return (error * weights).sum() / 2


def flow_loss(outputs, batch, train_cfg):
    """{"loss_flow": train.flow_loss_weight x flow_l1_loss} with the weights of train.flow_loss_voxels
    (and of the batch's `label_mask` when it has one)."""
    weights = flow_voxel_weights(batch["semantics"], batch["flow"], train_cfg.flow_loss_voxels, batch.get("label_mask"))
    return {"loss_flow": train_cfg.flow_loss_weight * flow_l1_loss(outputs["flow"], batch["flow"], weights)}
