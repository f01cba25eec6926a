"""The event vocabulary: every ``type`` of a ``kind: "event"`` row in ``metrics.jsonl``, one word per meaning.

Written by the Trainer and ``reproscope.watch``, read by ``report``, ``compare`` and ``experiments/``.
The step guard's decision codes (``train.guard.CODES``) use the same words where they name the same
thing. ``diverging`` is a finite run flagged by ``guard.DivergenceWatch`` (the run goes on);
``grad-norm-overflow`` is the stop when the global grad norm overflows float32 while every gradient
is finite. Where two runs' losses part (``reproscope compare``) is a "parting step", not an event.

Run directories written before this vocabulary used ``loss_spike``, ``scaler_skip``, ``ema_horizon``
and ``divergence`` for both of its meanings; :func:`event_type` reads them as today's words.
"""

from __future__ import annotations

from enum import Enum


class Event(str, Enum):
    """An event type (a ``str``: ``Event.LOSS_SPIKE == "loss-spike"``)."""

    NONFINITE = "nonfinite"  # a non-finite loss or gradient norm
    LOSS_SPIKE = "loss-spike"  # a loss far above the recent median (guard.SpikeDetector)
    SCALER_OVERFLOW = "scaler-overflow"  # fp16: the GradScaler skipped the step and backed off
    DIVERGING = "diverging"  # a finite run flagged as diverging, once (guard.DivergenceWatch)
    GRAD_NORM_OVERFLOW = "grad-norm-overflow"  # the stop: the grad norm overflowed, every gradient finite
    ROLLBACK = "rollback"  # nan_policy=rollback restored the last checkpoint
    EMA_HORIZON = "ema-horizon"  # the EMA averages over more than half the run

    def __str__(self) -> str:
        return self.value


_OLD = {"loss_spike": Event.LOSS_SPIKE, "scaler_skip": Event.SCALER_OVERFLOW, "ema_horizon": Event.EMA_HORIZON}


def event_type(row: dict) -> str:
    """The event type of a ``metrics.jsonl`` event row in today's vocabulary (older spellings mapped;
    an older ``divergence`` row is ``grad-norm-overflow`` when its reason says so, else ``diverging``)."""
    t = row.get("type", "")
    if t == "divergence":
        return (Event.GRAD_NORM_OVERFLOW if row.get("reason") == "grad norm overflow" else Event.DIVERGING).value
    return _OLD[t].value if t in _OLD else t
