"""datasets/transforms.py: image warp geometry, depth-map scatter-min, BEV flips, sweep choice."""
import numpy as np
import pytest
import torch
from PIL import Image

from datasets import transforms
from occ.geometry import bda_matrix
from occ.ops import dynamic_voxelize

OCC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
OCC_VOXEL = [0.4, 0.4, 0.4]


@pytest.mark.parametrize("fmt", ["png", "jpg"])
@pytest.mark.parametrize("src_size", [(1600, 900), (1920, 1280)])
def test_image_lands_where_post_rot_says(fmt, src_size, tmp_path):
    """A bright square centred on source pixel (u, v) is centred on post_rot @ (u, v) + post_tran in
    the augmented image, for test-mode and random train augmentations and any source size."""
    src_w, src_h = src_size
    u, v = src_w * 0.45, src_h * 0.7
    image = np.zeros((src_h, src_w, 3), dtype=np.uint8)
    image[int(v) - 5:int(v) + 6, int(u) - 5:int(u) + 6] = 255
    path = str(tmp_path / f"dot.{fmt}")
    Image.fromarray(image).save(path, quality=95)
    rng = np.random.default_rng(0)
    for trial in range(4):
        post_rot, post_tran = transforms.sample_image_aug(src_w, src_h, 704, 256, rng if trial else None)
        out = transforms.load_image(path, post_rot, post_tran, 704, 256).astype(np.float64).sum(axis=2)
        rows, cols = np.mgrid[:256, :704]
        centroid = np.array([(out * cols).sum(), (out * rows).sum()]) / out.sum()
        expected = post_rot[:2, :2] @ [int(u), int(v)] + post_tran[:2]
        np.testing.assert_allclose(centroid, expected, atol=0.3)


def test_test_mode_aug_is_resize_and_bottom_crop():
    for src_w, src_h in [(1600, 900), (1920, 1280), (704, 256)]:
        post_rot, post_tran = transforms.sample_image_aug(src_w, src_h, 704, 256)
        resize = 704 / src_w
        np.testing.assert_allclose(post_rot, np.diag([resize, resize, 1.0]))
        # the bottom source row stays the bottom input row, columns span the full width
        np.testing.assert_allclose(post_tran, [0.0, 256 - src_h * resize, 0.0], atol=1e-9)


def test_train_aug_draws_within_the_spec_ranges():
    rng = np.random.default_rng(1)
    resizes, flips, angles = [], [], []
    for _ in range(300):
        post_rot, _ = transforms.sample_image_aug(1600, 900, 704, 256, rng)
        resizes.append(np.sqrt(abs(np.linalg.det(post_rot[:2, :2]))))
        flips.append(np.linalg.det(post_rot[:2, :2]) < 0)
        angles.append(abs(np.degrees(np.arctan2(post_rot[1, 0], post_rot[1, 1]))))
    assert 0.44 - 0.06 <= min(resizes) < 0.40 and 0.53 < max(resizes) <= 0.44 + 0.11
    assert 0.4 < np.mean(flips) < 0.6
    assert max(angles) <= 5.4 + 1e-9 and max(angles) > 4.5


def test_depth_map_keeps_the_nearest_point_per_pixel():
    intrinsics = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 20.0], [0.0, 0.0, 1.0]])
    cam2ego = np.eye(4)
    # camera frame = ego frame here; points given as (x, y, depth) on the optical axis grid
    points = np.array([
        [0.0, 0.0, 10.0],    # pixel (50, 20), farther
        [0.0, 0.0, 5.0],     # same pixel, nearer: kept
        [0.5, 0.0, 5.0],     # pixel (60, 20)
        [0.0, 0.0, 0.5],     # closer than 1 m: dropped
        [0.0, 0.1, 45.0],    # at 45 m: dropped
        [0.0, 0.1, 44.9],    # pixel (50, 20.2) -> row 20, but farther than 5
        [3.0, 0.0, 1.0],     # pixel (350, 20): outside
    ])
    identity = (np.eye(3), np.zeros(3))
    # camera 2: the augmentation halves the image (test mode 100x40 -> 50x20)
    halved = transforms.sample_image_aug(100, 40, 50, 20, None)
    # camera 3: looks backwards (x -> -x, z -> -z): sees nothing of the points above
    backwards = np.diag([-1.0, 1.0, -1.0, 1.0])
    depth = transforms.lidar_depth_maps(points, [cam2ego, cam2ego, backwards], [intrinsics] * 3,
                                        [identity[0], halved[0], identity[0]],
                                        [identity[1], halved[1], identity[1]], 40, 100)
    assert depth.shape == (3, 40, 100)
    assert depth[0, 20, 50] == 5.0 and depth[0, 20, 60] == 5.0 and np.count_nonzero(depth[0]) == 2
    assert depth[1, 10, 25] == 5.0 and depth[1, 10, 30] == 5.0 and np.count_nonzero(depth[1]) == 2
    assert np.count_nonzero(depth[2]) == 0


def labelled_points(seed=0, count=20000):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-42.0, -42.0, -1.5], [42.0, 42.0, 6.0], size=(count, 3))
    labels = rng.integers(0, 17, size=count)
    velocity = rng.normal(size=(count, 2))
    return xyz, labels, velocity


def voxelise_labels(xyz, labels, velocity):
    """A semantic grid (label = max label of the voxel's points, 17 = free) and a flow grid (mean
    velocity of the voxel's points) from points, through the project's voxelisation op."""
    coords = dynamic_voxelize(torch.from_numpy(xyz), OCC_VOXEL, OCC_RANGE).numpy()  # (P, 3) z, y, x
    inside = coords[:, 0] >= 0
    z, y, x = coords[inside].T
    semantics = np.full((200, 200, 16), -1, dtype=np.int64)
    np.maximum.at(semantics, (x, y, z), labels[inside])
    semantics[semantics < 0] = 17
    flow = np.zeros((200, 200, 16, 2))
    count = np.zeros((200, 200, 16, 1))
    np.add.at(flow, (x, y, z), velocity[inside])
    np.add.at(count, (x, y, z), 1)
    return semantics, flow / np.maximum(count, 1)


@pytest.mark.parametrize("flip_x,flip_y", [(True, False), (False, True), (True, True)])
def test_bev_flips_commute_with_voxelisation(flip_x, flip_y):
    """Flip-then-voxelise equals voxelise-then-flip for point coordinates, the GT grid and the flow
    grid (whose flipped component changes sign)."""
    xyz, labels, velocity = labelled_points()
    bda = bda_matrix(flip_x, flip_y)
    flipped_xyz = xyz @ bda[:3, :3].T
    flipped_velocity = velocity @ bda[:2, :2].T

    coords = dynamic_voxelize(torch.from_numpy(xyz), OCC_VOXEL, OCC_RANGE).numpy()
    coords_of_flipped = dynamic_voxelize(torch.from_numpy(flipped_xyz), OCC_VOXEL, OCC_RANGE).numpy()
    inside = coords[:, 0] >= 0
    assert np.array_equal(inside, coords_of_flipped[:, 0] >= 0)
    expected = coords[inside].copy()
    if flip_x:
        expected[:, 2] = 199 - expected[:, 2]
    if flip_y:
        expected[:, 1] = 199 - expected[:, 1]
    assert np.array_equal(coords_of_flipped[inside], expected)

    semantics, flow = voxelise_labels(xyz, labels, velocity)
    flipped_semantics, flipped_flow = voxelise_labels(flipped_xyz, labels, flipped_velocity)
    assert np.array_equal(transforms.flip_grid(semantics, flip_x, flip_y), flipped_semantics)
    np.testing.assert_allclose(transforms.flip_flow(flow, flip_x, flip_y), flipped_flow, atol=1e-12)
    assert not np.array_equal(semantics, flipped_semantics)


def test_choose_sweeps():
    assert transforms.choose_sweeps(10, 9) == list(range(9))  # test: the 9 nearest
    assert transforms.choose_sweeps(4, 9) == [0, 1, 2, 3]     # scene start: what exists
    assert transforms.choose_sweeps(0, 9) == []
    rng = np.random.default_rng(0)
    draws = [tuple(transforms.choose_sweeps(10, 9, rng)) for _ in range(50)]
    assert all(len(set(d)) == 9 and max(d) <= 9 for d in draws)
    assert len(set(draws)) > 1


def test_remove_ego_body():
    points = np.array([[0.5, -0.5, 0, 0, 0], [0.5, 1.5, 0, 0, 0], [-2.0, 0.25, 0, 0, 0], [0.9, 0.9, 3, 0, 0]],
                      dtype=np.float32)
    kept = transforms.remove_ego_body(points)
    assert kept[:, :2].tolist() == [[0.5, 1.5], [-2.0, 0.25]]


def test_normalize_image_is_imagenet_rgb():
    image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = transforms.normalize_image(image)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((image / 255.0 - mean) / std).transpose(2, 0, 1)
    assert out.shape == (3, 5, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
