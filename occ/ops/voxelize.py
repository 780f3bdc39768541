"""Point-cloud voxelisation (SPEC 6.2): hard (first-come, capacity-limited) and dynamic."""
import torch


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
