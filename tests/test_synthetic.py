"""The synthetic world: nuScenes format, sensor/GT consistency, determinism, argument errors."""
import hashlib
import os

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from nuscenes.utils.splits import create_splits_scenes

from datasets.make_synthetic import main as make_synthetic
from datasets.synthetic import camera, catalog as C, occupancy, raycast
from datasets.synthetic.generate import Options, build_world, generate, scene_sun, timestamp_us, token
from occ import occ3d, openocc
from occ.geometry import invert_transform, make_transform, project_to_image, transform_points


@pytest.fixture(scope="module")
def nusc(synthetic_root):
    return NuScenes("v1.0-mini", synthetic_root, verbose=False)


def sensor2global(nusc, sd):
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return make_transform(pose["rotation"], pose["translation"]) @ make_transform(calib["rotation"],
                                                                                 calib["translation"])


def load_gt(root, nusc, sample, folder="gts"):
    scene = nusc.get("scene", sample["scene_token"])["name"]
    return np.load(os.path.join(root, folder, scene, sample["token"], "labels.npz"))


def keyframe_points(root, nusc, sample):
    """(points (N, 5) LiDAR frame, Occ3D class per point from lidarseg, lidar sample_data)."""
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    points = np.fromfile(os.path.join(root, sd["filename"]), dtype=np.float32).reshape(-1, 5)
    labels = np.fromfile(os.path.join(root, nusc.get("lidarseg", sd["token"])["filename"]), dtype=np.uint8)
    assert len(labels) == len(points)
    return points, C.LIDARSEG_TO_OCC3D[labels], sd


def test_devkit_loads_and_mini_splits_apply(nusc, synthetic_options):
    names = {s["name"] for s in nusc.scene}
    splits = create_splits_scenes()
    assert names == {"scene-0061", "scene-0103"}
    assert "scene-0061" in splits["mini_train"] and "scene-0103" in splits["mini_val"]
    for scene in nusc.scene:
        samples = [nusc.get("sample", scene["first_sample_token"])]
        while samples[-1]["next"]:
            samples.append(nusc.get("sample", samples[-1]["next"]))
        assert len(samples) == scene["nbr_samples"] == synthetic_options.samples_per_scene
        for sample in samples:
            assert set(sample["data"]) == set(C.CAMERAS) | {"LIDAR_TOP"}
            for channel, sd_token in sample["data"].items():
                sd = nusc.get("sample_data", sd_token)
                assert os.path.getsize(os.path.join(nusc.dataroot, sd["filename"])) > 0
                assert nusc.get("ego_pose", sd["ego_pose_token"])["timestamp"] == sd["timestamp"]
        # LiDAR: 9 sweeps at 20 Hz between consecutive key frames.
        sd = nusc.get("sample_data", samples[-1]["data"]["LIDAR_TOP"])
        chain = [sd]
        while chain[-1]["prev"] and not (len(chain) > 1 and chain[-1]["is_key_frame"]):
            chain.append(nusc.get("sample_data", chain[-1]["prev"]))
        assert [s["is_key_frame"] for s in chain] == [True] + [False] * 9 + [True]
        assert set(np.diff([s["timestamp"] for s in chain[::-1]])) == {C.SWEEP_INTERVAL_US}
        assert all(s["filename"].startswith("sweeps/LIDAR_TOP/") for s in chain[1:-1])


def test_devkit_renders_a_sample(nusc, tmp_path):
    out = tmp_path / "sample.png"
    nusc.render_sample(nusc.sample[0]["token"], out_path=str(out), verbose=False)
    assert out.stat().st_size > 50000


def test_every_occ3d_class_appears(synthetic_root, nusc):
    seen = set()
    for sample in nusc.sample:
        seen |= set(np.unique(load_gt(synthetic_root, nusc, sample)["semantics"]).tolist())
    assert seen == set(range(18))


def test_lidar_points_fall_in_gt_voxels_of_their_class(synthetic_root, nusc):
    agree, total = 0, 0
    for sample in nusc.sample:
        points, cls, sd = keyframe_points(synthetic_root, nusc, sample)
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ego = transform_points(make_transform(calib["rotation"], calib["translation"]), points[:, :3].astype(np.float64))
        ijk = np.floor((ego - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE).astype(int)
        inside = np.all((ijk >= 0) & (ijk < occ3d.GRID_SHAPE), axis=1)
        semantics = load_gt(synthetic_root, nusc, sample)["semantics"]
        voxel_cls = semantics[ijk[inside, 0], ijk[inside, 1], ijk[inside, 2]]
        agree += int((voxel_cls == cls[inside]).sum())
        total += int(inside.sum())
    assert total > 10000
    assert agree / total >= 0.95


def test_projected_points_land_on_their_object(synthetic_root, synthetic_options, nusc):
    """LiDAR points inside a static object's box, projected with the written calibration and
    poses, hit pixels that the renderer attributes to that object."""
    hits, total = 0, 0
    for scene_index in range(synthetic_options.scenes):
        world = build_world(synthetic_options.seed, scene_index, synthetic_options.samples_per_scene)
        object_of = {token(synthetic_options.seed, "instance", scene_index, i): i for i in range(len(world.obj_cls))}
        scene = nusc.scene[[s["name"] for s in nusc.scene].index(C.MINI_SCENES[scene_index])]
        sample = nusc.get("sample", scene["first_sample_token"])
        points, _, lidar_sd = keyframe_points(synthetic_root, nusc, sample)
        lidar2global = sensor2global(nusc, lidar_sd)
        points_global = transform_points(lidar2global, points[:, :3].astype(np.float64))
        owner = np.full(len(points), -1)
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            obj = object_of[ann["instance_token"]]
            if np.any(world.obj_velocity[obj] != 0):
                continue  # cameras expose a few ms before the LiDAR: moving objects shift
            box = nusc.get_box(ann_token)
            owner[points_in_box(box, points_global.T, wlh_factor=0.98)] = obj
        for channel in C.CAMERAS:
            cam_sd = nusc.get("sample_data", sample["data"][channel])
            cam2global = sensor2global(nusc, cam_sd)
            k = np.array(nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])["camera_intrinsic"])
            t = (cam_sd["timestamp"] - timestamp_us(scene_index, 0)) / 1e6
            render = camera.render(world, t, cam2global, k, (cam_sd["width"], cam_sd["height"]),
                                   scene_sun(synthetic_options.seed, scene_index))
            uv, depth = project_to_image(transform_points(invert_transform(cam2global), points_global), k)
            px = np.floor(uv * render.scale).astype(int)
            h, w = render.instance.shape
            on_image = (owner >= 0) & (depth > 0.5) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
            seen = render.instance[px[on_image, 1], px[on_image, 0]]
            hits += int((seen == owner[on_image]).sum())
            total += int(on_image.sum())
    assert total > 200
    assert hits / total >= 0.9


def test_masks(synthetic_root, nusc):
    fractions = []
    for sample in nusc.sample:
        gt = load_gt(synthetic_root, nusc, sample)
        mask_lidar, mask_camera = gt["mask_lidar"].astype(bool), gt["mask_camera"].astype(bool)
        assert not (mask_camera & ~mask_lidar).any()
        # Voxels below the ground are never observed; the ground is.
        assert not mask_lidar[:, :, : occupancy.GROUND_LAYER].any()
        assert mask_camera[:, :, occupancy.GROUND_LAYER].mean() > 0.02
        fractions.append(mask_camera.mean())
    # Real Occ3D-nuScenes: about 15 % of the grid (98,390 of 640,000 voxels in one reported sample).
    assert 0.02 < np.mean(fractions) < 0.3


def test_flow_and_box_velocity(synthetic_root, nusc):
    moving_checked = 0
    for sample in nusc.sample:
        gt = load_gt(synthetic_root, nusc, sample, openocc.GT_DIR)
        semantics, flow = gt["semantics"], gt["flow"]
        static = np.isin(semantics, [openocc.CLASS_NAMES.index(n) for n in
                                     ("barrier", "traffic_cone", "driveable_surface", "other_flat", "sidewalk",
                                      "terrain", "manmade", "vegetation", "free")])
        assert not flow[static].any()
        ego_pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        global2ego = invert_transform(make_transform(ego_pose["rotation"], ego_pose["translation"]))
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            velocity = nusc.box_velocity(ann_token)
            centre = transform_points(global2ego, np.array([ann["translation"]]))[0]
            ijk = np.floor((centre - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE).astype(int)
            if np.isnan(velocity).any() or np.linalg.norm(velocity) < 1 or not np.all((ijk >= 0) & (ijk < 200)):
                continue
            expected = global2ego[:2, :2] @ velocity[:2]
            column = flow[ijk[0], ijk[1]]  # the voxels above the box centre
            owned = np.linalg.norm(column, axis=1) > 0
            if owned.any():
                assert np.allclose(column[owned], expected, atol=1e-3)
                moving_checked += 1
    assert moving_checked > 3


def test_annotations_count_their_points(synthetic_root, nusc):
    close = []
    for sample in nusc.sample:
        lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        cloud = LidarPointCloud.from_file(os.path.join(synthetic_root, lidar_sd["filename"]))
        _, boxes, _ = nusc.get_sample_data(lidar_sd["token"])
        for box in boxes:
            expected = nusc.get("sample_annotation", box.token)["num_lidar_pts"]
            counted = int(points_in_box(box, cloud.points[:3]).sum())
            close.append(abs(counted - expected) <= 1)  # float32 storage moves boundary points
    assert len(close) > 50 and np.mean(close) > 0.97


def test_openoccupancy_holds_the_keyframe_points(synthetic_root, nusc):
    for sample in nusc.sample:
        scene_token = sample["scene_token"]
        points, cls, sd = keyframe_points(synthetic_root, nusc, sample)
        rows = np.load(os.path.join(synthetic_root, "nuScenes-Occupancy", f"scene_{scene_token}", "occupancy",
                                    f"{sd['token']}.npy"))
        assert rows.ndim == 2 and rows.shape[1] == 4
        assert rows[:, 3].max() <= 16 and (rows[:, :3] < [40, 512, 512]).all()
        occupied = set(map(tuple, rows[:, :3].tolist()))
        ijk = np.floor((points[:, :3] - openocc.OPENOCCUPANCY_GRID_MIN) / openocc.OPENOCCUPANCY_VOXEL_SIZE).astype(int)
        inside = np.all((ijk >= 0) & (ijk < openocc.OPENOCCUPANCY_GRID_SHAPE), axis=1)
        found = [(z, y, x) in occupied for x, y, z in ijk[inside]]
        assert np.mean(found) == 1.0


def _digest(root):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def test_same_seed_is_byte_identical(tmp_path):
    digests = []
    for run, seed in enumerate([3, 3, 4]):
        root = tmp_path / f"run{run}"
        generate(Options(str(root), scenes=1, samples_per_scene=2, seed=seed, image_size=(160, 90), workers=1),
                 progress=False)
        digests.append(_digest(root))
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


@pytest.mark.parametrize("args, message", [
    (["--scenes", "0"], "--scenes"),
    (["--scenes", "11"], "--scenes"),
    (["--samples-per-scene", "0"], "--samples-per-scene"),
    (["--image-size", "wide"], "--image-size"),
    (["--image-size", "20x10"], "--image-size"),
    (["--seed", "-1"], "--seed"),
])
def test_bad_arguments_are_named(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        make_synthetic(["--out", str(tmp_path / "x")] + args)
    assert message in capsys.readouterr().err


def test_existing_dataset_is_not_overwritten(synthetic_root, capsys):
    with pytest.raises(SystemExit):
        make_synthetic(["--out", synthetic_root, "--scenes", "1"])
    assert "already exists" in capsys.readouterr().err


def _split(dirs):
    dirs = np.asarray(dirs, dtype=np.float32)
    return [dirs[:, 0], dirs[:, 1], dirs[:, 2]]


def test_ray_box_intersection_on_hand_made_rays():
    # A 4 x 2 x 2 box (half sizes 2, 1, 1) centred at (10, 0, 1), turned by 90 degrees: its long side
    # lies along y, so a ray along +x enters it at x = 10 - 1 = 9.
    centre, half, yaw = np.array([10.0, 0.0, 1.0]), np.array([2.0, 1.0, 1.0]), np.pi / 2
    origin = np.array([0.0, 0.0, 1.0])
    dirs = [[1, 0, 0],                   # straight at it: 9 m
            [-1, 0, 0],                  # away from it: miss
            [0, 1, 0],                   # parallel to a slab, outside: miss
            [0.6, 0.8, 0]]               # reaches x = 9 at y = 12 > 2: miss
    t = raycast.intersect_box(origin, _split(dirs), centre, half, yaw)
    assert t[0] == pytest.approx(9.0, abs=1e-5)
    assert np.isinf(t[1:]).all()
    # Unturned, the short side faces the ray: entry at x = 10 - 2 = 8; a ray grazing inside y = 0.9 too.
    t = raycast.intersect_box(np.array([0.0, 0.9, 1.0]), _split([[1, 0, 0]]), centre, half, 0.0)
    assert t[0] == pytest.approx(8.0, abs=1e-5)
    # A ray starting inside the box reports a miss (sensors are never inside objects).
    assert np.isinf(raycast.intersect_box(centre, _split([[1, 0, 0], [0, 0, 1]]), centre, half, yaw)).all()
    # A ray from above hits the top face: from (10, 0, 5) straight down, entry at z = 2, 3 m away.
    t = raycast.intersect_box(np.array([10.0, 0.0, 5.0]), _split([[0, 0, -1]]), centre, half, yaw)
    assert t[0] == pytest.approx(3.0, abs=1e-5)
