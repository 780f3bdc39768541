"""The training loop shared by train_fusion.py, train_distill.py and pretrain_occbev.py.

A script parses its arguments (`add_training_args` adds the common ones), builds its config,
datasets, model and loss, then

    set_seed(cfg.train.seed)                     # before building the model: seeded initial weights
    model = build_model(cfg)
    run = setup_run(args, cfg, model, train_set, collate)
    fit(run, args, loss_fn, validate)            # validate(run, step) -> metrics dict or None

`setup_run` creates the Accelerator, EMA, optimizer, loader and scheduler, resumes from the latest
checkpoint with --resume, writes config.json and opens TensorBoard. `fit` runs epochs with tqdm,
logs every loss to TensorBoard, saves atomic resumable checkpoints (every `train.ckpt_interval`
epochs, every --ckpt-every steps, and when a --max-steps / --max-minutes budget stops it) and
validates (every `train.val_interval` epochs and every --val-every steps). `make_validate` is the
occupancy validation (EMA weights, mIoU to TensorBoard); `scene_fraction` / `select_scenes` pick the
seeded scene fraction of SPEC 3 / 4 that train_fusion.py trains on and train_distill.py labels.
"""
import dataclasses
import json
import math
import os
import time

import torch
from accelerate import Accelerator
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets.build import move_batch
from occ.checkpoint import checkpoint_path, latest_checkpoint
from occ.config import config_to_dict
from occ.ema import EMA
from occ.engine import (TrainingPosition, build_optimizer, build_scheduler, epoch_batches, make_train_loader,
                        optimizer_steps_per_epoch, resume_training_state, sample_scene_fraction, save_training_state,
                        train_step)
from occ.evaluation import occupancy_scores, predict
from occ.metrics import OCC3D_CLASS_NAMES, OCC3D_FREE
from occ.visualize import gt_vs_pred_image


def budget_args(steps, minutes):
    """The --max-steps / --max-minutes arguments of a training budget: `steps` when given, else `minutes`
    (for scripts that drive the training scripts, e.g. the benchmarks)."""
    return ["--max-steps", str(steps)] if steps else ["--max-minutes", str(minutes)]


def add_training_args(parser):
    """The command-line options every training script shares."""
    parser.add_argument("--config", required=True, help="preset name, e.g. effocc_fusion_r18 or effocc_fusion_r18_tiny")
    parser.add_argument("--data-root", required=True, help="nuScenes-format root holding occ_infos_<split>.pkl")
    parser.add_argument("--work-dir", required=True, help="checkpoints, config.json and TensorBoard logs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.lr=1e-3 data.batch_size=2")
    parser.add_argument("--train-split", help="info split to train on (default: train, or mini_train)")
    parser.add_argument("--val-split", help="info split to validate on (default: val, or mini_val)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --work-dir")
    parser.add_argument("--max-steps", type=int, help="stop (and save) after this many optimizer steps")
    parser.add_argument("--max-minutes", type=float, help="stop (and save) after this much training time")
    parser.add_argument("--ckpt-every", type=int, help="also save every N optimizer steps")
    parser.add_argument("--val-every", type=int, help="also validate every N optimizer steps")
    parser.add_argument("--no-val", action="store_true", help="never validate")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="overrides accelerate's setting")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    return parser


@dataclasses.dataclass
class Run:
    """Everything a training run holds between set-up and the end of `fit`."""
    cfg: object
    work_dir: str
    accelerator: Accelerator
    model: torch.nn.Module          # prepared by Accelerate (possibly DDP-wrapped)
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: torch.utils.data.DataLoader
    position: TrainingPosition
    writer: SummaryWriter = None    # main process only

    def log(self, message):
        self.accelerator.print(message)


def setup_run(args, cfg, model, train_set, collate_fn):
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision,
                              gradient_accumulation_steps=args.grad_accum)
    os.makedirs(args.work_dir, exist_ok=True)
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_ramp)
    optimizer = build_optimizer(model, cfg.train)
    loader = make_train_loader(train_set, cfg.data.batch_size, cfg.train.seed, collate_fn, cfg.data.num_workers,
                               drop_last=accelerator.num_processes > 1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = build_scheduler(optimizer, cfg.train, optimizer_steps_per_epoch(len(loader), args.grad_accum))
    position = TrainingPosition()
    if args.resume:
        latest = latest_checkpoint(args.work_dir)
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint step_*.pt in {args.work_dir}")
        position = resume_training_state(latest, accelerator, model, ema, optimizer, scheduler)
        accelerator.print(f"resumed from {latest} at step {position.step}, epoch {position.epoch}")
    writer = None
    if accelerator.is_main_process:
        writer = SummaryWriter(os.path.join(args.work_dir, "tensorboard"))
        with open(os.path.join(args.work_dir, "config.json"), "w") as f:
            json.dump(config_to_dict(cfg), f, indent=2, sort_keys=True)
    return Run(cfg, args.work_dir, accelerator, model, ema, optimizer, scheduler, loader, position, writer)


def save(run, reason):
    path = checkpoint_path(run.work_dir, run.position.step)
    save_training_state(path, run.accelerator, run.model, run.ema, run.optimizer, run.scheduler, run.position,
                        run.cfg)
    run.log(f"checkpoint ({reason}): {path}")


def log_step(run, result):
    step, writer = run.position.step, run.writer
    writer.add_scalar("train/loss", result["loss"].item(), step)
    for name, value in result["losses"].items():
        writer.add_scalar(f"train/{name}", value.item(), step)
    writer.add_scalar("train/lr", run.scheduler.get_last_lr()[0], step)
    if result["grad_norm"] is not None:
        writer.add_scalar("train/grad_norm", float(result["grad_norm"]), step)


def budget_spent(run, args, start):
    """The reason to stop now (--max-steps / --max-minutes), agreed by every process, or None."""
    reason = None
    if args.max_steps is not None and run.position.step >= args.max_steps:
        reason = f"--max-steps {args.max_steps}"
    elif args.max_minutes is not None and (time.monotonic() - start) / 60 >= args.max_minutes:
        reason = f"--max-minutes {args.max_minutes}"
    if run.accelerator.num_processes > 1:  # stop together, at the same step
        stop = torch.tensor(float(reason is not None), device=run.accelerator.device)
        if reason is None and run.accelerator.reduce(stop, "max").item():
            reason = "another process's budget"
    return reason


def fit(run, args, loss_fn, validate=None):
    """Train until cfg.train.epochs or a budget is spent. loss_fn(model, batch) -> dict of named
    scalar losses; validate(run, step) -> metrics dict or None (it logs its own figures).
    Returns the final TrainingPosition."""
    cfg, accelerator = run.cfg, run.accelerator
    start, stop_reason = time.monotonic(), None
    if validate is None or args.no_val:
        validate = None
    for epoch in range(run.position.epoch, cfg.train.epochs):
        skip = run.position.batches_done if epoch == run.position.epoch else 0
        progress = tqdm(total=len(run.loader), initial=skip, desc=f"epoch {epoch}", unit="batch",
                        disable=not accelerator.is_main_process)
        for batch in epoch_batches(accelerator, run.loader, epoch, skip):
            batch = move_batch(batch, accelerator.device)
            result = train_step(accelerator, run.model, batch, loss_fn, run.optimizer, run.scheduler, run.ema,
                                cfg.train.grad_clip)
            run.position.batches_done += 1
            progress.update(1)
            if not result["optimizer_stepped"]:
                continue
            run.position.step += 1
            progress.set_postfix(loss=f"{result['loss'].item():.3f}", step=run.position.step)
            if run.writer is not None and run.position.step % cfg.train.log_interval == 0:
                log_step(run, result)
            if args.ckpt_every and run.position.step % args.ckpt_every == 0:
                save(run, f"every {args.ckpt_every} steps")
            if validate and args.val_every and run.position.step % args.val_every == 0:
                validate(run, run.position.step)
            stop_reason = budget_spent(run, args, start)
            if stop_reason:
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
    if run.writer is not None:
        run.writer.close()
    accelerator.end_training()
    return run.position


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


def make_validate(val_set):
    """validate(run, step): EMA weights on the validation split; mIoU, per-class IoU and a
    bird's-eye GT-vs-prediction picture to TensorBoard."""
    def validate(run, step):
        def score(network):
            return occupancy_scores(predict(network, val_set, run.accelerator.device, run.cfg.data.batch_size),
                                    val_set)
        result = evaluate_with_ema(run, score)
        if result is None:
            return None
        metrics, (gt, pred, visible) = result
        run.writer.add_scalar("val/mIoU", metrics["miou"], step)
        run.writer.add_scalar("val/geometry_IoU", metrics["geometry_iou"], step)
        for name, iou in zip(OCC3D_CLASS_NAMES[:OCC3D_FREE], metrics["iou"]):
            if not math.isnan(iou):
                run.writer.add_scalar(f"val_iou/{name}", iou, step)
        run.writer.add_image("val/bev_gt_vs_pred", gt_vs_pred_image(gt, pred, visible), step, dataformats="HWC")
        run.log(f"step {step}: val mIoU {100 * metrics['miou']:.2f}, geometry IoU {100 * metrics['geometry_iou']:.2f}")
        return metrics
    return validate


def scene_fraction(infos, fraction):
    """The scene tokens (a set) of a seeded fraction of the scenes of `infos` (SPEC 3 / 4)."""
    return set(sample_scene_fraction(sorted({info["scene_token"] for info in infos}), fraction))


def select_scenes(dataset, fraction):
    """Keep the samples of a seeded fraction of the dataset's scenes (SPEC 3 / 4)."""
    if fraction == 1.0:
        return
    kept = scene_fraction(dataset.infos, fraction)
    dataset.infos = [info for info in dataset.infos if info["scene_token"] in kept]
