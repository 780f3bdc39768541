"""Bit-exact resume of train_fusion.py on the small synthetic world: from mid-epoch and
epoch-boundary checkpoints, with 0 and 2 DataLoader workers, every weight, EMA tensor and optimizer
moment equals an uninterrupted run's at least 10 steps later. The model trains with the real data
augmentation (random sweeps, BEV flips), which is drawn from (seed, epoch, sample index)."""
import shutil

import pytest
import torch

import train_fusion
from occ.checkpoint import checkpoint_path, load_checkpoint

PRESET = "effocc_lidar_tiny"   # 3 training samples of batch 1: 3 steps per epoch
FINAL_STEP = 14

pytestmark = pytest.mark.slow



def train(data_root, work_dir, workers, *extra):
    return train_fusion.main(["--config", PRESET, "--data-root", data_root, "--work-dir", str(work_dir), "--no-val",
                              "--max-steps", str(FINAL_STEP), "--set", "train.warmup_iters=2", "train.ema_ramp=3",
                              f"data.num_workers={workers}", *extra])


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """An uninterrupted run that saves after every step (the checkpoints to resume from)."""
    work_dir = tmp_path_factory.mktemp("straight")
    train(data_root, work_dir, 0, "--ckpt-every", "1")
    return work_dir


def assert_same_state(resumed, full):
    assert (resumed["step"], resumed["epoch"], resumed["batches_done"]) == (full["step"], full["epoch"],
                                                                            full["batches_done"])
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    assert resumed["ema"]["updates"] == full["ema"]["updates"]
    for key, value in full["ema"]["model"].items():
        torch.testing.assert_close(resumed["ema"]["model"][key], value, rtol=0, atol=0, msg=key)
    for index, state in full["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(resumed["optimizer"]["state"][index][key], value, rtol=0, atol=0)
    assert resumed["scheduler"] == full["scheduler"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("resume_step", [2, 3, 4])   # mid-epoch, epoch boundary, mid-epoch of epoch 1
def test_resume_from_any_checkpoint_is_bit_exact(data_root, straight, tmp_path, workers, resume_step):
    source = load_checkpoint(checkpoint_path(straight, resume_step))
    assert (source["epoch"], source["batches_done"]) == {2: (0, 2), 3: (1, 0), 4: (1, 1)}[resume_step]
    work_dir = tmp_path / "resumed"
    work_dir.mkdir()
    shutil.copy(checkpoint_path(straight, resume_step), work_dir)
    position = train(data_root, work_dir, workers, "--resume")
    assert position.step == FINAL_STEP and FINAL_STEP - resume_step >= 10
    full = load_checkpoint(checkpoint_path(straight, FINAL_STEP))
    assert_same_state(load_checkpoint(checkpoint_path(work_dir, FINAL_STEP)), full)


def test_worker_count_does_not_change_training(data_root, straight, tmp_path):
    train(data_root, tmp_path / "workers", 2)
    assert_same_state(load_checkpoint(checkpoint_path(tmp_path / "workers", FINAL_STEP)),
                      load_checkpoint(checkpoint_path(straight, FINAL_STEP)))
    # and training did something: the weights moved away from the first step's
    first = load_checkpoint(checkpoint_path(straight, 1))["model"]
    last = load_checkpoint(checkpoint_path(straight, FINAL_STEP))["model"]
    assert any(not torch.equal(first[key], value) for key, value in last.items())
