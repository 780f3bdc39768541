"""Training machinery shared by train_fusion.py, train_distill.py and pretrain_occbev.py.

Functions, not a trainer class. A script's loop reads:

    accelerator = Accelerator(gradient_accumulation_steps=k, mixed_precision=...)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.train)
    loader = make_train_loader(dataset, cfg.data.batch_size, cfg.train.seed, collate_fn, workers)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)   # NOT the scheduler
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_ramp)   # after prepare: on the model's device
    scheduler = build_scheduler(optimizer, cfg.train, optimizer_steps_per_epoch(len(loader), k))
    position = TrainingPosition()
    if resume:
        position = resume_training_state(path, accelerator, model, ema, optimizer, scheduler)
    for epoch in range(position.epoch, cfg.train.epochs):
        skip = position.batches_done if epoch == position.epoch else 0
        for batch in epoch_batches(accelerator, loader, epoch, skip):
            result = train_step(accelerator, model, batch, loss_fn, optimizer, scheduler, ema,
                                cfg.train.grad_clip)
            position.batches_done += 1
            position.step += result["optimizer_stepped"]
            ...   # log, validate, save_training_state(...) right after an optimizer step
        position = TrainingPosition(position.step, epoch + 1, 0)

Steps, schedules and EMA updates count optimizer updates (one per `k` micro-batches). The scheduler
is a plain LambdaLR stepped here once per update: do not pass it to accelerator.prepare (which
would step it once per process). Sample order depends only on (seed, epoch), so a resumed run
sees exactly the batches the interrupted one had left; random data augmentation is reproduced
after a resume only if the dataset draws it from (seed, epoch, index), not from a running RNG.

Several CPU processes (gloo): `torchrun --nproc_per_node 2 script.py ...` with Accelerator(cpu=True).
(`accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.15: its multi-CPU
launcher needs an mpirun hostfile.)
"""
import dataclasses
import math
import random

import numpy as np
import torch
from accelerate.utils import gather_object
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler

from occ.checkpoint import load_checkpoint, save_checkpoint

BACKBONE_PREFIX = "img_backbone."   # parameters that get train.backbone_lr_mult


# ------------------------------------------------------------------------ optimizer, schedules

def build_optimizer(model, cfg_train):
    """AdamW (cfg_train.lr, cfg_train.weight_decay on every parameter, as the published configs)
    with the image backbone in its own group at lr * cfg_train.backbone_lr_mult. Frozen parameters
    (requires_grad False, e.g. a distillation teacher) are not optimised."""
    if cfg_train.optimizer != "adamw":
        raise ValueError(f"train.optimizer={cfg_train.optimizer!r} is not supported: only 'adamw'")
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith(BACKBONE_PREFIX) else rest).append(param)
    if cfg_train.backbone_lr_mult != 1.0 and not backbone:
        raise ValueError(f"train.backbone_lr_mult={cfg_train.backbone_lr_mult} but the model has no "
                         f"trainable parameter under '{BACKBONE_PREFIX}'")
    groups = [{"params": rest, "lr": cfg_train.lr}] if rest else []
    if backbone:
        groups.append({"params": backbone, "lr": cfg_train.lr * cfg_train.backbone_lr_mult})
    return torch.optim.AdamW(groups, lr=cfg_train.lr, weight_decay=cfg_train.weight_decay)


def linear_warmup(it, warmup_iters, warmup_ratio):
    """Factor rising linearly from warmup_ratio at iteration 0 to 1 at warmup_iters, then 1."""
    if it >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)


def warmup_step_factor(warmup_iters, warmup_ratio, step_iters, gamma=0.1):
    """lr factor(it) = warmup(it) * gamma ** (number of step_iters <= it)."""
    step_iters = sorted(step_iters)

    def factor(it):
        return linear_warmup(it, warmup_iters, warmup_ratio) * gamma ** sum(it >= s for s in step_iters)
    return factor


def warmup_cosine_factor(warmup_iters, warmup_ratio, total_iters, min_ratio=1e-3):
    """lr factor(it) = warmup(it) * (min_ratio + (1 - min_ratio) * (1 + cos(pi * it / total)) / 2)."""
    def factor(it):
        progress = min(it / total_iters, 1.0)
        cosine = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return linear_warmup(it, warmup_iters, warmup_ratio) * cosine
    return factor


def optimizer_steps_per_epoch(num_batches, accumulation_steps=1):
    """Optimizer updates per epoch of `num_batches` micro-batches (the last partial group steps)."""
    return math.ceil(num_batches / accumulation_steps)


def build_scheduler(optimizer, cfg_train, steps_per_epoch):
    """LambdaLR in optimizer updates: linear warmup (cfg_train.warmup_iters, warmup_ratio), then
    'step' (x lr_gamma at each of lr_step_epochs) or 'cosine' over cfg_train.epochs."""
    if cfg_train.lr_schedule == "step":
        factor = warmup_step_factor(cfg_train.warmup_iters, cfg_train.warmup_ratio,
                                    [e * steps_per_epoch for e in cfg_train.lr_step_epochs], cfg_train.lr_gamma)
    elif cfg_train.lr_schedule == "cosine":
        factor = warmup_cosine_factor(cfg_train.warmup_iters, cfg_train.warmup_ratio,
                                      max(cfg_train.epochs * steps_per_epoch, 1))
    else:
        raise ValueError(f"train.lr_schedule={cfg_train.lr_schedule!r}: expected 'step' or 'cosine'")
    return LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------- data order

class EpochShuffleSampler(Sampler):
    """A permutation of range(num_samples) that depends only on (seed, epoch)."""

    def __init__(self, num_samples, seed, shuffle=True):
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self):
        return self.num_samples


def make_train_loader(dataset, batch_size, seed, collate_fn=None, num_workers=0, drop_last=False):
    """A DataLoader whose order is EpochShuffleSampler(seed, epoch) and which never draws from the
    global torch RNG (it has its own generator for worker seeds). Prepare it with Accelerate:
    each of P processes then takes every P-th batch, so P processes with batch_size b see the same
    global batches as one process with batch_size P * b (when the batch count divides by P)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffleSampler(len(dataset), seed),
                      collate_fn=collate_fn, num_workers=num_workers, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed))


def epoch_batches(accelerator, loader, epoch, skip_batches=0):
    """The prepared `loader` set to `epoch`, without its first `skip_batches` micro-batches."""
    loader.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader


def sample_scene_fraction(scene_tokens, fraction, seed=42):
    """The labelled scenes of SPEC 3 / 4: random.seed(seed); random.sample(sorted(tokens), N) with
    N = round(fraction * number of scenes). Uses its own Random, leaving the global RNG alone."""
    tokens = list(scene_tokens)
    if len(set(tokens)) != len(tokens):
        raise ValueError("scene tokens contain duplicates")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"scene fraction must be in (0, 1], got {fraction}")
    count = round(fraction * len(tokens))
    if count == 0:
        raise ValueError(f"scene fraction {fraction} of {len(tokens)} scenes selects no scene")
    return random.Random(seed).sample(sorted(tokens), count)


# ----------------------------------------------------------------------------------- one step

def train_step(accelerator, model, batch, loss_fn, optimizer, scheduler, ema=None, grad_clip=5.0):
    """One micro-batch under accelerator.accumulate: loss_fn(model, batch) -> dict of named scalar
    losses, summed and back-propagated; on an accumulation boundary the gradients are clipped
    (L2 norm `grad_clip`, None to skip), the optimizer, scheduler and EMA step.
    `model` and `optimizer` must come from accelerator.prepare. Returns {"loss", "losses"
    (detached), "grad_norm" (None between boundaries), "optimizer_stepped"}."""
    with accelerator.accumulate(model):
        losses = loss_fn(model, batch)
        loss = sum(losses.values())
        if not torch.isfinite(loss.detach()):
            values = {name: float(value.detach()) for name, value in losses.items()}
            raise FloatingPointError(f"non-finite training loss: {values}")
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


# ------------------------------------------------------------------------ resumable training state

@dataclasses.dataclass
class TrainingPosition:
    step: int = 0            # optimizer updates done
    epoch: int = 0           # epoch in progress
    batches_done: int = 0    # micro-batches of that epoch already consumed (per process)


def rng_state():
    """This process's python, numpy, torch (and CUDA) RNG states, as plain picklable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "cached_gaussian": cached},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path, accelerator, model, ema, optimizer, scheduler, position, config, **extra):
    """Write a resumable checkpoint (call on every process; the main one writes): model, EMA,
    optimizer, scheduler, position, config and every process's RNG states. Call it right after an
    optimizer step, never between accumulation micro-batches (their gradients are not saved)."""
    if not accelerator.sync_gradients:
        raise RuntimeError("save_training_state called between gradient-accumulation micro-batches; "
                           "save right after an optimizer step")
    rng_per_process = gather_object([rng_state()])
    if accelerator.is_main_process:
        save_checkpoint(path, model=accelerator.unwrap_model(model).state_dict(),
                        ema=ema.state_dict() if ema is not None else None,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        step=position.step, epoch=position.epoch, batches_done=position.batches_done,
                        num_processes=accelerator.num_processes, rng=rng_per_process, config=config, **extra)
    accelerator.wait_for_everyone()


def resume_training_state(path, accelerator, model, ema, optimizer, scheduler):
    """Restore everything `save_training_state` wrote into the given objects, set this process's
    RNG states, and return the TrainingPosition to continue from."""
    checkpoint = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scheduler", "step", "epoch", "batches_done", "num_processes", "rng")
               if k not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a resumable training state: it lacks {missing}")
    if checkpoint["num_processes"] != accelerator.num_processes:
        raise ValueError(f"{path} was written by {checkpoint['num_processes']} processes; resume it with "
                         f"the same number (now {accelerator.num_processes}) so the data order continues")
    accelerator.unwrap_model(model).load_state_dict(checkpoint["model"])
    if ema is not None:
        if checkpoint["ema"] is None:
            raise ValueError(f"{path} holds no EMA state to resume")
        ema.load_state_dict(checkpoint["ema"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"][accelerator.process_index])
    return TrainingPosition(checkpoint["step"], checkpoint["epoch"], checkpoint["batches_done"])
