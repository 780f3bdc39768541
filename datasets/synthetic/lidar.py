"""A 32-beam spinning LiDAR (nuScenes LIDAR_TOP, HDL-32E) by ray casting the world.

32 beams from -30.67 to +10.67 deg, 1084 azimuth steps per turn (random phase per scan), 70 m range.
Each return gets range noise (1.2 cm), an intensity from the surface's reflectivity and incidence
angle (asphalt dark, paint and signs bright), and drops out with probability
0.2 + 0.6 (r / 70 m)^2 + 0.6 (1 - reflectivity)(1 - cos incidence), which keeps a scan near
17k points (about half of the 34,688 rays), so 20 Hz sweeps of the default world fit in ~650 MB. Sky (no hit) and returns beyond range are absent. The scan
is instantaneous at its timestamp (no rolling shutter). Points are ordered by azimuth then beam;
`ring` is the beam index (0 = lowest).
"""
from dataclasses import dataclass

import numpy as np

from datasets.synthetic import catalog as C
from datasets.synthetic import raycast
from datasets.synthetic.raycast import GROUND
from occ import occ3d

GROUND_REFLECTIVITY = np.full(occ3d.FREE, 0.2)  # by Occ3D class of the ground
GROUND_REFLECTIVITY[[C.DRIVEABLE, C.OTHER_FLAT, C.SIDEWALK, C.TERRAIN]] = [0.1, 0.18, 0.25, 0.15]
# Occ3D class of a background surface -> nuScenes-lidarseg index of its points.
STUFF_LIDARSEG = np.array([C.LIDARSEG_INDEX[C.STUFF_CATEGORY.get(c, "noise")] for c in range(occ3d.FREE)],
                          dtype=np.uint8)


@dataclass
class Scan:
    points: np.ndarray  # (N, 5) float32 x, y, z, intensity, ring in the LiDAR frame
    points_global: np.ndarray  # (N, 3) float64
    origin_global: np.ndarray  # (3,)
    cls: np.ndarray  # (N,) Occ3D class of the surface hit
    category: np.ndarray  # (N,) nuScenes-lidarseg category index
    instance: np.ndarray  # (N,) world object index, -1 for the ground
    ranges: np.ndarray  # (32, A) range image: distance of each ray's return, inf where none
    first_azimuth: float  # LiDAR-frame azimuth of column 0


def beam_directions(rng):
    """Unit directions (A * 32, 3) in the LiDAR frame, azimuth-major."""
    elevation = np.radians(C.LIDAR_ELEVATIONS_DEG)
    step = 2 * np.pi / C.LIDAR_AZIMUTH_STEPS
    azimuth = np.arange(C.LIDAR_AZIMUTH_STEPS) * step + rng.uniform(0, step)
    ce, se = np.cos(elevation), np.sin(elevation)
    dirs = np.stack([np.cos(azimuth)[:, None] * ce, np.sin(azimuth)[:, None] * ce,
                     np.broadcast_to(se, (len(azimuth), 32))], -1)
    return dirs.reshape(-1, 3), azimuth


def column_candidates(origin, parts, first_azimuth, yaw_offset, margin=np.radians(1.5)):
    """For each part, the ray indices (azimuth-major, 32 beams) whose azimuth can hit it.

    Extreme azimuths of a box seen from outside its footprint are at its corners; parts whose
    footprint contains the sensor get every column. `first_azimuth` is column 0's azimuth in the
    LiDAR frame, `yaw_offset` the LiDAR's heading in the global frame.
    """
    n_cols = C.LIDAR_AZIMUTH_STEPS
    step = 2 * np.pi / n_cols
    corners = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.float64)
    c, s = np.cos(parts.yaw), np.sin(parts.yaw)
    local = corners[None] * parts.half[:, None, :2]  # (P, 4, 2)
    cx = parts.centre[:, None, 0] + c[:, None] * local[..., 0] - s[:, None] * local[..., 1] - origin[0]
    cy = parts.centre[:, None, 1] + s[:, None] * local[..., 0] + c[:, None] * local[..., 1] - origin[1]
    mid = np.arctan2(parts.centre[:, 1] - origin[1], parts.centre[:, 0] - origin[0])
    delta = np.mod(np.arctan2(cy, cx) - mid[:, None] + np.pi, 2 * np.pi) - np.pi  # (P, 4) wrapped
    lo, hi = delta.min(1) - margin, delta.max(1) + margin
    first_col = np.ceil((mid + lo - yaw_offset - first_azimuth) / step).astype(np.int64)
    last_col = np.floor((mid + hi - yaw_offset - first_azimuth) / step).astype(np.int64)
    rel = origin[:2] - parts.centre[:, :2]
    inside = (np.abs(c * rel[:, 0] + s * rel[:, 1]) < parts.half[:, 0] + 0.5) & \
             (np.abs(-s * rel[:, 0] + c * rel[:, 1]) < parts.half[:, 1] + 0.5)
    everything = inside | (hi - lo > np.pi)
    # Conservative elevation range: the box's top and bottom seen from its nearest and farthest
    # horizontal distance.
    radius = np.linalg.norm(parts.half[:, :2], axis=1)
    centre_distance = np.linalg.norm(parts.centre[:, :2] - origin[:2], axis=1)
    nearest, farthest = np.maximum(centre_distance - radius, 0.05), centre_distance + radius
    top = parts.centre[:, 2] + parts.half[:, 2] - origin[2]
    bottom = parts.centre[:, 2] - parts.half[:, 2] - origin[2]
    elevation_hi = np.arctan2(top, np.where(top > 0, nearest, farthest)) + margin
    elevation_lo = np.arctan2(bottom, np.where(bottom > 0, farthest, nearest)) - margin
    elevations = np.radians(C.LIDAR_ELEVATIONS_DEG)
    first_beam = np.searchsorted(elevations, elevation_lo)
    last_beam = np.searchsorted(elevations, elevation_hi)  # exclusive
    out = []
    for p in range(len(mid)):
        beams = np.arange(first_beam[p], last_beam[p])
        if len(beams) == 0:
            out.append(None)
            continue
        cols = np.arange(n_cols) if everything[p] else np.arange(first_col[p], last_col[p] + 1) % n_cols
        out.append((cols[:, None] * 32 + beams).ravel())
    return out


def scan(world, t, lidar2global, rng):
    """One LiDAR sweep of `world` at time t (s); lidar2global is the 4x4 sensor pose."""
    origin = lidar2global[:3, 3]
    dirs_lidar, azimuth = beam_directions(rng)
    dirs = dirs_lidar @ lidar2global[:3, :3].T
    parts = world.parts_at(t, near=origin, radius=C.LIDAR_MAX_RANGE + 2)
    yaw_offset = np.arctan2(lidar2global[1, 0], lidar2global[0, 0])
    candidates = column_candidates(origin, parts, azimuth[0], yaw_offset)
    hits = raycast.cast(origin, dirs, parts, candidates, max_distance=C.LIDAR_MAX_RANGE)

    keep = np.flatnonzero(hits.part != raycast.MISS)
    part = hits.part[keep]
    distance = hits.distance[keep] + rng.normal(0, 0.012, len(keep))
    points_global = origin + dirs[keep] * distance[:, None]
    ground = part == GROUND
    safe_part = np.where(ground, 0, part)
    ground_cls = world.ground_class(points_global[:, :2])
    cls = np.where(ground, ground_cls, parts.cls[safe_part]).astype(np.uint8)
    reflectivity = np.where(ground, GROUND_REFLECTIVITY[ground_cls],
                            parts.reflectivity[safe_part])
    reflectivity = np.where(ground & world.lane_marking(points_global[:, :2]), 0.9, reflectivity)
    cos_incidence = np.abs(np.sum(hits.normal[keep] * dirs[keep], axis=1))
    r = distance / C.LIDAR_MAX_RANGE
    p_drop = 0.2 + 0.6 * r ** 2 + 0.6 * (1 - reflectivity) * (1 - cos_incidence)
    alive = rng.uniform(size=len(keep)) > p_drop
    intensity = np.clip(255 * reflectivity * (0.3 + 0.7 * cos_incidence) * (1 - 0.4 * r)
                        + rng.normal(0, 2, len(keep)), 0, 255)

    keep, points_global, cls, part, ground = keep[alive], points_global[alive], cls[alive], part[alive], ground[alive]
    instance = np.where(ground, -1, parts.instance[np.where(ground, 0, part)])
    global2lidar = np.linalg.inv(lidar2global)
    xyz = points_global @ global2lidar[:3, :3].T + global2lidar[:3, 3]
    ring = keep % 32
    points = np.concatenate([xyz, intensity[alive, None], ring[:, None]], 1).astype(np.float32)
    category = STUFF_LIDARSEG[cls]
    things = instance >= 0
    category[things] = np.where(world.obj_annotated[instance[things]], world.obj_lidarseg[instance[things]],
                                category[things])
    ranges = np.full(len(dirs), np.inf, dtype=np.float32)
    ranges[keep] = distance[alive]
    ranges = ranges.reshape(C.LIDAR_AZIMUTH_STEPS, 32).T
    return Scan(points, points_global, origin, cls, category, instance, ranges, float(azimuth[0]))

