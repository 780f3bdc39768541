"""The shared training engine on a toy model with Accelerator(cpu=True): optimizer groups,
schedules, one step, gradient accumulation, resume == uninterrupted, and two gloo processes ==
one process with the same global batch."""
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.utils.data import TensorDataset

from occ import engine
from occ.checkpoint import load_checkpoint, save_checkpoint
from occ.config import TrainConfig
from occ.ema import EMA


def fresh_accelerator(accumulation=1):
    """Accelerate keeps process-wide singletons; start each run from a clean state."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=True, gradient_accumulation_steps=accumulation)


class ToyNet(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.img_backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.img_backbone(x))


def ce_loss(model, batch):
    x, y = batch
    return {"loss_ce": nn.functional.cross_entropy(model(x), y)}


def toy_dataset(n=24):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_optimizer_groups_backbone_multiplier_and_frozen_parameters():
    model = ToyNet()
    model.head.bias.requires_grad_(False)
    cfg = TrainConfig(lr=1e-3, weight_decay=0.01, backbone_lr_mult=0.1)
    optimizer = engine.build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    rest, backbone = optimizer.param_groups
    assert rest["lr"] == 1e-3 and backbone["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.img_backbone.parameters()}
    assert [id(p) for p in rest["params"]] == [id(model.head.weight)]
    assert rest["weight_decay"] == backbone["weight_decay"] == 0.01

    with pytest.raises(ValueError, match="no trainable parameter under 'img_backbone.'"):
        engine.build_optimizer(nn.Linear(2, 2), cfg)
    with pytest.raises(ValueError, match="train.optimizer"):
        engine.build_optimizer(model, TrainConfig(optimizer="sgd"))


def test_warmup_step_schedule_values():
    factor = engine.warmup_step_factor(warmup_iters=200, warmup_ratio=1e-3, step_iters=[24 * 50], gamma=0.1)
    assert factor(0) == pytest.approx(1e-3)
    assert factor(100) == pytest.approx(1e-3 + 0.5 * (1 - 1e-3))
    assert factor(200) == 1.0 and factor(24 * 50 - 1) == 1.0
    assert factor(24 * 50) == pytest.approx(0.1)


def test_warmup_cosine_schedule_values():
    factor = engine.warmup_cosine_factor(warmup_iters=10, warmup_ratio=0.5, total_iters=100, min_ratio=0.0)
    assert factor(0) == pytest.approx(0.5)
    assert factor(5) == pytest.approx(0.75 * (1 + math.cos(math.pi * 0.05)) / 2)
    assert factor(50) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12)


def test_build_scheduler_drives_each_group_lr_in_optimizer_updates():
    model = ToyNet()
    cfg = TrainConfig(lr=1.0, backbone_lr_mult=0.1, warmup_iters=4, warmup_ratio=0.2,
                      lr_schedule="step", lr_step_epochs=(2,), lr_gamma=0.1)
    optimizer = engine.build_optimizer(model, cfg)
    scheduler = engine.build_scheduler(optimizer, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(12):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx([0.2, 0.02])
    assert lrs[2] == pytest.approx([0.6, 0.06])
    assert lrs[9] == pytest.approx([1.0, 0.1])
    assert lrs[10] == pytest.approx([0.1, 0.01])      # epoch 2 starts at update 10
    with pytest.raises(ValueError, match="lr_schedule"):
        engine.build_scheduler(optimizer, TrainConfig(lr_schedule="poly"), 5)
    assert engine.optimizer_steps_per_epoch(7, 2) == 4


def test_scene_fraction_follows_the_seeded_sample_and_is_reproducible():
    tokens = [f"scene-{i:04d}" for i in range(50)]
    random.seed(7)
    state = random.getstate()
    picked = engine.sample_scene_fraction(reversed(tokens), 0.4)
    assert random.getstate() == state                         # the global RNG is left alone
    random.seed(42)
    assert picked == random.sample(sorted(tokens), 20)       # SPEC 3: seed 42, N = round(F * len)
    assert engine.sample_scene_fraction(tokens, 0.4) == picked
    assert engine.sample_scene_fraction(tokens, 0.4, seed=1) != picked
    assert len(engine.sample_scene_fraction(tokens, 0.05)) == round(0.05 * 50)
    with pytest.raises(ValueError, match="selects no scene"):
        engine.sample_scene_fraction(tokens, 0.001)
    with pytest.raises(ValueError, match="duplicates"):
        engine.sample_scene_fraction(tokens + tokens[:1], 0.5)


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    sampler = engine.EpochShuffleSampler(20, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(20)) and list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    again = engine.EpochShuffleSampler(20, seed=3)
    again.set_epoch(1)
    assert list(again) == second


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    accelerator = fresh_accelerator()
    torch.manual_seed(0)
    cfg = TrainConfig(lr=1e-2, warmup_iters=0)
    model = ToyNet()
    optimizer = engine.build_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = engine.build_scheduler(optimizer, cfg, steps_per_epoch=10)
    ema = EMA(model)
    batch = toy_dataset(16).tensors
    with torch.no_grad():
        before = ce_loss(model, batch)["loss_ce"].item()
    result = engine.train_step(accelerator, model, batch, ce_loss, optimizer, scheduler, ema, grad_clip=5.0)
    with torch.no_grad():
        after = ce_loss(model, batch)["loss_ce"].item()
    assert result["optimizer_stepped"] and result["loss"].item() == pytest.approx(before, rel=1e-6)
    assert after < before
    assert scheduler.last_epoch == 1 and ema.updates == 1
    assert result["grad_norm"] is not None and result["grad_norm"] > 0


def test_non_finite_loss_raises_and_names_the_terms():
    accelerator = fresh_accelerator()
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    nan_loss = lambda m, b: {"loss_a": m(b).sum() * float("nan")}
    with pytest.raises(FloatingPointError, match="loss_a"):
        engine.train_step(accelerator, model, torch.ones(1, 2), nan_loss, optimizer, scheduler)


def test_gradient_accumulation_equals_one_big_batch():
    x, y = toy_dataset(8).tensors
    cfg = TrainConfig(lr=0.1, warmup_iters=0)
    results = []
    for accumulation, batches in ((1, [(x, y)]), (2, [(x[:4], y[:4]), (x[4:], y[4:])])):
        accelerator = fresh_accelerator(accumulation)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        optimizer = engine.build_optimizer(model, cfg)
        model, optimizer = accelerator.prepare(model, optimizer)
        scheduler = engine.build_scheduler(optimizer, cfg, steps_per_epoch=10)
        stepped = [engine.train_step(accelerator, model, b, ce_loss, optimizer, scheduler, None, 100.0)
                   ["optimizer_stepped"] for b in batches]
        assert stepped == [False] * (accumulation - 1) + [True]
        assert scheduler.last_epoch == 1
        results.append(accelerator.unwrap_model(model).state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6)


def run_training(work_dir, accumulation, stop_after=None, resume=False, epochs=2):
    """Train ToyNet (dropout, BN, EMA, step schedule across epochs); stop and save after
    `stop_after` micro-batches, or resume from the latest save and run to the end."""
    accelerator = fresh_accelerator(accumulation)
    torch.manual_seed(123 if resume else 0)          # a resumed run must not depend on its own init
    cfg = TrainConfig(lr=0.05, warmup_iters=3, lr_step_epochs=(1,), epochs=epochs, backbone_lr_mult=0.5)
    model = ToyNet(dropout=0.3)
    optimizer = engine.build_optimizer(model, cfg)
    loader = engine.make_train_loader(toy_dataset(), batch_size=4, seed=7)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ema = EMA(model, ramp=5)
    steps_per_epoch = engine.optimizer_steps_per_epoch(len(loader), accumulation)
    scheduler = engine.build_scheduler(optimizer, cfg, steps_per_epoch)
    position = engine.TrainingPosition()
    path = work_dir / "state.pt"
    if resume:
        position = engine.resume_training_state(path, accelerator, model, ema, optimizer, scheduler)
    seen, done = [], 0
    for epoch in range(position.epoch, epochs):
        model.train()
        skip = position.batches_done if epoch == position.epoch else 0
        for batch in engine.epoch_batches(accelerator, loader, epoch, skip):
            result = engine.train_step(accelerator, model, batch, ce_loss, optimizer, scheduler, ema, 5.0)
            seen.append(batch[0][:, 0].clone())
            position.batches_done += 1
            position.step += int(result["optimizer_stepped"])
            done += 1
            if done == stop_after:
                engine.save_training_state(path, accelerator, model, ema, optimizer, scheduler, position, cfg)
                return None
        position = engine.TrainingPosition(position.step, epoch + 1, 0)
    return {"model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "lr": scheduler.get_last_lr(), "position": position,
            "seen": torch.cat(seen)}


@pytest.mark.parametrize("accumulation, stop_after", [(1, 4), (1, 9), (2, 8)])
def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path, accumulation, stop_after):
    full = run_training(tmp_path / "full", accumulation)
    assert run_training(tmp_path / "cut", accumulation, stop_after=stop_after) is None
    resumed = run_training(tmp_path / "cut", accumulation, resume=True)

    assert resumed["position"] == full["position"]
    assert full["position"].step == 12 // accumulation
    torch.testing.assert_close(resumed["seen"], full["seen"][4 * stop_after:], rtol=0, atol=0)
    for name, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)
    assert resumed["ema"]["updates"] == full["ema"]["updates"]
    for name, value in full["ema"]["model"].items():
        torch.testing.assert_close(resumed["ema"]["model"][name], value, rtol=0, atol=0, msg=name)
    for state_id, state in full["optimizer"]["state"].items():
        torch.testing.assert_close(resumed["optimizer"]["state"][state_id]["exp_avg_sq"], state["exp_avg_sq"],
                                   rtol=0, atol=0)
    assert resumed["lr"] == full["lr"]


def test_resume_refuses_incomplete_states_and_a_different_process_count(tmp_path):
    run_training(tmp_path, 1, stop_after=2)
    accelerator = fresh_accelerator()
    model, cfg = ToyNet(), TrainConfig()
    optimizer = engine.build_optimizer(model, cfg)
    scheduler = engine.build_scheduler(optimizer, cfg, 6)
    state = load_checkpoint(tmp_path / "state.pt")
    state["num_processes"] = 2
    save_checkpoint(tmp_path / "two.pt", **state)
    with pytest.raises(ValueError, match="2 processes"):
        engine.resume_training_state(tmp_path / "two.pt", accelerator, model, EMA(model), optimizer, scheduler)
    save_checkpoint(tmp_path / "weights_only.pt", model=model.state_dict())
    with pytest.raises(ValueError, match="weights_only.pt is not a resumable"):
        engine.resume_training_state(tmp_path / "weights_only.pt", accelerator, model, None, optimizer, scheduler)


def test_saving_between_accumulation_micro_batches_is_refused(tmp_path):
    accelerator = fresh_accelerator(accumulation=2)
    cfg = TrainConfig(warmup_iters=0)
    model = ToyNet()
    optimizer = engine.build_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = engine.build_scheduler(optimizer, cfg, 6)
    x, y = toy_dataset(4).tensors
    engine.train_step(accelerator, model, (x, y), ce_loss, optimizer, scheduler)
    with pytest.raises(RuntimeError, match="between gradient-accumulation"):
        engine.save_training_state(tmp_path / "s.pt", accelerator, model, None, optimizer, scheduler,
                                   engine.TrainingPosition(), cfg)


TWO_PROCESS_SCRIPT = '''
import sys
from accelerate import Accelerator
from test_engine import run_two_process_worker
run_two_process_worker(Accelerator(cpu=True), int(sys.argv[1]), sys.argv[2])
'''


def run_two_process_worker(accelerator, batch_size, out_path):
    """Plain MLP (no BN / dropout, whose statistics are per process) over 2 epochs of 32 samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cfg = TrainConfig(lr=0.05, warmup_iters=3, lr_step_epochs=(1,), epochs=2)
    optimizer = engine.build_optimizer(model, cfg)
    loader = engine.make_train_loader(toy_dataset(32), batch_size, seed=7)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = engine.build_scheduler(optimizer, cfg, engine.optimizer_steps_per_epoch(len(loader)))
    steps = 0
    for epoch in range(2):
        for batch in engine.epoch_batches(accelerator, loader, epoch):
            steps += engine.train_step(accelerator, model, batch, ce_loss, optimizer, scheduler)["optimizer_stepped"]
    if accelerator.is_main_process:
        torch.save({"model": accelerator.unwrap_model(model).state_dict(), "steps": steps}, out_path)
    accelerator.wait_for_everyone()


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{repo}{os.pathsep}{repo / 'tests'}", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", str(script), "4", str(tmp_path / "two.pt")],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    run_two_process_worker(fresh_accelerator(), 8, tmp_path / "one.pt")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["steps"] == two["steps"] == 8
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
