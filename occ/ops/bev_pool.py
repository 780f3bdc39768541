"""BEV pooling with the BEVPoolv2 interface (SPEC 6.1).

Frustum points (b, n, d, h, w) carry a depth probability `depth[b, n, d, h, w]` and share the
image feature `feat[b, n, h, w, :]`. Each point falls into one BEV voxel; the voxel's feature is
the depth-weighted sum of the features of its points:
    out[rank_bev, c] = sum_i depth[ranks_depth[i]] * feat[ranks_feat[i], c]
`bev_pool_prepare` sorts the points by voxel so that each output cell is one contiguous interval.
"""
import torch


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
