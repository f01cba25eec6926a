"""Exponential moving average of weights: ema = decay * ema + (1 - decay) * w, every step."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class ModelEma:
    """A frozen copy of ``model`` in eval mode whose floating-point parameters and buffers follow the
    model's by ``ema = decay * ema + (1 - decay) * w`` at each ``update``; integer buffers (BatchNorm's
    step count) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = [p for p in self.module.state_dict().values() if p.dtype.is_floating_point]
        cur_p = [p for p in model.state_dict().values() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - self.decay)
        for e, c in zip(self.module.buffers(), model.buffers()):
            if not e.dtype.is_floating_point:
                e.copy_(c)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.module.load_state_dict(d)


def horizon_warning(decay: float, total_steps: int) -> str | None:
    """The warning for an EMA that averages over more than half the run, or None.

    An EMA with ``decay`` averages over about ``1 / (1 - decay)`` steps (its time constant); beyond
    ``total_steps / 2`` its weights lag far behind the raw ones at the end of the run.
    """
    horizon = 1 / (1 - decay)
    if horizon <= total_steps / 2:
        return None
    return (f"reg.ema_decay={decay} averages over ~{horizon:.0f} steps, more than half of this run's "
            f"{total_steps} steps: the EMA weights will lag the raw ones (both are evaluated and logged)")
