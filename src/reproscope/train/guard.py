"""The step guard: every optimizer step gets one :class:`StepDecision`, and the trainer acts on it in one place.

The guard reads two host floats per step (the loss and the global grad norm, already on the host for
logging) and decides, from ``instrument.nan_policy`` and the loss-spike detector:

    finite, no spike          -> step       code "ok"
    finite, spike             -> step, or skip with ``instrument.spike_skip``     code "loss-spike"
    loss or grad non-finite   -> stop | skip | rollback (``nan_policy``)          code "nonfinite"

A rollback turns into a stop after ``MAX_CONSECUTIVE_ROLLBACKS`` rollbacks without a finite step in
between (restoring the same state again would fail the same way). Locating the faulty module is not
the guard's job: the trainer fires the ``nonfinite`` event and the instrument layer's tripwire does it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from ..config import InstrumentConfig

MAX_CONSECUTIVE_ROLLBACKS = 3
ACTIONS = ("step", "skip", "stop", "rollback")


class SpikeDetector:
    """Robust rolling detector: a loss above median + k * MAD of the last ``window`` losses.

    ``threshold`` k is in units of the MAD scaled to a normal std (1.4826 MAD); no flag before
    ``min_history`` finite losses. Non-finite losses and flagged losses never enter the window.
    """

    def __init__(self, window: int = 100, threshold: float = 8.0, min_history: int = 20):
        self.window, self.threshold, self.min_history = window, threshold, min_history
        self.history: deque[float] = deque(maxlen=window)

    def check(self, loss: float) -> dict | None:
        """``{"loss", "median", "mad", "score"}`` when ``loss`` is a spike, else None (and it joins the window)."""
        event = None
        if len(self.history) >= self.min_history and math.isfinite(loss):
            med = statistics.median(self.history)
            mad = statistics.median(abs(v - med) for v in self.history) or 1e-12
            score = (loss - med) / (1.4826 * mad)
            if score > self.threshold:
                event = {"loss": loss, "median": med, "mad": mad, "score": score}
        if math.isfinite(loss) and event is None:
            self.history.append(loss)
        return event


@dataclass(frozen=True)
class StepDecision:
    """What happens to optimizer step ``step`` (1-based) and why.

    ``action``: "step", "skip" (no update, the step counts), "stop" (no update, the run ends after a
    checkpoint) or "rollback" (restore ``last.pt``, halve the lr). ``code``: "ok", "loss-spike" or
    "nonfinite". ``spike``: the detector's numbers on a spike. ``findings``: what the ``nonfinite``
    event's listeners found (e.g. the tripwire's ``module``, ``phase``, ``reproducer``).
    """

    action: str
    code: str
    step: int
    loss: float
    grad_norm: float
    policy: str = ""
    spike: dict | None = None
    findings: dict = field(default_factory=dict)

    def reason(self) -> str:
        """One line for the stop message and the log."""
        if self.code != "nonfinite":
            return f"{self.code} at step {self.step}"
        where = self.findings.get("module")
        return (f"non-finite loss/grad at step {self.step}"
                + (f" in {where} ({self.findings.get('phase', '?')})" if where else "") + f"; nan_policy={self.policy}")


class StepGuard:
    """Turns (loss, grad norm) into a :class:`StepDecision`; its state (spike window, rollbacks in a row)
    goes into checkpoints through ``state_dict``."""

    def __init__(self, cfg: InstrumentConfig):
        self.nan_policy, self.spike_skip = cfg.nan_policy, cfg.spike_skip
        self.spikes = SpikeDetector(cfg.spike_window, cfg.spike_threshold)
        self.consecutive_rollbacks = 0

    def decide(self, loss: float, grad_norm: float, step: int) -> StepDecision:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive_rollbacks = 0
            spike = self.spikes.check(loss)
            if spike is None:
                return StepDecision("step", "ok", step, loss, grad_norm)
            return StepDecision("skip" if self.spike_skip else "step", "loss-spike", step, loss, grad_norm, spike=spike)
        policy = self.nan_policy
        if policy == "rollback" and self.consecutive_rollbacks >= MAX_CONSECUTIVE_ROLLBACKS:
            policy = "stop"
        if policy == "rollback":
            self.consecutive_rollbacks += 1
        return StepDecision(policy, "nonfinite", step, loss, grad_norm, policy=policy)

    def state_dict(self) -> dict:
        return {"spike_history": list(self.spikes.history)}

    def load_state_dict(self, state: dict) -> None:
        self.spikes.history.clear()
        self.spikes.history.extend(state.get("spike_history", []))
