"""train_fusion.py end to end on the small synthetic world: budgets, scene fractions, two processes,
--init-from, errors (resume: tests/test_resume.py; faults: tests/test_faults_training.py)."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

import train_fusion
from datasets.build import dataset_from_config, info_path
from occ.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from cli import add_training_args, budget_args
from occ.data import select_scenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = "effocc_lidar_tiny"   # the cheapest model: keeps the suite fast



def train(data_root, work_dir, *extra):
    argv = ["--config", PRESET, "--data-root", data_root, "--work-dir", str(work_dir), "--no-val",
            "--set", "train.warmup_iters=0", "train.log_interval=1", *extra]
    return train_fusion.main(argv)


def test_budget_args_drive_the_training_scripts(data_root, tmp_path):
    # A step budget wins over minutes and stops training there; without steps the minutes apply.
    assert train(data_root, tmp_path / "steps", *budget_args(2, 60.0)).step == 2
    parser = argparse.ArgumentParser()
    add_training_args(parser)
    required = ["--config", PRESET, "--data-root", data_root, "--work-dir", str(tmp_path)]
    minutes = parser.parse_args(required + budget_args(None, 2.5))
    assert (minutes.max_steps, minutes.max_minutes) == (None, 2.5)


def test_scenes_fraction_selects_seeded_scenes(data_root):
    cfg = train_fusion.build_config(train_fusion.parse_args(
        ["--config", PRESET, "--data-root", data_root, "--work-dir", "unused"]))
    dataset = dataset_from_config(cfg, data_root, info_path(data_root, "mini_train"), train=True)
    everything = list(dataset.infos)
    select_scenes(dataset, 1.0)
    assert dataset.infos == everything
    # one training scene: a fraction of 0.4 rounds to no scene and must be refused, not ignored
    with pytest.raises(ValueError, match="selects no scene"):
        select_scenes(dataset, 0.4)


@pytest.mark.slow
def test_two_processes_run_a_step_together(data_root, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 train_fusion.py --cpu` runs two gloo
    processes on a CPU-only machine (accelerate's --cpu launcher alone starts one)."""
    work_dir = tmp_path / "ddp"
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               os.path.join(REPO, "train_fusion.py"), "--cpu", "--config", PRESET, "--data-root", data_root,
               "--work-dir", str(work_dir), "--no-val", "--max-steps", "1", "--train-split", "mini_val"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    checkpoint = load_checkpoint(latest_checkpoint(work_dir))
    assert checkpoint["step"] == 1 and checkpoint["num_processes"] == 2


def test_unknown_preset_and_bad_override_name_the_problem(data_root, tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'effocc_nope'.*effocc_fusion_r18"):
        train_fusion.main(["--config", "effocc_nope", "--data-root", data_root, "--work-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="train.lrr"):
        train(data_root, tmp_path, "--set", "train.lrr=1")
    with pytest.raises(ValueError, match="occbev_pretrain_tiny.*geometry"):
        train_fusion.main(["--config", "occbev_pretrain_tiny", "--data-root", data_root, "--work-dir", str(tmp_path)])


def test_truncated_and_mismatched_checkpoints_are_refused(data_root, tmp_path):
    work_dir = tmp_path / "run"
    train(data_root, work_dir, "--max-steps", "1")
    path = latest_checkpoint(work_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        train(data_root, work_dir, "--max-steps", "2", "--resume")
    foreign = tmp_path / "foreign.pt"
    save_checkpoint(foreign, model={"some.other.weight": torch.zeros(3)}, ema=None)
    with pytest.raises(CheckpointError, match="no tensor of the checkpoint matches"):
        train(data_root, tmp_path / "other", "--max-steps", "1", "--init-from", str(foreign))


@pytest.mark.slow
def test_init_from_reports_loaded_and_missing_keys(data_root, tmp_path, capsys):
    train(data_root, tmp_path / "source", "--max-steps", "1")
    source = load_checkpoint(latest_checkpoint(tmp_path / "source"))
    train(data_root, tmp_path / "target", "--max-steps", "1", "--init-from", str(latest_checkpoint(tmp_path / "source")),
          "--init-prefixes", "lidar")
    out = capsys.readouterr().out
    lidar_keys = [k for k in source["ema"]["model"] if k.startswith("lidar")]
    assert f"loaded: {len(lidar_keys)}" in out
    assert "outside the requested prefixes" in out
