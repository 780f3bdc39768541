"""The labelled part of a training set: in active learning (train_fusion.py --labelled,
docs/training.md#active-learning) the frames of a selection file, each sample with its
`label_mask`; and the class frequencies of the labelled voxels, which weight the four losses."""
import numpy as np
import torch
from tqdm import tqdm

from datasets import transforms
from datasets.nuscenes_occ import load_occ_gt
from occ import occ3d
from occ.losses import count_class_voxels


def class_frequencies(dataset, selection=None, infos=None):
    """Per-class voxel counts (occ3d.NUM_CLASSES,) int64 inside the camera mask over the GT of
    `infos` (default: every sample of `dataset`, a NuScenesOccDataset), for the class weights of
    the four losses; with an active-learning `selection`, only over its labelled voxels."""
    counts = torch.zeros(occ3d.NUM_CLASSES, dtype=torch.int64)
    for info in tqdm(dataset.infos if infos is None else infos, desc="class frequencies", unit="sample"):
        gt = load_occ_gt(dataset.gt_path(info))
        mask = gt["mask_camera"] if selection is None else gt["mask_camera"] & selection.label_mask(info["token"])
        counts += count_class_voxels(torch.from_numpy(gt["semantics"]), torch.from_numpy(mask))
    return counts


def bev_flips(bda):
    """(flip_x, flip_y) of a sample's `bda` (4, 4), which must be a pure flip (diag(+-1, +-1, 1, 1)):
    a selection in grid coordinates can follow a flip, not a rotation or scaling."""
    bda = np.asarray(bda)
    flip_x, flip_y = bool(bda[0, 0] < 0), bool(bda[1, 1] < 0)
    expected = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0])
    if not np.array_equal(bda, expected):
        raise ValueError(f"a voxel selection follows BEV flips only; this sample's bda is\n{bda}")
    return flip_x, flip_y


class LabelledFrames(torch.utils.data.Dataset):
    """The frames of `selection` (occ.active.Selection) of a NuScenesOccDataset: its `infos` are
    filtered (in place, so a skipped bad sample is replaced by another labelled one), and every
    sample gets `label_mask`, bool (200, 200, 16): True on the voxels whose label may be trained
    on (all of a fully labelled frame, the selected ones of a voxel-labelled frame), flipped with
    the sample's BEV flips like its GT grids. The loss uses mask_camera & label_mask."""

    def __init__(self, dataset, selection):
        labelled = selection.tokens()
        dataset.infos = [info for info in dataset.infos if info["token"] in labelled]
        self.dataset, self.selection = dataset, selection

    @property
    def infos(self):
        return self.dataset.infos

    def __len__(self):
        return len(self.dataset)

    def gt_path(self, info):
        return self.dataset.gt_path(info)

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        sample = self.dataset[index]
        flip_x, flip_y = bev_flips(sample["bda"].numpy())
        label_mask = self.selection.label_mask(sample["sample_token"])          # (X, Y, Z), un-flipped
        sample["label_mask"] = torch.from_numpy(transforms.flip_grid(label_mask, flip_x, flip_y))
        return sample
