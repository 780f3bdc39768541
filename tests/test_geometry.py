import math

import numpy as np
from pyquaternion import Quaternion

from occ import geometry


def test_quaternion_round_trip_matches_pyquaternion():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        rot = geometry.quaternion_to_rotation(q)
        np.testing.assert_allclose(rot, Quaternion(q).rotation_matrix, atol=1e-12)
        back = geometry.rotation_to_quaternion(rot)
        np.testing.assert_allclose(back, q if q[0] >= 0 else -q, atol=1e-9)


def test_invert_transform_and_points():
    t = geometry.make_transform(geometry.yaw_to_quaternion(0.7), [1.0, -2.0, 0.5])
    np.testing.assert_allclose(geometry.invert_transform(t) @ t, np.eye(4), atol=1e-12)
    pts = np.array([[1.0, 0.0, 0.0, 7.0]])
    out = geometry.transform_points(t, pts)
    np.testing.assert_allclose(out[0], [1 + math.cos(0.7), -2 + math.sin(0.7), 0.5, 7.0])


def test_image_aug_matrix_maps_pixels_like_the_augmentation():
    resize, crop, w, h = 0.5, (10.0, 20.0), 100, 50
    u, v = 60.0, 80.0
    # resize, crop, flip by hand
    ur, vr = u * resize - crop[0], v * resize - crop[1]
    uf = w - ur
    post_rot, post_tran = geometry.image_aug_matrix(resize, crop, True, 0.0, w, h)
    np.testing.assert_allclose(post_rot[:2, :2] @ [u, v] + post_tran[:2], [uf, vr])
    # rotation by 90 degrees about the crop centre
    post_rot, post_tran = geometry.image_aug_matrix(resize, crop, False, 90.0, w, h)
    cx, cy = w / 2, h / 2
    expect = [cx + (vr - cy), cy - (ur - cx)]
    np.testing.assert_allclose(post_rot[:2, :2] @ [u, v] + post_tran[:2], expect, atol=1e-9)


def test_bda_flips():
    bda = geometry.bda_matrix(flip_x=True, flip_y=False)
    np.testing.assert_allclose(bda @ [1.0, 2.0, 3.0, 1.0], [-1.0, 2.0, 3.0, 1.0])
    bda = geometry.bda_matrix(flip_y=True, rotate_deg=90.0)
    np.testing.assert_allclose(bda @ [1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 0.0, 1.0], atol=1e-12)
