"""The OpenOcc flow loss (docs/training.md#occupancy-and-flow-openocc).

Shapes (Occ3D grid indexed [x, y, z]): flow and gt_flow (B, X, Y, Z, 2) vx, vy in m/s; semantics
(B, X, Y, Z) int64 in the OpenOcc class order (free = `occ.openocc.FREE`).
"""
import torch

from occ import openocc


def flow_voxels(semantics, which):
    """The voxels the L1 flow loss covers, bool (B, X, Y, Z): "occupied" = the GT is not free,
    "all" = every voxel (the original)."""
    if which == "all":
        return torch.ones_like(semantics, dtype=torch.bool)
    if which == "occupied":
        return semantics != openocc.FREE
    raise ValueError(f"flow voxels must be 'occupied' or 'all', got {which!r}")


def flow_l1_loss(flow, gt_flow, voxels):
    """Mean |flow - gt_flow| over both components of the voxels set in `voxels`; 0 (with a zero
    gradient) when none is set. Computed in float32."""
    if flow.shape != gt_flow.shape or flow.shape[:-1] != voxels.shape or flow.shape[-1] != 2:
        raise ValueError(f"shape mismatch: flow {tuple(flow.shape)}, GT flow {tuple(gt_flow.shape)}, "
                         f"voxels {tuple(voxels.shape)}; expected (B, X, Y, Z, 2) twice and (B, X, Y, Z)")
    error = (flow.float() - gt_flow.float()).abs().sum(-1)  # (B, X, Y, Z)
    return (error * voxels).sum() / (2 * voxels.sum().clamp(min=1))


def flow_loss(outputs, batch, train_cfg):
    """{"loss_flow": train.flow_loss_weight x flow_l1_loss} over the voxels of train.flow_loss_voxels
    (and of the batch's `label_mask` when it has one)."""
    voxels = flow_voxels(batch["semantics"], train_cfg.flow_loss_voxels)
    if "label_mask" in batch:
        voxels = voxels & batch["label_mask"]
    return {"loss_flow": train_cfg.flow_loss_weight * flow_l1_loss(outputs["flow"], batch["flow"], voxels)}
