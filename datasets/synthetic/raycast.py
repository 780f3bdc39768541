"""Vectorised ray casting against yaw-only boxes and the ground plane z = 0.

Rays share one origin (a sensor). Each box is only tested against the rays that can hit it
(`candidates`, chosen by the caller from the box's angular footprint), so the cost is about the
number of (ray, box) pairs that overlap on screen rather than rays x boxes.
"""
from dataclasses import dataclass

import numpy as np

GROUND = -1  # `part` value of rays that hit the ground
MISS = -2  # `part` value of rays that hit nothing


@dataclass
class Hits:
    distance: np.ndarray  # (R,) along the (unit) ray; inf for misses
    part: np.ndarray  # (R,) part index, GROUND or MISS
    normal: np.ndarray  # (R, 3) global unit normal at the hit (zeros for misses)
    local: np.ndarray  # (R, 3) hit point in the part's frame (global point for ground hits)
    unoccluded: np.ndarray  # (P,) rays each part would stop if it were alone


def intersect_box(origin, dirs, centre, half, yaw):
    """Entry distance of rays into one box (inf where missed).

    origin (3,), dirs: the rays' unit directions as three (R,) float32 arrays (x, y, z), centre (3,),
    half (3,) half sizes, yaw scalar. Rays starting inside the box report a miss (sensors are never
    inside objects). Slab test, one axis at a time in the box frame.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    rel = origin - centre
    o = (c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2])  # origin in the box frame
    x, y, z = dirs
    d = (c * x + s * y, -s * x + c * y, z)  # directions in the box frame
    t_in, t_out = np.float32(0), np.float32(np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):  # axis-parallel rays: inf slabs, nan = miss
        for axis in range(3):
            inv = 1.0 / d[axis]
            t1 = (np.float32(-half[axis] - o[axis])) * inv
            t2 = (np.float32(half[axis] - o[axis])) * inv
            t_in = np.maximum(t_in, np.minimum(t1, t2))
            t_out = np.minimum(t_out, np.maximum(t1, t2))
    return np.where((t_in <= t_out) & (t_in > 0), t_in, np.float32(np.inf))


def cast(origin, dirs, parts, candidates, max_distance=np.inf, count_unoccluded=None):
    """Closest hit of each ray among the parts and the ground.

    origin (3,) global, dirs (R, 3) global unit vectors, parts: world.Parts, candidates: list over
    parts of int arrays of ray indices to test (or None to skip the part). Parts are visited from
    near to far and skip rays already stopped in front of them, except the parts flagged in
    `count_unoccluded` (P,) bool, whose `unoccluded` count needs every candidate ray.
    """
    n = len(dirs)
    best = np.full(n, np.inf)
    part = np.full(n, MISS, dtype=np.int64)
    unoccluded = np.zeros(len(candidates), dtype=np.int64)
    nearest = np.maximum(np.linalg.norm(parts.centre - origin, axis=1) - np.linalg.norm(parts.half, axis=1), 0)
    if count_unoccluded is None:
        count_unoccluded = np.zeros(len(candidates), dtype=bool)
    dirs_xyz = [np.ascontiguousarray(dirs[:, axis], dtype=np.float32) for axis in range(3)]
    for p in np.argsort(nearest, kind="stable"):
        rays = candidates[p]
        if rays is None or len(rays) == 0:
            continue
        if not count_unoccluded[p]:
            rays = rays[best[rays] > nearest[p]]
        t = intersect_box(origin, [d[rays] for d in dirs_xyz], parts.centre[p], parts.half[p], parts.yaw[p])
        unoccluded[p] = np.count_nonzero(t <= max_distance)
        closer = t < best[rays]
        best[rays[closer]] = t[closer]
        part[rays[closer]] = p
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[:, 2] < 0, -origin[2] / dirs[:, 2], np.inf)
    ground = t_ground < best
    best[ground] = t_ground[ground]
    part[ground] = GROUND
    far = best > max_distance
    best[far], part[far] = np.inf, MISS

    # Hit points in the part frames; normals of the entry face, pointing back to the sensor.
    local = np.zeros((n, 3))
    normal = np.zeros((n, 3))
    local[ground] = origin + dirs[ground] * best[ground, None]
    normal[ground, 2] = 1.0
    on_box = np.flatnonzero(part >= 0)
    p = part[on_box]
    rel = origin + dirs[on_box] * best[on_box, None] - parts.centre[p]
    c, s = np.cos(parts.yaw[p]), np.sin(parts.yaw[p])
    box_local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
    local[on_box] = box_local
    axis = np.argmax(np.abs(box_local) / parts.half[p], axis=1)
    n_local = np.zeros((len(on_box), 3))
    n_local[np.arange(len(on_box)), axis] = np.sign(box_local[np.arange(len(on_box)), axis])
    normal[on_box] = np.stack([c * n_local[:, 0] - s * n_local[:, 1], s * n_local[:, 0] + c * n_local[:, 1],
                               n_local[:, 2]], 1)
    return Hits(best, part, normal, local, unoccluded)
