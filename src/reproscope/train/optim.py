"""Optimizer parameter groups and the per-iteration lr schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import OptimConfig, ScheduleConfig


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters that get no weight decay: every 1-D (or scalar) parameter (norm/DyT
    parameters, biases, layer scales) and whatever the model lists in ``no_weight_decay()``
    (positional embedding, class token)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n in skip or n.split(".")[-1] in skip}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    nd = no_decay_names(model)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if n in nd else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "group": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1, nesterov=cfg.beta1 > 0)


class WarmupCosine:
    """Per-iteration schedule: linear warmup from 0 to ``peak``, then cosine to ``min_lr``.

    The lr is a pure function of the step, so a resumed run has exactly the same lr.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, min_lr: float):
        self.peak, self.total, self.warmup, self.min_lr = peak, max(1, total_steps), warmup_steps, min_lr
        self.scale = 1.0  # multiplied in by the NaN "rollback" policy

    @classmethod
    def from_config(cls, optim: OptimConfig, sched: ScheduleConfig, steps_per_epoch: int) -> "WarmupCosine":
        return cls(optim.lr, sched.epochs * steps_per_epoch,
                   int(round(sched.warmup_epochs * steps_per_epoch)), sched.min_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.scale * self.peak * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.scale * (self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + math.cos(math.pi * t)))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, d: dict) -> None:
        self.scale = float(d.get("scale", 1.0))
