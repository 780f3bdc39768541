"""Headless pictures of occupancy grids, as uint8 RGB arrays (for TensorBoard) and PNG files.

Bird's-eye images put the ego's forward axis (+x) up and its left (+y) left: grid column
(x_idx, y_idx) is pixel [X - 1 - x_idx, Y - 1 - y_idx] (times `scale`).
"""
import os

import numpy as np
from PIL import Image, ImageDraw

from occ import occ3d, openocc

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


def gt_vs_pred_image(gt, pred, visible=None, class_names=occ3d.CLASS_NAMES, palette=occ3d.PALETTE, scale=2, gap=8):
    """GT and prediction bird's-eye maps side by side (titles above, class legend below), with
    the columns outside `visible` (e.g. mask_camera) greyed in both. class_names (free last) and
    palette (RGB per class) are the benchmark's: Occ3D's by default, occ.waymo's for Occ3D-Waymo.
    Returns uint8 (H, W, 3)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"GT shape {gt.shape} differs from prediction shape {pred.shape}")
    if len(palette) != len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(palette)} palette colours")
    free_label = len(class_names) - 1

    def bev(grid, title):
        return titled(bev_semantic_map(grid, visible, palette, free_label, scale), title)
    left, right = bev(gt, "ground truth"), bev(pred, "prediction")
    spacer = np.full((left.shape[0], gap, 3), BACKGROUND, dtype=np.uint8)
    pair = np.concatenate([left, spacer, right], axis=1)
    key = legend(class_names[:free_label], palette, width=pair.shape[1])
    return np.concatenate([pair, key], axis=0)


# ------------------------------------------------------------------------- OpenOcc flow pictures
MAX_DRAWN_SPEED = 10.0  # m/s: the top of the speed colour ramp
SPEED_RAMP = np.array([[40, 40, 255], [0, 200, 0], [255, 220, 0], [255, 0, 0]], dtype=np.float64)  # 0 ... max


def speed_colours(speed):
    """(...) m/s -> (..., 3) float RGB on the blue-green-yellow-red ramp, clipped at MAX_DRAWN_SPEED."""
    position = np.clip(np.asarray(speed, dtype=np.float64) / MAX_DRAWN_SPEED, 0, 1) * (len(SPEED_RAMP) - 1)
    low = np.minimum(np.floor(position).astype(np.int64), len(SPEED_RAMP) - 2)
    frac = (position - low)[..., None]
    return SPEED_RAMP[low] * (1 - frac) + SPEED_RAMP[low + 1] * frac


def bev_flow_map(semantics, flow, scale=2, arrow_every=6, min_arrow_speed=0.5):
    """Bird's-eye picture of OpenOcc labels and flow, ego forward up: each column shows its top-most
    non-free voxel, pale in its class colour for static classes, coloured by speed (`speed_colours`)
    for the dynamic ones (car ... pedestrian), with a black arrow of 1 s of motion from every
    `arrow_every`-th dynamic column moving faster than min_arrow_speed m/s.
    semantics (X, Y, Z) OpenOcc labels, flow (X, Y, Z, 2) m/s. Returns uint8 (X * scale, Y * scale, 3)."""
    semantics, flow = np.asarray(semantics), np.asarray(flow, dtype=np.float64)
    if flow.shape != semantics.shape + (2,):
        raise ValueError(f"flow of shape {flow.shape} does not match labels of shape {semantics.shape} (+ 2)")
    occupied = semantics != openocc.FREE
    top = semantics.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # (X, Y)
    labels = np.where(occupied.any(2), np.take_along_axis(semantics, top[:, :, None], axis=2)[:, :, 0], openocc.FREE)
    top_flow = np.take_along_axis(flow, top[:, :, None, None], axis=2)[:, :, 0]  # (X, Y, 2)
    speed = np.linalg.norm(top_flow, axis=-1)
    dynamic = np.isin(labels, openocc.DYNAMIC_CLASSES)
    image = 0.4 * openocc.PALETTE[labels] + 0.6 * BACKGROUND  # pale class colours
    image[dynamic] = speed_colours(speed[dynamic])
    image = image[::-1, ::-1].round().astype(np.uint8)  # rows: +x up; columns: +y left
    canvas = Image.fromarray(np.repeat(np.repeat(image, scale, axis=0), scale, axis=1))
    draw = ImageDraw.Draw(canvas)
    size_x, size_y = labels.shape
    cells_per_metre = 1.0 / occ3d.VOXEL_SIZE
    for x, y in zip(*np.nonzero(dynamic & (speed > min_arrow_speed))):
        if x % arrow_every or y % arrow_every:
            continue
        row, col = (size_x - 1 - x + 0.5) * scale, (size_y - 1 - y + 0.5) * scale
        end = (col - top_flow[x, y, 1] * cells_per_metre * scale, row - top_flow[x, y, 0] * cells_per_metre * scale)
        draw.line([(col, row), end], fill=(0, 0, 0), width=1)
        draw.ellipse([end[0] - 1, end[1] - 1, end[0] + 1, end[1] + 1], fill=(0, 0, 0))
    return np.asarray(canvas)


def speed_legend(width, height=14):
    """A white strip with the speed ramp from 0 to MAX_DRAWN_SPEED m/s and its labels."""
    ramp_width = width // 2
    canvas = Image.new("RGB", (width, height + 2), (BACKGROUND,) * 3)
    ramp = speed_colours(np.linspace(0, MAX_DRAWN_SPEED, ramp_width))[None].repeat(10, axis=0)
    canvas.paste(Image.fromarray(ramp.round().astype(np.uint8)), (40, 2))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), "speed", fill=(0, 0, 0))
    draw.text((44 + ramp_width, 1), f"0 - {MAX_DRAWN_SPEED:g} m/s", fill=(0, 0, 0))
    return np.asarray(canvas)


def gt_vs_pred_flow_image(gt_semantics, gt_flow, pred_semantics, pred_flow, scale=2, gap=8):
    """GT and predicted OpenOcc occupancy + flow (`bev_flow_map`) side by side, titles above, the
    speed ramp and the class legend below. Returns uint8 (H, W, 3)."""
    if np.shape(gt_semantics) != np.shape(pred_semantics):
        raise ValueError(f"GT shape {np.shape(gt_semantics)} differs from prediction shape {np.shape(pred_semantics)}")
    left = titled(bev_flow_map(gt_semantics, gt_flow, scale), "ground truth")
    right = titled(bev_flow_map(pred_semantics, pred_flow, scale), "prediction")
    spacer = np.full((left.shape[0], gap, 3), BACKGROUND, dtype=np.uint8)
    pair = np.concatenate([left, spacer, right], axis=1)
    key = legend(openocc.CLASS_NAMES[:openocc.FREE], openocc.PALETTE, width=pair.shape[1])
    return np.concatenate([pair, speed_legend(pair.shape[1]), key], axis=0)


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
