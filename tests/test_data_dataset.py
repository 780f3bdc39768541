"""NuScenesOccDataset on the real samples in ../shared/nuscenes-real (read in place)."""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from scipy.ndimage import minimum_filter
from scipy.spatial import cKDTree

from datasets import prepare_nuscenes
from datasets.nuscenes_occ import NuScenesOccDataset, collate, load_infos
from datasets.occbev_targets import voxel_indices

REAL_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "nuscenes-real")
VERSION = "v1.0-trainval"
SRC_H, SRC_W = 900, 1600
pytestmark = pytest.mark.skipif(not os.path.isdir(REAL_ROOT), reason="../shared/nuscenes-real not present")


@pytest.fixture(scope="module")
def info_paths(tmp_path_factory):
    return prepare_nuscenes.prepare(REAL_ROOT, VERSION, out_dir=str(tmp_path_factory.mktemp("infos")))


@pytest.fixture(scope="module")
def camera_info_path(info_paths, tmp_path_factory):
    """An info file with the two real key frames that have cameras (scene-0061, scene-0003)."""
    infos = [i for path in info_paths.values() for i in load_infos(path) if i["cams"]]
    assert len(infos) == 2
    path = tmp_path_factory.mktemp("camera_infos") / "occ_infos_cameras.pkl"
    with open(path, "wb") as f:
        pickle.dump({"version": VERSION, "split": "cameras", "infos": infos}, f)
    return str(path)


@pytest.fixture(scope="module")
def explorer():
    from nuscenes.nuscenes import NuScenes, NuScenesExplorer
    return NuScenesExplorer(NuScenes(version=VERSION, dataroot=REAL_ROOT, verbose=False))


def devkit_projection(explorer, info, cam):
    """The devkit's projected key-frame points of one camera: u, v (source pixels), depth. The
    devkit keeps depth > 1 m and 1 < u < W-1, 1 < v < H-1; we keep depth < 45 m on top."""
    points, depth, _ = explorer.map_pointcloud_to_image(info["lidar_token"], cam["sample_data_token"])
    keep = depth < 45.0
    return points[0, keep], points[1, keep], depth[keep]


def nearest_within_one_pixel(depth_map):
    """Per pixel, the smallest depth in its 3x3 neighbourhood (inf where there is none)."""
    return minimum_filter(np.where(depth_map > 0, depth_map, np.inf), size=3, mode="constant", cval=np.inf)


def test_depth_maps_match_the_devkit(camera_info_path, explorer):
    """No augmentation, input = source size: every depth pixel comes from a devkit point within
    1 px at the same depth (1 cm), and every devkit point has a depth no farther than its own
    within 1 px.
    Exact pixel agreement is not expected: the devkit rounds to float32 after every transform step
    in global coordinates (~1e-4 m), which moves points lying on a pixel border to the next pixel."""
    dataset = NuScenesOccDataset(REAL_ROOT, camera_info_path, train=False, image_size=(SRC_H, SRC_W),
                                 num_sweeps=0, load_images=False, load_gt=False)
    for index, info in enumerate(dataset.infos):
        sample = dataset[index]
        assert sample["depth_maps"].shape == (6, SRC_H, SRC_W)
        np.testing.assert_allclose(sample["post_rot"].numpy(), np.broadcast_to(np.eye(3), (6, 3, 3)))
        np.testing.assert_allclose(sample["post_tran"].numpy(), 0.0)
        for n, cam in enumerate(info["cams"].values()):
            u, v, depth = devkit_projection(explorer, info, cam)
            ours = sample["depth_maps"][n].numpy()
            # the devkit's border: compare pixels whose whole 1-px neighbourhood it covers
            inner = np.zeros_like(ours, dtype=bool)
            inner[2:-2, 2:-2] = True
            rows, cols = np.nonzero((ours > 0) & inner)
            tree = cKDTree(np.stack([u, v], axis=1))
            neighbours = tree.query_ball_point(np.stack([cols, rows], axis=1), r=1.0, p=np.inf)
            for row, col, near in zip(rows, cols, neighbours):
                assert near and np.abs(depth[near] - ours[row, col]).min() < 0.01, (cam["path"], row, col)
            point_cols, point_rows = np.floor(u + 0.5).astype(int), np.floor(v + 0.5).astype(int)
            assert (nearest_within_one_pixel(ours)[point_rows, point_cols] <= depth + 0.01).all(), cam["path"]
            # and the nearest point per pixel matches the devkit's almost everywhere
            reference = np.zeros_like(ours)
            order = np.argsort(-depth)
            reference[point_rows[order], point_cols[order]] = depth[order]
            same = np.abs(reference - ours)[inner] < 0.01
            assert same.mean() > 0.999 and len(rows) > 2000


def test_augmented_depth_maps_undo_to_the_devkit_pixels(camera_info_path, explorer):
    dataset = NuScenesOccDataset(REAL_ROOT, camera_info_path, train=True, num_sweeps=0,
                                 load_images=False, load_gt=False)
    flips = 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index, info in enumerate(dataset.infos):
            sample = dataset[index]
            assert sample["depth_maps"].shape == (6, 256, 704)
            for n, cam in enumerate(info["cams"].values()):
                post_rot = sample["post_rot"][n].double().numpy()
                post_tran = sample["post_tran"][n].double().numpy()
                resize = np.sqrt(abs(np.linalg.det(post_rot[:2, :2])))
                flips += np.linalg.det(post_rot[:2, :2]) < 0
                u, v, depth = devkit_projection(explorer, info, cam)
                ours = sample["depth_maps"][n].numpy()
                rows, cols = np.nonzero(ours)
                # undo the augmentation: input pixel -> source pixel
                src = np.linalg.solve(post_rot[:2, :2], np.stack([cols, rows]) - post_tran[:2, None]).T
                seen = (src[:, 0] > 2) & (src[:, 0] < SRC_W - 3) & (src[:, 1] > 2) & (src[:, 1] < SRC_H - 3)
                tree = cKDTree(np.stack([u, v], axis=1))
                # one input pixel spans 1 / resize source pixels
                neighbours = tree.query_ball_point(src[seen], r=1.0 / resize, p=np.inf)
                for row, col, near in zip(rows[seen], cols[seen], neighbours):
                    assert near and np.abs(depth[near] - ours[row, col]).min() < 0.01
                assert seen.sum() > 500
                # every devkit point inside the input image is covered, never by a farther depth
                aug = np.stack([u, v], axis=1) @ post_rot[:2, :2].T + post_tran[:2]
                point_cols, point_rows = np.floor(aug[:, 0] + 0.5).astype(int), np.floor(aug[:, 1] + 0.5).astype(int)
                inside = (point_cols >= 0) & (point_cols < 704) & (point_rows >= 0) & (point_rows < 256)
                # a point within 0.01 px of the image border may round to just outside it in float32
                inside &= (np.abs(aug[:, 0] - [[-0.5], [703.5]]) > 0.01).all(axis=0)
                inside &= (np.abs(aug[:, 1] - [[-0.5], [255.5]]) > 0.01).all(axis=0)
                at_points = nearest_within_one_pixel(ours)[point_rows[inside], point_cols[inside]]
                assert (at_points <= depth[inside] + 0.01).all()
    assert 0 < flips < 36


def test_sample_layout_and_test_mode_is_deterministic(camera_info_path):
    dataset = NuScenesOccDataset(REAL_ROOT, camera_info_path, train=False, load_gt=False)
    first, second = dataset[0], dataset[0]
    for key in ["images", "cam2ego", "intrinsics", "post_rot", "post_tran", "bda", "points", "depth_maps"]:
        assert torch.equal(first[key], second[key]), key
    assert first["images"].shape == (6, 3, 256, 704) and first["images"].dtype == torch.float32
    assert first["points"].shape[1] == 5 and (first["points"][:, 4] == 0).all()
    np.testing.assert_allclose(first["bda"].numpy(), np.eye(4))
    # test mode: resize 704 / 1600, bottom crop of 256 rows, no flip or rotation
    post_rot, post_tran = first["post_rot"][0].numpy(), first["post_tran"][0].numpy()
    np.testing.assert_allclose(post_rot[:2, :2], np.eye(2) * 0.44, rtol=1e-6)
    np.testing.assert_allclose(post_tran[:2], [0.0, 256 - 900 * 0.44], atol=1e-4)
    # normalised RGB: a real street image has mean close to 0 after ImageNet normalisation
    assert abs(float(first["images"].mean())) < 1.0
    batch = collate([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 6, 3, 256, 704) and batch["bda"].shape == (2, 4, 4)
    assert isinstance(batch["points"], list) and len(batch["points"]) == 2
    assert batch["points"][0].shape != batch["points"][1].shape
    assert batch["sample_token"] == [i["token"] for i in dataset.infos]


def test_cam2ego_goes_to_the_key_frame_ego(camera_info_path):
    """cam2ego of the batch maps into the LiDAR key-frame ego frame: it composes the camera's own
    ego pose with the key frame's (they differ by the ego motion between the two timestamps)."""
    dataset = NuScenesOccDataset(REAL_ROOT, camera_info_path, train=False, load_images=False,
                                 load_depth=True, load_gt=False)
    info = dataset.infos[0]
    sample = dataset[0]
    for n, cam in enumerate(info["cams"].values()):
        global_from_cam = cam["ego2global"] @ cam["cam2ego"]
        global_from_batch = info["ego2global"] @ sample["cam2ego"][n].double().numpy()
        np.testing.assert_allclose(global_from_batch, global_from_cam, atol=1e-3)


def test_lidar_only_records(info_paths):
    train = NuScenesOccDataset(REAL_ROOT, info_paths["train"], train=True, num_sweeps=9,
                               load_images=False, load_depth=False, load_gt=False)
    last = [i for i, info in enumerate(train.infos) if info["scene_name"] == "scene-0006"][-1]
    sample = train[last]
    assert "images" not in sample and "cam2ego" not in sample
    lags = torch.unique(sample["points"][:, 4])
    assert len(lags) == 10 and lags[0] == 0  # key frame + 9 of the 10 stored sweeps
    first = train[0]  # scene start: no sweeps stored, not an error
    assert torch.unique(first["points"][:, 4]).tolist() == [0.0]
    with_cameras = NuScenesOccDataset(REAL_ROOT, info_paths["train"], train=False, load_gt=False)
    with pytest.raises(ValueError, match="has no cameras"):
        with_cameras[0]


def test_nearest_sweeps_in_test_mode(info_paths):
    dataset = NuScenesOccDataset(REAL_ROOT, info_paths["train"], train=False, num_sweeps=3,
                                 load_images=False, load_depth=False, load_gt=False)
    index = [i for i, info in enumerate(dataset.infos) if info["scene_name"] == "scene-0006"][-1]
    lags = torch.unique(dataset[index]["points"][:, 4]).tolist()
    expected = [0.0] + [s["time_lag"] for s in dataset.infos[index]["sweeps"][:3]]
    np.testing.assert_allclose(lags, sorted(expected), atol=1e-6)
    # sweeps drop the ego body in their own frame; the key frame keeps every point
    assert len(dataset[index]["points"]) < sum(
        os.path.getsize(os.path.join(REAL_ROOT, p)) // 20
        for p in [dataset.infos[index]["lidar_path"]] + [s["path"] for s in dataset.infos[index]["sweeps"][:3]])


# ------------------------------------------------------------------------------------ bad input
def corrupt_copy(tmp_path, camera_info_path, relative_path, content):
    """A data root of symlinks to the real files where `relative_path` is replaced by `content`
    (None = deleted); returns the dataset over it."""
    for info in load_infos(camera_info_path):
        paths = [info["lidar_path"]] + [c["path"] for c in info["cams"].values()]
        for path in paths:
            os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
            if path != relative_path:
                os.symlink(os.path.join(os.path.abspath(REAL_ROOT), path), tmp_path / path)
            elif content is not None:
                (tmp_path / path).write_bytes(content)
    return str(tmp_path)


def real_bytes(relative_path):
    with open(os.path.join(REAL_ROOT, relative_path), "rb") as f:
        return f.read()


def bad_cases(info):
    image = info["cams"]["CAM_BACK"]["path"]
    lidar = info["lidar_path"]
    points = np.fromfile(os.path.join(REAL_ROOT, lidar), dtype=np.float32).reshape(-1, 5)
    points[7, 1] = np.nan
    return {
        "missing image": (image, None, FileNotFoundError),
        "truncated jpeg": (image, real_bytes(image)[:40000], ValueError),
        "bad point size": (lidar, real_bytes(lidar)[:-8], ValueError),
        "nan point": (lidar, points.tobytes(), ValueError),
        "missing point cloud": (lidar, None, FileNotFoundError),
    }


@pytest.mark.parametrize("case", ["missing image", "truncated jpeg", "bad point size", "nan point",
                                  "missing point cloud"])
def test_bad_input_names_the_file(case, camera_info_path, tmp_path):
    info = load_infos(camera_info_path)[0]
    path, content, error = bad_cases(info)[case]
    root = corrupt_copy(tmp_path, camera_info_path, path, content)
    dataset = NuScenesOccDataset(root, camera_info_path, train=False, load_gt=False)
    with pytest.raises(error, match=os.path.basename(path).replace("+", r"\+")):
        dataset[0]
    assert dataset[1]["sample_token"] == dataset.infos[1]["token"]  # the other sample is fine


def test_missing_gt_names_the_file(camera_info_path):
    dataset = NuScenesOccDataset(REAL_ROOT, camera_info_path, train=False, load_images=False, load_depth=False)
    expected = os.path.join("gts", "scene-0061", dataset.infos[0]["token"], "labels.npz")
    with pytest.raises(FileNotFoundError, match=expected):
        dataset[0]


def test_skip_bad_samples_logs_and_counts(camera_info_path, tmp_path, caplog):
    info = load_infos(camera_info_path)[0]
    path, content, _ = bad_cases(info)["truncated jpeg"]
    root = corrupt_copy(tmp_path, camera_info_path, path, content)
    dataset = NuScenesOccDataset(root, camera_info_path, train=True, load_gt=False, skip_bad_samples=True)
    with caplog.at_level(logging.WARNING):
        samples = [dataset[0], dataset[0], dataset[1]]
    assert [s["sample_token"] for s in samples] == [dataset.infos[1]["token"]] * 3
    assert dataset.num_skipped == 2
    skipped = [r for r in caplog.records if os.path.basename(path) in r.getMessage()]
    assert len(skipped) == 2


def test_bev_flip_moves_points_gt_and_flow_together(info_paths, tmp_path):
    """Train mode with BEV flips on a LiDAR-only real sample and a made-up GT whose label is a code
    of the un-augmented voxel index and whose flow is the voxel centre (x, y): after augmentation the
    GT voxel under every augmented point holds the code of the voxel under the un-augmented point,
    and the flow equals the AUGMENTED voxel centre (a flipped velocity component changes sign)."""
    info = load_infos(info_paths["train"])[5]
    for path in [info["lidar_path"]] + [s["path"] for s in info["sweeps"]]:
        os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
        os.symlink(os.path.join(os.path.abspath(REAL_ROOT), path), tmp_path / path)
    x, y, z = np.meshgrid(np.arange(200), np.arange(200), np.arange(16), indexing="ij")
    code = (x * 7 + y * 3 + z) % 17
    centre = np.stack([x * 0.4 - 39.8, y * 0.4 - 39.8], axis=-1).astype(np.float32)
    gt_dir = tmp_path / "gts" / info["scene_name"] / info["token"]
    os.makedirs(gt_dir)
    np.savez_compressed(gt_dir / "labels.npz", semantics=code.astype(np.uint8), flow=centre,
                        mask_camera=(x < 100).astype(np.uint8), mask_lidar=(y < 50).astype(np.uint8))
    info_path = tmp_path / "one.pkl"
    with open(info_path, "wb") as f:
        pickle.dump({"version": VERSION, "split": "one", "infos": [info]}, f)
    dataset = NuScenesOccDataset(str(tmp_path), str(info_path), train=True, load_images=False, load_depth=False)
    seen = set()
    for epoch in range(12):  # the augmentation depends on (seed, epoch, index) only
        dataset.set_epoch(epoch)
        sample = dataset[0]
        bda = sample["bda"].double().numpy()
        seen.add((bda[0, 0], bda[1, 1]))
        points = sample["points"][:, :3].double().numpy()
        original = points @ bda[:3, :3]  # bda is its own inverse (flips)
        inside = (np.abs(points[:, :2]) < 39.9).all(axis=1) & (points[:, 2] > -0.9) & (points[:, 2] < 5.3)
        # a point exactly on a voxel face (x = 20.0) is not mirrored by floor(): leave those out
        offset = (points - [-40, -40, -1]) / 0.4
        inside &= (np.abs(offset - np.round(offset)) > 1e-4).all(axis=1)
        index = np.floor((points[inside] - [-40, -40, -1]) / 0.4).astype(int)
        original_index = np.floor((original[inside] - [-40, -40, -1]) / 0.4).astype(int)
        semantics = sample["semantics"].numpy()
        assert np.array_equal(semantics[tuple(index.T)], code[tuple(original_index.T)])
        np.testing.assert_allclose(sample["flow"].numpy()[tuple(index.T)], centre[tuple(index.T)], atol=1e-5)
        assert sample["mask_camera"].dtype == torch.bool
        assert np.array_equal(sample["mask_camera"].numpy()[tuple(index.T)], original_index[:, 0] < 100)
        assert len(index) > 10000
    assert len(seen) == 4  # all four flip combinations were drawn


# ------------------------------------------------------------------------------- synthetic world
@pytest.fixture(scope="module")
def synthetic_infos(synthetic_root, tmp_path_factory):
    return prepare_nuscenes.prepare(synthetic_root, "v1.0-mini", out_dir=str(tmp_path_factory.mktemp("synthetic_infos")))


def test_synthetic_infos(synthetic_infos):
    assert sorted(synthetic_infos) == ["mini_train", "mini_val"]
    infos = load_infos(synthetic_infos["mini_train"])
    assert [len(i["sweeps"]) for i in infos] == [0, 10, 10]  # 9 sweeps between key frames + the previous key frame
    for info in infos:
        assert len(info["cams"]) == 6 and info["occ_path"] == f"gts/{info['scene_name']}/{info['token']}/labels.npz"
        lags = [s["time_lag"] for s in info["sweeps"]]
        assert lags == sorted(lags)


@pytest.mark.parametrize("occ_gt_dir,free", [("gts", 17), ("openocc_v2", 16)])
def test_synthetic_points_sit_in_occupied_gt_voxels(synthetic_root, synthetic_infos, occ_gt_dir, free):
    """The LiDAR points and the GT grid share the key-frame ego frame, under every BEV flip: the
    key-frame points fall into voxels the GT marks occupied and LiDAR-observed."""
    dataset = NuScenesOccDataset(synthetic_root, synthetic_infos["mini_train"], train=True, num_sweeps=0,
                                 load_images=False, load_depth=False, occ_gt_dir=occ_gt_dir)
    flips = set()
    for step in range(8):
        dataset.set_epoch(step)
        sample = dataset[step % len(dataset)]
        flips.add(tuple(sample["bda"].diagonal()[:2].tolist()))
        index = voxel_indices(sample["points"].numpy())
        assert len(index) > 5000
        assert (sample["semantics"].numpy()[tuple(index.T)] != free).mean() > 0.99
        assert sample["mask_lidar"].numpy()[tuple(index.T)].mean() > 0.99
        assert ("flow" in sample) == (occ_gt_dir == "openocc_v2")
    assert len(flips) > 1


def test_synthetic_batch_with_any_image_size(synthetic_root, synthetic_infos):
    """400x225 source images (not 1600x900), a custom input size, sweeps, GT, collate."""
    dataset = NuScenesOccDataset(synthetic_root, synthetic_infos["mini_val"], train=True, image_size=(128, 352))
    batch = collate([dataset[1], dataset[2]])
    assert batch["images"].shape == (2, 6, 3, 128, 352)
    assert batch["depth_maps"].shape == (2, 6, 128, 352)
    assert batch["semantics"].shape == (2, 200, 200, 16) and batch["semantics"].dtype == torch.int64
    assert batch["mask_camera"].dtype == torch.bool and batch["bda"].shape == (2, 4, 4)
    assert all(p.shape[1] == 5 and len(torch.unique(p[:, 4])) == 10 for p in batch["points"])
    depth = batch["depth_maps"]
    assert (depth > 0).any(dim=(2, 3)).all() and depth.max() < 45 and depth[depth > 0].min() >= 1
    test_mode = NuScenesOccDataset(synthetic_root, synthetic_infos["mini_val"], train=False, image_size=(128, 352))
    resize = test_mode[0]["post_rot"][:, 0, 0]
    np.testing.assert_allclose(resize.numpy(), 352 / 400)


def lift_depth_pixels(view_transformer, sample, bda):
    """The depth-map pixels of every camera of `sample`, lifted to 3-D by the view transformer's own
    camera chain (frustum_to_ego) at their LiDAR depth: (K, 3) points in the augmented ego frame."""
    lifted = []
    for cam in range(sample["depth_maps"].shape[0]):
        v, u = torch.nonzero(sample["depth_maps"][cam] > 0, as_tuple=True)
        depth = sample["depth_maps"][cam, v, u]
        view_transformer.frustum = torch.stack([u.float(), v.float(), depth], dim=-1).view(1, -1, 1, 3)
        geometry = [sample[key][None, cam:cam + 1] for key in ("cam2ego", "intrinsics", "post_rot", "post_tran")]
        lifted.append(view_transformer.frustum_to_ego(*geometry, bda[None]).reshape(-1, 3))
    return torch.cat(lifted)


def fraction_in_occupied_voxels(points, semantics, free=17):
    index = voxel_indices(points.numpy())
    assert len(index) > 1000
    return float((semantics.numpy()[tuple(index.T)] != free).mean())


def test_lifted_depth_pixels_sit_in_occupied_gt_voxels(synthetic_root, synthetic_infos):
    """The camera chain of the view transformer (image augmentation undone, intrinsics, cam2ego,
    then bda) agrees with the GT grid under random image and BEV augmentation: the depth-map pixels,
    lifted at their LiDAR depth, fall into occupied GT voxels; without the sample's bda they do not.
    (What makes a camera-only model learnable: its BEV features land where the labels are.)"""
    from occ.models.view_transform import LSSViewTransformer
    view_transformer = LSSViewTransformer(8, 1, (128, 352), 16, (1.0, 45.0, 0.5), (-40, -40, -1, 40, 40, 5.4), 0.4,
                                          use_lidar_depth=False)
    # key-frame points only: sweep points of moving objects are not where the key-frame GT has them
    dataset = NuScenesOccDataset(synthetic_root, synthetic_infos["mini_train"], train=True, image_size=(128, 352),
                                 num_sweeps=0)
    flipped = []
    for step in range(8):
        dataset.set_epoch(step)
        sample = dataset[step % len(dataset)]
        assert not torch.equal(sample["post_rot"][0], sample["post_rot"][1])  # augmented per camera
        right = fraction_in_occupied_voxels(lift_depth_pixels(view_transformer, sample, sample["bda"]),
                                            sample["semantics"])
        assert right > 0.99
        if not torch.equal(sample["bda"], torch.eye(4)):
            wrong = fraction_in_occupied_voxels(lift_depth_pixels(view_transformer, sample, torch.eye(4)),
                                                sample["semantics"])
            flipped.append((right, wrong))
    assert flipped and all(wrong < right - 0.1 for right, wrong in flipped)
