"""Voxelisation (docs/architecture.md#voxelisation): compiled CPU/CUDA kernels against the reference and a literal
sequential implementation, agreement with spconv's PointToVoxel, and input validation."""
import math

import pytest
import torch

from occ.ops import dynamic_voxelize, dynamic_voxelize_reference, voxelize, voxelize_reference
from occ.ops import extension

requires_kernels = pytest.mark.skipif(extension._C is None, reason="occ._C is not built (see test_ops_bev_pool)")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

VOXEL_SIZE = [0.5, 0.5, 0.25]
PC_RANGE = [-8.0, -6.0, -1.0, 8.0, 6.0, 1.0]  # grid 32 x 24 x 8


def random_cloud(num_points, num_features, seed, dtype=torch.float32, duplicates=0, margin=2.0):
    """Points spread over PC_RANGE grown by `margin` m (some fall outside), with `duplicates` exact
    copies of earlier points inserted at random later positions."""
    generator = torch.Generator().manual_seed(seed)
    lower = torch.tensor(PC_RANGE[:3]) - margin
    upper = torch.tensor(PC_RANGE[3:]) + margin
    xyz = lower + (upper - lower) * torch.rand(num_points, 3, generator=generator)
    points = torch.cat([xyz, torch.rand(num_points, num_features - 3, generator=generator)], dim=1)
    if duplicates:
        copies = points[torch.randint(0, num_points, (duplicates,), generator=generator)]
        points = torch.cat([points, copies])[torch.randperm(num_points + duplicates, generator=generator)]
    return points.to(dtype)


def sequential_voxelize(points, voxel_size, pc_range, max_points, max_voxels):
    """docs/architecture.md#voxelisation written literally: one pass in input order with a dict of cells."""
    grid = [round((pc_range[a + 3] - pc_range[a]) / voxel_size[a]) for a in range(3)]
    voxel_of_cell, voxel_points, voxel_coords = {}, [], []
    for point in points.tolist():
        cell = tuple(math.floor((point[a] - pc_range[a]) / voxel_size[a]) for a in range(3))
        if not all(0 <= cell[a] < grid[a] for a in range(3)):
            continue
        if cell not in voxel_of_cell:
            if len(voxel_points) >= max_voxels:
                continue
            voxel_of_cell[cell] = len(voxel_points)
            voxel_points.append([])
            voxel_coords.append(cell[::-1])
        if len(voxel_points[voxel_of_cell[cell]]) < max_points:
            voxel_points[voxel_of_cell[cell]].append(point)
    voxels = torch.zeros(len(voxel_points), max_points, points.shape[1], dtype=points.dtype)
    for v, rows in enumerate(voxel_points):
        voxels[v, :len(rows)] = torch.tensor(rows, dtype=points.dtype)
    return (voxels, torch.tensor(voxel_coords, dtype=torch.int32).view(-1, 3),
            torch.tensor([len(rows) for rows in voxel_points], dtype=torch.int32))


def assert_same_voxelization(ours, expected):
    for name, a, b in zip(("voxels", "coords_zyx", "num_points"), ours, expected):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        assert torch.equal(a, b), f"{name} differs"


# (num_points, num_features, max_points, max_voxels, duplicates, dtype)
CASES = {
    "no_limit_hit": (300, 4, 64, 10_000, 0, torch.float32),
    "max_points_hit_with_duplicates": (3000, 5, 3, 10_000, 500, torch.float32),
    "max_voxels_hit": (3000, 5, 4, 100, 200, torch.float32),
    "float64_one_point_per_voxel": (2000, 3, 1, 500, 100, torch.float64),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_matches_literal_sequential_pass(name):
    num_points, num_features, max_points, max_voxels, duplicates, dtype = CASES[name]
    points = random_cloud(num_points, num_features, seed=0, dtype=dtype, duplicates=duplicates)
    expected = sequential_voxelize(points, VOXEL_SIZE, PC_RANGE, max_points, max_voxels)
    assert_same_voxelization(voxelize_reference(points, VOXEL_SIZE, PC_RANGE, max_points, max_voxels), expected)


@requires_kernels
@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_kernel_matches_reference(name):
    num_points, num_features, max_points, max_voxels, duplicates, dtype = CASES[name]
    points = random_cloud(num_points, num_features, seed=1, dtype=dtype, duplicates=duplicates)
    ours = voxelize(points, VOXEL_SIZE, PC_RANGE, max_points, max_voxels)
    reference = voxelize_reference(points, VOXEL_SIZE, PC_RANGE, max_points, max_voxels)
    assert_same_voxelization(ours, reference)
    num_voxels = len(ours[0])
    if name == "max_voxels_hit":
        assert num_voxels == max_voxels
    if name.startswith("max_points_hit"):
        assert int(ours[2].max()) == max_points
    assert torch.equal(dynamic_voxelize(points, VOXEL_SIZE, PC_RANGE),
                       dynamic_voxelize_reference(points, VOXEL_SIZE, PC_RANGE))


@requires_kernels
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_empty_and_out_of_range_clouds(device):
    outside = torch.tensor([[100.0, 0.0, 0.0, 1.0], [0.0, 0.0, -5.0, 1.0], [float("nan"), 0.0, 0.0, 1.0]], device=device)
    for points in (outside, outside[:0]):
        voxels, coords, num_points = voxelize(points, VOXEL_SIZE, PC_RANGE, 5, 10)
        assert voxels.shape == (0, 5, 4) and coords.shape == (0, 3) and num_points.shape == (0,)
        per_point = dynamic_voxelize(points, VOXEL_SIZE, PC_RANGE)
        assert per_point.shape == (len(points), 3) and (per_point == -1).all()


@requires_kernels
@requires_cuda
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_kernel_matches_reference(name):
    num_points, num_features, max_points, max_voxels, duplicates, dtype = CASES[name]
    points = random_cloud(num_points, num_features, seed=2, dtype=dtype, duplicates=duplicates)
    ours = voxelize(points.cuda(), VOXEL_SIZE, PC_RANGE, max_points, max_voxels)
    assert_same_voxelization([t.cpu() for t in ours], voxelize_reference(points, VOXEL_SIZE, PC_RANGE, max_points, max_voxels))
    assert torch.equal(dynamic_voxelize(points.cuda(), VOXEL_SIZE, PC_RANGE).cpu(),
                       dynamic_voxelize_reference(points, VOXEL_SIZE, PC_RANGE))


def cloud_away_from_cell_borders(num_points, seed):
    """Points at 10-90 % inside their cells, so float32 (spconv) and float64 cell arithmetic agree;
    repeated cells and out-of-range cells included."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.tensor([32, 24, 8])
    cells = torch.stack([torch.randint(-2, int(g) + 2, (num_points,), generator=generator) for g in grid], dim=1)
    cells = cells[torch.randint(0, num_points, (num_points,), generator=generator)]  # repeats
    offsets = 0.1 + 0.8 * torch.rand(num_points, 3, generator=generator)
    xyz = torch.tensor(PC_RANGE[:3]) + (cells + offsets) * torch.tensor(VOXEL_SIZE)
    return torch.cat([xyz, torch.rand(num_points, 2, generator=generator)], dim=1).float()


def sorted_by_coords(voxels, coords, num_points):
    order = torch.argsort((coords[:, 0].long() * 10_000 + coords[:, 1]) * 10_000 + coords[:, 2])
    return voxels[order], coords[order], num_points[order]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")  # from spconv and its deps
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_agrees_with_spconv_point_to_voxel(device):
    from spconv.pytorch.utils import PointToVoxel
    points = cloud_away_from_cell_borders(4000, seed=3).to(device)
    max_points, max_voxels = 40, 10_000
    spconv_voxelizer = PointToVoxel(vsize_xyz=VOXEL_SIZE, coors_range_xyz=PC_RANGE, num_point_features=5,
                                    max_num_voxels=max_voxels, max_num_points_per_voxel=max_points,
                                    device=torch.device(device))
    theirs = [t.cpu() for t in spconv_voxelizer(points)]
    ours = [t.cpu() for t in voxelize(points, VOXEL_SIZE, PC_RANGE, max_points, max_voxels)]
    assert 0 < len(ours[0]) < max_voxels and int(ours[2].max()) < max_points  # no capacity limit hit
    ours_sorted, theirs_sorted = sorted_by_coords(*ours), sorted_by_coords(*theirs)
    assert torch.equal(ours_sorted[1], theirs_sorted[1])  # same voxel set and coordinates
    assert torch.equal(ours_sorted[2], theirs_sorted[2])  # same counts
    if device == "cpu":  # spconv's CPU pass is first-come too: same order and contents
        assert_same_voxelization(ours, theirs)


@pytest.mark.parametrize("argument, call", [
    ("points", lambda p: voxelize(p.long(), VOXEL_SIZE, PC_RANGE, 5, 10)),
    ("points", lambda p: voxelize(p[:, :2], VOXEL_SIZE, PC_RANGE, 5, 10)),
    ("points", lambda p: voxelize(p[0], VOXEL_SIZE, PC_RANGE, 5, 10)),
    ("points", lambda p: dynamic_voxelize(p.tolist(), VOXEL_SIZE, PC_RANGE)),
    ("voxel_size", lambda p: voxelize(p, [0.5, 0.5], PC_RANGE, 5, 10)),
    ("voxel_size", lambda p: dynamic_voxelize(p, [0.5, -0.5, 0.25], PC_RANGE)),
    ("pc_range", lambda p: voxelize(p, VOXEL_SIZE, PC_RANGE[:5], 5, 10)),
    ("pc_range", lambda p: voxelize(p, VOXEL_SIZE, [8.0, -6.0, -1.0, -8.0, 6.0, 1.0], 5, 10)),
    ("max_points", lambda p: voxelize(p, VOXEL_SIZE, PC_RANGE, 0, 10)),
    ("max_voxels", lambda p: voxelize(p, VOXEL_SIZE, PC_RANGE, 5, 10.0)),
])
def test_bad_input_raises_value_error_naming_the_argument(argument, call):
    with pytest.raises(ValueError, match=argument):
        call(random_cloud(50, 4, seed=4))
