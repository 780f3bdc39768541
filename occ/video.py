"""Occupancy videos: voxels projected into camera images, one composed frame per key frame, H.264 MP4.

A frame (`scene_frame`) holds, under a title bar: the cameras (3 per row) with the occupied voxels
of the shown grid drawn over them in the class colours, then the bird's-eye GT vs prediction with
the camera-visible region (occ.visualize.gt_vs_pred_image, legend included) and the isometric 3-D
view of the shown grid (occ.visualize.voxel_render). The composed picture is fitted, aspect kept
and padded white, into the requested (height, width). Colours are occ.occ3d.PALETTE, the same as
evaluate.py --vis-dir.

Voxel overlay (`overlay_voxels`): the centre of every non-free voxel that is not enclosed by
others is projected with the camera's calibration and drawn as a square about as wide as the
voxel at that depth; where squares overlap the voxel nearest the camera wins; the result is
alpha-blended over the image.
"""
import os
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from occ import occ3d
from occ.geometry import invert_transform, project_to_image, transform_points
from occ.visualize import BACKGROUND, bev_semantic_map, gt_vs_pred_image, legend, titled, voxel_render

MIN_DEPTH = 0.5  # metres: voxels nearer the camera than this are not drawn
MAX_SQUARE_RADIUS = 32  # pixels: half-width cap of a drawn voxel (the nearest ones)
GAP = 8  # pixels between panels


def voxel_centres(grid, free_label=occ3d.FREE):
    """(X, Y, Z) labels -> centres (M, 3) float64 in the ego frame (metres) and labels (M,) of the
    non-free voxels."""
    grid = np.asarray(grid)
    index = np.stack(np.nonzero(grid != free_label), axis=1)  # (M, 3) [x, y, z]
    centres = occ3d.GRID_MIN + (index + 0.5) * occ3d.VOXEL_SIZE
    return centres, grid[tuple(index.T)]


def hollowed(grid, free_label=occ3d.FREE):
    """A copy of the (X, Y, Z) labels with every voxel whose six face neighbours are all non-free
    set to free: those cannot be seen from outside (a voxel on the grid's border is kept)."""
    grid = np.asarray(grid)
    padded = np.pad(grid != free_label, 1)  # (X + 2, Y + 2, Z + 2), outside the grid free
    inner = (slice(1, -1),) * 3
    enclosed = np.ones(grid.shape, dtype=bool)
    for axis in range(3):
        for shift in (slice(2, None), slice(None, -2)):
            neighbour = list(inner)
            neighbour[axis] = shift
            enclosed &= padded[tuple(neighbour)]
    return np.where(enclosed & (grid != free_label), free_label, grid).astype(grid.dtype)


def project_to_camera(points_ego, cam2ego, intrinsics):
    """Ego-frame points (M, 3) -> pixel coordinates (u, v) (M, 2) (u right, v down; the pixel in
    row r, column c covers u in [c, c + 1), v in [r, r + 1)) and depths along the optical axis (M,)
    of a camera whose frame maps to the ego frame by `cam2ego` (4, 4) and whose image has the 3x3
    `intrinsics`."""
    points_cam = transform_points(invert_transform(np.asarray(cam2ego, dtype=np.float64)), points_ego)
    return project_to_image(points_cam, intrinsics)


def overlay_voxels(image, grid, cam2ego, intrinsics, alpha=0.6, free_label=occ3d.FREE, palette=occ3d.PALETTE):
    """The uint8 (H, W, 3) camera `image` with the non-free voxels of `grid` drawn over it
    (module docstring); `intrinsics` describe this image (scale them when the image is resized)."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    centres, labels = voxel_centres(hollowed(grid, free_label), free_label)
    uv, depth = project_to_camera(centres, cam2ego, intrinsics)
    focal = float(np.asarray(intrinsics)[0, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.clip(focal * occ3d.VOXEL_SIZE / depth / 2, 0, MAX_SQUARE_RADIUS).astype(np.int64)  # (M,)
    column, row = np.floor(uv[:, 0]), np.floor(uv[:, 1])
    keep = ((depth > MIN_DEPTH) & (column + radius >= 0) & (column - radius < width)
            & (row + radius >= 0) & (row - radius < height))
    column, row, radius = column[keep].astype(np.int64), row[keep].astype(np.int64), radius[keep]
    depth, labels = depth[keep], labels[keep]

    # every (voxel, pixel of its square) pair, grouped by radius; per pixel the nearest voxel wins
    pixels, depths, classes = [], [], []
    for r in np.unique(radius):
        chosen = radius == r
        du, dv = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1))
        u = column[chosen, None] + du.ravel()[None]  # (V, (2r + 1)^2)
        v = row[chosen, None] + dv.ravel()[None]
        inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
        pixels.append((v * width + u)[inside])
        depths.append(np.broadcast_to(depth[chosen, None], u.shape)[inside])
        classes.append(np.broadcast_to(labels[chosen, None], u.shape)[inside])
    out = image.reshape(-1, 3).astype(np.float64)
    if pixels:
        pixels, depths, classes = np.concatenate(pixels), np.concatenate(depths), np.concatenate(classes)
        order = np.lexsort((depths, pixels))  # by pixel, nearest first
        first_of_pixel = np.r_[True, pixels[order][1:] != pixels[order][:-1]]
        winners = order[first_of_pixel]
        colours = np.asarray(palette, dtype=np.float64)[classes[winners]]
        out[pixels[winners]] = (1 - alpha) * out[pixels[winners]] + alpha * colours
    return out.reshape(height, width, 3).round().astype(np.uint8)


def side_by_side(images, gap=GAP):
    """uint8 images in a row, top-aligned, `gap` white pixels apart."""
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    x = 0
    for image in images:
        canvas[:image.shape[0], x:x + image.shape[1]] = image
        x += image.shape[1] + gap
    return canvas


def stacked(images, gap=GAP):
    """uint8 images in a column, left-aligned, `gap` white pixels apart."""
    height = sum(image.shape[0] for image in images) + gap * (len(images) - 1)
    width = max(image.shape[1] for image in images)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    y = 0
    for image in images:
        canvas[y:y + image.shape[0], :image.shape[1]] = image
        y += image.shape[0] + gap
    return canvas


def fit(image, height, width):
    """The image scaled to fit (height, width), aspect kept, centred on white."""
    scale = min(height / image.shape[0], width / image.shape[1])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    canvas[top:top + size[1], left:left + size[0]] = resized
    return canvas


def resized_camera(image, intrinsics, width):
    """A camera image scaled to `width` pixels (aspect kept) and the intrinsics of the result."""
    scale = width / image.shape[1]
    height = max(1, round(image.shape[0] * scale))
    resized = np.asarray(Image.fromarray(np.asarray(image)).resize((width, height), Image.BILINEAR))
    scaling = np.diag([width / image.shape[1], height / image.shape[0], 1.0])
    return resized, scaling @ np.asarray(intrinsics, dtype=np.float64)[:3, :3]


def scene_frame(cameras, gt, visible, pred=None, title="", size=(1024, 1440), camera_width=528, columns=3):
    """One video frame, uint8 (size[0], size[1], 3) (module docstring).

    cameras: [(name, image uint8 (h, w, 3), cam2ego (4, 4), intrinsics (3, 3) of that image)],
    drawn `camera_width` pixels wide, `columns` per row, in the given order; gt, pred: (X, Y, Z)
    labels (pred None: the GT alone is shown and drawn on the cameras); visible: (X, Y, Z)
    camera-visibility mask."""
    shown = gt if pred is None else pred
    what = "ground truth" if pred is None else "prediction"
    tiles = []
    for name, image, cam2ego, intrinsics in cameras:
        image, intrinsics = resized_camera(image, intrinsics, camera_width)
        tiles.append(titled(overlay_voxels(image, shown, cam2ego, intrinsics), name))
    rows = [side_by_side(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    if pred is None:
        bev = titled(bev_semantic_map(gt, visible, scale=2), "ground truth (grey: not seen by the cameras)")
        bev = stacked([bev, legend(width=bev.shape[1])], gap=0)
    else:
        bev = gt_vs_pred_image(gt, pred, visible)
    view = voxel_render(hollowed(shown))  # the same picture as voxel_render(shown), drawn faster
    bottom = side_by_side([bev, titled(view, f"{what}, 3-D")])
    picture = titled(stacked(rows + [bottom]), title, bar_height=16)
    return fit(picture, *size)


def write_mp4(frames, path, fps=2, crf=23):
    """Encodes uint8 (H, W, 3) RGB frames (an iterable; H and W even and the same for all) as an
    H.264 (yuv420p) MP4 at `fps` frames per second, written to a temporary file next to `path` and
    renamed onto it when complete (a failed render leaves no partial video). Returns the number of
    frames written."""
    partial = f"{path}.partial"
    try:
        count = _encode_mp4(frames, partial, fps, crf)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return count


def _encode_mp4(frames, path, fps, crf):
    count = 0
    with av.open(path, mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf)}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            count += 1
        if stream is not None:
            container.mux(stream.encode())
    return count

