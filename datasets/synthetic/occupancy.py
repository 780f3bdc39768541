"""Ground truth grids of one key frame: Occ3D semantics + masks, OpenOcc flow, OpenOccupancy.

Occ3D grid (docs/data.md#occ3d-nuscenes-ground-truth): ego frame of the key frame, x, y in [-40, 40], z in [-1, 5.4], 0.4 m,
[x, y, z] indexing. A voxel takes the class of every part box that overlaps it (exact separating
axis test of the yaw-only box footprint against the voxel square, and z-interval overlap); the
ground plane z = 0 fills the layer [-0.2, 0.2] with the ground class at the voxel centre. Boxes
are grown by MARGIN (3 cm) for this test. Small
objects are drawn last, so they win over large ones and over the ground.
mask_lidar: voxels traversed by, or holding the end of, the rays of the key frame's LiDAR scan and
the 9 sweeps before it (tested per voxel against each scan's range image).
mask_camera: voxels not hidden from at least one of the 6 cameras (voxel centre no farther than
the rendered surface at its pixel), and observed by the LiDAR (so mask_camera <= mask_lidar, as in
Occ3D where camera visibility is computed on the LiDAR-observed grid).
flow: (vx, vy) m/s in the ego frame of the object a voxel belongs to, zero for static voxels.
OpenOccupancy: 0.2 m voxels of the LiDAR frame (range [-51.2, 51.2]^2 x [-5, 3]) holding points of
the key frame and its 9 previous sweeps (points on moving objects are carried along with their
object to the key frame's time), as sparse rows [z, y, x, cls]: cls 1..16 = Occ3D classes
barrier..vegetation, 0 = "others" (noise, ignored by the OpenOccupancy loader).
"""
import numpy as np

from datasets.synthetic import catalog as C
from occ import occ3d, openocc

GROUND_LAYER = 2  # z in [-0.2, 0.2]
EPS = 1e-4
MARGIN = 0.03  # boxes grow by ~2.5 sigma of the LiDAR range noise, so returns on faces that lie
               # close to a voxel boundary still land in an occupied voxel


def voxel_centres_xy():
    """(200, 200, 2) ego-frame x, y of voxel centres."""
    axis = np.arange(occ3d.GRID_SHAPE[0]) * occ3d.VOXEL_SIZE + occ3d.VOXEL_SIZE / 2 + occ3d.GRID_MIN[0]
    gx, gy = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([gx, gy], -1)


def semantics_and_instances(world, parts, ego2global):
    """Occ3D semantics (200, 200, 16) uint8 and object index per voxel (-1 none), ego frame.

    parts: world.Parts at the key frame's time (global frame).
    """
    semantics = np.full(occ3d.GRID_SHAPE, occ3d.FREE, dtype=np.uint8)
    instance = np.full(occ3d.GRID_SHAPE, -1, dtype=np.int64)
    centres = voxel_centres_xy()
    centres_global = centres @ ego2global[:2, :2].T + ego2global[:2, 3]
    semantics[:, :, GROUND_LAYER] = world.ground_class(centres_global)

    global2ego = np.linalg.inv(ego2global)
    centre = parts.centre @ global2ego[:3, :3].T + global2ego[:3, 3]
    yaw = parts.yaw - np.arctan2(ego2global[1, 0], ego2global[0, 0])
    volume = np.prod(parts.half, axis=1)
    stuff = np.isin(parts.cls, [C.MANMADE, C.VEGETATION])
    order = np.lexsort((-volume, ~stuff))  # stuff first, then things from large to small
    for p in order:
        c, s = abs(np.cos(yaw[p])), abs(np.sin(yaw[p]))
        hl, hw, hz = parts.half[p] + MARGIN
        ext_x, ext_y = hl * c + hw * s, hl * s + hw * c
        i0, i1 = _index_range(centre[p, 0] - ext_x, centre[p, 0] + ext_x, 0)
        j0, j1 = _index_range(centre[p, 1] - ext_y, centre[p, 1] + ext_y, 1)
        k0, k1 = _index_range(centre[p, 2] - hz, centre[p, 2] + hz, 2)
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        dx = centres[i0:i1, j0:j1, 0] - centre[p, 0]
        dy = centres[i0:i1, j0:j1, 1] - centre[p, 1]
        cs, sn = np.cos(yaw[p]), np.sin(yaw[p])
        pad = occ3d.VOXEL_SIZE / 2 * (c + s)
        overlap = (np.abs(dx * cs + dy * sn) < hl + pad - EPS) & (np.abs(-dx * sn + dy * cs) < hw + pad - EPS)
        block = semantics[i0:i1, j0:j1, k0:k1]
        block[overlap] = parts.cls[p]
        instance[i0:i1, j0:j1, k0:k1][overlap] = parts.instance[p]
    return semantics, instance


def _index_range(lo, hi, axis):
    """Voxel indices [first, last+1) whose cell overlaps the open interval (lo, hi) on `axis`."""
    first = int(np.floor((lo - occ3d.GRID_MIN[axis]) / occ3d.VOXEL_SIZE + EPS))
    last = int(np.ceil((hi - occ3d.GRID_MIN[axis]) / occ3d.VOXEL_SIZE - EPS))
    return max(first, 0), min(last, occ3d.GRID_SHAPE[axis])


def flow_grid(world, instance, ego2global):
    """(200, 200, 16, 2) float32 vx, vy (ego frame, m/s) of the object each voxel belongs to."""
    velocity = world.obj_velocity[:, :2] @ ego2global[:2, :2]  # global -> ego rotation (R^T v)
    flow = np.zeros(occ3d.GRID_SHAPE + (2,), dtype=np.float32)
    owned = instance >= 0
    flow[owned] = velocity[instance[owned]]
    return flow


def voxel_centres():
    """(200*200*16, 3) ego-frame voxel centres, flattened in [x, y, z] order."""
    voxel = occ3d.VOXEL_SIZE
    axes = [np.arange(n) * voxel + voxel / 2 + occ3d.GRID_MIN[i] for i, n in enumerate(occ3d.GRID_SHAPE)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)


def lidar_mask(scans, hits):
    """mask_lidar (200, 200, 16) uint8: voxels a LiDAR ray passes through or ends in.

    scans: list of (ego2lidar 4x4, range image (32, A) with inf where no return, first azimuth);
    hits: (N, 3) ego-frame returns of all scans. A voxel is traversed by a scan when its centre,
    seen from the sensor, lies within the voxel's angular radius of the nearest beam and no farther
    than that ray's return; the voxels holding a return are observed too.
    """
    centres = voxel_centres()
    observed = np.zeros(len(centres), dtype=bool)
    elevations = np.radians(C.LIDAR_ELEVATIONS_DEG)
    beam_step = elevations[1] - elevations[0]
    az_step = 2 * np.pi / C.LIDAR_AZIMUTH_STEPS
    for ego2lidar, ranges, first_azimuth in scans:
        p = centres @ ego2lidar[:3, :3].T.astype(np.float32) + ego2lidar[:3, 3].astype(np.float32)
        horizontal = np.hypot(p[:, 0], p[:, 1])
        distance = np.hypot(horizontal, p[:, 2])
        elevation = np.arctan2(p[:, 2], horizontal)
        beam = np.rint((elevation - elevations[0]) / beam_step).astype(np.int64)
        in_fan = (beam >= 0) & (beam < 32)
        beam = np.clip(beam, 0, 31)
        angular_radius = np.arctan2(occ3d.VOXEL_SIZE / 2, distance)
        near_beam = np.abs(elevation - elevations[beam]) < angular_radius
        column = np.rint((np.arctan2(p[:, 1], p[:, 0]) - first_azimuth) / az_step).astype(np.int64) % ranges.shape[1]
        ray_range = ranges[beam, column]
        observed |= in_fan & near_beam & np.isfinite(ray_range) & (distance <= ray_range)
    ijk = np.floor((hits - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE).astype(np.int64)
    ijk = ijk[np.all((ijk >= 0) & (ijk < occ3d.GRID_SHAPE), axis=1)]
    observed[(ijk[:, 0] * occ3d.GRID_SHAPE[1] + ijk[:, 1]) * occ3d.GRID_SHAPE[2] + ijk[:, 2]] = True
    return observed.reshape(occ3d.GRID_SHAPE).astype(np.uint8)


def camera_mask(cameras, mask_lidar):
    """mask_camera (200, 200, 16) uint8: LiDAR-observed voxels not hidden from some camera.

    cameras: list of (ego2cam 4x4, intrinsics 3x3 for the depth image, depth (h, w) distance along
    the pixel ray, inf = sky). A voxel is visible when its centre projects into the image in front
    of the camera and is no farther than the surface seen at that pixel + the half diagonal.
    """
    centres = voxel_centres()
    visible = np.zeros(len(centres), dtype=bool)
    half_diagonal = occ3d.VOXEL_SIZE * np.sqrt(3) / 2
    for ego2cam, intrinsics, depth in cameras:
        p = centres @ ego2cam[:3, :3].T.astype(np.float32) + ego2cam[:3, 3].astype(np.float32)
        front = p[:, 2] > 0.1
        z = np.where(front, p[:, 2], 1.0)
        u = np.floor((intrinsics[0, 0] * p[:, 0] + intrinsics[0, 2] * p[:, 2]) / z).astype(np.int64)
        v = np.floor((intrinsics[1, 1] * p[:, 1] + intrinsics[1, 2] * p[:, 2]) / z).astype(np.int64)
        h, w = depth.shape
        inside = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        surface = depth[np.clip(v, 0, h - 1), np.clip(u, 0, w - 1)]
        visible |= inside & (np.linalg.norm(p, axis=1) <= surface + half_diagonal)
    return visible.reshape(occ3d.GRID_SHAPE).astype(np.uint8) & mask_lidar


def openoccupancy_rows(points_lidar, cls):
    """Sparse OpenOccupancy rows (M, 4) uint16 [z, y, x, cls] from LiDAR-frame points and classes."""
    shape = openocc.OPENOCCUPANCY_GRID_SHAPE
    ijk = np.floor((points_lidar - openocc.OPENOCCUPANCY_GRID_MIN) / openocc.OPENOCCUPANCY_VOXEL_SIZE).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
    ijk, label = ijk[inside], cls[inside]
    label = np.where(label == C.OTHERS, 0, label)  # Occ3D 1..16 are OpenOccupancy 1..16; others -> noise
    flat = (ijk[:, 2] * shape[1] + ijk[:, 1]) * shape[0] + ijk[:, 0]
    flat, first = np.unique(flat, return_index=True)
    return np.stack([ijk[first, 2], ijk[first, 1], ijk[first, 0], label[first]], 1).astype(np.uint16)
