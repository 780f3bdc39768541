"""EMA of all float state with the ramped decay of docs/training.md#ema."""
import math

import pytest
import torch
from torch import nn

from occ.ema import EMA


def toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_decay_ramp_values():
    ema = EMA(toy_model())
    for updates, expected in [(0, 0.0), (1, 0.999 * (1 - math.exp(-1 / 2000))),
                              (2000, 0.999 * (1 - math.exp(-1))), (100000, 0.999)]:
        ema.updates = updates
        assert ema.decay() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_update_averages_parameters_and_float_buffers_and_copies_integer_buffers():
    model = toy_model()
    ema = EMA(model)
    weight0 = model[0].weight.detach().clone()
    running_mean0 = model[1].running_mean.clone()
    model.train()
    model(torch.randn(8, 3))                      # moves BN running stats, num_batches_tracked = 1
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    d = 0.999 * (1 - math.exp(-1 / 2000))
    torch.testing.assert_close(ema.state["0.weight"], d * weight0 + (1 - d) * model[0].weight)
    torch.testing.assert_close(ema.state["1.running_mean"], d * running_mean0 + (1 - d) * model[1].running_mean)
    assert ema.state["1.num_batches_tracked"].item() == 1
    assert ema.updates == 1

    # a second update uses the decay of update 2
    w1 = ema.state["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    ema.update(model)
    d2 = 0.999 * (1 - math.exp(-2 / 2000))
    torch.testing.assert_close(ema.state["0.weight"], d2 * w1 + (1 - d2) * model[0].weight)


def test_ema_state_is_not_a_view_of_the_model():
    model = toy_model()
    ema = EMA(model)
    before = ema.state["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.zero_()
    torch.testing.assert_close(ema.state["0.weight"], before)


def test_wrapped_model_is_unwrapped_and_state_round_trips():
    model = toy_model()
    ema = EMA(nn.DataParallel(model))
    assert set(ema.state) == set(model.state_dict())
    with torch.no_grad():
        model[0].bias.add_(3.0)
    for _ in range(5):
        ema.update(nn.DataParallel(model))

    restored = EMA(toy_model())
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 5
    for name in ema.state:
        torch.testing.assert_close(restored.state[name], ema.state[name])

    target = toy_model()
    restored.copy_to(target)
    torch.testing.assert_close(target[0].bias, ema.state["0.bias"])

    with pytest.raises(ValueError, match="differ"):
        EMA(nn.Linear(3, 4)).load_state_dict(ema.state_dict())
