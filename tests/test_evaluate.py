import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from datasets.nuscenes_occ import load_infos, load_occ_gt
from occ.checkpoint import CheckpointError, save_checkpoint
from occ.config import get_config
from occ.ema import EMA
from occ.evaluation import build_model_from_checkpoint
from occ.errors import UsageError
from occ.geometry import make_transform
from occ.metrics import scene_lidar_origins
from occ.models import build_model

FREE, CAR, TRUCK, DRIVEABLE, VEGETATION = 17, 4, 10, 11, 16
SCENES = {"scene-a": ["a0", "a1", "a2"], "scene-b": ["b0", "b1", "b2"]}


def ground_truth():
    """Driveable floor, a 2 x 2 x 2 car ahead (8 voxels) and one behind; cameras see x >= 100."""
    semantics = np.full((200, 200, 16), FREE, dtype=np.uint8)
    semantics[:, :, 2] = DRIVEABLE
    semantics[120:122, 100:102, 3:5] = CAR
    semantics[50:52, 100:102, 3:5] = CAR  # behind the ego: not camera-visible
    mask_camera = np.zeros_like(semantics)
    mask_camera[100:] = 1
    return semantics, mask_camera


def write_dataset(root, scenes=SCENES):
    """Info file, Occ3D GT and one LiDAR file per sample (2 scenes of 3 key frames by default)."""
    semantics, mask_camera = ground_truth()
    infos = []
    rng = np.random.default_rng(0)
    for scene, tokens in scenes.items():
        for k, token in enumerate(tokens):
            gt_dir = os.path.join(root, "gts", scene, token)
            os.makedirs(gt_dir)
            np.savez_compressed(os.path.join(gt_dir, "labels.npz"), semantics=semantics,
                                mask_camera=mask_camera, mask_lidar=np.ones_like(mask_camera))
            lidar_path = os.path.join("samples", "LIDAR_TOP", f"{token}.pcd.bin")
            os.makedirs(os.path.join(root, "samples", "LIDAR_TOP"), exist_ok=True)
            points = rng.uniform([-40, -40, -1, 0, 0], [40, 40, 5, 1, 31], size=(3000, 5)).astype(np.float32)
            points.tofile(os.path.join(root, lidar_path))
            infos.append({
                "token": token, "scene_name": scene, "scene_token": scene, "timestamp": 1_000_000 * k,
                "prev": tokens[k - 1] if k else "", "next": tokens[k + 1] if k + 1 < len(tokens) else "",
                "lidar_path": lidar_path, "lidar_token": f"lidar-{token}",
                "lidar2ego": make_transform([1, 0, 0, 0], [0.9, 0.0, 1.8]),
                "ego2global": make_transform([1, 0, 0, 0], [100.0 + 4.0 * k, 50.0, 0.0]),
                "sweeps": [], "cams": {}, "boxes": {}, "occ_path": f"gts/{scene}/{token}/labels.npz"})
    with open(os.path.join(root, "occ_infos_val.pkl"), "wb") as f:
        pickle.dump({"version": "test", "split": "val", "infos": infos}, f)
    return infos


def write_predictions(folder, tokens, change=None):
    os.makedirs(folder, exist_ok=True)
    semantics, _ = ground_truth()
    for token in tokens:
        pred = semantics.copy()
        if change:
            change(token, pred)
        np.savez_compressed(os.path.join(folder, f"{token}.npz"), semantics=pred)


ALL_TOKENS = [t for tokens in SCENES.values() for t in tokens]


def test_perfect_predictions_score_one(tmp_path):
    write_dataset(tmp_path)
    write_predictions(tmp_path / "pred", ALL_TOKENS)
    out = tmp_path / "metrics.json"
    metrics = evaluate.main(["--pred-dir", str(tmp_path / "pred"), "--data-root", str(tmp_path), "--out", str(out),
                             "--vis-dir", str(tmp_path / "vis"), "--vis-samples", "2"])
    assert metrics["num_samples"] == 6
    assert metrics["miou"] == 1.0 and metrics["geometry_iou"] == 1.0
    assert metrics["rayiou"] == 1.0 and metrics["rayiou@1"] == 1.0
    saved = json.loads(out.read_text())
    assert saved["miou"] == 1.0 and saved["rayiou"] == 1.0
    assert saved["per_class"]["car"]["iou"] == 1.0
    assert saved["per_class"]["bus"]["iou"] is None  # absent from GT and prediction: NaN -> null
    assert sorted(os.listdir(tmp_path / "vis")) == ["a0_3d.png", "a0_bev.png", "a1_3d.png", "a1_bev.png"]
    bev = np.asarray(Image.open(tmp_path / "vis" / "a0_bev.png"))
    maps = bev[14:14 + 400]  # below the title bar, above the legend: two 400 x 400 maps, 8 pixels apart
    assert (maps[:, :400] == maps[:, 408:808]).all()  # perfect prediction: identical maps
    assert (maps[:, :400] != 255).any()


def test_hand_computed_miou_with_camera_mask(tmp_path, capsys):
    write_dataset(tmp_path)

    def change(token, pred):
        pred[:100, :, 5] = VEGETATION  # hidden region: not scored with the camera mask
        if token == "b1":
            pred[120:122, 100:102, 3:5] = TRUCK  # the visible car called a truck in one sample

    write_predictions(tmp_path / "pred", ALL_TOKENS, change)
    args = ["--pred-dir", str(tmp_path / "pred"), "--data-root", str(tmp_path), "--no-rayiou"]
    metrics = evaluate.main(args)
    car = 40 / 48  # visible car voxels: 8 per sample, 6 samples, 8 of them predicted truck
    assert metrics["per_class"]["car"]["iou"] == pytest.approx(car)
    assert metrics["per_class"]["truck"]["iou"] == 0.0  # predicted, absent from GT
    assert metrics["per_class"]["driveable_surface"]["iou"] == 1.0
    assert metrics["miou"] == pytest.approx((car + 0.0 + 1.0) / 3)
    assert metrics["geometry_iou"] == 1.0
    assert "rayiou" not in metrics
    printed = capsys.readouterr().out
    assert "car" in printed and f"{100 * metrics['miou']:.2f}" in printed

    # without a mask the hidden vegetation counts: a whole layer of false positives
    unmasked = evaluate.main(args + ["--mask", "none"])
    assert unmasked["per_class"]["vegetation"]["iou"] == 0.0
    assert unmasked["geometry_iou"] < 1.0


def test_missing_tokens_are_named(tmp_path):
    write_dataset(tmp_path)
    write_predictions(tmp_path / "pred", [t for t in ALL_TOKENS if t not in ("a2", "b0")])
    with pytest.raises(FileNotFoundError, match=r"lacks 2 of the 6 samples.*a2, b0"):
        evaluate.main(["--pred-dir", str(tmp_path / "pred"), "--data-root", str(tmp_path)])


def test_bad_prediction_file_is_named(tmp_path):
    write_dataset(tmp_path)
    write_predictions(tmp_path / "pred", ALL_TOKENS)
    np.savez(tmp_path / "pred" / "a1.npz", semantics=np.zeros((200, 200, 8), np.uint8))
    with pytest.raises(ValueError, match=r"a1\.npz has shape"):
        evaluate.main(["--pred-dir", str(tmp_path / "pred"), "--data-root", str(tmp_path), "--no-rayiou"])


def test_single_unnamed_array_is_accepted(tmp_path):
    semantics, _ = ground_truth()
    np.savez(tmp_path / "x.npz", semantics)  # stored as arr_0
    assert (evaluate.load_prediction(str(tmp_path / "x.npz")) == semantics).all()


@pytest.mark.slow
def test_checkpoint_mode_uses_ema_and_writes_submission(tmp_path):
    write_dataset(tmp_path, {"scene-a": ["a0"]})  # one sample: a forward pass takes seconds on a CPU
    cfg = get_config("effocc_lidar_tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    ema = EMA(model)
    # EMA weights that predict free everywhere; the raw weights do not
    head_bias = ema.state["head.mlp.2.bias"].view(16, 18)
    ema.state["head.mlp.2.weight"].zero_()
    head_bias.zero_()
    head_bias[:, FREE] = 100.0
    ckpt = tmp_path / "work" / "step_00000001.pt"
    save_checkpoint(ckpt, model=model.state_dict(), ema=ema.state_dict(), optimizer={}, scheduler={}, step=1,
                    epoch=0, config=cfg)

    common = ["--ckpt", str(ckpt), "--data-root", str(tmp_path), "--no-rayiou"]
    metrics = evaluate.main(common + ["--save-pred", str(tmp_path / "sub")])
    assert os.listdir(tmp_path / "sub") == ["a0.npz"]
    pred = evaluate.load_prediction(str(tmp_path / "sub" / "a0.npz"))
    assert (pred == FREE).all()
    assert metrics["geometry_iou"] == 0.0
    rescored = evaluate.main(["--pred-dir", str(tmp_path / "sub"), "--data-root", str(tmp_path), "--no-rayiou"])
    assert rescored["miou"] == metrics["miou"] and rescored["geometry_iou"] == metrics["geometry_iou"]

    evaluate.main(common + ["--no-ema", "--save-pred", str(tmp_path / "raw")])
    raw = evaluate.load_prediction(str(tmp_path / "raw" / "a0.npz"))
    assert (raw != FREE).any()


def test_checkpoint_errors_are_clear(tmp_path):
    write_dataset(tmp_path)
    truncated = tmp_path / "bad.pt"
    truncated.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        evaluate.main(["--ckpt", str(truncated), "--data-root", str(tmp_path)])


def test_a_checkpoint_is_refused_by_the_scorer_of_another_head(tmp_path):
    """Occupancy scorers refuse a detection model and the detection scorer an occupancy model,
    naming the file and the head, before building anything from the weights."""
    for preset, wrong_head, words in (("bevdet_r50_tiny", "occ", "not an occupancy model"),
                                      ("effocc_lidar_tiny", "detection", "not a detection model")):
        path = tmp_path / f"{preset}.pt"
        save_checkpoint(path, model={}, step=1, epoch=0, config=get_config(preset))
        with pytest.raises(CheckpointError, match=f"{preset}.pt.*{words}"):
            build_model_from_checkpoint(str(path), use_ema=False, device="cpu", head=wrong_head)


def test_synthetic_world_ground_truth_scores_one(synthetic_root, tmp_path):
    """The info files of datasets/prepare_nuscenes.py and the Occ3D GT of the synthetic world, end to
    end: the GT itself, submitted as predictions, is perfect; RayIoU casts from every key frame."""
    from datasets import prepare_nuscenes
    info_path = prepare_nuscenes.prepare(synthetic_root, "v1.0-mini", out_dir=str(tmp_path))["mini_val"]
    infos = load_infos(info_path)
    for info in infos:
        gt = load_occ_gt(os.path.join(synthetic_root, "gts", info["scene_name"], info["token"], "labels.npz"))
        evaluate.save_prediction(str(tmp_path / "pred"), info["token"], gt["semantics"])
    origins = scene_lidar_origins(infos)
    assert all(len(origins[info["token"]]) == len(infos) for info in infos)  # one scene, all frames in range
    metrics = evaluate.main(["--pred-dir", str(tmp_path / "pred"), "--data-root", synthetic_root,
                             "--split", "mini_val", "--info", info_path])
    assert metrics["num_samples"] == len(infos)
    assert metrics["miou"] == 1.0 and metrics["geometry_iou"] == 1.0 and metrics["rayiou"] == 1.0
    assert sum(not np.isnan(v["iou"]) for v in metrics["per_class"].values()) > 5  # several classes present


@pytest.mark.parametrize("benchmark", evaluate.BENCHMARKS)
def test_every_scorer_refuses_the_same_bad_options(benchmark, tmp_path, capsys):
    """The options shared by the scorers (cli.add_scoring_args) are checked the same way by each."""
    predictions = ["--pred-json", str(tmp_path / "r.json")] if benchmark == "detection" else ["--pred-dir", str(tmp_path)]
    common = ["--benchmark", benchmark, "--data-root", str(tmp_path)]
    with pytest.raises(SystemExit):
        evaluate.main(common + predictions + ["--no-ema"])
    assert "--no-ema only applies to --ckpt" in capsys.readouterr().err
    with pytest.raises(UsageError, match=re.escape(f"--out {tmp_path} is a folder")):
        evaluate.main(common + predictions + ["--out", str(tmp_path)])
    with pytest.raises(UsageError, match="--batch-size must be >= 1, got 0"):
        evaluate.main(common + ["--ckpt", "x.pt", "--batch-size", "0"])
    with pytest.raises(SystemExit):   # --ckpt and the predictions exclude each other
        evaluate.main(common + predictions + ["--ckpt", "x.pt"])
    assert "not allowed with argument" in capsys.readouterr().err
