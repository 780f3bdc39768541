"""Checkpoints: atomic save, checked load, partial load with a report, latest-checkpoint lookup.

A training checkpoint is a dict {model, ema, optimizer, scheduler, step, epoch, config, ...}
written with torch.save to a temporary file in the same folder and renamed over the target, so a
crash mid-write leaves the previous file intact. The resolved config is also written as
`config.json` next to it. Everything stored is plain (tensors, numbers, strings, lists, dicts), so
it loads with torch.load(weights_only=True).
"""
import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from occ.config import config_to_dict
from occ.errors import UsageError

CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(UsageError):
    """A checkpoint file that cannot be used: unreadable, truncated or of the wrong kind."""


def checkpoint_path(work_dir, step):
    """work_dir/step_00001234.pt, the name `latest_checkpoint` looks for."""
    return Path(work_dir) / f"step_{step:08d}.pt"


def latest_checkpoint(work_dir):
    """The step_*.pt file with the highest step in `work_dir`, or None if there is none."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    steps = {int(m.group(1)): p for p in work_dir.iterdir() if (m := CHECKPOINT_NAME.match(p.name))}
    return steps[max(steps)] if steps else None


def _atomic_write(path, write):
    """Call write(file_object) on a temporary file next to `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())   # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_config_json(folder, config, run=None):
    """folder/config.json: {"config": the resolved config, "run": how the run was started (its
    command line and settings), or null}; written atomically."""
    text = json.dumps({"config": config_to_dict(config), "run": run}, indent=2, sort_keys=True).encode()
    _atomic_write(Path(folder) / "config.json", lambda f: f.write(text))


def save_checkpoint(path, **state):
    """Atomically torch.save `state` to `path`; a `config` entry (dataclass or dict) is stored as a
    plain dict and also written, with the `run` entry, to config.json in the same folder."""
    if state.get("config") is not None:
        state["config"] = config_to_dict(state["config"])
    _atomic_write(path, lambda f: torch.save(state, f))
    if state.get("config") is not None:
        write_config_json(Path(path).parent, state["config"], state.get("run"))


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by `save_checkpoint`; clear errors naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, corrupt, or not a torch.save "
                              f"file): {type(error).__name__}: {error}") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a checkpoint of this project: expected a dict with a "
                              f"'model' entry, found {found}")
    return checkpoint


def model_weights(checkpoint, use_ema=True, path="checkpoint"):
    """The model state dict of a loaded checkpoint: the EMA weights by default, else the raw ones."""
    if not use_ema:
        return checkpoint["model"]
    if checkpoint.get("ema") is None:
        raise CheckpointError(f"{path} holds no EMA weights; load the raw weights instead (use_ema=False)")
    return checkpoint["ema"]["model"]


@dataclasses.dataclass
class LoadReport:
    loaded: list            # keys copied into the model
    missing: list           # model keys left at their current values
    unexpected: list        # checkpoint keys (inside the prefixes) the model does not have
    shape_mismatched: list  # (key, checkpoint shape, model shape), not loaded
    ignored: list           # checkpoint keys outside the requested prefixes

    def summary(self, max_names=20):
        lines = []
        for title, names in (("loaded", self.loaded), ("missing (kept as initialised)", self.missing),
                             ("unexpected (not in the model)", self.unexpected),
                             ("shape mismatch (not loaded)", [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}"
                                                              for k, a, b in self.shape_mismatched]),
                             ("outside the requested prefixes", self.ignored)):
            lines.append(f"{title}: {len(names)}")
            lines += [f"  {name}" for name in names[:max_names]]
            if len(names) > max_names:
                lines.append(f"  ... and {len(names) - max_names} more")
        return "\n".join(lines)


def load_partial(model, state_dict, prefixes=None):
    """Copy the tensors of `state_dict` whose key starts with one of `prefixes` (all when None) and
    whose name and shape match the model; return a LoadReport of what was and was not loaded.
    Raises when nothing at all could be loaded (almost certainly the wrong checkpoint)."""
    prefixes = tuple(prefixes) if prefixes is not None else None
    model_state = model.state_dict()
    selected, ignored = {}, []
    for key, value in state_dict.items():
        if prefixes is None or key.startswith(prefixes):
            selected[key] = value
        else:
            ignored.append(key)
    to_load, unexpected, mismatched = {}, [], []
    for key, value in selected.items():
        if key not in model_state:
            unexpected.append(key)
        elif value.shape != model_state[key].shape:
            mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            to_load[key] = value
    if not to_load:
        raise CheckpointError(f"no tensor of the checkpoint matches the model (prefixes {prefixes}); "
                              f"{len(unexpected)} unexpected keys, {len(mismatched)} shape mismatches")
    model.load_state_dict(to_load, strict=False)
    missing = [key for key in model_state if key not in to_load]
    return LoadReport(sorted(to_load), missing, unexpected, mismatched, ignored)
