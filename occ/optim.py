"""The optimizer and the learning-rate schedules, counted in optimizer updates.

AdamW with the image backbone in its own parameter group; a LambdaLR of linear warm-up times a
step or cosine decay. The scheduler is stepped by the training loop once per optimizer update
(never passed to accelerator.prepare, which would step it once per process).
"""
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from occ.errors import UsageError

BACKBONE_PREFIX = "img_backbone."   # parameters that get train.backbone_lr_mult


def build_optimizer(model, cfg_train):
    """AdamW (cfg_train.lr, cfg_train.weight_decay on every parameter, as the published configs)
    with the image backbone in its own group at lr * cfg_train.backbone_lr_mult. Frozen parameters
    (requires_grad False, e.g. a distillation teacher) are not optimised."""
    if cfg_train.optimizer != "adamw":
        raise UsageError(f"train.optimizer={cfg_train.optimizer!r} is not supported: only 'adamw'")
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith(BACKBONE_PREFIX) else rest).append(param)
    if cfg_train.backbone_lr_mult != 1.0 and not backbone:
        raise UsageError(f"train.backbone_lr_mult={cfg_train.backbone_lr_mult} but the model has no "
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
    'step' (x lr_gamma at each of lr_step_epochs) or 'cosine' over cfg_train.epochs (over
    cfg_train.cosine_steps updates when > 0)."""
    if cfg_train.lr_schedule == "step":
        factor = warmup_step_factor(cfg_train.warmup_iters, cfg_train.warmup_ratio,
                                    [e * steps_per_epoch for e in cfg_train.lr_step_epochs], cfg_train.lr_gamma)
    elif cfg_train.lr_schedule == "cosine":
        factor = warmup_cosine_factor(cfg_train.warmup_iters, cfg_train.warmup_ratio,
                                      cfg_train.cosine_steps or max(cfg_train.epochs * steps_per_epoch, 1))
    else:
        raise UsageError(f"train.lr_schedule={cfg_train.lr_schedule!r}: expected 'step' or 'cosine'")
    return LambdaLR(optimizer, factor)
