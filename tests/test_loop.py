"""The training loop (occ/loop.py) on a toy model with Accelerator(cpu=True): optimizer groups,
schedules, one step, gradient accumulation, resume == uninterrupted, and two gloo processes ==
one process with the same global batch."""
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.utils.data import TensorDataset

from occ import data, loop, optim
from occ.checkpoint import load_checkpoint, save_checkpoint
from occ.config import Config, TrainConfig
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
    optimizer = optim.build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    rest, backbone = optimizer.param_groups
    assert rest["lr"] == 1e-3 and backbone["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.img_backbone.parameters()}
    assert [id(p) for p in rest["params"]] == [id(model.head.weight)]
    assert rest["weight_decay"] == backbone["weight_decay"] == 0.01

    with pytest.raises(ValueError, match="no trainable parameter under 'img_backbone.'"):
        optim.build_optimizer(nn.Linear(2, 2), cfg)
    with pytest.raises(ValueError, match="train.optimizer"):
        optim.build_optimizer(model, TrainConfig(optimizer="sgd"))


def test_warmup_step_schedule_values():
    factor = optim.warmup_step_factor(warmup_iters=200, warmup_ratio=1e-3, step_iters=[24 * 50], gamma=0.1)
    assert factor(0) == pytest.approx(1e-3)
    assert factor(100) == pytest.approx(1e-3 + 0.5 * (1 - 1e-3))
    assert factor(200) == 1.0 and factor(24 * 50 - 1) == 1.0
    assert factor(24 * 50) == pytest.approx(0.1)


def test_warmup_cosine_schedule_values():
    factor = optim.warmup_cosine_factor(warmup_iters=10, warmup_ratio=0.5, total_iters=100, min_ratio=0.0)
    assert factor(0) == pytest.approx(0.5)
    assert factor(5) == pytest.approx(0.75 * (1 + math.cos(math.pi * 0.05)) / 2)
    assert factor(50) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12)


def test_build_scheduler_drives_each_group_lr_in_optimizer_updates():
    model = ToyNet()
    cfg = TrainConfig(lr=1.0, backbone_lr_mult=0.1, warmup_iters=4, warmup_ratio=0.2,
                      lr_schedule="step", lr_step_epochs=(2,), lr_gamma=0.1)
    optimizer = optim.build_optimizer(model, cfg)
    scheduler = optim.build_scheduler(optimizer, cfg, steps_per_epoch=5)
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
        optim.build_scheduler(optimizer, TrainConfig(lr_schedule="poly"), 5)


def test_cosine_steps_set_the_length_of_the_cosine_decay_in_updates():
    for cosine_steps, end in ((0, 4 * 5), (8, 8)):   # 4 epochs of 5 updates, or 8 updates
        cfg = TrainConfig(lr=1.0, warmup_iters=0, lr_schedule="cosine", epochs=4, cosine_steps=cosine_steps)
        optimizer = optim.build_optimizer(ToyNet(), cfg)
        scheduler = optim.build_scheduler(optimizer, cfg, steps_per_epoch=5)
        lrs = []
        for _ in range(end + 2):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert lrs[end // 2] == pytest.approx(0.5 * (1 + 1e-3))      # half-way: the mean of 1 and min_ratio
        assert lrs[end] == lrs[end + 1] == pytest.approx(1e-3)       # the floor from `end` on
    assert optim.optimizer_steps_per_epoch(7, 2) == 4


def test_scene_fraction_follows_the_seeded_sample_and_is_reproducible():
    tokens = [f"scene-{i:04d}" for i in range(50)]
    random.seed(7)
    state = random.getstate()
    picked = data.sample_scene_fraction(reversed(tokens), 0.4)
    assert random.getstate() == state                         # the global RNG is left alone
    random.seed(42)
    assert picked == random.sample(sorted(tokens), 20)       # docs/training.md#label-efficiency: seed 42, N = round(F * len)
    assert data.sample_scene_fraction(tokens, 0.4) == picked
    assert data.sample_scene_fraction(tokens, 0.4, seed=1) != picked
    assert len(data.sample_scene_fraction(tokens, 0.05)) == round(0.05 * 50)
    with pytest.raises(ValueError, match="selects no scene"):
        data.sample_scene_fraction(tokens, 0.001)
    with pytest.raises(ValueError, match="duplicates"):
        data.sample_scene_fraction(tokens + tokens[:1], 0.5)


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    sampler = data.EpochShuffleSampler(20, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(20)) and list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    again = data.EpochShuffleSampler(20, seed=3)
    again.set_epoch(1)
    assert list(again) == second


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    accelerator = fresh_accelerator()
    torch.manual_seed(0)
    cfg = TrainConfig(lr=1e-2, warmup_iters=0)
    model = ToyNet()
    optimizer = optim.build_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = optim.build_scheduler(optimizer, cfg, steps_per_epoch=10)
    ema = EMA(model)
    batch = toy_dataset(16).tensors
    with torch.no_grad():
        before = ce_loss(model, batch)["loss_ce"].item()
    result = loop.train_step(accelerator, model, batch, ce_loss, optimizer, scheduler, ema, grad_clip=5.0)
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
        loop.train_step(accelerator, model, torch.ones(1, 2), nan_loss, optimizer, scheduler)


def test_gradient_accumulation_equals_one_big_batch():
    x, y = toy_dataset(8).tensors
    cfg = TrainConfig(lr=0.1, warmup_iters=0)
    results = []
    for accumulation, batches in ((1, [(x, y)]), (2, [(x[:4], y[:4]), (x[4:], y[4:])])):
        accelerator = fresh_accelerator(accumulation)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        optimizer = optim.build_optimizer(model, cfg)
        model, optimizer = accelerator.prepare(model, optimizer)
        scheduler = optim.build_scheduler(optimizer, cfg, steps_per_epoch=10)
        stepped = [loop.train_step(accelerator, model, b, ce_loss, optimizer, scheduler, None, 100.0)
                   ["optimizer_stepped"] for b in batches]
        assert stepped == [False] * (accumulation - 1) + [True]
        assert scheduler.last_epoch == 1
        results.append(accelerator.unwrap_model(model).state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6)


class AugmentedToy(torch.utils.data.Dataset):
    """toy_dataset with a random augmentation drawn, as the real datasets do, from (seed, epoch,
    sample index) only."""

    def __init__(self, n=24, seed=5):
        self.x, self.y = toy_dataset(n).tensors
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        noise = torch.from_numpy(rng.normal(size=4).astype(np.float32))
        return self.x[index] + 0.1 * noise, self.y[index]


def run_training(work_dir, accumulation, stop_after=None, resume=False, epochs=4, num_workers=0):
    """Train ToyNet (dropout, BN, EMA, step schedule across epochs, augmented data); stop and save
    after `stop_after` micro-batches, or resume from the latest save and run to the end."""
    accelerator = fresh_accelerator(accumulation)
    torch.manual_seed(123 if resume else 0)          # a resumed run must not depend on its own init
    cfg = TrainConfig(lr=0.05, warmup_iters=3, lr_step_epochs=(1,), epochs=epochs, backbone_lr_mult=0.5)
    model = ToyNet(dropout=0.3)
    optimizer = optim.build_optimizer(model, cfg)
    loader = data.make_train_loader(AugmentedToy(), batch_size=4, seed=7, num_workers=num_workers)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ema = EMA(model, ramp=5)
    steps_per_epoch = optim.optimizer_steps_per_epoch(len(loader), accumulation)
    scheduler = optim.build_scheduler(optimizer, cfg, steps_per_epoch)
    position = loop.TrainingPosition()
    path = work_dir / "state.pt"
    if resume:
        position = loop.resume_training_state(path, accelerator, model, ema, optimizer, scheduler)
    seen, done = [], 0
    for epoch in range(position.epoch, epochs):
        model.train()
        skip = position.batches_done if epoch == position.epoch else 0
        for batch in loop.epoch_batches(accelerator, loader, loader.dataset, epoch, skip):
            result = loop.train_step(accelerator, model, batch, ce_loss, optimizer, scheduler, ema, 5.0)
            seen.append(batch[0][:, 0].clone())
            position.batches_done += 1
            position.step += int(result["optimizer_stepped"])
            done += 1
            if done == stop_after:
                loop.save_training_state(path, accelerator, model, ema, optimizer, scheduler, position, cfg)
                return None
        position = loop.TrainingPosition(position.step, epoch + 1, 0)
    return {"model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "lr": scheduler.get_last_lr(), "position": position,
            "seen": torch.cat(seen)}


def assert_same_training_state(resumed, full):
    """Every weight, EMA tensor and optimizer moment bitwise equal, and the same position and lr."""
    assert resumed["position"] == full["position"]
    for name, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)
    assert resumed["ema"]["updates"] == full["ema"]["updates"]
    for name, value in full["ema"]["model"].items():
        torch.testing.assert_close(resumed["ema"]["model"][name], value, rtol=0, atol=0, msg=name)
    for state_id, state in full["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(resumed["optimizer"]["state"][state_id][key], state[key], rtol=0, atol=0)
    assert resumed["lr"] == full["lr"]


# 6 micro-batches per epoch, 4 epochs: stops mid-epoch (4, 9, 8) and at an epoch boundary (6, 12),
# each followed by at least 10 more optimizer steps.
@pytest.mark.parametrize("accumulation, stop_after", [(1, 4), (1, 6), (1, 9), (2, 8), (2, 12)])
def test_resume_from_any_checkpoint_matches_an_uninterrupted_run(tmp_path, accumulation, stop_after):
    full = run_training(tmp_path / "full", accumulation)
    assert run_training(tmp_path / "cut", accumulation, stop_after=stop_after) is None
    resumed = run_training(tmp_path / "cut", accumulation, resume=True)
    assert full["position"].step == 24 // accumulation
    assert full["position"].step - stop_after // accumulation >= 6
    torch.testing.assert_close(resumed["seen"], full["seen"][4 * stop_after:], rtol=0, atol=0)
    assert_same_training_state(resumed, full)


@pytest.mark.parametrize("stop_after", [5, 12])
def test_resume_with_dataloader_workers_is_bit_exact(tmp_path, stop_after):
    """Two worker processes, interrupted mid-epoch and at an epoch boundary, resumed with workers
    again: the same batches (augmentation included) and the same final state as a run with none."""
    full = run_training(tmp_path / "full", 1, num_workers=0)
    assert run_training(tmp_path / "cut", 1, stop_after=stop_after, num_workers=2) is None
    resumed = run_training(tmp_path / "cut", 1, resume=True, num_workers=2)
    assert full["position"].step - stop_after >= 10
    torch.testing.assert_close(resumed["seen"], full["seen"][4 * stop_after:], rtol=0, atol=0)
    assert_same_training_state(resumed, full)


class IndexedAugmentedToy(AugmentedToy):
    def __getitem__(self, index):
        return (*super().__getitem__(index), index)


def test_epoch_batches_set_the_augmentation_epoch_before_workers_start():
    """Each epoch's batches carry that epoch's augmentation, also from DataLoader workers (which
    copy the dataset when the iteration starts)."""
    accelerator = fresh_accelerator()
    dataset = IndexedAugmentedToy(8)
    loader = accelerator.prepare(data.make_train_loader(dataset, batch_size=4, seed=7, num_workers=2))
    by_epoch = []
    for epoch in range(2):
        inputs = {}
        for x, _, index in loop.epoch_batches(accelerator, loader, dataset, epoch):
            inputs.update({int(i): row for i, row in zip(index, x)})
        by_epoch.append(inputs)
    for index in range(8):
        for epoch in range(2):
            expected = AugmentedToy(8)
            expected.set_epoch(epoch)
            torch.testing.assert_close(by_epoch[epoch][index], expected[index][0], rtol=0, atol=0)
        assert not torch.equal(by_epoch[0][index], by_epoch[1][index])


def test_the_ema_lives_where_prepare_puts_the_model(tmp_path, monkeypatch):
    """Accelerate moves the model in `prepare` (to the GPU in real runs). Simulated with a prepare
    that moves it to the `meta` device: the EMA built by setup_run must follow it."""
    original_prepare = Accelerator.prepare

    def prepare_to_meta(self, *objects):
        prepared = original_prepare(self, *objects)
        prepared[0].to("meta")
        return prepared

    monkeypatch.setattr(Accelerator, "prepare", prepare_to_meta)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    cfg = Config()
    cfg.data.batch_size, cfg.data.num_workers = 4, 0
    run = loop.setup_run(cfg, ToyNet(), AugmentedToy(), None, work_dir=tmp_path / "run", cpu=True)
    try:
        parameter_devices = {p.device for p in run.model.parameters()}
        assert parameter_devices == {torch.device("meta")}
        assert {t.device for t in run.ema.state.values()} == parameter_devices
    finally:
        run.lock.release()


def test_resume_refuses_incomplete_states_and_a_different_process_count(tmp_path):
    run_training(tmp_path, 1, stop_after=2)
    accelerator = fresh_accelerator()
    model, cfg = ToyNet(), TrainConfig()
    optimizer = optim.build_optimizer(model, cfg)
    scheduler = optim.build_scheduler(optimizer, cfg, 6)
    state = load_checkpoint(tmp_path / "state.pt")
    state["num_processes"] = 2
    save_checkpoint(tmp_path / "two.pt", **state)
    with pytest.raises(ValueError, match="2 processes"):
        loop.resume_training_state(tmp_path / "two.pt", accelerator, model, EMA(model), optimizer, scheduler)
    save_checkpoint(tmp_path / "weights_only.pt", model=model.state_dict())
    with pytest.raises(ValueError, match="weights_only.pt is not a resumable"):
        loop.resume_training_state(tmp_path / "weights_only.pt", accelerator, model, None, optimizer, scheduler)


def test_saving_between_accumulation_micro_batches_is_refused(tmp_path):
    accelerator = fresh_accelerator(accumulation=2)
    cfg = TrainConfig(warmup_iters=0)
    model = ToyNet()
    optimizer = optim.build_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = optim.build_scheduler(optimizer, cfg, 6)
    x, y = toy_dataset(4).tensors
    loop.train_step(accelerator, model, (x, y), ce_loss, optimizer, scheduler)
    with pytest.raises(RuntimeError, match="between gradient-accumulation"):
        loop.save_training_state(tmp_path / "s.pt", accelerator, model, None, optimizer, scheduler,
                                   loop.TrainingPosition(), cfg)


TWO_PROCESS_SCRIPT = '''
import sys
from accelerate import Accelerator
from test_loop import run_two_process_worker
run_two_process_worker(Accelerator(cpu=True), int(sys.argv[1]), sys.argv[2])
'''


def run_two_process_worker(accelerator, batch_size, out_path):
    """Plain MLP (no BN / dropout, whose statistics are per process) over 2 epochs of 32 samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cfg = TrainConfig(lr=0.05, warmup_iters=3, lr_step_epochs=(1,), epochs=2)
    optimizer = optim.build_optimizer(model, cfg)
    loader = data.make_train_loader(toy_dataset(32), batch_size, seed=7)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = optim.build_scheduler(optimizer, cfg, optim.optimizer_steps_per_epoch(len(loader)))
    steps = 0
    for epoch in range(2):
        for batch in loop.epoch_batches(accelerator, loader, loader.dataset, epoch):
            steps += loop.train_step(accelerator, model, batch, ce_loss, optimizer, scheduler)["optimizer_stepped"]
    if accelerator.is_main_process:
        torch.save({"model": accelerator.unwrap_model(model).state_dict(), "steps": steps}, out_path)
    accelerator.wait_for_everyone()


@pytest.mark.slow
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


def test_resume_counts_a_config_field_the_checkpoint_predates_as_its_default():
    from occ.config import config_to_dict, get_config
    from occ.errors import UsageError
    from occ.loop import check_resumable
    cfg = get_config("flashocc_r50_tiny")
    stored = config_to_dict(cfg)
    check_resumable({"config": stored}, "ckpt.pt", cfg, {})                     # the same config
    del stored["model"]["camera_ground_prior"]                                  # written before the field existed
    check_resumable({"config": stored}, "ckpt.pt", cfg, {})                     # the default: resumable
    cfg.model.camera_ground_prior = True
    with pytest.raises(UsageError, match="model.camera_ground_prior: checkpoint False, now True"):
        check_resumable({"config": stored}, "ckpt.pt", cfg, {})
    del stored["model"]["camera_height_bins"]          # predates height bins: 1, not the tiny presets' 8
    cfg.model.camera_ground_prior = False
    with pytest.raises(UsageError, match="model.camera_height_bins: checkpoint 1, now 8"):
        check_resumable({"config": stored}, "ckpt.pt", cfg, {})
    changed = config_to_dict(cfg)
    changed["train"]["lr"] = 0.5                       # a field both have, changed
    with pytest.raises(UsageError, match="train.lr: checkpoint 0.5"):
        check_resumable({"config": changed}, "ckpt.pt", cfg, {})
