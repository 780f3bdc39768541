"""Occ-BEV pre-training (docs/training.md#occ-bev-pre-training): targets in the sample's BEV frame, the channel-to-height decoder,
the geometry IoU, the script end to end, and the transfer of its weights into FlashOcc."""
import os

import numpy as np
import pytest
import torch

import pretrain_occbev
from datasets import prepare_nuscenes, prepare_occbev
from datasets.nuscenes_occ import NuScenesOccDataset
from datasets.occbev_targets import load_occbev_target, occbev_target_path
from occ import occ3d
from occ.checkpoint import latest_checkpoint, load_checkpoint, load_partial, model_weights, save_checkpoint
from occ.config import get_config
from occ.ema import EMA
from occ.geometry import bda_matrix
from occ.models import build_model
from occ.models.heads import GeometryDecoder

TRANSFERRED = ("img_backbone.", "img_neck.", "view_transformer.", "bev_encoder.")


@pytest.fixture(scope="module")
def occbev_root(synthetic_root, tmp_path_factory):
    """A data root that links the small synthetic world and adds its info files and Occ-BEV targets."""
    root = tmp_path_factory.mktemp("occbev") / "nuscenes"
    root.mkdir()
    for entry in os.listdir(synthetic_root):
        (root / entry).symlink_to(os.path.join(synthetic_root, entry))
    prepare_nuscenes.prepare(str(root), "v1.0-mini")
    prepare_occbev.main(["--root", str(root), "--version", "v1.0-mini"])
    return root


def flip_only_dataset(root, **options):
    """Train-mode samples with random BEV flips; no images (the wrapper only needs bda and tokens)."""
    return NuScenesOccDataset(str(root), str(root / "occ_infos_mini_train.pkl"), train=True, load_images=False,
                              load_depth=False, load_gt=False, bev_flip=True, **options)


def voxel_of(points_ego):
    """(N, 3) ego points inside the grid -> (N, 3) int64 [x, y, z] voxel indices."""
    return np.floor((points_ego - occ3d.GRID_MIN) / occ3d.VOXEL_SIZE).astype(np.int64)


def test_key_frame_points_land_on_the_flipped_target_under_every_bev_flip(occbev_root):
    """The dataset's key-frame points (already in the augmented ego frame) must fall on occupied
    voxels of `occupied` for each of the four flip combinations; the unflipped target would not."""
    dataset = pretrain_occbev.WithOccBEVTargets(flip_only_dataset(occbev_root, load_points=True, num_sweeps=0),
                                                occbev_root / "occbev_targets")
    seen = set()
    for seed in range(40):
        dataset.set_epoch(seed)  # the flips depend on (seed, epoch, sample index) only
        sample = dataset[seed % len(dataset)]
        flips = pretrain_occbev.bev_flips(sample["bda"])
        if flips in seen:
            continue
        seen.add(flips)
        occupied = sample["occupied"].numpy()
        assert occupied.dtype == bool and occupied.shape == (200, 200, 16)
        xyz = sample["points"][:, :3].numpy().astype(np.float64)
        inside = np.all((xyz >= occ3d.GRID_MIN) & (xyz < occ3d.GRID_MAX), axis=1)
        x, y, z = voxel_of(xyz[inside]).T
        assert inside.sum() > 1000
        assert occupied[x, y, z].mean() > 0.999
        raw = load_occbev_target(occbev_target_path(occbev_root / "occbev_targets", sample["sample_token"]))
        assert occupied.sum() == raw.sum()
        if flips != (False, False):
            assert raw[x, y, z].mean() < 0.9  # the ground is symmetric, the rest is not
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_missing_targets_and_semantic_labels_are_refused(occbev_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_occbev.py"):
        pretrain_occbev.WithOccBEVTargets(flip_only_dataset(occbev_root), tmp_path)
    with_labels = NuScenesOccDataset(str(occbev_root), str(occbev_root / "occ_infos_mini_train.pkl"), train=True,
                                     load_images=False, load_depth=False, load_points=False, load_gt=True)
    with pytest.raises(ValueError, match="load_gt=False"):
        pretrain_occbev.WithOccBEVTargets(with_labels, occbev_root / "occbev_targets")


def test_bev_flips_reads_the_flags_and_refuses_rotations():
    for flip_x in (False, True):
        for flip_y in (False, True):
            bda = torch.from_numpy(bda_matrix(flip_x, flip_y).astype(np.float32))
            assert pretrain_occbev.bev_flips(bda) == (flip_x, flip_y)
    with pytest.raises(ValueError, match="only follow BEV flips"):
        pretrain_occbev.bev_flips(bda_matrix(rotate_deg=10.0))


def test_decoder_reads_channels_as_heights():
    """BEV channel c * Z + z is height z of feature c: a change there reaches the logits of heights
    z - 2 .. z + 2 only (two 3x3x3 convolutions), and the output is (B, X, Y, Z, 2)."""
    torch.manual_seed(0)
    decoder = GeometryDecoder(in_channels=2 * 16, hidden=8, num_z=16).eval()
    bev = torch.randn(2, 32, 6, 7)  # (B, C * Z, Y, X)
    logits = decoder(bev)
    assert logits.shape == (2, 7, 6, 16, 2)
    changed = bev.clone()
    changed[:, 1 * 16 + 3] += 5.0  # feature 1, height 3
    moved = (decoder(changed) - logits).abs().amax(dim=(0, 1, 2, 4))  # per height
    assert (moved[1:6] > 1e-4).all() and (moved[:1] == 0).all() and (moved[6:] == 0).all()
    spec_decoder = GeometryDecoder(in_channels=256, hidden=32, num_z=16)  # occbev_pretrain: 16 ch x 16 heights
    assert sum(p.numel() for p in spec_decoder.parameters()) == pytest.approx(43_000, rel=0.1)  # docs/architecture.md#occ-bev-pre-training-model


class FixedPrediction(torch.nn.Module):
    """Predicts `occupied` from a function of the batch's target (stands in for a network)."""

    def __init__(self, predict):
        super().__init__()
        self.predict = predict

    def forward(self, batch):
        occupied = self.predict(batch["occupied"]).float()
        return {"geo_logits": torch.stack([1 - occupied, occupied], dim=-1)}  # channel 1 = occupied


def test_geometry_iou_counts_over_the_whole_split():
    g = torch.Generator().manual_seed(0)
    samples = [{"sample_token": str(i), "occupied": torch.rand(200, 200, 16, generator=g) < 0.1 * (i + 1)}
               for i in range(3)]
    perfect, (target, predicted) = pretrain_occbev.geometry_scores(FixedPrediction(lambda t: t), samples, "cpu",
                                                                   batch_size=2)
    assert perfect == 1.0 and np.array_equal(target, samples[0]["occupied"].numpy())
    everything, _ = pretrain_occbev.geometry_scores(FixedPrediction(torch.ones_like), samples, "cpu")
    occupied_voxels = sum(int(s["occupied"].sum()) for s in samples)
    assert everything == pytest.approx(occupied_voxels / (3 * 200 * 200 * 16))
    nothing, _ = pretrain_occbev.geometry_scores(FixedPrediction(torch.logical_not), samples, "cpu")
    assert nothing == 0.0


@pytest.mark.slow
def test_pretraining_script_runs_a_step_validates_and_writes_transferable_weights(occbev_root, tmp_path, capsys):
    work_dir = tmp_path / "work"
    position = pretrain_occbev.main(["--config", "occbev_pretrain_tiny", "--data-root", str(occbev_root),
                                     "--work-dir", str(work_dir), "--max-steps", "1", "--val-every", "1",
                                     "--cpu"])
    assert position.step == 1
    out = capsys.readouterr().out
    assert "3 training samples" in out and "val geometry IoU" in out
    checkpoint = load_checkpoint(latest_checkpoint(work_dir))
    assert checkpoint["config"]["model"]["head"] == "geometry"
    assert os.listdir(work_dir / "tensorboard")
    finetune = build_model(get_config("flashocc_r50_tiny"))
    report = load_partial(finetune, model_weights(checkpoint, use_ema=True))
    assert report.loaded and all(key.startswith(TRANSFERRED) for key in report.loaded)


def test_transfer_loads_every_backbone_neck_and_bev_encoder_tensor(tmp_path):
    """What train_fusion.py --init-from does (load_checkpoint, EMA weights, load_partial over all
    keys): every non-head tensor of flashocc_r50_tiny comes from the pre-training checkpoint."""
    torch.manual_seed(0)
    cfg = get_config("occbev_pretrain_tiny")
    pretrained = build_model(cfg)
    ema = EMA(pretrained)
    with torch.no_grad():
        for tensor in ema.state.values():
            if tensor.is_floating_point():
                tensor.add_(1.0)  # EMA weights differ from the raw ones and from any fresh model
    path = tmp_path / "step_00000010.pt"
    save_checkpoint(path, model=pretrained.state_dict(), ema=ema.state_dict(), step=10, epoch=1, config=cfg)

    finetune = build_model(get_config("flashocc_r50_tiny"))
    checkpoint = load_checkpoint(path)
    weights = model_weights(checkpoint, use_ema=checkpoint.get("ema") is not None, path=path)
    report = load_partial(finetune, weights)
    state = finetune.state_dict()
    body = [key for key in state if key.startswith(TRANSFERRED)]
    assert sorted(report.loaded) == sorted(body)
    for key in body:
        assert torch.equal(state[key], weights[key]), key
    assert report.missing and all(key.startswith("head.") for key in report.missing)
    assert all(key.startswith("head.") for key in report.unexpected)
    assert all(key.startswith("head.") for key, _, _ in report.shape_mismatched)
    assert {key.split(".")[0] for key in state} == {"head"} | {p.rstrip(".") for p in TRANSFERRED}
