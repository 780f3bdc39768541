"""What the benchmarks share: the key frames of a split, trivial predictors, training and scoring.

The benchmarks drive the scripts (train_fusion.py, train_distill.py, pretrain_occbev.py,
evaluate.py, datasets/make_synthetic.py, datasets/prepare_nuscenes.py, datasets/prepare_occbev.py)
only through their `main(argv)`, and otherwise import `occ/` (and `cli.budget_args`, the scripts'
shared command-line module, and from `datasets.build` `default_split`, the split the scripts
choose by default, and `ensure_synthetic_world`, the default world the demo and the benchmarks run
on). Two exceptions read the dataset themselves: bench/data.py, which measures the reader, and
bench/free_bias.py, which needs a model's logits rather than its labels.
So the key frames of a split are listed here from the nuScenes tables (plain JSON) and the
devkit's scene splits, the same scenes as the info files of datasets/prepare_nuscenes.py
(which assigns scenes with `nuscenes.utils.splits.create_splits_scenes`), in the same order (scene
name, then timestamp), without reading the info files.
"""
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402
import train_fusion  # noqa: E402
from cli import budget_args  # noqa: E402
from datasets.build import default_split  # noqa: E402
from occ.checkpoint import CHECKPOINT_NAME, latest_checkpoint, load_checkpoint  # noqa: E402
from occ.config import get_config  # noqa: E402
from occ.data import scene_fraction  # noqa: E402
from occ.loop import config_differences  # noqa: E402
from occ.optim import optimizer_steps_per_epoch  # noqa: E402

# the nuScenes version (table folder) of each info split
SPLIT_VERSIONS = {"train": "v1.0-trainval", "val": "v1.0-trainval",
                  "mini_train": "v1.0-mini", "mini_val": "v1.0-mini"}


def score_constant(data_root, tokens, label, grid_shape, pred_dir, benchmark="occ3d"):
    """evaluate.py --benchmark BENCHMARK's metrics of predicting `label` everywhere (a trivial
    predictor): one <token>.npz holding `semantics` (uint8, grid_shape) per token in pred_dir,
    scored with --pred-dir; the metrics also go to pred_dir/metrics.json."""
    os.makedirs(pred_dir, exist_ok=True)
    grid = np.full(grid_shape, label, dtype=np.uint8)
    for token in tokens:
        np.savez_compressed(os.path.join(pred_dir, f"{token}.npz"), semantics=grid)
    return evaluate.main(["--benchmark", benchmark, "--pred-dir", pred_dir, "--data-root", data_root,
                          "--out", os.path.join(pred_dir, "metrics.json")])


def read_table(data_root, version, name):
    with open(os.path.join(data_root, version, f"{name}.json")) as f:
        return json.load(f)


def split_samples(data_root, split):
    """The key frames of an info split as dicts {token, scene_token, scene_name}, ordered by scene
    name, then timestamp (the records of its info file, without reading it)."""
    from nuscenes.utils.splits import create_splits_scenes

    version = SPLIT_VERSIONS[split]
    names = set(create_splits_scenes()[split])
    scenes = {scene["token"]: scene["name"] for scene in read_table(data_root, version, "scene")
              if scene["name"] in names}
    samples = [sample for sample in read_table(data_root, version, "sample") if sample["scene_token"] in scenes]
    samples.sort(key=lambda sample: (scenes[sample["scene_token"]], sample["timestamp"]))
    return [{"token": sample["token"], "scene_token": sample["scene_token"],
             "scene_name": scenes[sample["scene_token"]]} for sample in samples]


def training_samples(data_root, fraction=1.0):
    """The key frames (split_samples) of the scripts' default training split that lie in the seeded
    `fraction` of its scenes: the samples train_fusion.py --scenes-fraction trains on and
    train_distill.py --labelled-fraction labels."""
    samples = split_samples(data_root, default_split(data_root, "train"))
    scenes = scene_fraction(samples, fraction)
    return [sample for sample in samples if sample["scene_token"] in scenes]


def train_and_score(models, selected, data_root, work_root, train_args, score_args, results, steps=None,
                    minutes=None):
    """Trains each (modality, preset) of `models` whose modality is in `selected` with
    train_fusion.py (--config PRESET --data-root DATA_ROOT --no-val plus `train_args`) into
    WORK_ROOT/PRESET for `steps` optimizer steps, else `minutes` (train_once: a stopped run is
    continued, a finished one read back) and scores its last checkpoint with evaluate.py
    (score_once: `score_args` plus --data-root). Adds {"modality (preset)": metrics} to `results`;
    returns ({modality: optimizer steps}, {modality: minutes trained now}; a run read back has none)."""
    steps_done, minutes_spent = {}, {}
    for modality, preset in models:
        if modality not in selected:
            continue
        print(f"\n=== {modality}: {preset}, {' '.join(train_args)} ===", flush=True)
        checkpoint, steps_done[modality], spent = train_once(
            train_fusion, os.path.join(work_root, preset),
            ["--config", preset, "--data-root", data_root, "--no-val", *train_args], steps, minutes)
        if spent is not None:
            minutes_spent[modality] = spent
        results[f"{modality} ({preset})"] = score_once(checkpoint, [*score_args, "--data-root", data_root])
    return steps_done, minutes_spent


def train_once(script, work_dir, argv, steps=None, minutes=None):
    """One training run of a benchmark, trained at most once, so that a benchmark stopped half-way
    (an interruption, the end of a session) goes on where it stopped when run again. Trains
    `script.main` (train_fusion.py, train_distill.py or pretrain_occbev.py) into `work_dir` with
    `argv` plus the budget (--max-steps `steps`, else --max-minutes `minutes`). A run that already
    reached `steps` is not trained again (if its config is still the one `argv` asks for:
    check_finished_run); one that stopped before is continued with --resume (which checks it). A
    --max-minutes run cannot be continued to the same budget, so a work dir with checkpoints is
    refused then. Only the last checkpoint of a run is kept (a run saves one per epoch, each as
    large as the model and its optimizer state: gigabytes over a benchmark's runs). Returns (last
    checkpoint, its step, minutes trained now, None if none)."""
    latest = latest_checkpoint(work_dir)
    if latest is not None:
        step = int(CHECKPOINT_NAME.match(latest.name).group(1))
        if steps is None:
            sys.exit(f"error: {work_dir} holds checkpoints (latest {latest.name}) of an earlier run with a minutes "
                     f"budget, which cannot be continued to the same budget; remove the folder or give a step budget")
        if step >= steps:
            check_finished_run(script, latest, ["--work-dir", work_dir, *budget_args(steps, minutes), *argv])
            print(f"{work_dir}: trained already ({latest.name}), not trained again", flush=True)
            return keep_only_latest(work_dir), step, None
        print(f"{work_dir}: continuing from {latest.name} to step {steps}", flush=True)
    started = time.perf_counter()
    position = script.main(["--work-dir", work_dir, *budget_args(steps, minutes),
                            *(["--resume"] if latest is not None else []), *argv])
    return keep_only_latest(work_dir), position.step, (time.perf_counter() - started) / 60


def check_finished_run(script, checkpoint, argv):
    """Refuse to read back the finished run of `checkpoint` when the config that `script` builds
    from `argv` (its parse_args and build_config) differs from the checkpoint's: an override
    changed, or a preset's default since the run was trained. The message names the fields."""
    cfg = script.build_config(script.parse_args(argv))
    stored = load_checkpoint(checkpoint).get("config") or {}
    differences = config_differences(stored, cfg)   # the preset's name is a field too
    if differences:
        sys.exit(f"error: {checkpoint.parent} holds a finished run ({checkpoint.name}) of another config than "
                 f"this benchmark's now; remove the folder to train it again:\n  " + "\n  ".join(differences))


def epochs_for_steps(config, steps, num_samples):
    """The `train.epochs=N` override that lets a run of preset `config` on `num_samples` training
    samples take `steps` optimizer updates: the preset's own epochs, or as many more as the step
    budget needs (a preset's epochs end a run early on few samples: flashocc_r50_tiny's 24 epochs
    of 60 samples are 1440 updates). The override equals the preset's value when that suffices,
    so runs it does not lengthen keep their config (and can be resumed)."""
    cfg = get_config(config)
    steps_per_epoch = optimizer_steps_per_epoch(math.ceil(num_samples / cfg.data.batch_size))
    return f"train.epochs={max(cfg.train.epochs, math.ceil(steps / steps_per_epoch))}"


def keep_only_latest(work_dir):
    """Deletes every checkpoint step_N.pt of `work_dir` but the latest; returns the latest."""
    latest = latest_checkpoint(work_dir)
    for path in Path(work_dir).iterdir():
        if CHECKPOINT_NAME.match(path.name) and path.name != latest.name:
            path.unlink()
    return latest


def score_once(checkpoint, argv):
    """evaluate.main(--ckpt checkpoint + argv), written next to the checkpoint as
    step_N.<tag>.metrics.json, or what an earlier call with the same checkpoint and argv wrote
    there; <tag> is the start of the SHA-256 of argv, so other evaluation arguments score again."""
    tag = hashlib.sha256(json.dumps(list(argv)).encode()).hexdigest()[:12]
    out_path = f"{str(checkpoint)[:-len('.pt')]}.{tag}.metrics.json"
    if os.path.isfile(out_path):
        with open(out_path) as f:
            return json.load(f)
    return evaluate.main(["--ckpt", str(checkpoint), *argv, "--out", out_path])


def mean_and_spread(values):
    """(mean, population standard deviation, min, max) of a list of numbers."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std()), float(values.min()), float(values.max())
