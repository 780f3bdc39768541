"""Point-cloud voxelisation (docs/architecture.md#voxelisation): hard (first-come, capacity-limited) and dynamic.

`voxelize` / `dynamic_voxelize` run the compiled kernels (csrc/voxelize_*); the `*_reference`
functions are the plain-PyTorch versions they are tested against.
"""
import numbers

import torch

from .extension import kernels_for


def _cell_indices(points, voxel_size, pc_range):
    """(P, 3) integer cell (x, y, z) per point, the grid shape (X, Y, Z), and the in-range mask."""
    voxel_size = torch.as_tensor(voxel_size, dtype=torch.float64, device=points.device)
    lower = torch.as_tensor(pc_range[:3], dtype=torch.float64, device=points.device)
    upper = torch.as_tensor(pc_range[3:], dtype=torch.float64, device=points.device)
    grid = torch.round((upper - lower) / voxel_size).long()
    cell = torch.floor((points[:, :3].double() - lower) / voxel_size).long()
    in_range = ((cell >= 0) & (cell < grid)).all(dim=1)
    return cell, grid, in_range


def dynamic_voxelize_reference(points, voxel_size, pc_range):
    """Per-point voxel coordinates (P, 3) as (z, y, x) int32; -1 in every column when out of range."""
    cell, _, in_range = _cell_indices(points, voxel_size, pc_range)
    coords = cell.flip(1).int()
    coords[~in_range] = -1
    return coords


def voxelize_reference(points, voxel_size, pc_range, max_points, max_voxels):
    """Hard voxelisation in input order.

    points (P, F) -> voxels (M, max_points, F) zero-padded, coords_zyx (M, 3) int32,
    num_points (M,) int32. Voxel ids follow the first appearance of their cell; a cell seen when
    `max_voxels` voxels already exist is dropped, and a point beyond `max_points` in its voxel is
    dropped.
    """
    cell, grid, in_range = _cell_indices(points, voxel_size, pc_range)
    num_x, num_y, _ = grid.tolist()
    point_idx = torch.nonzero(in_range).flatten()
    linear = (cell[point_idx, 2] * num_y + cell[point_idx, 1]) * num_x + cell[point_idx, 0]
    unique_cells, inverse = torch.unique(linear, return_inverse=True)
    first_seen = torch.full((unique_cells.numel(),), point_idx.numel(), dtype=torch.long, device=points.device)
    first_seen.scatter_reduce_(0, inverse, torch.arange(point_idx.numel(), device=points.device), "amin")
    # voxel id = rank of the cell's first appearance
    cell_order = torch.argsort(first_seen)
    voxel_of_cell = torch.empty_like(cell_order)
    voxel_of_cell[cell_order] = torch.arange(cell_order.numel(), device=points.device)
    voxel_id = voxel_of_cell[inverse]
    # slot of each point inside its voxel = how many earlier points share the voxel
    order = torch.argsort(voxel_id, stable=True)
    sorted_ids = voxel_id[order]
    group_start = torch.searchsorted(sorted_ids, sorted_ids, right=False)
    slot = torch.empty_like(voxel_id)
    slot[order] = torch.arange(order.numel(), device=points.device) - group_start
    keep = (voxel_id < max_voxels) & (slot < max_points)
    num_voxels = min(int(unique_cells.numel()), max_voxels)
    voxels = points.new_zeros(num_voxels, max_points, points.shape[1])
    voxels[voxel_id[keep], slot[keep]] = points[point_idx[keep]]
    num_points = torch.bincount(voxel_id[keep], minlength=num_voxels).int()
    coords = torch.empty(num_voxels, 3, dtype=torch.int32, device=points.device)
    first_points = point_idx[first_seen[cell_order[:num_voxels]]]
    coords[:] = cell[first_points].flip(1).int()
    return voxels, coords, num_points


def _check_grid(points, voxel_size, pc_range, op):
    """Validate the arguments shared by both ops; returns voxel_size, range_min (3 floats each) and
    grid_size (X, Y, Z), rounded exactly as in the reference."""
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] < 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"{op}: points must be a (P, F>=3) tensor of x, y, z, ..., got {shape}")
    if points.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{op}: points must be float32 or float64, got {points.dtype}")
    voxel_size = [float(v) for v in voxel_size]
    pc_range = [float(v) for v in pc_range]
    if len(voxel_size) != 3 or not all(v > 0 for v in voxel_size):
        raise ValueError(f"{op}: voxel_size must be 3 positive sizes (x, y, z), got {voxel_size}")
    if len(pc_range) != 6 or not all(pc_range[a] < pc_range[a + 3] for a in range(3)):
        raise ValueError(f"{op}: pc_range must be (x_min, y_min, z_min, x_max, y_max, z_max) with min < max, got {pc_range}")
    extent = torch.tensor(pc_range[3:], dtype=torch.float64) - torch.tensor(pc_range[:3], dtype=torch.float64)
    grid_size = torch.round(extent / torch.tensor(voxel_size, dtype=torch.float64)).long().tolist()
    if min(grid_size) < 1 or max(grid_size) >= 2**31 or grid_size[0] * grid_size[1] * grid_size[2] >= 2**62:
        raise ValueError(f"{op}: pc_range / voxel_size gives an unusable grid of {grid_size} cells (x, y, z)")
    return voxel_size, pc_range[:3], grid_size


def _check_count(value, name, op):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value < 2**31:
        raise ValueError(f"{op}: {name} must be a positive int below 2**31, got {value!r}")
    return int(value)


def voxelize(points, voxel_size, pc_range, max_points, max_voxels):
    """Hard voxelisation with the compiled kernels (CPU or CUDA, by the points' device).

    points (P, F) float32 (or float64) -> voxels (M, max_points, F) zero-padded, coords_zyx (M, 3)
    int32, num_points (M,) int32, with the first-come semantics of `voxelize_reference`. Falls back
    to the reference when the kernels are not built.
    """
    voxel_size, range_min, grid_size = _check_grid(points, voxel_size, pc_range, "voxelize")
    max_points = _check_count(max_points, "max_points", "voxelize")
    max_voxels = _check_count(max_voxels, "max_voxels", "voxelize")
    kernels = kernels_for(points.device)
    if kernels is None:
        return voxelize_reference(points, voxel_size, pc_range, max_points, max_voxels)
    voxels, coords, num_points = kernels.voxelize(points.contiguous(), voxel_size, range_min, grid_size,
                                                  max_points, max_voxels)
    return voxels, coords, num_points


def dynamic_voxelize(points, voxel_size, pc_range):
    """Per-point voxel coordinates (P, 3) as (z, y, x) int32, -1 in every column when out of range,
    with the compiled kernels (CPU or CUDA); falls back to the reference when they are not built."""
    voxel_size, range_min, grid_size = _check_grid(points, voxel_size, pc_range, "dynamic_voxelize")
    kernels = kernels_for(points.device)
    if kernels is None:
        return dynamic_voxelize_reference(points, voxel_size, pc_range)
    return kernels.dynamic_voxelize(points.contiguous(), voxel_size, range_min, grid_size)
