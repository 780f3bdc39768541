"""Exponential moving average of a model's whole state (docs/training.md#ema).

Every floating-point entry of the state dict (parameters AND float buffers such as BN running
statistics) is averaged; integer buffers (BN num_batches_tracked) are copied. The decay ramps up
with the number of updates n:  d(n) = max_decay * (1 - exp(-n / ramp)),  0.999 and 2000 by default,
so early averages follow the model closely. The EMA starts as a copy of the model.
"""
import math

import torch
from torch import nn


def _unwrap(model):
    """The module behind DistributedDataParallel / DataParallel (what accelerator.prepare wraps)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class EMA:
    def __init__(self, model, max_decay=0.999, ramp=2000.0):
        self.max_decay = max_decay
        self.ramp = ramp
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}

    def decay(self):
        return self.max_decay * (1 - math.exp(-self.updates / self.ramp))

    @torch.no_grad()
    def update(self, model):
        """One EMA step after an optimizer step: ema = d * ema + (1 - d) * model."""
        self.updates += 1
        d = self.decay()
        model_state = _unwrap(model).state_dict()
        if model_state.keys() != self.state.keys():
            raise ValueError(f"EMA and model state keys differ: "
                             f"{sorted(model_state.keys() ^ self.state.keys())[:10]}")
        for name, value in model_state.items():
            average = self.state[name]
            if average.dtype.is_floating_point:
                average.mul_(d).add_(value.detach().to(average.dtype), alpha=1 - d)
            else:
                average.copy_(value)

    def copy_to(self, model):
        """Load the averaged weights into `model` (e.g. for validation or export)."""
        _unwrap(model).load_state_dict(self.state)

    def state_dict(self):
        return {"updates": self.updates, "model": self.state}

    def load_state_dict(self, state_dict):
        self.updates = state_dict["updates"]
        missing = self.state.keys() ^ state_dict["model"].keys()
        if missing:
            raise ValueError(f"EMA state keys differ from the model's: {sorted(missing)[:10]}")
        for name, value in state_dict["model"].items():
            self.state[name].copy_(value)
