"""Faults a user can cause around a training run, each with its exit status or error, a message
that names the file or option, and no checkpoint lost or overwritten: work directories (used,
locked, a file), resume with other settings or another preset, bad options, a diverging loss,
SIGTERM / SIGINT, partial files of killed saves, bad samples, info files written elsewhere."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import evaluate
import train_fusion
from datasets import prepare_nuscenes
from datasets.nuscenes_occ import load_infos
from occ.checkpoint import latest_checkpoint, load_checkpoint
from occ.loop import NonFiniteLossError
from occ.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
PRESET = "effocc_lidar_tiny"



def args(data_root, work_dir, *extra):
    return ["--config", PRESET, "--data-root", data_root, "--work-dir", str(work_dir), "--no-val",
            "--set", "train.warmup_iters=0", *extra]


def train(data_root, work_dir, *extra):
    return train_fusion.main(args(data_root, work_dir, *extra))


def script(*argv, timeout=300):
    """train_fusion.py in a subprocess: (exit status, stderr)."""
    result = subprocess.run([sys.executable, str(REPO / "train_fusion.py"), *argv], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return result.returncode, result.stderr


def snapshot(work_dir):
    """{file name: bytes} of the checkpoints and config.json of a work dir."""
    return {p.name: p.read_bytes() for p in Path(work_dir).iterdir() if p.suffix in (".pt", ".json")}


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """A work dir holding a 2-step run."""
    work_dir = tmp_path_factory.mktemp("finished")
    train(data_root, work_dir, "--max-steps", "2")
    return work_dir


# ------------------------------------------------------------------------------ work directories

@pytest.mark.slow
def test_a_fresh_run_refuses_a_work_dir_holding_checkpoints(data_root, finished_run):
    before = snapshot(finished_run)
    status, stderr = script(*args(data_root, finished_run, "--max-steps", "1"))
    assert status == 1
    assert stderr.strip().startswith("error:") and "Traceback" not in stderr
    assert str(finished_run) in stderr and "--resume" in stderr and "--overwrite" in stderr
    assert snapshot(finished_run) == before            # nothing overwritten
    assert not (finished_run / ".lock").exists()         # and the lock released


def test_overwrite_starts_over(data_root, finished_run, tmp_path):
    work_dir = tmp_path / "again"
    work_dir.mkdir()
    for name, data in snapshot(finished_run).items():
        (work_dir / name).write_bytes(data)
    assert train(data_root, work_dir, "--max-steps", "1", "--overwrite").step == 1
    assert sorted(p.name for p in work_dir.glob("step_*.pt")) == ["step_00000001.pt"]


def test_a_second_run_on_a_locked_work_dir_is_refused_and_a_stale_lock_taken_over(data_root, tmp_path):
    work_dir = tmp_path / "locked"
    work_dir.mkdir()
    lock = work_dir / ".lock"
    lock.write_text(f'{{"pid": {os.getpid()}, "host": "{os.uname().nodename}"}}')   # a live process
    with pytest.raises(UsageError, match=f"in use by another run.*{os.getpid()}.*{lock}"):
        train(data_root, work_dir, "--max-steps", "1")
    assert lock.exists() and not list(work_dir.glob("step_*.pt"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(f'{{"pid": {gone.pid}, "host": "{os.uname().nodename}"}}')      # a finished process
    with pytest.warns(UserWarning, match="stale lock"):
        assert train(data_root, work_dir, "--max-steps", "1").step == 1
    assert not lock.exists()


def test_a_work_dir_that_is_a_file_is_refused(data_root, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me")
    with pytest.raises(UsageError, match=f"--work-dir {path} is a file"):
        train(data_root, path, "--max-steps", "1")
    assert path.read_text() == "keep me"


def test_partial_files_of_a_killed_save_are_removed_on_resume(data_root, finished_run, tmp_path):
    work_dir = tmp_path / "partial"
    work_dir.mkdir()
    for name, data in snapshot(finished_run).items():
        (work_dir / name).write_bytes(data)
    partial = work_dir / ".step_00000003.pt.x1y2.tmp"
    partial.write_bytes(b"half a checkpoint")
    assert train(data_root, work_dir, "--max-steps", "3", "--resume").step == 3
    assert not partial.exists()
    assert load_checkpoint(latest_checkpoint(work_dir))["step"] == 3


# --------------------------------------------------------------------------------------- resume

@pytest.mark.slow
def test_resume_with_other_settings_is_refused_and_lists_the_differences(data_root, finished_run):
    before = snapshot(finished_run)
    status, stderr = script(*args(data_root, finished_run, "--max-steps", "3", "--resume", "--set", "train.lr=0.5",
                                  "--grad-accum", "2"))
    assert status == 1 and "Traceback" not in stderr
    assert "train.lr: checkpoint 0.001, now 0.5" in stderr
    assert "grad_accum: checkpoint 1, now 2" in stderr
    assert snapshot(finished_run) == before


def test_resume_into_another_presets_work_dir_names_both(data_root, finished_run):
    before = snapshot(finished_run)
    with pytest.raises(UsageError, match="preset 'effocc_lidar_tiny'.*'effocc_fusion_r18_tiny'"):
        train_fusion.main(["--config", "effocc_fusion_r18_tiny", "--data-root", data_root, "--work-dir",
                           str(finished_run), "--no-val", "--set", "train.warmup_iters=0", "--resume",
                           "--max-steps", "3"])
    assert snapshot(finished_run) == before


def test_resume_without_a_checkpoint_is_refused(data_root, tmp_path):
    with pytest.raises(UsageError, match=f"--resume: no checkpoint step_\\*.pt in {tmp_path}"):
        train(data_root, tmp_path, "--max-steps", "1", "--resume")


def test_checkpoints_record_the_command_line_and_settings(finished_run):
    checkpoint = load_checkpoint(latest_checkpoint(finished_run))
    settings = checkpoint["run"]["settings"]
    assert settings["grad_accum"] == 1 and settings["scenes_fraction"] == 1.0 and settings["init_from"] is None
    assert checkpoint["run"]["command"][0] == "train_fusion.py"
    assert "--max-steps" in checkpoint["run"]["command"]


# ---------------------------------------------------------------------------------- bad options

@pytest.mark.parametrize("extra, message", [
    (["--grad-accum", "0"], "--grad-accum must be >= 1, got 0"),
    (["--max-steps", "0"], "--max-steps must be > 0, got 0"),
    (["--max-steps", "-3"], "--max-steps must be > 0, got -3"),
    (["--max-minutes", "0"], "--max-minutes must be > 0"),
    (["--set", "train.epochs=0"], "train.epochs must be >= 1, got 0"),
    (["--set", "train.loss=focal"], "train.loss='focal' is not implemented by train_fusion.py"),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
])
def test_bad_options_are_refused_naming_the_option(data_root, tmp_path, extra, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        train(data_root, tmp_path / "run", *extra)
    assert not list(tmp_path.glob("run/step_*.pt"))


def test_fp16_on_the_cpu_is_warned_about(data_root, tmp_path):
    with pytest.warns(UserWarning, match="fp16 on the CPU"):
        train(data_root, tmp_path, "--max-steps", "1", "--mixed-precision", "fp16", "--cpu")


def test_a_non_finite_loss_names_the_step_and_the_losses(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = train_fusion.masked_cross_entropy

    def diverging(logits, *rest):
        calls["n"] += 1
        loss = real_loss(logits, *rest)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(train_fusion, "masked_cross_entropy", diverging)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss at step 2: loss_ce nan"):
        train(data_root, tmp_path, "--max-steps", "3")


# ----------------------------------------------------------------------------------- stop signals

@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_the_last_step_and_exits_non_zero(data_root, tmp_path, signum):
    work_dir = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, str(REPO / "train_fusion.py"),
                                *args(data_root, work_dir, "--max-steps", "100000", "--set", "data.num_workers=2")],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 120
    while not (work_dir / "tensorboard").is_dir() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(3)   # well inside the training loop
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped: training stopped by {signal.Signals(signum).name}" in stderr
    saved = latest_checkpoint(work_dir)
    assert saved is not None and str(saved) in stderr
    checkpoint = load_checkpoint(saved)
    assert checkpoint["step"] >= 1 and f"checkpoint (stop signal): {saved}" in stdout
    assert not list(work_dir.glob(".*.tmp")) and not (work_dir / ".lock").exists()


# --------------------------------------------------------------------------- data: bad samples, infos

def copy_with_links(source, target, replaced):
    """A tree of symlinks to `source`, except `replaced` (a path relative to it), which is empty."""
    for folder, _, files in os.walk(source):
        relative = os.path.relpath(folder, source)
        os.makedirs(os.path.join(target, relative), exist_ok=True)
        for name in files:
            path = os.path.normpath(os.path.join(relative, name))
            if path == os.path.normpath(replaced):
                open(os.path.join(target, path), "wb").close()
            else:
                os.symlink(os.path.join(folder, name), os.path.join(target, path))


@pytest.fixture(scope="module")
def root_with_a_bad_sample(synthetic_root, tmp_path_factory):
    """The synthetic world with one training key frame's LiDAR file empty (zero bytes)."""
    root = tmp_path_factory.mktemp("bad_sample")
    prepare_nuscenes.prepare(synthetic_root, "v1.0-mini", out_dir=str(root / "infos"))
    bad = load_infos(str(root / "infos" / "occ_infos_mini_train.pkl"))[1]
    copy_with_links(synthetic_root, root / "data", bad["lidar_path"])
    return root, bad


def test_a_bad_sample_ends_training_naming_its_file(root_with_a_bad_sample, tmp_path):
    root, bad = root_with_a_bad_sample
    with pytest.raises(ValueError, match=re.escape(os.path.basename(bad["lidar_path"]))):
        train_fusion.main(args(str(root / "data"), tmp_path, "--max-steps", "3", "--info-dir", str(root / "infos")))


def test_skip_bad_samples_logs_each_and_reports_the_count(root_with_a_bad_sample, tmp_path, capsys, caplog):
    root, bad = root_with_a_bad_sample
    position = train_fusion.main(args(str(root / "data"), tmp_path, "--max-steps", "3", "--skip-bad-samples",
                                      "--info-dir", str(root / "infos")))
    assert position.step == 3   # one epoch of three samples, one of them replaced
    assert any(os.path.basename(bad["lidar_path"]) in record.getMessage() for record in caplog.records)
    assert "1 bad sample(s) were skipped" in capsys.readouterr().out
    logged = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Scalars("train/samples_skipped")
    assert logged[-1].step == 3 and logged[-1].value == 1


def test_info_files_written_elsewhere_are_read_with_info_dir(root_with_a_bad_sample, synthetic_root, tmp_path):
    root, _ = root_with_a_bad_sample
    assert not os.path.exists(os.path.join(synthetic_root, "occ_infos_mini_train.pkl"))   # only in root/infos
    position = train_fusion.main(args(synthetic_root, tmp_path, "--max-steps", "1", "--info-dir", str(root / "infos")))
    assert position.step == 1
    assert load_checkpoint(latest_checkpoint(tmp_path))["run"]["settings"]["train_split"] is None


def test_evaluate_refuses_an_out_that_is_a_folder_and_a_save_pred_that_is_a_file(tmp_path):
    with pytest.raises(UsageError, match=re.escape(f"--out {tmp_path} is a folder")):
        evaluate.main(["--pred-dir", str(tmp_path), "--data-root", str(tmp_path), "--out", str(tmp_path)])
    a_file = tmp_path / "preds"
    a_file.write_text("")
    with pytest.raises(UsageError, match=re.escape(f"--save-pred {a_file} is a file")):
        evaluate.main(["--ckpt", "x.pt", "--data-root", str(tmp_path), "--save-pred", str(a_file)])
