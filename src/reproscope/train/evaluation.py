"""Evaluation: top-1, top-5 and loss over a loader, for the raw weights and the EMA's."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.datasets import BatchLoader
from ..runtime import autocast
from ..runtime.progress import progress


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, amp_dtype: torch.dtype | None, show: bool = False,
             desc: str = "eval") -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy over the whole loader (no label smoothing). ``show``:
    a transient bar over the batches on a terminal (nothing when output is redirected)."""
    was_training = model.training
    model.eval()
    dev = loader.device
    n = torch.zeros((), device=dev)
    loss_sum, c1, c5 = n.clone(), n.clone(), n.clone()
    bar = progress(len(loader), desc=desc, unit="batch", enabled=show, leave=False, lines=False)
    for x, y in loader.epoch(0):
        bar.update()
        with autocast(dev, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        c1 += (top[:, 0] == y).sum()
        c5 += (top == y[:, None]).any(dim=1).sum()
        n += y.numel()
    bar.close()
    model.train(was_training)
    n, loss_sum, c1, c5 = (t.item() for t in (n, loss_sum, c1, c5))  # one sync
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n}


def evaluate_run(model: nn.Module, ema: nn.Module | None, loader: BatchLoader, amp_dtype: torch.dtype | None,
                 eval_ema: bool, show: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """An epoch's evaluation: ``(reported, both)``. Without an EMA, ``reported`` is :func:`evaluate` of
    ``model`` and ``both`` is empty; with one, both weights are evaluated, always (an EMA that lags the
    run shows as a gap): ``both`` holds ``raw_<metric>`` and ``ema_<metric>``, and ``reported`` is the
    EMA's when ``eval_ema`` (``reg.eval_ema``), else the raw weights'."""
    raw = evaluate(model, loader, amp_dtype, show)
    if ema is None:
        return raw, {}
    avg = evaluate(ema, loader, amp_dtype, show, "eval (EMA)")
    both = {**{f"raw_{k}": v for k, v in raw.items()}, **{f"ema_{k}": v for k, v in avg.items()}}
    return (avg if eval_ema else raw), both
