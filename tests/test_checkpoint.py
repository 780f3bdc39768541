"""Atomic checkpoints, clear load errors, partial load reports, latest-checkpoint lookup."""
import dataclasses
import json
import os
from typing import Tuple

import pytest
import torch
from torch import nn

from occ import checkpoint as ckpt


@dataclasses.dataclass
class TinyConfig:
    name: str = "tiny"
    stages: Tuple[int, ...] = (2, 3)


def test_save_and_load_round_trip_writes_config_json(tmp_path):
    model = nn.Linear(2, 3)
    path = tmp_path / "work" / "step_00000005.pt"
    ckpt.save_checkpoint(path, model=model.state_dict(), step=5, config=TinyConfig())
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 5
    torch.testing.assert_close(loaded["model"]["weight"], model.weight.detach())
    assert loaded["config"] == {"name": "tiny", "stages": [2, 3]}
    assert json.loads((tmp_path / "work" / "config.json").read_text()) == {"config": {"name": "tiny", "stages": [2, 3]},
                                                                            "run": None}
    umask = os.umask(0)
    os.umask(umask)
    for written in (path, tmp_path / "work" / "config.json"):   # not the 0600 of a temporary file
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_crash_mid_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "step_00000001.pt"
    ckpt.save_checkpoint(path, model={"w": torch.ones(3)}, step=1)

    def crashing_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, model={"w": torch.zeros(3)}, step=2)
    monkeypatch.undo()
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 1 and loaded["model"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]    # no temporary file left behind


def test_truncated_missing_and_foreign_files_give_errors_naming_the_file(tmp_path):
    path = tmp_path / "step_00000003.pt"
    ckpt.save_checkpoint(path, model={"w": torch.randn(1000)}, step=3)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated.pt"):
        ckpt.load_checkpoint(truncated)

    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        ckpt.load_checkpoint(tmp_path / "nowhere.pt")

    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="notes.txt"):
        ckpt.load_checkpoint(text)

    bare = tmp_path / "bare_tensor.pt"
    torch.save(torch.zeros(2), bare)
    with pytest.raises(ckpt.CheckpointError, match="bare_tensor.pt is not a checkpoint of this project"):
        ckpt.load_checkpoint(bare)


class Net(nn.Module):
    def __init__(self, head_out=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, head_out)


def test_load_partial_reports_loaded_missing_unexpected_mismatched_and_ignored():
    torch.manual_seed(0)
    source = Net(head_out=4).state_dict()
    source["decoder.weight"] = torch.zeros(2)                 # not in the target model
    target = Net(head_out=5)
    head_before = target.head.weight.detach().clone()

    report = ckpt.load_partial(target, source)
    assert report.loaded == sorted(k for k in Net().state_dict() if k.startswith("backbone."))
    assert set(report.missing) == {"head.weight", "head.bias"}
    assert report.unexpected == ["decoder.weight"]
    assert report.shape_mismatched == [("head.weight", (4, 8), (5, 8)), ("head.bias", (4,), (5,))]
    torch.testing.assert_close(target.backbone[0].weight, source["backbone.0.weight"])
    torch.testing.assert_close(target.head.weight, head_before)
    assert "shape mismatch (not loaded): 2" in report.summary()

    report = ckpt.load_partial(Net(head_out=4), source, prefixes=["head."])
    assert report.loaded == ["head.bias", "head.weight"]
    assert "decoder.weight" in report.ignored and "backbone.0.weight" in report.ignored

    with pytest.raises(ckpt.CheckpointError, match="no tensor"):
        ckpt.load_partial(Net(), {"other.weight": torch.zeros(1)})


def test_model_weights_picks_ema_by_default():
    checkpoint = {"model": {"w": torch.zeros(1)}, "ema": {"updates": 3, "model": {"w": torch.ones(1)}}}
    assert ckpt.model_weights(checkpoint)["w"].item() == 1.0
    assert ckpt.model_weights(checkpoint, use_ema=False)["w"].item() == 0.0
    with pytest.raises(ckpt.CheckpointError, match="no EMA"):
        ckpt.model_weights({"model": {}, "ema": None}, path="x.pt")


def test_latest_checkpoint_picks_the_highest_step(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.latest_checkpoint(tmp_path / "absent") is None
    for step in (9, 100, 10):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, step), model={}, step=step)
    (tmp_path / "step_99999999.pt.tmp").write_text("")
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000100.pt"
