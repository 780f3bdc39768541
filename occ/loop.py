"""The training loop of train_fusion.py, train_distill.py and pretrain_occbev.py, and its machinery.

A training script parses its options, builds its config, datasets, model and loss, then

    set_seed(cfg.train.seed)                       # seeded initial weights, equal on every process
    model = build_model(cfg)
    run = setup_run(cfg, model, train_set, collate, work_dir=..., resume=..., settings=...)
    fit(run, loss_fn, validate, max_steps=..., max_minutes=..., ckpt_every=..., val_every=...)

`setup_run`
  1. checks the work dir: a fresh run refuses one that holds checkpoints (unless `overwrite`),
     a lock file stops a second run on it, partial files of interrupted saves are removed;
  2. creates the Accelerator (mixed precision, gradient accumulation), the optimizer and the
     training DataLoader, and prepares model, optimizer and loader (which moves the model to its
     device); only then builds the EMA, so the EMA lives where the model's parameters live;
  3. builds the LR scheduler (not prepared: it is stepped once per optimizer update here);
  4. with `resume`: refuses a checkpoint whose config or run settings differ from this run's
     (listing the differences), then restores model, EMA, optimizer, scheduler and RNG states;
  5. writes config.json (config + command line + settings) and opens TensorBoard.
`fit` runs the epochs:

    for epoch in range(position.epoch, cfg.train.epochs):
        dataset.set_epoch(epoch); sampler.set_epoch(epoch)   # augmentation from (seed, epoch, index)
        for batch in loader (without the micro-batches already done):
            train_step: forward, loss, backward; on an accumulation boundary clip the gradients,
                        step optimizer, scheduler and EMA
            after an optimizer step: log to TensorBoard; save every `ckpt_every` steps; validate
            every `val_every` steps; stop (and save) when a budget is spent or SIGTERM/SIGINT came
        at the end of an epoch: save every cfg.train.ckpt_interval epochs, validate every
        cfg.train.val_interval epochs

Steps, schedules and EMA updates count optimizer updates (one per `grad_accum` micro-batches).
Checkpoints are written only right after an optimizer step and hold everything a resumed run
needs to continue bit-exactly (docs/guarantees.md): weights, EMA, optimizer, scheduler, the
position in the epoch and every process's RNG states.

Several CPU processes (gloo): `accelerate launch --multi_gpu --num_processes 2 script.py --cpu ...`
(accelerate 1.15's `--cpu` launcher alone starts one process without an MPI hostfile).
"""
import dataclasses
import json
import os
import random
import signal
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather_object
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from occ.checkpoint import (CHECKPOINT_NAME, checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint,
                            write_config_json)
from occ.config import Config, config_to_dict
from occ.data import make_train_loader, move_batch
from occ.ema import EMA
from occ.errors import UsageError
from occ.optim import build_optimizer, build_scheduler, optimizer_steps_per_epoch

LOCK_NAME = ".lock"
# Config fields that may differ between a checkpoint and the run that resumes it: they do not change
# what is computed (the augmentation does not depend on the worker count).
RESUMABLE_CHANGES = ("data.num_workers",)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and every loss term."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training; a checkpoint of the last step was saved."""

    def __init__(self, signum, checkpoint):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"training stopped by {signal.Signals(signum).name}; the last step is saved in {checkpoint} "
                         f"(continue with --resume)")


@dataclasses.dataclass
class TrainingPosition:
    step: int = 0            # optimizer updates done
    epoch: int = 0           # epoch in progress
    batches_done: int = 0    # micro-batches of that epoch already consumed (per process)


@dataclasses.dataclass
class Run:
    """Everything a training run holds between `setup_run` and the end of `fit`."""
    cfg: object
    work_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module          # prepared by Accelerate (possibly DDP-wrapped)
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: torch.utils.data.DataLoader
    train_set: torch.utils.data.Dataset
    position: TrainingPosition
    record: dict                    # {"command": [...], "settings": {...}}: how the run was started
    lock: object = None             # WorkDirLock of the main process
    writer: SummaryWriter = None    # main process only
    samples_skipped: int = 0        # bad samples replaced (datasets with skip_bad_samples)

    def log(self, message):
        self.accelerator.print(message)


# ------------------------------------------------------------------------------------ work dir

class WorkDirLock:
    """work_dir/.lock, created exclusively and holding {pid, host}; a second run on the same work
    dir is refused. A lock whose process is gone (same host) is stale and taken over."""

    def __init__(self, work_dir):
        self.path = Path(work_dir) / LOCK_NAME
        self.held = False

    def acquire(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._remove_if_stale():
                    raise UsageError(self._held_message()) from None
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
            self.held = True
            return self
        raise UsageError(self._held_message())

    def _owner(self):
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _remove_if_stale(self):
        owner = self._owner()
        if owner is None:   # unreadable or half-written: only stale if it is old
            try:
                stale = time.time() - self.path.stat().st_mtime > 60
            except FileNotFoundError:
                return True
        elif owner.get("host") != socket.gethostname():
            return False
        else:
            stale = not process_alive(owner.get("pid", -1))
        if stale:
            warnings.warn(f"removing the stale lock {self.path} (its run {owner} is gone)")
            self.path.unlink(missing_ok=True)
        return stale

    def _held_message(self):
        owner = self._owner() or {}
        return (f"work dir {self.path.parent} is in use by another run (process {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')}, lock file {self.path}); use another --work-dir, or remove the lock "
                f"file if that run is gone")

    def release(self):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_work_dir(work_dir, resume, overwrite):
    """Check and lock `work_dir` (main process). Refuses a file, a fresh run into a folder holding
    checkpoints (unless overwrite: then they are deleted), --resume without a checkpoint; removes
    partial files of interrupted saves. Returns the WorkDirLock."""
    work_dir = Path(work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise UsageError(f"--work-dir {work_dir} is a file, not a folder")
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = WorkDirLock(work_dir).acquire()
    try:
        for partial in work_dir.glob(".*.tmp"):   # left by a save that was killed mid-write
            partial.unlink()
        checkpoints = sorted(p for p in work_dir.iterdir() if CHECKPOINT_NAME.match(p.name))
        if resume and not checkpoints:
            raise UsageError(f"--resume: no checkpoint step_*.pt in {work_dir}")
        if checkpoints and not resume:
            if not overwrite:
                raise UsageError(f"--work-dir {work_dir} already holds {len(checkpoints)} checkpoint(s) "
                                 f"(latest {checkpoints[-1].name}) of another run: continue it with --resume, "
                                 f"start over with --overwrite (deletes them), or choose another --work-dir")
            for path in checkpoints + [work_dir / "config.json"]:
                path.unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock


# ---------------------------------------------------------------------------------------- set-up

def setup_run(cfg, model, train_set, collate_fn, *, work_dir, resume=False, overwrite=False, cpu=False,
              mixed_precision=None, grad_accum=1, settings=None, command=None):
    """Steps 1-5 of the module docstring. `settings`: the script options that define the run
    (recorded, and compared on resume); `command`: the command line, recorded."""
    if grad_accum < 1:
        raise UsageError(f"--grad-accum must be >= 1, got {grad_accum}")
    if cfg.train.epochs < 1:
        raise UsageError(f"train.epochs must be >= 1, got {cfg.train.epochs}")
    # Accelerate keeps process-wide singletons; a second run in the same process (tests, benchmarks,
    # notebooks) may ask for another precision or accumulation. The process group itself is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum)
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        warnings.warn("--mixed-precision fp16 on the CPU: autocast to float16 is slow and imprecise there; "
                      "use bf16 or no")
    work_dir = Path(work_dir)
    lock = prepare_work_dir(work_dir, resume, overwrite) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    try:
        record = {"command": list(command or []), "settings": dict(settings or {})}
        optimizer = build_optimizer(model, cfg.train)
        loader = make_train_loader(train_set, cfg.data.batch_size, cfg.train.seed, collate_fn, cfg.data.num_workers,
                                   drop_last=accelerator.num_processes > 1,
                                   pin_memory=accelerator.device.type == "cuda")
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_ramp)   # after prepare: on the model's device
        scheduler = build_scheduler(optimizer, cfg.train, optimizer_steps_per_epoch(len(loader), grad_accum))
        position = TrainingPosition()
        if resume:
            latest = latest_checkpoint(work_dir)
            checkpoint = load_checkpoint(latest)
            check_resumable(checkpoint, latest, cfg, record["settings"])
            position = resume_training_state(latest, accelerator, model, ema, optimizer, scheduler, checkpoint)
            accelerator.print(f"resumed from {latest} at step {position.step}, epoch {position.epoch}")
        writer = None
        if accelerator.is_main_process:
            writer = SummaryWriter(str(work_dir / "tensorboard"))
            write_config_json(work_dir, cfg, record)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Run(cfg, work_dir, accelerator, model, ema, optimizer, scheduler, loader, train_set, position, record,
               lock, writer)


def flatten(tree, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(stored, cfg):
    """Lines "key: checkpoint X, now Y", one per config field in which a checkpoint's config
    `stored` (its dict) differs from `cfg`, apart from RESUMABLE_CHANGES. A field the checkpoint
    does not have (it was written before the field existed) counts as its default, which keeps
    what the code did before: a config that sets such a field otherwise differs."""
    new = flatten(config_to_dict(cfg))   # config_to_dict is already JSON-plain
    old = {**flatten(config_to_dict(Config())), **flatten(stored)}
    return [f"{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and key not in RESUMABLE_CHANGES]


def check_resumable(checkpoint, path, cfg, settings):
    """Refuse to resume `checkpoint` (loaded from `path`) with a config (config_differences) or run
    settings that differ from its own."""
    stored = checkpoint.get("config") or {}
    if stored.get("name") != cfg.name:
        raise UsageError(f"--resume: {path} is a run of preset '{stored.get('name')}', but this run is "
                         f"'{cfg.name}'; use the checkpoint's preset or another --work-dir")
    old_settings = (checkpoint.get("run") or {}).get("settings", {})
    new_settings = json.loads(json.dumps(settings))
    differences = config_differences(stored, cfg)
    differences += [f"{key}: checkpoint {old_settings.get(key)!r}, now {new_settings.get(key)!r}"
                    for key in sorted(old_settings.keys() | new_settings.keys())
                    if old_settings.get(key) != new_settings.get(key)]
    if differences:
        raise UsageError(f"--resume: this run's settings differ from those of {path}; resume with the same "
                         f"ones, or start a new run in another --work-dir:\n  " + "\n  ".join(differences))


# ------------------------------------------------------------------------------------ one step

def train_step(accelerator, model, batch, loss_fn, optimizer, scheduler, ema=None, grad_clip=5.0, step=None):
    """One micro-batch under accelerator.accumulate: loss_fn(model, batch) -> dict of named scalar
    losses, summed and back-propagated; on an accumulation boundary the gradients are clipped
    (L2 norm `grad_clip`, None to skip), the optimizer, scheduler and EMA step.
    `model` and `optimizer` must come from accelerator.prepare; `step` (the optimizer updates done)
    only names the step in errors. Returns {"loss", "losses" (detached), "grad_norm" (None between
    boundaries), "optimizer_stepped"}."""
    with accelerator.accumulate(model):
        losses = loss_fn(model, batch)
        loss = sum(losses.values())
        if not torch.isfinite(loss.detach()):
            values = ", ".join(f"{name} {float(value.detach()):.6g}" for name, value in losses.items())
            where = f"at step {step + 1}" if step is not None else "in this step"
            raise NonFiniteLossError(f"non-finite training loss {where}: {values}; lower train.lr or check the "
                                     f"input data")
        accelerator.backward(loss)
        grad_norm = None
        if accelerator.sync_gradients and grad_clip:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stepped = accelerator.sync_gradients and not optimizer.step_was_skipped
    if stepped:
        scheduler.step()
        if ema is not None:
            ema.update(accelerator.unwrap_model(model))
    return {"loss": loss.detach(), "losses": {k: v.detach() for k, v in losses.items()},
            "grad_norm": grad_norm, "optimizer_stepped": stepped}


# ---------------------------------------------------------------------------------------- epochs

def epoch_batches(accelerator, loader, train_set, epoch, skip_batches=0):
    """The prepared `loader` set to `epoch` (sampler and dataset augmentation), without its first
    `skip_batches` micro-batches. Call it before iterating: DataLoader workers copy the dataset
    when the iteration starts."""
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    loader.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader


class StopSignals:
    """While active, SIGTERM and SIGINT only set `signum`; the loop saves and stops at the next
    step boundary. A second SIGINT interrupts at once."""

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # signals reach the main thread only
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this step "
              f"(Ctrl-C again to stop at once)", flush=True)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def agreed(accelerator, flag):
    """True on every process if `flag` is true on any (processes stop together, at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor(float(flag), device=accelerator.device)
    return bool(accelerator.reduce(value, "max").item())


def budget_spent(position, start, max_steps, max_minutes):
    """The reason to stop now (max_steps / max_minutes), or None."""
    if max_steps is not None and position.step >= max_steps:
        return f"--max-steps {max_steps}"
    if max_minutes is not None and (time.monotonic() - start) / 60 >= max_minutes:
        return f"--max-minutes {max_minutes}"
    return None


def fit(run, loss_fn, validate=None, *, max_steps=None, max_minutes=None, ckpt_every=None, val_every=None):
    """Train until cfg.train.epochs, a budget or a stop signal. loss_fn(model, batch) -> dict of
    named scalar losses; validate(run, step) -> metrics dict or None (it logs its own figures; None:
    never validate). Returns the final TrainingPosition; raises TrainingInterrupted after saving
    when SIGTERM / SIGINT stopped it. Releases the work dir's lock however it ends."""
    if max_steps is not None and max_steps <= 0:
        raise UsageError(f"--max-steps must be > 0, got {max_steps}")
    if max_minutes is not None and max_minutes <= 0:
        raise UsageError(f"--max-minutes must be > 0, got {max_minutes}")
    try:
        with StopSignals() as signals:
            position = _fit(run, loss_fn, validate, signals, max_steps, max_minutes, ckpt_every, val_every)
    finally:
        if run.writer is not None:
            run.writer.close()
        if run.lock is not None:
            run.lock.release()
    run.accelerator.end_training()
    return position


def _fit(run, loss_fn, validate, signals, max_steps, max_minutes, ckpt_every, val_every):
    cfg, accelerator = run.cfg, run.accelerator
    start, stop_reason = time.monotonic(), None
    for epoch in range(run.position.epoch, cfg.train.epochs):
        run.model.train()
        skip = run.position.batches_done if epoch == run.position.epoch else 0
        progress = tqdm(total=len(run.loader), initial=skip, desc=f"epoch {epoch}", unit="batch",
                        disable=not accelerator.is_main_process)
        for batch in epoch_batches(accelerator, run.loader, run.train_set, epoch, skip):
            if "num_skipped" in batch:
                run.samples_skipped += int(batch.pop("num_skipped").sum())
            batch = move_batch(batch, accelerator.device)
            result = train_step(accelerator, run.model, batch, loss_fn, run.optimizer, run.scheduler, run.ema,
                                cfg.train.grad_clip, step=run.position.step)
            run.position.batches_done += 1
            progress.update(1)
            if not result["optimizer_stepped"]:
                continue
            run.position.step += 1
            progress.set_postfix(loss=f"{result['loss'].item():.3f}", step=run.position.step)
            if run.writer is not None and run.position.step % cfg.train.log_interval == 0:
                log_step(run, result)
            if ckpt_every and run.position.step % ckpt_every == 0:
                save(run, f"every {ckpt_every} steps")
            if validate and val_every and run.position.step % val_every == 0:
                validate(run, run.position.step)
            if agreed(accelerator, signals.signum is not None):
                progress.close()
                path = save(run, "stop signal")
                raise TrainingInterrupted(signals.signum or signal.SIGTERM, path)
            stop_reason = budget_spent(run.position, start, max_steps, max_minutes)
            if agreed(accelerator, stop_reason is not None):
                stop_reason = stop_reason or "another process's budget"
                break
        progress.close()
        if stop_reason:
            break
        run.position = TrainingPosition(run.position.step, epoch + 1, 0)
        is_last = epoch + 1 == cfg.train.epochs
        if is_last or (epoch + 1) % cfg.train.ckpt_interval == 0:
            save(run, f"end of epoch {epoch}")
        if validate and (is_last or (epoch + 1) % cfg.train.val_interval == 0):
            validate(run, run.position.step)
    if stop_reason:
        run.log(f"stopping at step {run.position.step}: {stop_reason}")
        save(run, stop_reason)
    report_skipped(run)
    return run.position


def report_skipped(run):
    total = run.samples_skipped
    if run.accelerator.num_processes > 1:
        total = int(run.accelerator.reduce(torch.tensor(total, device=run.accelerator.device), "sum").item())
    if total:
        run.log(f"{total} bad sample(s) were skipped (--skip-bad-samples); each is named in the log above")
    if run.writer is not None:
        run.writer.add_scalar("train/samples_skipped", total, run.position.step)


def log_step(run, result):
    step, writer = run.position.step, run.writer
    writer.add_scalar("train/loss", result["loss"].item(), step)
    for name, value in result["losses"].items():
        writer.add_scalar(f"train/{name}", value.item(), step)
    writer.add_scalar("train/lr", run.scheduler.get_last_lr()[0], step)
    if result["grad_norm"] is not None:
        writer.add_scalar("train/grad_norm", float(result["grad_norm"]), step)
    writer.add_scalar("train/samples_skipped", run.samples_skipped, step)


def save(run, reason):
    """A resumable checkpoint of the current position; returns its path."""
    path = checkpoint_path(run.work_dir, run.position.step)
    save_training_state(path, run.accelerator, run.model, run.ema, run.optimizer, run.scheduler, run.position,
                        run.cfg, run=run.record)
    run.log(f"checkpoint ({reason}): {path}")
    return path


def evaluate_with_ema(run, evaluate_fn):
    """Run evaluate_fn(network) on the main process with the EMA weights swapped in, then restore
    the live weights. Returns its result (None on the other processes)."""
    if not run.accelerator.is_main_process:
        return None
    network = run.accelerator.unwrap_model(run.model)
    live_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    run.ema.copy_to(network)
    network.eval()
    try:
        with torch.no_grad():
            return evaluate_fn(network)
    finally:
        network.load_state_dict(live_state)
        network.train()


# ------------------------------------------------------------------------ resumable training state

def rng_state(device=None):
    """This process's python, numpy, torch (and, on a CUDA `device`, that device's) RNG states, as
    plain values that torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "cached_gaussian": cached},
             "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=None):
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def save_training_state(path, accelerator, model, ema, optimizer, scheduler, position, config, **extra):
    """Write a resumable checkpoint (call on every process; the main one writes): model, EMA,
    optimizer, scheduler, position, config and every process's RNG states. Call it right after an
    optimizer step, never between accumulation micro-batches (their gradients are not saved)."""
    if not accelerator.sync_gradients:
        raise RuntimeError("save_training_state called between gradient-accumulation micro-batches; "
                           "save right after an optimizer step")
    rng_per_process = gather_object([rng_state(accelerator.device)])
    if accelerator.is_main_process:
        save_checkpoint(path, model=accelerator.unwrap_model(model).state_dict(),
                        ema=ema.state_dict() if ema is not None else None,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        step=position.step, epoch=position.epoch, batches_done=position.batches_done,
                        num_processes=accelerator.num_processes, rng=rng_per_process, config=config, **extra)
    accelerator.wait_for_everyone()


def resume_training_state(path, accelerator, model, ema, optimizer, scheduler, checkpoint=None):
    """Restore everything `save_training_state` wrote (to `path`; `checkpoint`: its content if
    already loaded) into the given objects, which live on the accelerator's device (tensors are
    copied onto them); set this process's RNG states; return the TrainingPosition to continue from."""
    if checkpoint is None:
        checkpoint = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scheduler", "step", "epoch", "batches_done", "num_processes", "rng")
               if k not in checkpoint]
    if missing:
        raise UsageError(f"{path} is not a resumable training state: it lacks {missing}")
    if checkpoint["num_processes"] != accelerator.num_processes:
        raise UsageError(f"{path} was written by {checkpoint['num_processes']} processes; resume it with "
                         f"the same number (now {accelerator.num_processes}) so the data order continues")
    accelerator.unwrap_model(model).load_state_dict(checkpoint["model"])
    if ema is not None:
        if checkpoint["ema"] is None:
            raise UsageError(f"{path} holds no EMA state to resume")
        ema.load_state_dict(checkpoint["ema"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"][accelerator.process_index], accelerator.device)
    return TrainingPosition(checkpoint["step"], checkpoint["epoch"], checkpoint["batches_done"])
