"""Occupancy losses (docs/training.md#losses) on tiny hand-made grids, checked against hand computation."""
import math

import pytest
import torch
import torch.nn.functional as F

from occ import losses


def logits_from_probs(probs):
    """Logits whose softmax is exactly `probs` (..., C)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# A 1 x 2 x 2 x 2 grid with 3 classes; every voxel has softmax probs (1/6, 2/6, 3/6) or (3/6, 1/6, 2/6).
PROBS_A = [1 / 6, 2 / 6, 3 / 6]
PROBS_B = [3 / 6, 1 / 6, 2 / 6]


def small_grid():
    probs = [[[PROBS_A, PROBS_B], [PROBS_B, PROBS_A]], [[PROBS_A, PROBS_A], [PROBS_B, PROBS_B]]]
    logits = logits_from_probs([probs])                                     # (1, 2, 2, 2, 3)
    labels = torch.tensor([[[[0, 1], [2, 0]], [[2, 2], [2, 0]]]])           # (1, 2, 2, 2)
    mask = torch.tensor([[[[True, True], [False, True]], [[False, False], [True, False]]]])
    return logits, labels, mask


def test_masked_cross_entropy_matches_hand_computation():
    logits, labels, mask = small_grid()
    # masked voxels: (0,0,0) A label 0, (0,0,1) B label 1, (0,1,1) A label 0, (1,1,0) B label 2
    expected = (-math.log(1 / 6) - math.log(1 / 6) - math.log(1 / 6) - math.log(2 / 6)) / 4
    assert losses.masked_cross_entropy(logits, labels, mask).item() == pytest.approx(expected, rel=1e-6)


def test_masked_cross_entropy_ignores_voxels_outside_the_mask():
    logits, labels, mask = small_grid()
    before = losses.masked_cross_entropy(logits, labels, mask)
    logits2 = logits.clone()
    logits2[~mask] = torch.randn(int((~mask).sum()), 3) * 10
    labels2 = labels.clone()
    labels2[~mask] = (labels[~mask] + 1) % 3
    after = losses.masked_cross_entropy(logits2, labels2, mask)
    assert after.item() == pytest.approx(before.item(), rel=1e-6)


def test_masked_cross_entropy_with_class_weights():
    logits, labels, mask = small_grid()
    weights = torch.tensor([0.5, 2.0, 3.0])
    # label 0: two voxels, CE ln 6, weight 0.5; label 1: one, CE ln 6, weight 2; label 2: one, CE ln 3, weight 3
    expected = (2 * 0.5 * math.log(6) + 2.0 * math.log(6) + 3.0 * math.log(3)) / 4
    got = losses.masked_cross_entropy(logits, labels, mask, class_weights=weights)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_masked_cross_entropy_gradient_is_softmax_minus_onehot_over_count():
    logits, labels, mask = small_grid()
    logits.requires_grad_(True)
    losses.masked_cross_entropy(logits, labels, mask).backward()
    expected = (logits.detach().softmax(-1) - F.one_hot(labels, 3)) * mask[..., None] / mask.sum()
    torch.testing.assert_close(logits.grad, expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_fn", [losses.masked_cross_entropy, losses.sem_scal_loss,
                                     losses.geo_scal_loss, losses.lovasz_softmax_loss])
def test_zero_mask_gives_zero_with_gradient(loss_fn):
    logits = torch.randn(1, 2, 2, 2, 18, requires_grad=True)
    labels = torch.randint(0, 18, (1, 2, 2, 2))
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    loss = loss_fn(logits, labels, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_bad_inputs_raise_clear_errors():
    logits, labels, mask = small_grid()
    with pytest.raises(ValueError, match="labels must lie in"):
        losses.masked_cross_entropy(logits, torch.full_like(labels, 255), mask)
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.masked_cross_entropy(logits, labels[:, :1], mask)
    with pytest.raises(ValueError, match="mask must be bool"):
        losses.masked_cross_entropy(logits, labels, mask.float())


def test_class_weights_from_counted_frequencies():
    labels = torch.tensor([[0, 0, 0, 1], [1, 2, 2, 2]])
    mask = torch.tensor([[True, True, False, True], [True, True, True, False]])
    counts = losses.count_class_voxels(labels, mask, num_classes=4)
    assert counts.tolist() == [2, 2, 2, 0]
    weights = losses.class_weights_from_frequencies([10.0, 1000.0])
    assert weights.tolist() == pytest.approx([1 / math.log(10.001), 1 / math.log(1000.001)])
    with pytest.raises(ValueError, match="classes \\[3\\]"):
        losses.class_weights_from_frequencies(counts.tolist())


# Two voxels, three classes: v1 label 0 with probs (0.5, 0.25, 0.25), v2 label 1 or 2 with (0.2, 0.6, 0.2).
def two_voxels(label_v2):
    logits = logits_from_probs([[[[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]]]]])   # (1, 1, 1, 2, 3)
    labels = torch.tensor([[[[0, label_v2]]]])
    return logits, labels, torch.ones_like(labels, dtype=torch.bool)


def test_sem_scal_matches_hand_computation():
    logits, labels, mask = two_voxels(label_v2=1)
    # class 0: p = (0.5, 0.2), t = (1, 0): precision 0.5/0.7, recall 0.5/1, specificity 0.8/1
    class0 = -math.log(0.5 / 0.7) - math.log(0.5) - math.log(0.8)
    # class 1: p = (0.25, 0.6), t = (0, 1): precision 0.6/0.85, recall 0.6, specificity 0.75
    class1 = -math.log(0.6 / 0.85) - math.log(0.6) - math.log(0.75)
    # class 2 is absent from the labels and skipped
    got = losses.sem_scal_loss(logits, labels, mask)
    assert got.item() == pytest.approx((class0 + class1) / 2, rel=1e-5)


def test_geo_scal_matches_hand_computation():
    logits, labels, mask = two_voxels(label_v2=2)   # class 2 plays "free"
    # occupied prob q = 1 - p_free = (0.75, 0.8); occupied target o = (1, 0)
    precision, recall, specificity = 0.75 / 1.55, 0.75 / 1, 0.2 / 1
    expected = -math.log(precision) - math.log(recall) - math.log(specificity)
    got = losses.geo_scal_loss(logits, labels, mask, free_class=2)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_lovasz_softmax_matches_hand_computation():
    # three voxels, two classes: p0 = (0.9, 0.4, 0.3), labels (0, 0, 1)
    logits = logits_from_probs([[[[[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]]]]])
    labels = torch.tensor([[[[0, 0, 1]]]])
    mask = torch.ones_like(labels, dtype=torch.bool)
    # class 0, GT {v1, v2}; errors v1 0.1, v2 0.6, v3 0.3 -> order v2, v3, v1.
    # Jaccard loss of the prediction with the first k sorted voxels wrong:
    #   {v2} wrong -> pred {v1}: IoU 1/2, J 0.5; {v2,v3} -> pred {v1,v3}: IoU 1/3, J 2/3;
    #   all wrong -> pred {v3}: IoU 0, J 1. Increments (0.5, 1/6, 1/3).
    class0 = 0.6 * 0.5 + 0.3 * (1 / 6) + 0.1 * (1 / 3)
    # class 1, GT {v3}; p1 = (0.1, 0.6, 0.7); errors v1 0.1, v2 0.6, v3 0.3 -> order v2, v3, v1.
    #   {v2} -> pred {v3, v2}: J 0.5; {v2,v3} -> pred {v2}: J 1; all -> pred {v2, v1}: J 1.
    class1 = 0.6 * 0.5 + 0.3 * 0.5 + 0.1 * 0.0
    got = losses.lovasz_softmax_loss(logits, labels, mask)
    assert got.item() == pytest.approx((class0 + class1) / 2, rel=1e-5)


def test_lovasz_is_zero_for_a_perfect_prediction_and_positive_otherwise():
    labels = torch.randint(0, 18, (1, 3, 3, 2))
    mask = torch.ones_like(labels, dtype=torch.bool)
    perfect = F.one_hot(labels, 18).float() * 50
    assert losses.lovasz_softmax_loss(perfect, labels, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.lovasz_softmax_loss(torch.zeros(1, 3, 3, 2, 18), labels, mask).item() > 0.5


def test_four_losses_only_see_the_masked_voxels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, 18)
    labels = torch.randint(0, 18, (2, 3, 3, 4))
    mask = torch.rand(2, 3, 3, 4) > 0.4
    weights = losses.class_weights_from_frequencies(torch.arange(18) * 1000.0 + 10)
    before = losses.four_losses(logits, labels, mask, weights)
    assert set(before) == {"loss_ce", "loss_sem_scal", "loss_geo_scal", "loss_lovasz"}
    logits[~mask] = torch.randn(int((~mask).sum()), 18) * 5
    labels[~mask] = torch.randint(0, 18, (int((~mask).sum()),))
    after = losses.four_losses(logits, labels, mask, weights)
    for name in before:
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-5), name
        assert before[name].item() > 0, name


def test_four_losses_decrease_under_gradient_descent():
    torch.manual_seed(0)
    labels = torch.randint(0, 18, (1, 4, 4, 2))
    mask = torch.ones_like(labels, dtype=torch.bool)
    logits = torch.zeros(1, 4, 4, 2, 18, requires_grad=True)
    weights = losses.class_weights_from_frequencies(torch.full((18,), 100.0))
    start = {k: v.item() for k, v in losses.four_losses(logits, labels, mask, weights).items()}
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(20):
        optimizer.zero_grad()
        sum(losses.four_losses(logits, labels, mask, weights).values()).backward()
        optimizer.step()
    end = {k: v.item() for k, v in losses.four_losses(logits, labels, mask, weights).items()}
    for name in start:
        assert end[name] < start[name], name


@pytest.mark.parametrize("case", ["all_free", "one_class_everywhere", "saturated_logits"])
def test_degenerate_grids_give_finite_losses_and_gradients(case):
    torch.manual_seed(0)
    labels = torch.randint(0, 18, (1, 3, 3, 2))
    logits = torch.randn(1, 3, 3, 2, 18)
    if case == "all_free":
        labels[:] = 17
    elif case == "one_class_everywhere":
        labels[:] = 4
    else:   # softmax underflows to exact 0 / 1 for most classes
        logits = logits * 1000
    logits.requires_grad_(True)
    mask = torch.ones_like(labels, dtype=torch.bool)
    weights = losses.class_weights_from_frequencies(torch.full((18,), 100.0))
    out = losses.four_losses(logits, labels, mask, weights)
    sum(out.values()).backward()
    assert all(torch.isfinite(v) for v in out.values()), out
    assert torch.isfinite(logits.grad).all()


def test_four_losses_equal_the_four_separate_losses_with_their_gradients():
    # four_losses selects the masked voxels and takes their softmax once; each term and the
    # gradient of their sum must be those of the separate full-grid losses.
    torch.manual_seed(0)
    labels = torch.randint(0, 18, (2, 5, 4, 3))
    mask = torch.rand(2, 5, 4, 3) > 0.7
    weights = losses.class_weights_from_frequencies(torch.arange(18) * 500.0 + 10)
    logits = torch.randn(2, 5, 4, 3, 18, requires_grad=True)
    together = losses.four_losses(logits, labels, mask, weights)
    grad_together, = torch.autograd.grad(sum(together.values()), logits)
    separate = {"loss_ce": losses.masked_cross_entropy(logits, labels, mask, weights),
                "loss_sem_scal": losses.sem_scal_loss(logits, labels, mask),
                "loss_geo_scal": losses.geo_scal_loss(logits, labels, mask),
                "loss_lovasz": losses.lovasz_softmax_loss(logits, labels, mask)}
    grad_separate, = torch.autograd.grad(sum(separate.values()), logits)
    for name in separate:
        assert together[name].item() == pytest.approx(separate[name].item(), rel=1e-6), name
    torch.testing.assert_close(grad_together, grad_separate)
    assert (grad_together[~mask] == 0).all() and (grad_together[mask] != 0).any()
