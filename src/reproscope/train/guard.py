"""The step guard: every optimizer step gets one :class:`StepDecision`, and the trainer acts on it in one place.

The guard reads two host floats per step (the loss and the global grad norm, already on the host for
logging) and decides, from ``instrument.nan_policy`` and the loss-spike detector:

    finite, no spike          -> step       code "ok"
    finite, spike             -> step, or skip with ``instrument.spike_skip``     code "loss-spike"
    fp16: loss finite, grads not -> step (the GradScaler skips it and backs off)  code "scaler-overflow"
    grad norm overflows, every gradient finite -> stop                           code "grad-norm-overflow"
    loss or grad non-finite   -> stop | skip | rollback (``nan_policy``)          code "nonfinite"

A rollback turns into a stop after ``MAX_CONSECUTIVE_ROLLBACKS`` rollbacks without a finite step in
between (restoring the same state again would fail the same way); scaler overflows count as a NaN
after ``MAX_SCALER_OVERFLOWS`` in a row (the scale has then fallen by 2^25 and still overflows).
Locating the faulty module is not the guard's job: the trainer fires the ``nonfinite`` event and the
instrument layer's tripwire does it.

:class:`DivergenceWatch` flags, once per run, a loss that has grown far above where it started, or
a grad norm grown by decades, while everything is still finite; the trainer logs it as a
``diverging`` event and says so at the end of the run.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

import torch

from ..config import InstrumentConfig

MAX_CONSECUTIVE_ROLLBACKS = 3
MAX_SCALER_OVERFLOWS = 25
ACTIONS = ("step", "skip", "stop", "rollback")
CODES = ("ok", "loss-spike", "scaler-overflow", "grad-norm-overflow", "nonfinite")  # train.events' words


class SpikeDetector:
    """Robust rolling detector: a loss above median + k * MAD of the last ``window`` losses that is
    also at least ``min_rel`` x the median above it.

    ``threshold`` k is in units of the MAD scaled to a normal std (1.4826 MAD); no flag before
    ``min_history`` finite losses. The relative floor keeps a flat run from flagging wiggles: at a
    plateau (loss 2.3025 +- 0.001) the MAD is near 0 and any wiggle scores high (2.3050 scored 13),
    so a spike also has to be a real jump (our 25 %; Lightning's SpikeDetection asks for 3x its
    running mean). Non-finite losses and flagged losses never enter the window.
    """

    def __init__(self, window: int = 100, threshold: float = 8.0, min_history: int = 20, min_rel: float = 0.25):
        self.window, self.threshold, self.min_history, self.min_rel = window, threshold, min_history, min_rel
        self.history: deque[float] = deque(maxlen=window)

    def check(self, loss: float) -> dict | None:
        """``{"loss", "median", "mad", "score"}`` when ``loss`` is a spike, else None (and it joins the window)."""
        event = None
        if len(self.history) >= self.min_history and math.isfinite(loss):
            med = statistics.median(self.history)
            mad = statistics.median(abs(v - med) for v in self.history) or 1e-12
            score = (loss - med) / (1.4826 * mad)
            if score > self.threshold and loss - med > self.min_rel * max(abs(med), 1e-12):
                event = {"loss": loss, "median": med, "mad": mad, "score": score}
        if math.isfinite(loss) and event is None:
            self.history.append(loss)
        return event


@dataclass(frozen=True)
class StepDecision:
    """What happens to optimizer step ``step`` (1-based) and why.

    ``action``: "step", "skip" (no update, the step counts), "stop" (no update, the run ends after a
    checkpoint) or "rollback" (restore ``last.pt``, halve the lr). ``code``: one of ``CODES``. ``spike``: the detector's numbers on a spike. ``findings``: what the ``nonfinite``
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
        if self.code == "grad-norm-overflow":
            top = ", ".join(f"{n} {v:.3g}" for n, v in self.findings.get("largest_grads", [])[:3])
            return (f"diverged at step {self.step}: the gradient norm overflowed float32 ("
                    f"{self.findings.get('grad_norm_fp64', float('inf')):.3g} in float64) while every gradient is finite"
                    + (f"; largest: {top}" if top else "") + "; lower optim.lr or add optim.grad_clip")
        if self.code != "nonfinite":
            return f"{self.code} at step {self.step}"
        where, between = self.findings.get("module"), self.findings.get("between")
        if between:  # born in code no module owns: the gap and the forward that holds it
            where = f"between {between[0]} and {between[1]}, in {where or '<model>'}.forward"
        return (f"non-finite loss/grad at step {self.step}"
                + (f" in {where} ({self.findings.get('phase', '?')})" if where else "") + f"; nan_policy={self.policy}")


class StepGuard:
    """Turns (loss, grad norm) into a :class:`StepDecision`; its state (spike window, rollbacks in a row)
    goes into checkpoints through ``state_dict``."""

    def __init__(self, cfg: InstrumentConfig, *, scaler: bool = False):
        self.nan_policy, self.spike_skip, self.scaler = cfg.nan_policy, cfg.spike_skip, scaler
        self.spikes = SpikeDetector(cfg.spike_window, cfg.spike_threshold, min_rel=cfg.spike_min_rel)
        self.consecutive_rollbacks = 0
        self.scaler_overflows = 0  # in a row

    def decide(self, loss: float, grad_norm: float, step: int, *, grads_finite: bool | None = None) -> StepDecision:
        """``grads_finite``: whether every gradient is finite, when the caller checked (it does when the
        grad norm is not finite: a norm can overflow while every gradient is finite)."""
        if self.scaler and math.isfinite(loss) and not math.isfinite(grad_norm):
            self.scaler_overflows += 1
            if self.scaler_overflows <= MAX_SCALER_OVERFLOWS:
                return StepDecision("step", "scaler-overflow", step, loss, grad_norm)
        elif math.isfinite(grad_norm):
            self.scaler_overflows = 0
        if math.isfinite(loss) and not math.isfinite(grad_norm) and grads_finite and not self.scaler:
            return StepDecision("stop", "grad-norm-overflow", step, loss, grad_norm, policy="stop")
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

    def decide_step(self, loss: float, grad_norm: float, step: int, params) -> StepDecision:
        """:meth:`decide` for a step whose gradients are at hand (``params``: an iterable of tensors with
        ``.grad``, iterated at most once); they are read (every one finite?) only when the norm overflowed
        on a finite loss and no scaler runs: the Trainer's and ``watch``'s one way of asking."""
        finite = None
        if math.isfinite(loss) and not math.isfinite(grad_norm) and not self.scaler:
            finite = grads_finite(params)
        return self.decide(loss, grad_norm, step, grads_finite=finite)

    def state_dict(self) -> dict:
        return {"spike_history": list(self.spikes.history), "scaler_overflows": self.scaler_overflows}

    def load_state_dict(self, state: dict) -> None:
        self.spikes.history.clear()
        self.spikes.history.extend(state.get("spike_history", []))
        self.scaler_overflows = int(state.get("scaler_overflows", 0))


class DivergenceWatch:
    """A finite run that is diverging, flagged once, from the second step on (our thresholds, no paper
    gives them):

    - the loss has risen above ``loss_factor`` x its start and above ``loss_factor`` x ln K (the loss
      of uniform predictions);
    - or the grad norm has grown ``grad_factor`` x (four decades) above its start.

    The start is the first finite step: a run can blow up within its first few steps (lr 1.0 without
    warmup does by step 2), so a median over a warm-up window would already hold the diverged values.
    """

    def __init__(self, num_classes: int, loss_factor: float = 4.0, grad_factor: float = 1e4):
        self.ln_k = math.log(max(num_classes, 2))
        self.loss_factor, self.grad_factor = loss_factor, grad_factor
        self.losses: list[float] = []  # the start: the first finite (loss, grad norm)
        self.norms: list[float] = []
        self.flagged: dict | None = None

    def check(self, loss: float, grad_norm: float, step: int) -> dict | None:
        """The event (step, reason, loss, grad_norm, references) the first time the run diverges, else None."""
        if self.flagged is not None or not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return None
        if not self.losses:
            self.losses.append(loss)
            self.norms.append(grad_norm)
            return None
        l0, g0 = self.losses[0], self.norms[0]
        reason = ""
        if loss > self.loss_factor * max(l0, self.ln_k):
            reason = (f"the loss {loss:.4g} is {loss / l0:.3g}x its start ({l0:.3g}"
                      + (", about ln K)" if abs(l0 - self.ln_k) < 0.05 * self.ln_k else
                         f") and {loss / self.ln_k:.3g}x ln K ({self.ln_k:.3g})"))
        elif grad_norm > self.grad_factor * max(g0, 1e-12):
            reason = f"the grad norm {grad_norm:.3g} is {grad_norm / g0:.3g}x its start ({g0:.3g})"
        if reason:
            self.flagged = {"step": step, "reason": reason, "loss": loss, "grad_norm": grad_norm,
                            "loss_start": l0, "grad_norm_start": g0}
        return self.flagged

    def state_dict(self) -> dict:
        return {"losses": self.losses, "norms": self.norms, "flagged": self.flagged}

    def flag(self, loss: float, grad_norm: float, step: int, find=None) -> dict | None:
        """The divergence event the first time the run is flagged at ``step`` (else None), with the
        ``findings`` that ``find(flagged, findings)`` adds (the Trainer fires its ``diverging`` event
        there, ``watch`` runs the paper-figure probes). One path for both loops."""
        ev = self.check(loss, grad_norm, step)
        if ev is None or ev["step"] != step:
            return None
        findings: dict = {}
        if find is not None:
            find(dict(ev), findings)
        ev["findings"] = findings
        return ev

    def load_state_dict(self, state: dict) -> None:
        self.losses = list(state.get("losses", []))
        self.norms = list(state.get("norms", []))
        self.flagged = state.get("flagged")


def grads_finite(params) -> bool:
    """Whether every gradient of ``params`` is finite (asked only when the total norm is not: a norm of
    finite gradients can still overflow float32)."""
    return all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)


def overflow_findings(named_params) -> dict:
    """For a grad-norm overflow: the total norm in float64 and the three largest per-parameter gradient
    norms (float64, ``[[name, norm], ...]``), what the ``divergence`` stop reports."""
    norms = sorted(((n, torch.linalg.vector_norm(p.grad.double()).item()) for n, p in named_params
                    if p.grad is not None), key=lambda t: -t[1])
    return {"grad_norm_fp64": math.sqrt(sum(v ** 2 for _, v in norms)), "largest_grads": norms[:3]}
