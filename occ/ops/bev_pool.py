"""BEV pooling with the BEVPoolv2 interface (docs/architecture.md#bev-pooling).

Frustum points (b, n, d, h, w) carry a depth probability `depth[b, n, d, h, w]` and share the
image feature `feat[b, n, h, w, :]`. Each point falls into one BEV voxel; the voxel's feature is
the depth-weighted sum of the features of its points:
    out[rank_bev, c] = sum_i depth[ranks_depth[i]] * feat[ranks_feat[i], c]
`bev_pool_prepare` sorts the points by voxel so that each output cell is one contiguous interval.
`bev_pool_v2` runs the compiled kernels (csrc/bev_pool_*) and `bev_pool_v2_reference` is the
plain-PyTorch version they are tested against.
"""
import math

import torch

from .extension import kernels_for


def bev_pool_prepare(coords_xyz, bev_shape):
    """Frustum voxel coordinates -> sorted ranks and intervals for `bev_pool_v2`.

    coords_xyz: integer tensor (B, N, D, H, W, 3) of voxel indices (x, y, z), already floored.
    bev_shape: (B, Z, Y, X). Points outside the grid are dropped.
    Returns int32 tensors ranks_depth, ranks_feat, ranks_bev (P,) sorted by ranks_bev, and
    interval_starts, interval_lengths (K,): one interval per occupied BEV cell.
    """
    if coords_xyz.dim() != 6 or coords_xyz.shape[-1] != 3:
        raise ValueError(f"coords_xyz must have shape (B, N, D, H, W, 3), got {tuple(coords_xyz.shape)}")
    if coords_xyz.is_floating_point():
        raise ValueError("coords_xyz must be an integer tensor of voxel indices (floor them first)")
    B, N, D, H, W, _ = coords_xyz.shape
    num_b, Z, Y, X = bev_shape
    if num_b != B:
        raise ValueError(f"bev_shape batch {num_b} does not match coords_xyz batch {B}")
    device = coords_xyz.device
    coords = coords_xyz.reshape(-1, 3).long()
    ranks_depth = torch.arange(B * N * D * H * W, device=device)
    # feature index (b*N + n)*H*W + h*W + w, broadcast over the depth bins
    ranks_feat = torch.arange(B * N * H * W, device=device).view(B * N, 1, H * W).expand(B * N, D, H * W).reshape(-1)
    batch_idx = torch.arange(B, device=device).repeat_interleave(N * D * H * W)
    x, y, z = coords[:, 0], coords[:, 1], coords[:, 2]
    keep = (x >= 0) & (x < X) & (y >= 0) & (y < Y) & (z >= 0) & (z < Z)
    ranks_bev = batch_idx[keep] * (Z * Y * X) + z[keep] * (Y * X) + y[keep] * X + x[keep]
    ranks_depth, ranks_feat = ranks_depth[keep], ranks_feat[keep]
    order = torch.argsort(ranks_bev, stable=True)
    ranks_bev, ranks_depth, ranks_feat = ranks_bev[order], ranks_depth[order], ranks_feat[order]
    is_start = torch.ones_like(ranks_bev, dtype=torch.bool)
    is_start[1:] = ranks_bev[1:] != ranks_bev[:-1]
    interval_starts = torch.nonzero(is_start).flatten()
    interval_lengths = torch.diff(interval_starts, append=interval_starts.new_tensor([ranks_bev.numel()]))
    return tuple(t.int().contiguous() for t in
                 (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths))


def bev_pool_v2_reference(depth, feat, ranks_depth, ranks_feat, ranks_bev,
                          interval_starts, interval_lengths, bev_shape):
    """Plain-PyTorch BEV pooling: one index_add_ over all points (memory-hungry, differentiable).

    depth (B, N, D, H, W), feat (B, N, H, W, C) -> (B, C, Z, Y, X).
    The intervals are not needed here; they are accepted for interface parity.
    """
    B, Z, Y, X = bev_shape
    C = feat.shape[-1]
    out = feat.new_zeros(B * Z * Y * X, C)
    weighted = depth.reshape(-1)[ranks_depth.long(), None] * feat.reshape(-1, C)[ranks_feat.long()]
    out = out.index_add(0, ranks_bev.long(), weighted)
    return out.view(B, Z, Y, X, C).permute(0, 4, 1, 2, 3)


class _BevPoolV2(torch.autograd.Function):
    """The compiled kernels as an autograd Function; the output is (B*Z*Y*X, C)."""

    @staticmethod
    def forward(ctx, depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                kernels, num_cells):
        ctx.kernels = kernels
        ctx.save_for_backward(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)
        return kernels.bev_pool_forward(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                                        interval_lengths, num_cells)

    @staticmethod
    def backward(ctx, out_grad):
        depth_grad, feat_grad = ctx.kernels.bev_pool_backward(out_grad.contiguous(), *ctx.saved_tensors)
        return depth_grad, feat_grad, None, None, None, None, None, None, None


def _check_bev_pool_inputs(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                           interval_lengths, bev_shape):
    """ValueError naming the argument when the inputs do not follow the BEVPoolv2 contract."""
    ranks = {"ranks_depth": ranks_depth, "ranks_feat": ranks_feat, "ranks_bev": ranks_bev,
             "interval_starts": interval_starts, "interval_lengths": interval_lengths}
    for name, tensor in {"depth": depth, "feat": feat, **ranks}.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"bev_pool_v2: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if depth.dim() != 5:
        raise ValueError(f"bev_pool_v2: depth must have shape (B, N, D, H, W), got {tuple(depth.shape)}")
    B, N, D, H, W = depth.shape
    if feat.dim() != 5 or tuple(feat.shape[:4]) != (B, N, H, W) or feat.shape[4] == 0:
        raise ValueError(f"bev_pool_v2: feat must have shape (B, N, H, W, C) = ({B}, {N}, {H}, {W}, C>0) "
                         f"to match depth {tuple(depth.shape)}, got {tuple(feat.shape)}")
    if depth.dtype not in (torch.float32, torch.float64) or feat.dtype != depth.dtype:
        raise ValueError(f"bev_pool_v2: depth and feat must both be float32 or both float64, "
                         f"got depth {depth.dtype} and feat {feat.dtype}")
    if depth.device != feat.device:
        raise ValueError(f"bev_pool_v2: depth is on {depth.device} but feat is on {feat.device}")
    if len(bev_shape) != 4 or any(int(s) <= 0 for s in bev_shape) or int(bev_shape[0]) != B:
        raise ValueError(f"bev_pool_v2: bev_shape must be (B, Z, Y, X) of positive sizes with B = {B}, got {tuple(bev_shape)}")
    for name, tensor in ranks.items():
        if tensor.dtype != torch.int32 or tensor.dim() != 1:
            raise ValueError(f"bev_pool_v2: {name} must be a 1-D int32 tensor, got {tensor.dtype} {tuple(tensor.shape)}")
        if tensor.device != feat.device:
            raise ValueError(f"bev_pool_v2: {name} is on {tensor.device} but feat is on {feat.device}")
    num_points = ranks_depth.numel()
    for name in ("ranks_feat", "ranks_bev"):
        if ranks[name].numel() != num_points:
            raise ValueError(f"bev_pool_v2: {name} has {ranks[name].numel()} entries but ranks_depth has {num_points}")
    if interval_lengths.numel() != interval_starts.numel():
        raise ValueError(f"bev_pool_v2: interval_lengths has {interval_lengths.numel()} entries but "
                         f"interval_starts has {interval_starts.numel()}")
    if num_points == 0:
        if interval_starts.numel() != 0:
            raise ValueError("bev_pool_v2: interval_starts must be empty when there are no points")
        return
    if interval_starts.numel() == 0:
        raise ValueError(f"bev_pool_v2: interval_starts is empty but there are {num_points} points")

    # Value checks, written for numpy arrays and torch tensors alike: CPU tensors are checked as
    # zero-copy numpy views (single-threaded, no OpenMP fork/join per check), CUDA tensors in place.
    as_array = (lambda t: t.numpy()) if feat.device.type == "cpu" else (lambda t: t)
    rd, rf, rb = as_array(ranks_depth), as_array(ranks_feat), as_array(ranks_bev)
    starts, lengths = as_array(interval_starts), as_array(interval_lengths)
    checks = (
        ("ranks_depth", f"must lie in [0, {depth.numel()})", lambda: rd.min() >= 0 and rd.max() < depth.numel()),
        ("ranks_feat", f"must lie in [0, {B * N * H * W})", lambda: rf.min() >= 0 and rf.max() < B * N * H * W),
        ("ranks_bev", "must be sorted", lambda: (rb[1:] >= rb[:-1]).all()),
        ("ranks_bev", f"must lie in [0, {math.prod(int(s) for s in bev_shape)})",
         lambda: rb[0] >= 0 and rb[-1] < math.prod(int(s) for s in bev_shape)),
        ("interval_lengths", f"must lie in [1, {num_points}]", lambda: lengths.min() >= 1 and lengths.max() <= num_points),
        ("interval_starts", f"with interval_lengths must tile [0, {num_points}) in order",
         lambda: starts[0] == 0 and starts[-1] + lengths[-1] == num_points
         and (starts[1:] == starts[:-1] + lengths[:-1]).all()),
        ("ranks_bev", "must be constant inside each interval and differ between intervals",
         lambda: (rb[starts] == rb[starts + lengths - 1]).all() and (rb[starts[1:]] != rb[starts[1:] - 1]).all()),
    )
    for name, requirement, passed in checks:  # in order: later checks index with what earlier ones proved
        if not bool(passed()):
            raise ValueError(f"bev_pool_v2: {name} {requirement}")


def bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, bev_shape):
    """BEV pooling with the compiled kernels (CPU or CUDA, by the tensors' device); differentiable
    in depth and feat.

    depth (B, N, D, H, W), feat (B, N, H, W, C), int32 ranks (P,) and intervals (K,) as made by
    `bev_pool_prepare`, bev_shape (B, Z, Y, X) -> (B, C, Z, Y, X); cells with no interval are 0.
    Each frustum point appears once (ranks_depth has no repeats). float16/bfloat16 inputs (autocast)
    are computed in float32. Falls back to `bev_pool_v2_reference` when the kernels are not built.
    """
    if depth.dtype in (torch.float16, torch.bfloat16) or feat.dtype in (torch.float16, torch.bfloat16):
        depth, feat = depth.float(), feat.float()
    _check_bev_pool_inputs(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                           interval_lengths, bev_shape)
    kernels = kernels_for(feat.device)
    if kernels is None:
        return bev_pool_v2_reference(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                                     interval_lengths, bev_shape)
    B, Z, Y, X = (int(s) for s in bev_shape)
    C = feat.shape[-1]
    out = _BevPoolV2.apply(depth.contiguous(), feat.contiguous(), ranks_depth.contiguous(),
                           ranks_feat.contiguous(), ranks_bev.contiguous(), interval_starts.contiguous(),
                           interval_lengths.contiguous(), kernels, B * Z * Y * X)
    return out.view(B, Z, Y, X, C).permute(0, 4, 1, 2, 3)
