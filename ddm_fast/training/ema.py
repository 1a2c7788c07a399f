"""Exponential moving average of a module's weights."""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Mapping

import torch

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """EMA of a module's parameters (buffers are copied).

    ``decay`` is reached after a warm-up: the effective rate of update n is
    min(decay, (1 + n) / (10 + n)), so short runs are not dominated by the
    random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) \
                or not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.module.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        rate = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        ema_params = list(self.module.parameters())
        new_params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(new_params):
            raise ValueError(f"model has {len(new_params)} parameters, the "
                             f"EMA holds {len(ema_params)}; update with the "
                             "module the EMA was built from")
        if ema_params:
            torch._foreach_lerp_(ema_params, new_params, 1.0 - rate)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"module": self.module.state_dict(),
                "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        decay = float(state["decay"])
        if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
            raise ValueError(f"the EMA state's decay must lie in [0, 1), got {decay}")
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = decay
