"""Explicit geometry: quaternions, rigid transforms, camera projection, image-aug and BEV-aug matrices.

Every transform is a named 4x4 (or 3x3) numpy float64 array; its frames are in its name:
`lidar2ego` maps LiDAR-frame points to the ego frame, `cam2ego` camera to ego, and so on.
Quaternions are nuScenes order (w, x, y, z).
"""
import math

import numpy as np


def quaternion_to_rotation(quaternion):
    """(w, x, y, z) -> 3x3 rotation matrix. The quaternion is normalised first."""
    w, x, y, z = np.asarray(quaternion, dtype=np.float64) / np.linalg.norm(quaternion)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotation_to_quaternion(rotation):
    """3x3 rotation matrix -> (w, x, y, z) with w >= 0."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.array(q)
    return q if q[0] >= 0 else -q


def yaw_to_quaternion(yaw):
    """Rotation about +z by `yaw` radians as (w, x, y, z)."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def make_transform(rotation, translation):
    """4x4 rigid transform from a quaternion (4,) or rotation matrix (3,3) and a translation (3,)."""
    rotation = np.asarray(rotation, dtype=np.float64)
    transform = np.eye(4)
    transform[:3, :3] = quaternion_to_rotation(rotation) if rotation.shape == (4,) else rotation
    transform[:3, 3] = np.asarray(translation, dtype=np.float64)
    return transform


def invert_transform(transform):
    """Inverse of a 4x4 rigid transform (R, t) -> (R^T, -R^T t)."""
    inverse = np.eye(4)
    inverse[:3, :3] = transform[:3, :3].T
    inverse[:3, 3] = -transform[:3, :3].T @ transform[:3, 3]
    return inverse


def transform_points(transform, points):
    """Apply a 4x4 transform to points (N, 3+); extra columns are passed through unchanged."""
    points = np.asarray(points)
    out = points.copy()
    out[:, :3] = points[:, :3] @ transform[:3, :3].T + transform[:3, 3]
    return out


def project_to_image(points_cam, intrinsics):
    """Camera-frame points (N, 3) -> pixel coordinates (N, 2) and depths (N,) (z, the optical axis)."""
    depth = points_cam[:, 2]
    uvw = points_cam @ np.asarray(intrinsics)[:3, :3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / uvw[:, 2:3]
    return uv, depth


def image_aug_matrix(resize, crop_xy, flip, rotate_deg, crop_width, crop_height):
    """The 3x3 `post_rot` and (3,) `post_tran` of an image augmentation.

    The augmentation maps a source pixel (u, v) to the network-input pixel
        [u', v'] = post_rot[:2, :2] @ [u, v] + post_tran[:2]
    and is applied in this order: resize by `resize`, crop the window whose top-left corner is
    `crop_xy` in the resized image, flip horizontally (u -> crop_width - u), rotate by
    `rotate_deg` degrees about the crop centre. The third row/column is identity so the matrices
    also act on (u, v, depth) frustum points.
    """
    rot = np.eye(2) * resize
    tran = -np.asarray(crop_xy, dtype=np.float64)
    if flip:
        flip_m = np.array([[-1.0, 0.0], [0.0, 1.0]])
        rot = flip_m @ rot
        tran = flip_m @ tran + np.array([crop_width, 0.0])
    angle = math.radians(rotate_deg)
    rot_m = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    centre = np.array([crop_width / 2.0, crop_height / 2.0])
    rot = rot_m @ rot
    tran = rot_m @ (tran - centre) + centre
    post_rot, post_tran = np.eye(3), np.zeros(3)
    post_rot[:2, :2] = rot
    post_tran[:2] = tran
    return post_rot, post_tran


def bda_matrix(flip_x=False, flip_y=False, rotate_deg=0.0, scale=1.0):
    """4x4 BEV augmentation acting on ego-frame points: rotate about z, scale, then flip.

    `flip_x` negates x (mirrors the grid along its x index), `flip_y` negates y.
    """
    angle = math.radians(rotate_deg)
    bda = np.eye(4)
    bda[:2, :2] = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    bda[:3, :3] *= scale
    flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0])
    return flip @ bda
