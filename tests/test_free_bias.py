"""bench/free_bias.py: the occupied-vs-free counts under a free-logit bias, and the distance bands."""
import types

import torch

from bench.free_bias import distance_bands, geometry_counts


def test_geometry_counts_on_a_hand_made_grid():
    # four voxels, classes (car, free) = (0, 1); free is the last logit
    logits = torch.tensor([[2.0, 0.0], [0.5, 0.0], [0.0, 1.0], [1.5, 0.0]]).view(4, 1, 1, 2)
    semantics = torch.tensor([0, 1, 0, 1]).view(4, 1, 1)
    semantics = torch.where(semantics == 1, torch.tensor(17), semantics)  # occ3d.FREE = 17
    mask = torch.tensor([True, True, True, False]).view(4, 1, 1)
    counts = geometry_counts(logits, semantics, mask, [0.0, 1.0])
    # b = 0: voxels 0, 1 (and the unmasked 3) called occupied: TP voxel 0, FP voxel 1, FN voxel 2
    assert counts[0.0] == (1, 1, 1)
    # b = 1: only voxel 0 (margin 2) stays occupied: TP 1, FP 0, FN 1
    assert counts[1.0] == (1, 0, 1)


def test_distance_bands_partition_the_grid_by_horizontal_distance():
    model_cfg = types.SimpleNamespace(point_cloud_range=(-4.0, -4.0, -1.0, 4.0, 4.0, 1.0), occ_voxel_size=2.0)
    bands = distance_bands(model_cfg, [2.0, 4.0])
    assert [name for name, _ in bands] == ["0-2 m", "2-4 m", ">= 4 m"]
    masks = torch.stack([mask for _, mask in bands])          # (3, 4, 4, 1): cell centres at +-1, +-3 m
    assert masks.shape == (3, 4, 4, 1) and (masks.sum(0) == 1).all()
    # centres (+-1, +-1): 1.41 m; (+-1, +-3): 3.16 m; (+-3, +-3): 4.24 m
    assert masks[0].sum() == 4 and masks[1].sum() == 8 and masks[2].sum() == 4
    assert masks[0][1, 2, 0] and masks[2][0, 0, 0] and masks[1][0, 1, 0]
