"""Headless pictures of occupancy grids, as uint8 RGB arrays (for TensorBoard) and PNG files.

Bird's-eye images put the ego's forward axis (+x) up and its left (+y) left: grid column
(x_idx, y_idx) is pixel [X - 1 - x_idx, Y - 1 - y_idx] (times `scale`).
"""
import os

import numpy as np
from PIL import Image, ImageDraw

from occ import occ3d

HIDDEN_GREY = np.array([96, 96, 96], dtype=np.float64)  # blended into columns the cameras do not see
BACKGROUND = 255


def top_labels(grid, free_label=occ3d.FREE):
    """(X, Y, Z) labels -> (X, Y) label of the top-most non-free voxel of each column (free_label
    where the column is empty)."""
    grid = np.asarray(grid)
    occupied = grid != free_label
    top = grid.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # (X, Y) highest occupied z
    labels = np.take_along_axis(grid, top[:, :, None], axis=2)[:, :, 0]
    return np.where(occupied.any(2), labels, free_label)


def bev_semantic_map(grid, visible=None, palette=occ3d.PALETTE, free_label=occ3d.FREE, scale=1):
    """(X, Y, Z) labels -> (X * scale, Y * scale, 3) uint8 bird's-eye picture, ego forward up.

    visible: optional (X, Y, Z) or (X, Y) mask (e.g. mask_camera); columns with no visible voxel
    are blended half-way to grey.
    """
    labels = top_labels(grid, free_label)
    image = palette[labels].astype(np.float64)  # (X, Y, 3)
    if visible is not None:
        visible = np.asarray(visible).astype(bool)
        if visible.ndim == 3:
            visible = visible.any(2)
        if visible.shape != labels.shape:
            raise ValueError(f"visibility mask of shape {visible.shape} does not match grid columns {labels.shape}")
        image[~visible] = 0.5 * image[~visible] + 0.5 * HIDDEN_GREY
    image = image[::-1, ::-1].round().astype(np.uint8)  # rows: +x up; columns: +y left
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def titled(image, title, bar_height=14):
    """The image with a white bar holding `title` above it."""
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + bar_height), (BACKGROUND,) * 3)
    canvas.paste(Image.fromarray(image), (0, bar_height))
    ImageDraw.Draw(canvas).text((2, 1), title, fill=(0, 0, 0))
    return np.asarray(canvas)


def legend(class_names=occ3d.CLASS_NAMES[:occ3d.FREE], palette=occ3d.PALETTE, width=400, columns=3):
    """A white (rows * 14, width, 3) uint8 strip of colour swatches with class names."""
    rows = -(-len(class_names) // columns)
    canvas = Image.new("RGB", (width, rows * 14 + 2), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    cell = width // columns
    for i, name in enumerate(class_names):
        x, y = (i % columns) * cell + 2, (i // columns) * 14 + 2
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(c) for c in palette[i]), outline=(0, 0, 0))
        draw.text((x + 14, y), name, fill=(0, 0, 0))
    return np.asarray(canvas)


def gt_vs_pred_image(gt, pred, visible=None, free_label=occ3d.FREE, scale=2, gap=8):
    """GT and prediction bird's-eye maps side by side (titles above, class legend below), with
    the columns outside `visible` (e.g. mask_camera) greyed in both. Returns uint8 (H, W, 3)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"GT shape {gt.shape} differs from prediction shape {pred.shape}")
    left = titled(bev_semantic_map(gt, visible, free_label=free_label, scale=scale), "ground truth")
    right = titled(bev_semantic_map(pred, visible, free_label=free_label, scale=scale), "prediction")
    spacer = np.full((left.shape[0], gap, 3), BACKGROUND, dtype=np.uint8)
    pair = np.concatenate([left, spacer, right], axis=1)
    key = legend(width=pair.shape[1])
    return np.concatenate([pair, key], axis=0)


def cube_sprite(scale):
    """Pixel offsets and face shades of one isometric cube whose top face is centred at (0, 0):
    top face a diamond 4s wide and 2s high, the two faces below it 2s tall.
    Returns du (P,), dv (P,), shade (P,)."""
    s = scale
    du, dv = np.meshgrid(np.arange(-2 * s, 2 * s), np.arange(-s, 3 * s), indexing="xy")
    du, dv = du.ravel(), dv.ravel()
    cu, cv = du + 0.5, dv + 0.5  # pixel centres
    edge = s * (1 - np.abs(cu) / (2 * s))  # diamond half-height at this column
    top = np.abs(cv) <= edge
    side = (cv > edge) & (cv <= edge + 2 * s)
    shade = np.where(top, 1.0, np.where(cu < 0, 0.8, 0.6))
    keep = top | side
    return du[keep], dv[keep], shade[keep]


def voxel_render(grid, free_label=occ3d.FREE, palette=occ3d.PALETTE, scale=1):
    """Isometric 3-D rendering of the non-free voxels, seen from above, behind and left of the
    ego (z-buffered per pixel, top faces lit, sides shaded). Returns uint8 (H, W, 3)."""
    grid = np.asarray(grid)
    size_x, size_y, size_z = grid.shape
    x, y, z = np.nonzero(grid != free_label)
    labels = grid[x, y, z]
    a = size_x - 1 - x  # grows toward the viewer (behind the ego)
    b = y               # grows toward the viewer (left of the ego)
    # top-face centre of every voxel on the screen
    u = 2 * scale * (a - b) + 2 * scale * size_y
    v = scale * (a + b) - 2 * scale * z + 2 * scale * size_z
    width = 2 * scale * (size_x + size_y) + 1
    height = scale * (size_x + size_y) + 2 * scale * size_z + 3 * scale + 1
    image = np.full((height * width, 3), BACKGROUND, dtype=np.float64)
    if len(labels) == 0:
        return image.reshape(height, width, 3).astype(np.uint8)
    du, dv, shade = cube_sprite(scale)

    # every (voxel, sprite pixel) pair; per screen pixel the voxel nearest the viewer wins
    pixel = ((v[:, None] + dv[None]) * width + (u[:, None] + du[None])).ravel()
    nearness = np.broadcast_to((a + b + z)[:, None], (len(a), len(du))).ravel()
    order = np.lexsort((nearness, pixel))
    last_of_pixel = np.r_[pixel[order][1:] != pixel[order][:-1], True]
    winners = order[last_of_pixel]
    voxel_of, sprite_of = np.divmod(winners, len(du))

    image[pixel[winners]] = palette[labels[voxel_of]] * shade[sprite_of][:, None]
    return image.reshape(height, width, 3).round().astype(np.uint8)


def save_png(image, path):
    """Writes a uint8 (H, W, 3) array as PNG, creating the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return path
