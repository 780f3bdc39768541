"""tools/render_video.py and occ/video.py: the MP4 (one frame per key frame, in time order, at the
requested size, decodable by PyAV), voxels projected onto the right pixels of a hand-made camera,
nearest voxels in front, GT-only / --pred-dir / --ckpt sources, and the errors a user can cause."""
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from datasets import prepare_nuscenes
from datasets.nuscenes_occ import load_info_file, load_infos, load_occ_gt
from occ import occ3d
from occ.checkpoint import save_checkpoint
from occ.config import get_config
from occ.ema import EMA
from occ.errors import UsageError
from occ.models import build_model
from occ.video import hollowed, overlay_voxels, project_to_camera, scene_frame
from occ.visualize import voxel_render
from tools import render_video

REPO = Path(__file__).resolve().parents[1]
VAL_SCENE = "scene-0103"  # the mini_val scene of the small synthetic world (scene-0061 is in mini_train)
CAR, BUS = occ3d.CLASS_NAMES.index("car"), occ3d.CLASS_NAMES.index("bus")
SIZE = ["--width", "320", "--height", "240"]

# a camera at ego (0, 0.2, 0) looking along +x: camera x (right) = ego -y, y (down) = ego -z, z = ego +x
CAM2EGO = np.array([[0.0, 0.0, 1.0, 0.0],
                    [-1.0, 0.0, 0.0, 0.2],
                    [0.0, -1.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 1.0]])
INTRINSICS = np.array([[100.0, 0.0, 50.5], [0.0, 100.0, 40.5], [0.0, 0.0, 1.0]])  # a 100 x 80 image
AHEAD_10M = (125, 100, 2)  # voxel centre (10.2, 0.2, 0.0): 10.2 m straight ahead of the camera
AHEAD_20M = (150, 100, 2)  # (20.2, 0.2, 0.0): on the same ray, further
BEHIND = (74, 100, 2)      # (-10.2, 0.2, 0.0): behind the camera


def grid_with(*voxels):
    """An all-free Occ3D grid with the given (index, label) voxels."""
    grid = np.full(occ3d.GRID_SHAPE, occ3d.FREE, dtype=np.uint8)
    for index, label in voxels:
        grid[index] = label
    return grid


def decode(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def yellow_fraction(frames):
    """Share of pixels near the bus colour (255, 255, 0) over the frames."""
    pixels = np.concatenate([frame.reshape(-1, 3).astype(int) for frame in frames])
    return float((np.abs(pixels - occ3d.PALETTE[BUS].astype(int)).max(1) < 60).mean())



@pytest.fixture(scope="module")
def val_infos(data_root):
    """The records of the val scene, in time order."""
    infos = load_infos(prepare_nuscenes.info_path(data_root, "mini_val"))
    return sorted((info for info in infos if info["scene_name"] == VAL_SCENE), key=lambda info: info["timestamp"])


# ------------------------------------------------------------------------------ projection

def test_a_known_voxel_projects_onto_the_expected_pixel():
    centres = occ3d.GRID_MIN + (np.array([AHEAD_10M, (125, 99, 2)]) + 0.5) * occ3d.VOXEL_SIZE
    uv, depth = project_to_camera(centres, CAM2EGO, INTRINSICS)
    np.testing.assert_allclose(depth, [10.2, 10.2])
    np.testing.assert_allclose(uv[0], [50.5, 40.5], atol=1e-9)                # on the optical axis: pixel (50, 40)
    np.testing.assert_allclose(uv[1], [50.5 + 100 * 0.4 / 10.2, 40.5])       # 0.4 m to the right


def test_overlay_draws_a_voxel_as_wide_as_it_looks_in_its_class_colour():
    black = np.zeros((80, 100, 3), dtype=np.uint8)
    drawn = overlay_voxels(black, grid_with((AHEAD_10M, CAR)), CAM2EGO, INTRINSICS, alpha=1.0)
    coloured = np.argwhere(drawn.any(2))
    # 0.4 m at 10.2 m with f = 100 is 3.9 pixels: a 3 x 3 square centred on pixel (u 50, v 40)
    assert coloured.min(0).tolist() == [39, 49] and coloured.max(0).tolist() == [41, 51]
    assert (drawn[39:42, 49:52] == occ3d.PALETTE[CAR]).all()

    grey = np.full((80, 100, 3), 100, dtype=np.uint8)
    blended = overlay_voxels(grey, grid_with((AHEAD_10M, CAR)), CAM2EGO, INTRINSICS, alpha=0.5)
    np.testing.assert_array_equal(blended[40, 50], np.round(0.5 * 100 + 0.5 * occ3d.PALETTE[CAR].astype(float)))
    assert (blended[0, 0] == 100).all()


@pytest.mark.parametrize("near,far", [(CAR, BUS), (BUS, CAR)])
def test_the_nearest_voxel_wins_and_voxels_behind_the_camera_are_not_drawn(near, far):
    black = np.zeros((80, 100, 3), dtype=np.uint8)
    drawn = overlay_voxels(black, grid_with((AHEAD_10M, near), (AHEAD_20M, far)), CAM2EGO, INTRINSICS, alpha=1.0)
    assert (drawn[40, 50] == occ3d.PALETTE[near]).all()
    behind = overlay_voxels(black, grid_with((BEHIND, CAR)), CAM2EGO, INTRINSICS, alpha=1.0)
    assert not behind.any()


def test_hollowing_drops_only_enclosed_voxels_and_keeps_the_3d_view():
    grid = np.full((6, 6, 5), occ3d.FREE, dtype=np.uint8)
    grid[1:4, 1:4, 1:4] = CAR
    grid[5, 5, 0:5] = BUS  # a column on the border: kept
    shell = hollowed(grid)
    assert shell[2, 2, 2] == occ3d.FREE
    assert (shell != occ3d.FREE).sum() == (grid != occ3d.FREE).sum() - 1
    np.testing.assert_array_equal(voxel_render(shell, scale=2), voxel_render(grid, scale=2))


# ------------------------------------------------------------------------------ the script

def test_ground_truth_video_has_one_frame_per_key_frame_in_time_order(data_root, val_infos, tmp_path):
    # an info file listing the key frames backwards: the video must still run forwards in time
    info_file = prepare_nuscenes.info_path(data_root, "mini_val")
    backwards = load_info_file(info_file)
    backwards["infos"] = backwards["infos"][::-1]
    with open(tmp_path / "backwards.pkl", "wb") as f:
        pickle.dump(backwards, f)
    out = tmp_path / "sub" / "scene.mp4"
    assert render_video.main(["--data-root", data_root, "--info", str(tmp_path / "backwards.pkl"),
                              "--scene", VAL_SCENE, "--out", str(out), *SIZE,
                              "--png-dir", str(tmp_path / "png")]) == str(out)  # no checkpoint
    frames = decode(out)
    assert len(frames) == len(val_infos) == 3
    assert all(frame.shape == (240, 320, 3) for frame in frames)
    assert sorted(os.listdir(tmp_path / "png")) == [f"{i:03d}_{info['token']}.png" for i, info in enumerate(val_infos)]

    expected = []
    for info in val_infos:
        gt = load_occ_gt(occ3d.gt_path(data_root, info["scene_name"], info["token"]))
        expected.append(scene_frame(render_video.cameras_of(info, data_root), gt["semantics"], gt["mask_camera"],
                                    size=(240, 320)).astype(float))
    for index, frame in enumerate(frames):
        errors = [np.abs(frame - reference).mean() for reference in expected]
        assert int(np.argmin(errors)) == index, errors


def test_prediction_folder_is_what_is_drawn(data_root, val_infos, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for info in val_infos:  # the GT with every occupied voxel relabelled bus (yellow)
        semantics = load_occ_gt(occ3d.gt_path(data_root, info["scene_name"], info["token"]))["semantics"]
        np.savez_compressed(pred_dir / f"{info['token']}.npz",
                            semantics=np.where(semantics == occ3d.FREE, occ3d.FREE, BUS).astype(np.uint8))
    out = tmp_path / "pred.mp4"
    render_video.main(["--pred-dir", str(pred_dir), "--data-root", data_root, "--scene", VAL_SCENE,
                       "--out", str(out), *SIZE])
    frames = decode(out)
    assert len(frames) == 3
    assert yellow_fraction(frames) > 0.05  # cameras, bird's-eye prediction, 3-D view; the GT's video: 0.2 %

    os.remove(pred_dir / f"{val_infos[1]['token']}.npz")
    with pytest.raises(FileNotFoundError, match=val_infos[1]["token"]):
        render_video.main(["--pred-dir", str(pred_dir), "--data-root", data_root, "--scene", VAL_SCENE,
                           "--out", str(out), *SIZE])


@pytest.mark.slow
def test_checkpoint_video_from_the_command_line(data_root, tmp_path):
    cfg = get_config("effocc_lidar_tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    ema = EMA(model)
    # EMA weights that predict bus everywhere
    head_bias = ema.state["head.mlp.2.bias"].view(16, 18)
    ema.state["head.mlp.2.weight"].zero_()
    head_bias.zero_()
    head_bias[:, BUS] = 100.0
    ckpt = tmp_path / "step_00000001.pt"
    save_checkpoint(ckpt, model=model.state_dict(), ema=ema.state_dict(), optimizer={}, scheduler={}, step=1,
                    epoch=0, config=cfg)
    out = tmp_path / "ckpt.mp4"
    result = subprocess.run([sys.executable, "tools/render_video.py", "--ckpt", str(ckpt), "--data-root", data_root,
                             "--scene", VAL_SCENE, "--out", str(out), *SIZE, "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={k: v for k, v in os.environ.items() if k != "DISPLAY"})
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    frames = decode(out)
    assert len(frames) == 3 and frames[0].shape == (240, 320, 3)
    assert yellow_fraction(frames) > 0.05


# ------------------------------------------------------------------------------ errors

def test_unknown_scene_lists_the_scenes_of_the_split(data_root, tmp_path):
    result = subprocess.run([sys.executable, "tools/render_video.py", "--data-root", data_root,
                             "--scene", "scene-9999", "--out", str(tmp_path / "x.mp4")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert "scene-9999" in result.stderr and VAL_SCENE in result.stderr
    assert "scene-0061" not in result.stderr  # a mini_train scene: not in the default (val) split
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("where", ["folder", "parent is a file", "read-only location"])
def test_unwritable_output_fails_before_rendering(data_root, tmp_path, monkeypatch, where):
    (tmp_path / "file.txt").write_text("not a folder")
    out = {"folder": str(tmp_path),
           "parent is a file": str(tmp_path / "file.txt" / "videos" / "scene.mp4"),
           "read-only location": "/sys/occ_render_video_test.mp4"}[where]  # sysfs: no new files, even as root
    rendered = []
    monkeypatch.setattr(render_video, "scene_frame", lambda *args, **kwargs: rendered.append(1))
    with pytest.raises(UsageError, match=re.escape(f"--out {out}")):
        render_video.main(["--data-root", data_root, "--scene", VAL_SCENE, "--out", out])
    assert not rendered
    assert not os.path.isfile(out)
