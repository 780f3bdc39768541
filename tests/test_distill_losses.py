"""DistillOcc masks and losses (docs/training.md#distillocc) and the Occ-BEV focal loss (docs/training.md#occ-bev-pre-training) against hand computation."""
import math

import pytest
import torch
import torch.nn.functional as F

from occ import losses

# One sample, X = Y = 2, Z = 3, labels [x, y, z]:
#   column (x0, y0) = (4, 17, 17)   -> fg (has a class <= 10)
#   column (x0, y1) = (11, 3, 17)   -> fg (has class 3, even though it also has background 11)
#   column (x1, y0) = (12, 17, 17)  -> bg
#   column (x1, y1) = (17, 17, 17)  -> empty
GRID = torch.tensor([[[[4, 17, 17], [11, 3, 17]], [[12, 17, 17], [17, 17, 17]]]])


def test_masks_on_a_hand_made_grid():
    masks = losses.distill_masks(GRID)
    assert masks["fg_col"][0].tolist() == [[True, True], [False, False]]
    assert masks["bg_col"][0].tolist() == [[False, False], [True, False]]
    assert masks["empty_col"][0].tolist() == [[False, False], [False, True]]
    assert masks["fg"][0].nonzero().tolist() == [[0, 0, 0], [0, 1, 1]]
    assert masks["bg"][0].nonzero().tolist() == [[0, 1, 0], [1, 0, 0]]
    assert int(masks["empty"].sum()) == 12 - 4


def test_masks_are_disjoint_and_cover_every_voxel_and_column():
    torch.manual_seed(0)
    labels = torch.randint(0, 18, (2, 6, 5, 4))
    labels[0, 1, 1] = 17          # an all-free column
    labels[1, 2, 3] = 14          # an all-background column
    masks = losses.distill_masks(labels)
    for names in (("fg", "bg", "empty"), ("fg_col", "bg_col", "empty_col")):
        stacked = torch.stack([masks[n].int() for n in names])
        assert (stacked.sum(0) == 1).all(), names
    assert masks["empty_col"][0, 1, 1] and masks["bg_col"][1, 2, 3]


def test_bev_feature_mse_uses_the_column_mask_in_the_features_y_x_layout():
    teacher = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],      # channel 0, rows y, columns x
                             [[5.0, 6.0], [7.0, 8.0]]]])    # channel 1
    student = torch.zeros_like(teacher, requires_grad=True)
    masks = losses.distill_masks(GRID)
    # fg columns (x0, y0), (x0, y1) -> features [:, y0, x0] and [:, y1, x0]: (1+25 + 9+49) / 2 / 2
    assert losses.bev_feature_mse(student, teacher, masks["fg_col"]).item() == pytest.approx(21.0)
    # bg column (x1, y0) -> [:, y0, x1]: (4 + 36) / 1 / 2; empty (x1, y1) -> (16 + 64) / 1 / 2
    assert losses.bev_feature_mse(student, teacher, masks["bg_col"]).item() == pytest.approx(20.0)
    assert losses.bev_feature_mse(student, teacher, masks["empty_col"]).item() == pytest.approx(40.0)
    zero = losses.bev_feature_mse(student, teacher, torch.zeros(1, 2, 2, dtype=torch.bool))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(student.grad).all()


def hand_logits():
    """Teacher = 5 * one-hot(GRID) (18 classes); student chosen so each mask has a known cosine."""
    teacher = F.one_hot(GRID, 18).float() * 5
    student = torch.zeros_like(teacher)
    student[0, 0, 0, 0] = teacher[0, 0, 0, 0]                       # fg voxel, cos 1
    student[0, 0, 1, 1, 3] = 1.0                                    # fg voxel, e3 + e0: cos 1/sqrt(2)
    student[0, 0, 1, 1, 0] = 1.0
    student[0, 0, 1, 0] = -teacher[0, 0, 1, 0]                      # bg voxels, cos -1
    student[0, 1, 0, 0] = -teacher[0, 1, 0, 0]
    empty = GRID[0] == 17
    student[0][empty] = F.one_hot(torch.tensor(0), 18).float()      # empty voxels, cos 0
    return student, teacher


def test_logit_cosine_distance_per_mask():
    student, teacher = hand_logits()
    masks = losses.distill_masks(GRID)
    fg = losses.logit_cosine_distance(student, teacher, masks["fg"])
    assert fg.item() == pytest.approx((0.0 + 1 - 1 / math.sqrt(2)) / 2, rel=1e-6)
    assert losses.logit_cosine_distance(student, teacher, masks["bg"]).item() == pytest.approx(2.0)
    assert losses.logit_cosine_distance(student, teacher, masks["empty"]).item() == pytest.approx(1.0)


def test_distill_losses_take_masks_from_gt_when_labelled_and_from_the_teacher_otherwise():
    torch.manual_seed(0)
    gt0 = GRID[0]
    other = torch.randint(0, 18, (2, 2, 3))
    # sample 0 labelled (GT = GRID, teacher predicts `other`); sample 1 unlabelled (teacher predicts GRID)
    teacher_logits = F.one_hot(torch.stack([other, gt0]), 18).float() * 3 + 0.1 * torch.randn(2, 2, 2, 3, 18)
    semantics = torch.stack([gt0, torch.full_like(gt0, 255)])       # no GT on the unlabelled sample
    mask_camera = torch.rand(2, 2, 2, 3) > 0.3
    labelled = torch.tensor([True, False])
    student_logits = torch.randn(2, 2, 2, 3, 18, requires_grad=True)
    student_bev, teacher_bev = torch.randn(2, 4, 2, 2, requires_grad=True), torch.randn(2, 4, 2, 2)
    got = losses.distill_losses(student_bev, student_logits, teacher_bev, teacher_logits,
                                semantics, mask_camera, labelled)
    assert set(got) == {"loss_ce", "loss_feat_fg", "loss_feat_bg", "loss_feat_empty",
                        "loss_logit_fg", "loss_logit_bg", "loss_logit_empty"}

    mask_labels = torch.stack([gt0, gt0])   # GT of sample 0, teacher argmax of sample 1
    masks = losses.distill_masks(mask_labels)
    ce_mask = mask_camera.clone()
    ce_mask[1] = False
    expected = {
        "loss_ce": losses.masked_cross_entropy(student_logits, mask_labels, ce_mask),
        **{f"loss_feat_{k}": losses.bev_feature_mse(student_bev, teacher_bev, masks[f"{k}_col"])
           for k in ("fg", "bg", "empty")},
        **{f"loss_logit_{k}": losses.logit_cosine_distance(student_logits, teacher_logits, masks[k])
           for k in ("fg", "bg", "empty")},
    }
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value.item(), rel=1e-6), name
    # the CE is the masked CE of sample 0 alone
    only0 = losses.masked_cross_entropy(student_logits[:1], gt0[None], mask_camera[:1])
    assert got["loss_ce"].item() == pytest.approx(only0.item(), rel=1e-6)

    sum(got.values()).backward()
    assert torch.isfinite(student_logits.grad).all() and student_bev.grad.abs().sum() > 0


def test_distill_ce_is_zero_without_labelled_samples_and_teacher_gets_no_gradient():
    student_logits = torch.randn(2, 2, 2, 3, 18, requires_grad=True)
    teacher_logits = torch.randn(2, 2, 2, 3, 18, requires_grad=True)
    teacher_bev = torch.randn(2, 4, 2, 2, requires_grad=True)
    got = losses.distill_losses(torch.randn(2, 4, 2, 2, requires_grad=True), student_logits,
                                teacher_bev, teacher_logits, torch.full((2, 2, 2, 3), 255),
                                torch.ones(2, 2, 2, 3, dtype=torch.bool), torch.tensor([False, False]))
    assert got["loss_ce"].item() == 0.0
    sum(got.values()).backward()
    assert teacher_logits.grad is None and teacher_bev.grad is None
    assert torch.isfinite(student_logits.grad).all()
    with pytest.raises(ValueError, match="labelled"):
        losses.distill_losses(teacher_bev, student_logits, teacher_bev, teacher_logits,
                              torch.zeros(2, 2, 2, 3, dtype=torch.long),
                              torch.ones(2, 2, 2, 3, dtype=torch.bool), torch.tensor([1, 0]))



def test_distill_losses_with_the_four_losses_put_them_in_place_of_the_ce_on_the_labelled_samples():
    torch.manual_seed(0)
    gt0 = GRID[0]
    teacher_logits = torch.randn(2, 2, 2, 3, 18)
    semantics = torch.stack([gt0, torch.zeros_like(gt0)])           # sample 1 unlabelled: its GT is zeroed
    mask_camera = torch.rand(2, 2, 2, 3) > 0.3
    student_logits = torch.randn(2, 2, 2, 3, 18, requires_grad=True)
    student_bev, teacher_bev = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    weights = torch.rand(18) + 0.5
    args = (student_bev, student_logits, teacher_bev, teacher_logits, semantics, mask_camera)
    ce = losses.distill_losses(*args, torch.tensor([True, False]))
    four = losses.distill_losses(*args, torch.tensor([True, False]), "four", weights)
    # the four losses of sample 0 alone, class-weighted; the six teacher terms as with the CE
    expected = losses.four_losses(student_logits[:1], gt0[None], mask_camera[:1], weights)
    assert set(four) == set(ce) | set(expected)
    for name, value in expected.items():
        assert four[name].item() == pytest.approx(value.item(), rel=1e-6), name
    for name in set(ce) - {"loss_ce"}:
        assert four[name].item() == pytest.approx(ce[name].item(), rel=1e-6), name
    # without a labelled sample every supervised term is 0 and the student still gets finite gradients
    none = losses.distill_losses(*args, torch.tensor([False, False]), "four", weights)
    assert all(none[name].item() == 0.0 for name in expected)
    sum(none.values()).backward()
    assert torch.isfinite(student_logits.grad).all()
    with pytest.raises(ValueError, match="'ce' or 'four'"):
        losses.distill_losses(*args, torch.tensor([True, False]), "focal")


def test_focal_loss_matches_hand_formula():
    sigmoid = lambda x: 1 / (1 + math.exp(-x))

    def focal(p, t, alpha=0.25, gamma=2.0):   # one element: -alpha_t (1 - p_t)^gamma log p_t
        p_t, alpha_t = (p, alpha) if t == 1 else (1 - p, 1 - alpha)
        return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)

    logits = torch.tensor([[0.0, 1.0], [-1.0, 2.0], [3.0, -0.5]])   # channel 0 empty, 1 occupied
    occupied = torch.tensor([True, False, False])
    targets = [(0, 1), (1, 0), (1, 0)]
    expected = sum(focal(sigmoid(x), t) for row, target in zip(logits.tolist(), targets)
                   for x, t in zip(row, target)) / 3   # sum over voxels and channels / voxels
    assert losses.occupancy_focal_loss(logits, occupied).item() == pytest.approx(expected, rel=1e-6)
    # a grid shaped input gives the same per-voxel normalisation
    grid = losses.occupancy_focal_loss(logits.view(1, 3, 1, 2), occupied.view(1, 3, 1))
    assert grid.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="focal loss"):
        losses.occupancy_focal_loss(torch.zeros(3, 18), occupied)
