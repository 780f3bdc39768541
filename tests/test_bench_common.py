"""bench/common.py's run bookkeeping: a benchmark stopped half-way goes on where it stopped."""
import json
import types

import pytest

import bench.common
from bench.common import mean_and_spread, score_once, train_once
from occ.checkpoint import save_checkpoint
from occ.config import apply_overrides, get_config


def fake_script(calls):
    """A stand-in for train_fusion / train_distill / pretrain_occbev: records its argv and writes
    the checkpoint of the step its --max-steps asks for, with the config of flashocc_r50_tiny and
    the argv's --set overrides (its parse_args and build_config)."""
    def build_config(argv):
        cfg = get_config("flashocc_r50_tiny")
        apply_overrides(cfg, argv[argv.index("--set") + 1:] if "--set" in argv else [])
        return cfg

    def main(argv):
        calls.append(argv)
        work_dir = argv[argv.index("--work-dir") + 1]
        step = int(argv[argv.index("--max-steps") + 1])
        save_checkpoint(f"{work_dir}/step_{step:08d}.pt", model={}, config=build_config(argv))
        return types.SimpleNamespace(step=step)
    return types.SimpleNamespace(main=main, parse_args=list, build_config=build_config)


def test_a_fresh_run_is_trained_without_resume(tmp_path):
    calls = []
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    checkpoint, step, minutes = train_once(fake_script(calls), str(work_dir), ["--config", "x"], steps=4)
    assert calls == [["--work-dir", str(work_dir), "--max-steps", "4", "--config", "x"]]
    assert (checkpoint.name, step) == ("step_00000004.pt", 4) and minutes is not None


def test_a_stopped_run_is_continued_and_a_finished_one_read_back(tmp_path):
    calls = []
    save_checkpoint(tmp_path / "step_00000002.pt", model={}, config=get_config("flashocc_r50_tiny"))
    checkpoint, step, _ = train_once(fake_script(calls), str(tmp_path), [], steps=5)
    assert calls[0][:4] == ["--work-dir", str(tmp_path), "--max-steps", "5"] and "--resume" in calls[0]
    assert (checkpoint.name, step) == ("step_00000005.pt", 5)
    checkpoint, step, minutes = train_once(fake_script(calls), str(tmp_path), [], steps=5)
    assert len(calls) == 1 and (checkpoint.name, step, minutes) == ("step_00000005.pt", 5, None)


def test_a_finished_run_of_another_config_is_refused_not_read_back(tmp_path):
    calls = []
    train_once(fake_script(calls), str(tmp_path), ["--set", "train.lr=0.001"], steps=3)
    train_once(fake_script(calls), str(tmp_path), ["--set", "train.lr=0.001"], steps=3)    # the same: read back
    assert len(calls) == 1
    with pytest.raises(SystemExit, match=r"(?s)finished run.*train.lr: checkpoint 0.001, now 0.002"):
        train_once(fake_script(calls), str(tmp_path), ["--set", "train.lr=0.002"], steps=3)
    assert len(calls) == 1


def test_a_minutes_run_with_checkpoints_is_refused(tmp_path):
    (tmp_path / "step_00000002.pt").write_text("checkpoint")
    with pytest.raises(SystemExit, match="minutes budget"):
        train_once(fake_script([]), str(tmp_path), [], minutes=3.0)


def test_only_the_last_checkpoint_of_a_run_is_kept(tmp_path):
    def main(argv):   # a run that saves a checkpoint per epoch of 2 steps, up to --max-steps
        for step in range(2, int(argv[argv.index("--max-steps") + 1]) + 1, 2):
            (tmp_path / f"step_{step:08d}.pt").write_text("checkpoint")
        return types.SimpleNamespace(step=step)
    (tmp_path / "step_00000002.metrics.json").write_text("{}")
    checkpoint, step, _ = train_once(types.SimpleNamespace(main=main), str(tmp_path), [], steps=6)
    assert (checkpoint.name, step) == ("step_00000006.pt", 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002.metrics.json", "step_00000006.pt"]


def test_scores_are_read_back_for_the_same_arguments_only(tmp_path, monkeypatch):
    scored = []

    def fake_evaluate(argv):
        scored.append(argv)
        out = argv[argv.index("--out") + 1]
        with open(out, "w") as f:
            json.dump({"miou": 0.25 * len(scored)}, f)
        return {"miou": 0.25 * len(scored)}
    monkeypatch.setattr(bench.common.evaluate, "main", fake_evaluate)
    checkpoint = tmp_path / "step_00000005.pt"
    assert score_once(checkpoint, ["--data-root", "here"]) == {"miou": 0.25}
    assert score_once(checkpoint, ["--data-root", "here"]) == {"miou": 0.25}     # read back
    assert score_once(checkpoint, ["--data-root", "here", "--no-rayiou"]) == {"miou": 0.5}
    assert len(scored) == 2 and len(list(tmp_path.glob("step_00000005.*.metrics.json"))) == 2


def test_train_and_score_trains_and_scores_each_selected_model_once(tmp_path, monkeypatch):
    from bench.common import train_and_score
    trained, scored = [], []

    def fake_evaluate(argv):
        scored.append(argv)
        with open(argv[argv.index("--out") + 1], "w") as f:
            json.dump({"miou": 0.5}, f)
        return {"miou": 0.5}
    monkeypatch.setattr(bench.common, "train_fusion", fake_script(trained))
    monkeypatch.setattr(bench.common.evaluate, "main", fake_evaluate)
    models = [("fusion", "preset_a"), ("lidar", "preset_b")]
    for root in ("preset_a", "preset_b"):
        (tmp_path / root).mkdir()
    results = {}
    steps, minutes = train_and_score(models, ["lidar"], "data", str(tmp_path), ["--set", "train.lr=0.002"], ["--benchmark", "b"],
                                     results, steps=3)
    assert steps == {"lidar": 3} and set(minutes) == {"lidar"} and results == {"lidar (preset_b)": {"miou": 0.5}}
    assert trained[0][trained[0].index("--config") + 1] == "preset_b" and trained[0][-2:] == ["--set", "train.lr=0.002"]
    assert scored[0][:4] == ["--ckpt", str(tmp_path / "preset_b" / "step_00000003.pt"), "--benchmark", "b"]
    # run again: the finished run is read back, neither trained nor scored a second time
    steps, minutes = train_and_score(models, ["lidar"], "data", str(tmp_path), ["--set", "train.lr=0.002"], ["--benchmark", "b"],
                                     results, steps=3)
    assert (steps, minutes, len(trained), len(scored)) == ({"lidar": 3}, {}, 1, 1)


def test_mean_and_spread_on_hand_made_values():
    mean, std, low, high = mean_and_spread([1.0, 2.0, 6.0])
    assert (mean, low, high) == (3.0, 1.0, 6.0)
    assert std == pytest.approx((14 / 3) ** 0.5)  # population std: ((2^2 + 1^2 + 3^2) / 3) ** 0.5


def test_epochs_for_steps_lengthens_a_run_only_where_the_preset_epochs_end_it_early():
    from bench.common import epochs_for_steps
    from occ.config import get_config
    preset_epochs = get_config("flashocc_r50_tiny").train.epochs  # batch 1: one update per sample
    assert epochs_for_steps("flashocc_r50_tiny", 1600, 160) == f"train.epochs={preset_epochs}"
    epochs = int(epochs_for_steps("flashocc_r50_tiny", 1600, 60).split("=")[1])
    assert epochs * 60 >= 1600 > (epochs - 1) * 60 and epochs > preset_epochs
    # an epoch is a number of batches: the full preset's batch 8 makes 60 samples 8 updates
    assert get_config("effocc_fusion_r18").data.batch_size == 8
    assert epochs_for_steps("effocc_fusion_r18", 800, 60) == "train.epochs=100"



def test_training_samples_are_the_frames_train_fusion_trains_on(data_root):
    from bench.common import training_samples
    from datasets.build import dataset_from_config, default_split
    from datasets.prepare_nuscenes import info_path
    from occ.config import get_config
    dataset = dataset_from_config(get_config("flashocc_r50_tiny"), data_root,
                                  info_path(data_root, default_split(data_root, "train")), train=True)
    assert [s["token"] for s in training_samples(data_root)] == [info["token"] for info in dataset.infos]


def test_training_samples_of_a_fraction_are_those_of_the_scenes_select_scenes_keeps(monkeypatch):
    from bench.common import training_samples
    from occ.data import select_scenes
    samples = [{"token": f"{s}-{k}", "scene_token": f"scene-{s}", "scene_name": f"scene-{s:04d}"}
               for s in range(10) for k in range(3)]
    monkeypatch.setattr(bench.common, "default_split", lambda root, kind: f"{kind} of {root}")
    monkeypatch.setattr(bench.common, "split_samples",
                        lambda root, split: list(samples) if split == "train of root" else None)
    dataset = types.SimpleNamespace(infos=list(samples))
    select_scenes(dataset, 0.4)   # what train_fusion.py --scenes-fraction 0.4 does
    picked = training_samples("root", 0.4)
    assert picked == dataset.infos and len(picked) == 12
