"""A picture of one written sample: the 6 cameras with the key-frame LiDAR projected on them, and a
bird's-eye view of the Occ3D ground truth (top-most occupied class per column, camera mask dimmed).
It reads the files back through nuscenes-devkit, so it also checks what was written."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from occ import occ3d  # noqa: E402
from occ.geometry import invert_transform, make_transform, project_to_image, transform_points  # noqa: E402
from occ.visualize import top_labels  # noqa: E402


def write_preview(root, path, sample_index=0, version="v1.0-mini"):
    from nuscenes.nuscenes import NuScenes
    nusc = NuScenes(version, root, verbose=False)
    sample = nusc.sample[sample_index]
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    points = np.fromfile(os.path.join(root, lidar_sd["filename"]), dtype=np.float32).reshape(-1, 5)
    lidar2global = _pose(nusc, lidar_sd)
    fig, axes = plt.subplots(3, 3, figsize=(15, 7.5), gridspec_kw={"width_ratios": [1, 1, 1]})
    layout = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]
    for ax, channel in zip(axes[:2].ravel(), layout):
        cam_sd = nusc.get("sample_data", sample["data"][channel])
        image = Image.open(os.path.join(root, cam_sd["filename"]))
        calib = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
        lidar2cam = invert_transform(_pose(nusc, cam_sd)) @ lidar2global
        cam_points = transform_points(lidar2cam, points[:, :3].astype(np.float64))
        uv, depth = project_to_image(cam_points, np.array(calib["camera_intrinsic"]))
        show = (depth > 1) & (uv[:, 0] >= 0) & (uv[:, 0] < image.width) & (uv[:, 1] >= 0) & (uv[:, 1] < image.height)
        ax.imshow(image)
        ax.scatter(uv[show, 0], uv[show, 1], c=np.minimum(depth[show], 50), cmap="jet", s=0.4)
        ax.set_title(channel, fontsize=9)
        ax.axis("off")
    gt = np.load(occ3d.gt_path(root, nusc.get("scene", sample["scene_token"])["name"], sample["token"]))
    semantics, mask_camera = gt["semantics"], gt["mask_camera"].astype(bool)
    bev = occ3d.PALETTE[top_labels(semantics)].astype(np.float32)
    bev[~mask_camera.any(2)] *= 0.35
    for ax in axes[2]:
        ax.axis("off")
    ax = axes[2, 1]
    ax.imshow(np.transpose(bev, (1, 0, 2))[::-1].astype(np.uint8), extent=[-40, 40, -40, 40])
    ax.set_title("Occ3D GT, bird's-eye view (x right, y up; dim = outside mask_camera)", fontsize=9)
    ax.axis("on")
    handles = [plt.Rectangle((0, 0), 1, 1, color=occ3d.PALETTE[c] / 255) for c in range(occ3d.FREE)]
    axes[2, 2].legend(handles, occ3d.CLASS_NAMES[:occ3d.FREE], loc="center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _pose(nusc, sample_data):
    """sensor2global 4x4 of one sample_data."""
    calib = nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sample_data["ego_pose_token"])
    return make_transform(pose["rotation"], pose["translation"]) @ make_transform(calib["rotation"],
                                                                                 calib["translation"])
