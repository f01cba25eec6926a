"""The event vocabulary: every ``type`` of a ``kind: "event"`` row in ``metrics.jsonl``, one word per meaning.

Written by the Trainer and ``reproscope.watch``, read by ``report``, ``compare`` and ``experiments/``.
The step guard's decision codes (``train.guard.CODES``) use the same words where they name the same
thing. ``diverging`` is a finite run flagged by ``guard.DivergenceWatch`` (the run goes on);
``grad-norm-overflow`` is the stop when the global grad norm overflows float32 while every gradient
is finite. Where two runs' losses part (``reproscope compare``) is a "parting step", not an event.

:class:`EventWriter` writes every event row, and the console line that goes with it, for both loops.

Run directories written before this vocabulary used ``loss_spike``, ``scaler_skip``, ``ema_horizon``
and ``divergence`` for both of its meanings; :func:`event_type` reads them as today's words.
"""

from __future__ import annotations

import dataclasses
from enum import Enum

from ..console import log as console
from .ema import horizon_warning
from .guard import StepDecision, overflow_findings


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


class EventWriter:
    """The one writer of a run's event rows (``metrics.jsonl`` through the run's ``MetricsLog``) and of
    the console lines that go with them, for the Trainer and ``reproscope.watch``: both loops write the
    same types with the same fields and say the same sentences.

    ``advice``: what the DIVERGING line suggests (the Trainer names recipe keys; your loop has none).
    """

    def __init__(self, log, advice: str = ""):
        self.log, self.advice = log, advice

    def scaler_overflow(self, d: StepDecision, scale: float, in_a_row: int) -> None:
        """fp16: the GradScaler skipped step ``d.step`` and backed off to ``scale``."""
        self.log.log("event", d.step, type=Event.SCALER_OVERFLOW, scale=float(scale), in_a_row=in_a_row)

    def loss_spike(self, d: StepDecision, **where) -> None:
        """A loss spike (``d.spike``: loss, median, MAD, score); ``where``: e.g. ``batch_indices``."""
        self.log.log("event", d.step, type=Event.LOSS_SPIKE, skipped=d.action == "skip", **where, **d.spike)

    def grad_norm_overflow(self, d: StepDecision, named_params) -> StepDecision:
        """The stop: ``d`` with the overflow findings (fp64 norm, largest gradients), logged and said."""
        d = dataclasses.replace(d, findings=overflow_findings(named_params))
        self.log.log("event", d.step, type=Event.GRAD_NORM_OVERFLOW, loss=d.loss,
                     grad_norm_fp64=d.findings["grad_norm_fp64"],
                     largest_grads=[[n, v] for n, v in d.findings["largest_grads"]])
        console.warning("DIVERGED: %s", d.reason())
        return d

    def nonfinite(self, d: StepDecision, findings: dict) -> None:
        """A non-finite step with what the listeners found (module, phase, reproducer); with nothing
        found, the line says how to have the module named."""
        self.log.log("event", d.step, type=Event.NONFINITE, policy=d.policy, loss=d.loss, grad_norm=d.grad_norm,
                     **findings)
        if not findings:
            console.warning("NON-FINITE at step %d (loss %s, grad norm %s); policy %s. Attach "
                            "reproscope.instrument.Tripwire() to name the module", d.step, d.loss, d.grad_norm, d.policy)

    def diverging(self, ev: dict) -> None:
        """A finite run flagged as diverging (``guard.DivergenceWatch.flag``'s event), with its findings."""
        self.log.log("event", ev["step"], type=Event.DIVERGING, **{k: v for k, v in ev.items() if k != "step"})
        console.warning("DIVERGING at step %d: %s (still finite%s)%s", ev["step"], ev["reason"], self.advice,
                        "".join(f"\n  {f.get('sentence', f)}" for f in ev["findings"].values()))

    def rollback(self, bad_step: int, restored_step: int, lr_scale: float, path) -> None:
        """``nan_policy=rollback`` restored ``path`` (step ``restored_step``) after ``bad_step``."""
        console.warning("rollback: restored step %d from %s; lr scale now %g", restored_step, path, lr_scale)
        self.log.log("event", bad_step, type=Event.ROLLBACK, restored_step=restored_step, lr_scale=lr_scale)

    def ema_horizon(self, step: int, decay: float, total_steps: int) -> None:
        """Warn (and log) when an EMA of ``decay`` averages over more than half of ``total_steps``."""
        msg = horizon_warning(decay, total_steps)
        if msg:
            console.warning("warning: %s", msg)
            self.log.log("event", step, type=Event.EMA_HORIZON, horizon_steps=1 / (1 - decay), total_steps=total_steps)
