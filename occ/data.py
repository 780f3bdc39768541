"""Data plumbing the training and evaluation loops share: the training sample order, the training
DataLoader, moving a batch to a device, and the seeded scene fractions of label-efficient training.

Reproducibility contract. The order of training samples depends only on (seed, epoch)
(`EpochShuffleSampler`); a dataset's random augmentation must depend only on (seed, epoch, sample
index): the loop calls `dataset.set_epoch(epoch)` before each epoch, and the dataset draws from
`numpy.random.default_rng([seed, epoch, index])`. Neither reads a global RNG, so a run resumed
from any checkpoint, with any number of DataLoader workers, sees exactly the batches it would
have seen without the interruption.
"""
import random
import signal

import torch
from torch.utils.data import DataLoader, Sampler

from occ.errors import UsageError


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


def ignore_interrupts_in_worker(worker_id):
    """DataLoader worker_init_fn: Ctrl-C reaches every process of the terminal's group; the main
    process handles it (saves a checkpoint at the next step boundary), the workers ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_train_loader(dataset, batch_size, seed, collate_fn=None, num_workers=0, drop_last=False, pin_memory=False):
    """A DataLoader whose order is EpochShuffleSampler(seed, epoch) and which never draws from the
    global torch RNG (it has its own generator for worker seeds). Prepare it with Accelerate:
    each of P processes then takes every P-th batch, so P processes with batch_size b see the same
    global batches as one process with batch_size P * b (when the batch count divides by P).
    pin_memory: page-locked host batches for faster copies to a GPU (only useful with CUDA)."""
    if len(dataset) == 0:
        raise UsageError("the training set holds no samples")
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffleSampler(len(dataset), seed),
                      collate_fn=collate_fn, num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
                      worker_init_fn=ignore_interrupts_in_worker if num_workers else None,
                      generator=torch.Generator().manual_seed(seed))


def move_batch(batch, device):
    """A collated batch dict on `device`: tensors moved, lists of tensors (`points`) element-wise,
    anything else (strings) kept."""
    moved = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            moved[key] = value.to(device, non_blocking=True)
        elif isinstance(value, list) and value and torch.is_tensor(value[0]):
            moved[key] = [item.to(device, non_blocking=True) for item in value]
        else:
            moved[key] = value
    return moved


def sample_scene_fraction(scene_tokens, fraction, seed=42):
    """The labelled scenes of a label-efficient run (docs/training.md): random.seed(seed);
    random.sample(sorted(tokens), N) with N = round(fraction * number of scenes). Uses its own
    Random, leaving the global RNG alone."""
    tokens = list(scene_tokens)
    if len(set(tokens)) != len(tokens):
        raise ValueError("scene tokens contain duplicates")
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"scene fraction must be in (0, 1], got {fraction}")
    count = round(fraction * len(tokens))
    if count == 0:
        raise UsageError(f"scene fraction {fraction} of {len(tokens)} scenes selects no scene")
    return random.Random(seed).sample(sorted(tokens), count)


def scene_fraction(infos, fraction):
    """The scene tokens (a set) of a seeded fraction of the scenes of `infos`."""
    return set(sample_scene_fraction(sorted({info["scene_token"] for info in infos}), fraction))


def select_frames(dataset, every):
    """Keep every `every`-th frame of each scene (the 1st, the (every+1)-th, ... in info order;
    Occ3D-Waymo's 20 % setting is every = 5); every = 1 keeps all."""
    if every < 1:
        raise UsageError(f"--frames-every must be >= 1, got {every}")
    position = {}
    kept = []
    for info in dataset.infos:
        index = position.get(info["scene_token"], 0)
        position[info["scene_token"]] = index + 1
        if index % every == 0:
            kept.append(info)
    dataset.infos = kept


def select_scenes(dataset, fraction):
    """Keep the samples of a seeded fraction of the dataset's scenes (its `infos` list is filtered)."""
    if fraction == 1.0:
        return
    kept = scene_fraction(dataset.infos, fraction)
    dataset.infos = [info for info in dataset.infos if info["scene_token"] in kept]
