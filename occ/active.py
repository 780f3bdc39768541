"""Active learning: what to label next (docs/training.md#active-learning).

The pieces active_select.py and train_fusion.py --labelled share: the entropy of the softmax per
voxel, the frame score (mean entropy inside the camera mask), the top-K frames, the
class-balanced top-V voxels of a frame, seeded random choices, and the selection file that
accumulates what is labelled over the rounds.

Selection file: plain JSON,

    {"version": 1,
     "frames": [sample_token, ...],                     # fully labelled frames, in selection order
     "voxels": {sample_token: [flat index, ...], ...}}  # frames of which only these voxels are labelled

A flat index is x * 200 * 16 + y * 16 + z (numpy.ravel_multi_index) into the Occ3D grid
(200, 200, 16) indexed [x, y, z], in the un-flipped frame of the GT files; a training run flips
the selection with the sample's BEV flips, like the GT grids. `load_selection` refuses a wrong
version, unknown keys, tokens that are not training frames, duplicate frames or voxels, a frame
in both lists, empty or out-of-grid voxel lists, each with a DataError naming the file and the entry.

Shapes: logits (..., C) float; entropy, pred, mask (X, Y, Z) = (200, 200, 16) numpy arrays.
"""
import dataclasses
import hashlib
import json
import math
import os
import random
from collections import Counter

import numpy as np
import torch
from torch.utils.data import DataLoader

from occ import occ3d
from occ.data import move_batch
from occ.errors import DataError, UsageError

SELECTION_VERSION = 1
NUM_VOXELS = math.prod(occ3d.GRID_SHAPE)   # 640,000 flat indices per frame


# ------------------------------------------------------------------------------- scoring

def voxel_entropy(logits):
    """Entropy (natural log) of softmax(logits) over the last axis: (..., C) -> (...) float32,
    H = -sum_c p_c log p_c with 0 log 0 = 0 (a logit of -inf adds nothing); 0 for a one-hot
    prediction, log(C) for a uniform one."""
    log_probs = logits.float().log_softmax(-1)
    probs = log_probs.exp()
    return -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(-1)


def frame_score(entropy, mask):
    """Mean voxel entropy inside `mask` (bool, same shape); 0.0 for an empty mask (nothing to label)."""
    count = int(mask.sum())
    return float(entropy[mask].astype(np.float64).sum() / count) if count else 0.0


@torch.no_grad()
def predict_entropy(model, dataset, device, collate_fn):
    """Yields {"sample_token", "entropy" float32 (X, Y, Z), "pred" uint8 (X, Y, Z), "mask_camera"
    bool (X, Y, Z)} per sample of `dataset` (test mode, loading its GT), in order; `model` in eval
    mode on `device`."""
    loader = DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate_fn)
    for batch in loader:
        logits = model(move_batch(batch, device))["occ_logits"]        # (B, X, Y, Z, C)
        entropy = voxel_entropy(logits).cpu().numpy()                  # (B, X, Y, Z)
        preds = logits.argmax(-1).to(torch.uint8).cpu().numpy()        # (B, X, Y, Z)
        for index, token in enumerate(batch["sample_token"]):
            yield {"sample_token": token, "entropy": entropy[index], "pred": preds[index],
                   "mask_camera": batch["mask_camera"][index].numpy()}


# ------------------------------------------------------------------------------- choosing

def top_k_frames(scores, k):
    """The k tokens of {token: score} with the highest scores (all of them when fewer), highest
    first; equal scores in token order."""
    return sorted(scores, key=lambda token: (-scores[token], token))[:k]


def random_frames(tokens, k, seed):
    """k tokens (all when fewer) drawn without replacement by random.Random(seed) from the sorted tokens."""
    ordered = sorted(tokens)
    return random.Random(seed).sample(ordered, min(k, len(ordered)))


def even_class_quotas(counts, budget):
    """How many voxels each class gets when `budget` voxels are split evenly over the classes of
    `counts` (candidates per class, (C,) int), as (shares (C,) int64, share t): the largest t with
    sum_c min(counts_c, t) <= budget. A class with fewer than t candidates gives all of them, and
    its unused share is spread evenly over the others. The budget - sum(shares) voxels left (fewer
    than the number of classes with more than t candidates) are handed out by the caller."""
    counts = np.asarray(counts, dtype=np.int64)
    low, high = 0, int(counts.max(initial=0))
    while low < high:                                   # binary search: sum(min(counts, t)) grows with t
        middle = (low + high + 1) // 2
        if np.minimum(counts, middle).sum() <= budget:
            low = middle
        else:
            high = middle - 1
    return np.minimum(counts, low), low


def class_balanced_voxels(entropy, pred, candidates, budget):
    """The `budget` highest-entropy voxels among `candidates` (bool (X, Y, Z)), split evenly over
    the predicted classes (free included), as sorted flat indices (int64):

    1. group the candidates by predicted class c (n_c of them), each group ordered by entropy,
       highest first (equal entropies: lower flat index first);
    2. every candidate when budget >= sum n_c; otherwise each class takes its min(n_c, t) best,
       with t the largest share such that sum_c min(n_c, t) <= budget (`even_class_quotas`): a
       class with fewer candidates than the share gives all it has and the others share the rest;
    3. the r = budget - sum_c min(n_c, t) voxels left over go one each to the r classes (among
       those with n_c > t) whose next voxel has the highest entropy (equal: lower class index).
    """
    flat = np.flatnonzero(candidates)                                # ascending flat indices
    if budget >= flat.size:
        return flat.astype(np.int64)
    entropy, pred = entropy.reshape(-1)[flat], pred.reshape(-1)[flat]
    by_class = {}
    for cls in np.unique(pred):
        members = np.flatnonzero(pred == cls)
        by_class[int(cls)] = members[np.argsort(-entropy[members], kind="stable")]   # best first
    classes = sorted(by_class)
    counts = np.array([by_class[c].size for c in classes])
    shares, share = even_class_quotas(counts, budget)
    left_over = budget - int(shares.sum())
    open_classes = [c for c, count in zip(classes, counts) if count > share]
    open_classes.sort(key=lambda c: (-entropy[by_class[c][share]], c))
    extra = set(open_classes[:left_over])
    chosen = [by_class[c][:share + (c in extra)] for c in classes]
    return np.sort(flat[np.concatenate(chosen)]).astype(np.int64)


def random_voxels(candidates, budget, rng):
    """`budget` voxels (all when fewer) drawn without replacement by the numpy Generator `rng`
    from `candidates` (bool (X, Y, Z)), as sorted flat indices (int64)."""
    flat = np.flatnonzero(candidates)
    return np.sort(rng.choice(flat, size=min(budget, flat.size), replace=False)).astype(np.int64)


# ------------------------------------------------------------------------------- the selection

@dataclasses.dataclass
class Selection:
    """What is labelled: fully labelled frames and frames with some labelled voxels (module docstring)."""
    frames: list = dataclasses.field(default_factory=list)   # tokens, in selection order
    voxels: dict = dataclasses.field(default_factory=dict)   # {token: sorted int64 flat indices}

    def tokens(self):
        """Every frame with a label (full or voxels)."""
        return set(self.frames) | set(self.voxels)

    def num_voxels(self):
        """The number of selected voxels of the voxel-labelled frames."""
        return sum(int(indices.size) for indices in self.voxels.values())

    def with_frames(self, tokens):
        """A new Selection that also labels `tokens` fully (none may be fully labelled already);
        their voxel entries, superseded, are dropped."""
        added = list(tokens)
        superseded = set(added)
        again = sorted(superseded & set(self.frames)) + sorted(t for t, n in Counter(added).items() if n > 1)
        if again:
            raise ValueError(f"frames selected twice: {again}")
        return Selection(self.frames + added, {t: v for t, v in self.voxels.items() if t not in superseded})

    def with_voxels(self, new_voxels):
        """A new Selection that also labels the voxels {token: flat indices} of frames that are
        not fully labelled; voxels already selected may not be selected again."""
        voxels = dict(self.voxels)
        for token, indices in new_voxels.items():
            if token in self.frames:
                raise ValueError(f"frame {token} is fully labelled; its voxels cannot be selected")
            old = voxels.get(token, np.zeros(0, dtype=np.int64))
            if np.intersect1d(old, indices).size:
                raise ValueError(f"frame {token}: voxels selected twice")
            if len(indices):
                voxels[token] = np.sort(np.concatenate([old, np.asarray(indices, dtype=np.int64)]))
        return Selection(list(self.frames), voxels)

    def label_mask(self, token):
        """bool (X, Y, Z), un-flipped: every voxel of a fully labelled frame, the selected voxels of
        a voxel-labelled one, none of an unlabelled one."""
        if token in self.frames:
            return np.ones(occ3d.GRID_SHAPE, dtype=bool)
        mask = np.zeros(NUM_VOXELS, dtype=bool)
        if token in self.voxels:
            mask[self.voxels[token]] = True
        return mask.reshape(occ3d.GRID_SHAPE)


def save_selection(path, selection):
    """Write `selection` as a version-1 selection file (module docstring)."""
    if os.path.isdir(path):
        raise UsageError(f"selection file {path} is a folder; give the path of the JSON file to write")
    document = {"version": SELECTION_VERSION, "frames": list(selection.frames),
                "voxels": {token: np.sort(selection.voxels[token]).tolist() for token in sorted(selection.voxels)}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f)


def selection_sha256(path):
    """The SHA-256 of a selection file's bytes (hex): a training run records it, so that --resume
    notices a file rewritten in place."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_selection(path, known_tokens=None):
    """The Selection of a selection file, checked (module docstring); `known_tokens`: the tokens
    of the training frames (None: not checked). FileNotFoundError when it is missing; DataError
    naming the file and the entry otherwise."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"selection file not found: {path}")
    try:
        with open(path) as f:
            document = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"selection file {path} is not JSON ({error})") from error
    if not isinstance(document, dict):
        raise DataError(f"selection file {path}: expected an object with 'version', 'frames', 'voxels'")
    if document.get("version") != SELECTION_VERSION:
        raise DataError(f"selection file {path}: version {document.get('version')!r}, this code reads "
                        f"version {SELECTION_VERSION}")
    if set(document) != {"version", "frames", "voxels"}:
        raise DataError(f"selection file {path}: expected the keys ['frames', 'version', 'voxels'], "
                        f"got {sorted(document)}")
    frames, voxels = document["frames"], document["voxels"]
    if not isinstance(frames, list) or not all(isinstance(token, str) for token in frames):
        raise DataError(f"selection file {path}: 'frames' must be a list of sample tokens")
    if not isinstance(voxels, dict):
        raise DataError(f"selection file {path}: 'voxels' must map sample tokens to lists of voxel indices")
    seen = set()
    for token in frames:
        if token in seen:
            raise DataError(f"selection file {path}: frame {token} is listed twice in 'frames'")
        seen.add(token)
    for token in list(frames) + list(voxels):
        if known_tokens is not None and token not in known_tokens:
            raise DataError(f"selection file {path}: {token} is not a frame of the training split")
    checked = {}
    for token, indices in voxels.items():
        where = f"selection file {path}: 'voxels' of {token}"
        if token in seen:
            raise DataError(f"selection file {path}: frame {token} is in both 'frames' and 'voxels'")
        if not isinstance(indices, list) or not indices or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise DataError(f"{where}: expected a non-empty list of integer voxel indices")
        outside = [i for i in indices if not 0 <= i < NUM_VOXELS]
        if outside:
            raise DataError(f"{where}: index {outside[0]} is outside the grid {occ3d.GRID_SHAPE} "
                            f"(flat indices 0 ... {NUM_VOXELS - 1})")
        array = np.sort(np.array(indices, dtype=np.int64))
        repeated = array[1:][array[1:] == array[:-1]]
        if repeated.size:
            raise DataError(f"{where}: voxel {int(repeated[0])} is listed twice")
        checked[token] = array
    return Selection(list(frames), checked)
