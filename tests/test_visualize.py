import numpy as np
import pytest
from PIL import Image

from occ import occ3d, visualize, waymo

FREE, PALETTE = occ3d.FREE, occ3d.PALETTE
CAR, DRIVEABLE, VEGETATION = 4, 11, 16


def scene():
    grid = np.full(occ3d.GRID_SHAPE, FREE, dtype=np.uint8)
    grid[:, :, 1] = DRIVEABLE
    grid[150, 30, 2:5] = CAR        # a car column ahead, to the right
    grid[150, 30, 7] = VEGETATION   # with a branch above it: the top-most non-free voxel wins
    grid[20, 180, 2:4] = CAR        # behind, to the left
    return grid


def test_top_labels_pick_the_highest_non_free_voxel():
    labels = visualize.top_labels(scene())
    assert labels[150, 30] == VEGETATION
    assert labels[20, 180] == CAR
    assert labels[0, 0] == DRIVEABLE
    empty = np.full((4, 4, 3), FREE, dtype=np.uint8)
    assert (visualize.top_labels(empty) == FREE).all()


def test_bev_map_colours_and_orientation():
    image = visualize.bev_semantic_map(scene())
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    # ego forward up, left to the left: column (x, y) is pixel (199 - x, 199 - y)
    assert (image[199 - 150, 199 - 30] == PALETTE[VEGETATION]).all()
    assert (image[199 - 20, 199 - 180] == PALETTE[CAR]).all()
    assert (image[0, 0] == PALETTE[DRIVEABLE]).all()
    big = visualize.bev_semantic_map(scene(), scale=3)
    assert big.shape == (600, 600, 3)
    assert (big[3 * 49:3 * 50, 3 * 169:3 * 170] == PALETTE[VEGETATION]).all()


def test_hidden_columns_are_greyed():
    visible = np.zeros(occ3d.GRID_SHAPE, dtype=bool)
    visible[100:, :, 3] = True  # the cameras see the front half only
    image = visualize.bev_semantic_map(scene(), visible)
    assert (image[199 - 150, 199 - 30] == PALETTE[VEGETATION]).all()  # visible: true colour
    hidden = image[199 - 20, 199 - 180].astype(float)
    expected = 0.5 * PALETTE[CAR] + 0.5 * visualize.HIDDEN_GREY
    np.testing.assert_allclose(hidden, expected.round(), atol=0.5)


def test_gt_vs_pred_side_by_side():
    gt = scene()
    pred = gt.copy()
    pred[150, 30, :] = FREE
    pred[150, 30, 1] = DRIVEABLE
    image = visualize.gt_vs_pred_image(gt, pred, scale=1, gap=8)
    assert image.dtype == np.uint8 and image.ndim == 3
    assert image.shape[1] == 200 + 8 + 200
    # below the 14-pixel title bars: GT on the left, prediction on the right
    row, col = 14 + 199 - 150, 199 - 30
    assert (image[row, col] == PALETTE[VEGETATION]).all()
    assert (image[row, 208 + col] == PALETTE[DRIVEABLE]).all()


def test_gt_vs_pred_of_waymo_labels_uses_the_waymo_palette_and_legend():
    grid = np.full((200, 200, 16), waymo.FREE, dtype=np.uint8)
    grid[150, 30, 2] = waymo.CLASS_NAMES.index("VEGETATION")
    image = visualize.gt_vs_pred_image(grid, grid, class_names=waymo.CLASS_NAMES, palette=waymo.PALETTE, scale=1)
    assert (image[14 + 199 - 150, 199 - 30] == waymo.PALETTE[waymo.CLASS_NAMES.index("VEGETATION")]).all()
    assert (image[14 + 0, 0] == waymo.PALETTE[waymo.FREE]).all()   # empty column: the free colour
    legend = image[14 + 200:]
    np.testing.assert_array_equal(legend, visualize.legend(waymo.CLASS_NAMES[:waymo.FREE], waymo.PALETTE, width=408))
    assert not np.array_equal(legend, visualize.legend(width=408))   # not the Occ3D legend
    with pytest.raises(ValueError, match="palette"):
        visualize.gt_vs_pred_image(grid, grid, class_names=waymo.CLASS_NAMES)


def test_voxel_render_draws_only_non_free_voxels():
    empty = np.full((20, 20, 8), FREE, dtype=np.uint8)
    assert (visualize.voxel_render(empty) == visualize.BACKGROUND).all()
    grid = empty.copy()
    grid[5, 5, 2] = CAR
    image = visualize.voxel_render(grid)
    drawn = (image != visualize.BACKGROUND).any(2)
    # one cube: a top face lit with the class colour, two shaded sides, nothing else
    colours = {tuple(c) for c in image[drawn]}
    assert colours == {tuple(PALETTE[CAR]), tuple((PALETTE[CAR] * 0.8).round().astype(np.uint8)),
                       tuple((PALETTE[CAR] * 0.6).round().astype(np.uint8))}
    assert 0 < drawn.sum() < 40


def test_voxel_render_nearer_voxel_hides_farther_one():
    grid = np.full((20, 20, 8), FREE, dtype=np.uint8)
    grid[5, 5, 2] = VEGETATION  # farther
    alone = visualize.voxel_render(grid)
    grid[4, 5, 2] = CAR  # one step behind the ego, toward the viewer: covers part of it
    both = visualize.voxel_render(grid)

    def vegetation_pixels(image):  # lit top face and both shaded sides
        shades = [(PALETTE[VEGETATION] * f).round() for f in (1.0, 0.8, 0.6)]
        return sum((image == shade).all(2).sum() for shade in shades)

    assert (both == PALETTE[CAR]).all(2).any()
    assert vegetation_pixels(both) < vegetation_pixels(alone)


def test_full_grid_render_and_png(tmp_path):
    image = visualize.voxel_render(scene())
    assert image.dtype == np.uint8 and image.shape[2] == 3
    path = visualize.save_png(image, str(tmp_path / "sub" / "voxels.png"))
    assert (np.asarray(Image.open(path)) == image).all()
