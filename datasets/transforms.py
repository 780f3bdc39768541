"""Per-sample transforms: point loading and sweeps, image augmentation, LiDAR depth maps, BEV flips.

Frames: points come out of `load_points` in their sensor frame and out of `load_multisweep_points`
in the key-frame ego frame. Image pixels use integer-centred coordinates (pixel (i, j) is at
u = i, v = j), the convention of the intrinsics and of the LSS frustum `linspace(0, W-1, ...)`.
"""
import math
import os

import numpy as np
from PIL import Image

from occ.errors import DataError
from occ.geometry import image_aug_matrix, invert_transform

POINT_DIMS = 5  # x, y, z, intensity, ring in the .pcd.bin files
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# docs/data.md#image-augmentation train-time image augmentation.
IMAGE_AUG_DEFAULTS = {"resize_jitter": (-0.06, 0.11), "flip_prob": 0.5, "rotate_deg": (-5.4, 5.4)}
# What PIL raises for a file it cannot identify or decode (UnidentifiedImageError and truncated
# data are OSErrors; some plugins raise SyntaxError or ValueError on broken chunks).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# ----------------------------------------------------------------------------------------- points
def load_points(path):
    """A nuScenes .pcd.bin as float32 (P, 5), P >= 1; raises naming the file when it is missing
    (FileNotFoundError), empty (0 bytes: a failed copy or download, never a real scan), its size is
    not a whole number of 5-float points, or a coordinate is not finite (DataError)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"point cloud not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"empty point cloud {path}: 0 bytes (a LiDAR scan always holds points)")
    if size % (4 * POINT_DIMS):
        raise DataError(f"corrupt point cloud {path}: {size} bytes is not a multiple of "
                        f"{4 * POINT_DIMS} (float32 x {POINT_DIMS} per point)")
    try:
        points = np.fromfile(path, dtype=np.float32).reshape(-1, POINT_DIMS)
    except (OSError, ValueError) as error:
        raise DataError(f"unreadable point cloud {path}: {error}") from error
    if not np.isfinite(points[:, :4]).all():
        bad = int((~np.isfinite(points[:, :4])).any(axis=1).sum())
        raise DataError(f"corrupt point cloud {path}: {bad} point(s) with NaN/inf x, y, z or intensity")
    return points


def remove_ego_body(points, half_size=1.0):
    """Drop points with |x| < half_size and |y| < half_size (the vehicle's own body)."""
    inside = (np.abs(points[:, 0]) < half_size) & (np.abs(points[:, 1]) < half_size)
    return points[~inside]


def choose_sweeps(num_available, num_sweeps, rng=None):
    """Indices into an info's `sweeps` (stored nearest first). Test mode (rng None): the
    `num_sweeps` nearest in time. Train: a random subset of that size (docs/data.md#points-and-sweeps). Fewer stored
    sweeps than asked (a scene start) gives all of them."""
    if num_available <= num_sweeps:
        return list(range(num_available))
    if rng is None:
        return list(range(num_sweeps))
    return sorted(rng.choice(num_available, num_sweeps, replace=False).tolist())


def load_multisweep_points(data_root, info, sweep_indices):
    """Key frame + the chosen sweeps in the key-frame ego frame: float32 (P, 5) x, y, z, intensity,
    time_lag (s). Sweep points inside the ego body (in their own sensor frame) are dropped."""
    lidar2ego = info["lidar2ego"]
    key = load_points(os.path.join(data_root, info["lidar_path"]))
    clouds = [_to_frame(key, lidar2ego, 0.0)]
    for index in sweep_indices:
        sweep = info["sweeps"][index]
        points = remove_ego_body(load_points(os.path.join(data_root, sweep["path"])))
        clouds.append(_to_frame(points, lidar2ego @ sweep["sensor2lidar"], sweep["time_lag"]))
    return np.concatenate(clouds, axis=0)


def _to_frame(points, transform, time_lag):
    """(P, 5) sensor points -> (P, 5) x, y, z, intensity, time_lag in the frame of `transform`."""
    out = np.empty((len(points), 5), dtype=np.float32)
    out[:, :3] = transform_xyz(points, transform)
    out[:, 3] = points[:, 3]
    out[:, 4] = time_lag
    return out


def transform_xyz(points, transform):
    """float32 (P, 3) = R @ xyz + t of points (P, 3+) under a 4x4 transform. Computed column by
    column: elementwise multiply-adds are several times faster than a (P, 3) @ (3, 3) matmul."""
    m = np.asarray(transform, dtype=np.float32)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    out = np.empty((len(points), 3), dtype=np.float32)
    for row in range(3):
        out[:, row] = x * m[row, 0] + y * m[row, 1] + z * m[row, 2] + m[row, 3]
    return out


# ----------------------------------------------------------------------------------------- images
def sample_image_aug(src_width, src_height, out_width, out_height, rng=None, aug=IMAGE_AUG_DEFAULTS):
    """Image augmentation of one camera (docs/data.md#image-augmentation) as (post_rot 3x3, post_tran 3).

    Resize by out_width / src_width (+ U(resize_jitter) in train), bottom crop of out_height with a
    random horizontal offset in train (centred in test), horizontal flip with flip_prob and a
    rotation U(rotate_deg) in train. rng None = test mode: deterministic, no flip, no rotation.
    """
    resize = out_width / src_width
    flip, rotate = False, 0.0
    if rng is not None:
        resize += rng.uniform(*aug["resize_jitter"])
    resized_w, resized_h = src_width * resize, src_height * resize
    crop_y = resized_h - out_height
    if rng is None:
        crop_x = (resized_w - out_width) / 2
    else:
        crop_x = rng.uniform(0, max(0.0, resized_w - out_width))
        flip = bool(rng.uniform() < aug["flip_prob"])
        rotate = rng.uniform(*aug["rotate_deg"])
    return image_aug_matrix(resize, (crop_x, crop_y), flip, rotate, out_width, out_height)


def image_size(path):
    """(width, height) of an image file, from its header; FileNotFoundError / DataError naming the
    file when it is missing or not an image PIL can identify (an empty file included)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except IMAGE_ERRORS as error:
        raise DataError(f"unreadable image {path}: {error}") from error


def load_image(path, post_rot, post_tran, out_width, out_height):
    """The augmented image uint8 (out_height, out_width, 3) RGB: source pixel (u, v) lands at
    post_rot[:2, :2] @ [u, v] + post_tran[:2]. PIL decodes (strictly: a truncated file raises,
    naming it), JPEGs at a reduced scale (DCT scaling) and other images box-reduced when the resize
    allows, so that the one bilinear affine warp never shrinks by more than 2x. (OpenCV's warp is
    faster but its thread pool can deadlock DataLoader workers forked after it ran.)"""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        image = Image.open(path)
        src_width, src_height = image.size
        resize = math.sqrt(abs(np.linalg.det(post_rot[:2, :2])))
        image.draft("RGB", (math.ceil(src_width * resize), math.ceil(src_height * resize)))
        image.load()  # PIL decodes lazily: truncated files fail here
    except IMAGE_ERRORS as error:
        raise DataError(f"unreadable image {path}: {error}") from error
    scale = 1.0 / round(src_width / image.size[0])  # decoded pixels per source pixel
    box_factor = int(scale / resize)
    if box_factor >= 2:
        image = image.reduce(box_factor)
        scale /= box_factor
    if image.mode != "RGB":
        image = image.convert("RGB")
    # Source -> output in integer-centred pixels is (A, t); decoded = scale * (src + 0.5) - 0.5.
    a_dec = post_rot[:2, :2] / scale
    t_dec = post_tran[:2] - a_dec @ np.full(2, 0.5 * (scale - 1.0))
    # PIL maps output pixel-area coordinates (u' + 0.5) to input pixel-area coordinates.
    inverse = np.array([[a_dec[1, 1], -a_dec[0, 1]], [-a_dec[1, 0], a_dec[0, 0]]]) / np.linalg.det(a_dec)
    offset = 0.5 - inverse @ (0.5 + t_dec)
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    warped = image.transform((out_width, out_height), Image.Transform.AFFINE, coeffs,
                             resample=Image.Resampling.BILINEAR)
    return np.asarray(warped)


# output channel c of normalize_image reads RGB channel COLOR_SOURCE_CHANNELS[color_order][c]
COLOR_SOURCE_CHANNELS = {"rgb": (0, 1, 2), "bgr": (2, 1, 0)}
# (3, 256) float32: the normalised value of every uint8 level per channel
NORMALIZE_TABLE = ((np.arange(256, dtype=np.float32)[None] / 255.0 - IMAGENET_MEAN[:, None])
                   / IMAGENET_STD[:, None]).astype(np.float32)


def normalize_image(image, color_order="rgb"):
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) normalised with the ImageNet mean/std (by table
    look-up, ~3x faster than float arithmetic). color_order "bgr" reproduces the official
    checkpoints' input: channels in B, G, R order, each normalised with the mean/std of its
    position (R's for B, B's for R), as mmcv's imnormalize(to_rgb=True) does to an RGB image."""
    if color_order not in COLOR_SOURCE_CHANNELS:
        raise ValueError(f"color_order must be one of {tuple(COLOR_SOURCE_CHANNELS)}, got {color_order!r}")
    out = np.empty((3,) + image.shape[:2], dtype=np.float32)
    for channel, source in enumerate(COLOR_SOURCE_CHANNELS[color_order]):
        np.take(NORMALIZE_TABLE[channel], image[:, :, source], out=out[channel])
    return out


# ------------------------------------------------------------------------------------- depth maps
def lidar_depth_maps(points_ego, cam2ego, intrinsics, post_rot, post_tran, height, width,
                     min_depth=1.0, max_depth=45.0):
    """Nearest LiDAR depth per pixel of each camera's augmented image: float32 (N, height, width),
    0 = no point.

    points_ego (P, 3+) in the frame of `cam2ego` (N, 4, 4); intrinsics, post_rot (N, 3, 3),
    post_tran (N, 3). A point lands on the pixel nearest to post_rot @ K @ p_cam / depth + post_tran;
    depths are kept in [min_depth, max_depth).
    """
    num_cams = len(cam2ego)
    # Columns as contiguous arrays; elementwise multiply-adds as in transform_xyz.
    x, y, z = (np.ascontiguousarray(points_ego[:, i], dtype=np.float32) for i in range(3))
    depth_maps = np.full((num_cams, height * width), np.inf, dtype=np.float32)
    for n in range(num_cams):
        # ego -> (u' * depth, v' * depth, depth) as one 3x4 matrix: image aug @ K @ ego2cam
        image_aug = np.eye(3)
        image_aug[:2, :2] = post_rot[n][:2, :2]
        image_aug[:2, 2] = post_tran[n][:2]
        m = image_aug @ np.asarray(intrinsics[n])[:3, :3] @ invert_transform(cam2ego[n])[:3]
        m = m.astype(np.float32)
        depth = x * m[2, 0] + y * m[2, 1] + z * m[2, 2] + m[2, 3]
        keep = np.nonzero((depth >= min_depth) & (depth < max_depth))[0]
        xk, yk, zk, depth = x[keep], y[keep], z[keep], depth[keep]
        cols = np.floor((xk * m[0, 0] + yk * m[0, 1] + zk * m[0, 2] + m[0, 3]) / depth + 0.5).astype(np.int64)
        rows = np.floor((xk * m[1, 0] + yk * m[1, 1] + zk * m[1, 2] + m[1, 3]) / depth + 0.5).astype(np.int64)
        inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
        # scatter-min of the depths onto their pixels
        np.minimum.at(depth_maps[n], rows[inside] * width + cols[inside], depth[inside])
    depth_maps[np.isinf(depth_maps)] = 0.0
    return depth_maps.reshape(num_cams, height, width)


# ------------------------------------------------------------------------------------------- BEV
def flip_grid(grid, flip_x, flip_y):
    """Mirror a grid indexed [x, y, ...] the way `bda_matrix(flip_x, flip_y)` mirrors points
    (x -> -x reverses the x index of a grid symmetric about the ego origin)."""
    if flip_x:
        grid = grid[::-1]
    if flip_y:
        grid = grid[:, ::-1]
    return np.ascontiguousarray(grid)


def flip_flow(flow, flip_x, flip_y):
    """Mirror a (X, Y, Z, 2) vx, vy flow grid and negate the flipped velocity components."""
    flow = flip_grid(flow, flip_x, flip_y)
    sign = np.array([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0], dtype=flow.dtype)
    return flow * sign


def transform_boxes(boxes, bda):
    """Boxes (M, 9) x, y, z, l, w, h, yaw, vx, vy under the BEV augmentation `bda` (4x4, rotation
    about z, scale, x / y flips; `occ.geometry.bda_matrix`): centres and velocities are mapped by
    it, the heading vector too (flip x: yaw -> pi - yaw, flip y: yaw -> -yaw), sizes scaled."""
    bda = np.asarray(bda, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    out = boxes.copy()
    out[:, :3] = boxes[:, :3] @ bda[:3, :3].T + bda[:3, 3]
    out[:, 3:6] = boxes[:, 3:6] * np.linalg.norm(bda[:3, 0])
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], axis=1) @ bda[:2, :2].T
    out[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    out[:, 7:9] = boxes[:, 7:9] @ bda[:2, :2].T
    return out.astype(np.float32)
