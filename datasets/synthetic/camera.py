"""Pinhole camera images rendered by ray casting the same world the LiDAR sees.

Rendering happens at an internal resolution of at most 800 px wide (then bilinear upsampling to the
requested size), one ray per internal pixel centre. Colour = the surface's base colour x a
procedural texture (per-instance value noise, building windows, car glass, barrier/cone stripes,
tyres, foliage, bark, clothing; asphalt with lane paint, sidewalk tiles, grass) x Lambertian
shading from a per-scene sun, blended into haze with distance; rays that hit nothing show a sky
gradient. Each object's base colour and texture frequency vary per instance.
"""
from dataclasses import dataclass

import numpy as np

from datasets.synthetic import catalog as C
from datasets.synthetic import raycast, world as W
from datasets.synthetic.raycast import GROUND, MISS

MAX_INTERNAL_WIDTH = 704  # the network input width (docs/architecture.md#grid-and-classes)
GROUND_COLOUR = {C.DRIVEABLE: (0.27, 0.27, 0.29), C.OTHER_FLAT: (0.55, 0.42, 0.36),
                 C.SIDEWALK: (0.62, 0.6, 0.56), C.TERRAIN: (0.33, 0.45, 0.2)}


@dataclass
class Render:
    rgb: np.ndarray  # (H, W, 3) uint8 at the requested size
    depth: np.ndarray  # (h, w) distance along the ray at the internal resolution, inf = sky
    instance: np.ndarray  # (h, w) world object index; -1 ground, -2 sky
    scale: float  # internal pixels per output pixel
    visible: dict  # object index -> (visible pixels, unoccluded pixels)


def value_noise(a, b, seed, frequency):
    """Smooth-ish pseudo-random values in [0, 1) at 2-D coordinates (bilinear lattice noise)."""
    x, y = a * frequency, b * frequency
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - ix, y - iy

    def lattice(i, j):
        h = (i * 73856093) ^ (j * 19349663) ^ (np.asarray(seed, dtype=np.int64) * 83492791)
        h = (h ^ (h >> 13)) * 1274126177
        return ((h >> 8) & 0xFFFF) / 65536.0

    top = lattice(ix, iy) * (1 - fx) + lattice(ix + 1, iy) * fx
    bottom = lattice(ix, iy + 1) * (1 - fx) + lattice(ix + 1, iy + 1) * fx
    return top * (1 - fy) + bottom * fy


def pixel_rays(intrinsics, cam2global, width, height):
    """Unit global directions (h*w, 3) through internal pixel centres, row-major."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
    dirs_cam = pix @ np.linalg.inv(intrinsics).T
    dirs = dirs_cam @ cam2global[:3, :3].T
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def screen_candidates(parts, global2cam, intrinsics, width, height):
    """Ray indices of the screen rectangle each part can cover (None when behind the camera)."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs[None] * parts.half[:, None]  # (P, 8, 3)
    c, s = np.cos(parts.yaw)[:, None], np.sin(parts.yaw)[:, None]
    corners = np.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1], local[..., 2]],
                       -1) + parts.centre[:, None]
    cam = corners @ global2cam[:3, :3].T + global2cam[:3, 3]  # (P, 8, 3)
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ intrinsics.T)[..., :2] / z[..., None]
    out = []
    for p in range(len(cam)):
        if (z[p] <= 0.05).all():
            out.append(None)
            continue
        if (z[p] > 0.05).all():
            u0, v0 = np.floor(uv[p].min(0)).astype(int)
            u1, v1 = np.ceil(uv[p].max(0)).astype(int)
            u0, u1, v0, v1 = max(u0, 0), min(u1, width), max(v0, 0), min(v1, height)
        else:  # straddles the camera plane: test the whole image
            u0, u1, v0, v1 = 0, width, 0, height
        if u0 >= u1 or v0 >= v1:
            out.append(None)
            continue
        rows, cols = np.arange(v0, v1), np.arange(u0, u1)
        out.append((rows[:, None] * width + cols).ravel())
    return out


def render(world, t, cam2global, intrinsics, size, sun):
    """Image of `world` at time t from a camera (4x4 pose, 3x3 intrinsics for `size`=(W, H))."""
    width, height = size
    scale = min(1.0, MAX_INTERNAL_WIDTH / width)
    w, h = int(round(width * scale)), int(round(height * scale))
    k = np.array(intrinsics, dtype=np.float64).copy()
    k[0] *= w / width
    k[1] *= h / height
    origin = cam2global[:3, 3]
    dirs = pixel_rays(k, cam2global, w, h)
    parts = world.parts_at(t, near=origin, radius=150.0)
    global2cam = np.linalg.inv(cam2global)
    candidates = screen_candidates(parts, global2cam, k, w, h)
    hits = raycast.cast(origin, dirs, parts, candidates, count_unoccluded=world.obj_annotated[parts.instance])
    rgb = shade(world, parts, hits, dirs, sun)

    instance = np.where(hits.part >= 0, parts.instance[np.maximum(hits.part, 0)], hits.part).astype(np.int64)
    instance = np.where(hits.part == GROUND, -1, np.where(hits.part == MISS, -2, instance))
    shown = np.bincount(instance[instance >= 0], minlength=len(world.obj_cls))
    total = np.bincount(parts.instance, weights=hits.unoccluded, minlength=len(world.obj_cls))
    visible = {int(obj): (int(shown[obj]), int(total[obj])) for obj in np.flatnonzero(total > 0)}
    image = (np.clip(rgb, 0, 1).reshape(h, w, 3) * 255 + 0.5).astype(np.uint8)
    return Render(image, hits.distance.reshape(h, w), instance.reshape(h, w), scale, visible)


def shade(world, parts, hits, dirs, sun):
    """RGB (R, 3) in [0, 1] for every ray."""
    n = len(dirs)
    rgb = np.zeros((n, 3))
    # Sky.
    sky = hits.part == MISS
    up = np.clip(dirs[sky, 2], 0, 1)[:, None]
    rgb[sky] = (1 - up) * np.array([0.78, 0.84, 0.9]) + up * np.array([0.35, 0.55, 0.85])
    # Ground.
    ground = np.flatnonzero(hits.part == GROUND)
    xy = hits.local[ground, :2]
    cls = world.ground_class(xy)
    base = np.zeros((len(ground), 3))
    for c, colour in GROUND_COLOUR.items():
        base[cls == c] = colour
    grain = value_noise(xy[:, 0], xy[:, 1], 7, 3.0)
    patches = value_noise(xy[:, 0], xy[:, 1], 11, 0.25)
    base *= (0.8 + 0.25 * grain + 0.15 * patches)[:, None]
    tiles = (cls == C.SIDEWALK) & ((np.mod(xy[:, 0], 1.0) < 0.04) | (np.mod(xy[:, 1], 1.0) < 0.04))
    base[tiles] *= 0.7
    base[world.lane_marking(xy) & (cls == C.DRIVEABLE)] = (0.85, 0.85, 0.82)
    rgb[ground] = base * (0.45 + 0.55 * max(sun[2], 0))
    # Boxes.
    on_box = np.flatnonzero(hits.part >= 0)
    p = hits.part[on_box]
    local = hits.local[on_box]
    # In-face coordinates: the two axes of the face that was hit.
    axis = np.argmax(np.abs(local) / parts.half[p], axis=1)
    a = np.where(axis == 0, local[:, 1], local[:, 0]) + np.where(axis == 0, parts.half[p, 1], parts.half[p, 0])
    b = np.where(axis == 2, local[:, 1], local[:, 2]) + np.where(axis == 2, parts.half[p, 1], parts.half[p, 2])
    seed = parts.instance[p] * 31 + axis
    texture = parts.texture[p]
    base = parts.colour[p].copy()
    frequency = 1.0 + (parts.instance[p] % 5)
    factor = 0.85 + 0.3 * value_noise(a, b, seed, frequency)
    vertical = axis != 2
    windows = (texture == W.WINDOWS) & vertical & (np.mod(a, 3.2) > 0.7) & (np.mod(a, 3.2) < 2.5) & \
              (np.mod(b, 3.0) > 0.9) & (np.mod(b, 3.0) < 2.2)
    glass = (texture == W.GLASS) & vertical & (b > 0.15 * 2 * parts.half[p, 2])
    stripes = (texture == W.STRIPES) & (np.mod(b * (2.0 + parts.instance[p] % 3), 1.0) < 0.5)
    tyre = texture == W.TYRE
    leaves = (texture == W.LEAVES) | (texture == W.BARK)
    factor[leaves] = 0.55 + 0.9 * value_noise(a[leaves], b[leaves], seed[leaves], 4.0 + frequency[leaves])
    base[windows] = np.array([0.12, 0.15, 0.22]) + 0.1 * value_noise(a[windows], b[windows], seed[windows], 0.5)[:, None]
    base[glass] = (0.08, 0.1, 0.13)
    base[stripes] = (0.92, 0.92, 0.9)
    base[tyre] = 0.06
    lambert = np.clip(hits.normal[on_box] @ sun, 0, 1)
    rgb[on_box] = base * factor[:, None] * (0.42 + 0.58 * lambert)[:, None]
    # Haze.
    hit = ~sky
    fog = 1 - np.exp(-hits.distance[hit] / 350.0)
    rgb[hit] = rgb[hit] * (1 - fog[:, None]) + fog[:, None] * np.array([0.78, 0.82, 0.86])
    return rgb
