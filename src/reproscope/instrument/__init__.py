"""Instrumentation: hooks that *collect*. Reading finished runs is ``reproscope.report``; running models to
explain them is ``reproscope.diagnostics``; your own loop gets all of this through ``watch.py``.

What is collected, for any ``nn.Module``:
- forward hooks: per-module output mean, std, RMS, abs-max, fraction non-finite, fraction near
  zero; for DyT-like layers (an ``alpha`` parameter) the fraction saturated (|alpha x| > 2) and the
  input std (DyT Fig. 8);
- output-gradient RMS and non-finite fraction per module (backward);
- per parameter: weight norm, grad norm and update-to-weight ratio ||dw|| / ||w||;
- on a schedule: every ``instrument.probe_every`` steps plus log-spaced early steps (1, 2, 4, ...).
  Statistics stay on the device and reach the host in one transfer per probe.

torch.compile design: hooks are registered once, on the uncompiled module, at the trainer's
``train_start`` event, which fires *before* the trainer compiles the model; they are toggled by a
flag, never added or removed. While disabled they return immediately, so the compiled graph carries
nothing of them. Probe steps run the uncompiled module (``trainer.request_eager_step()``) on the same
parameters; only there are the hooks enabled, so no ``.item()`` or tensor hook ever sits inside a
compiled graph. The price: a probe step runs at eager speed (hence the sampling schedule).

NaN/Inf tripwire (``tripwire.py``): every step the trainer reads the loss and the global grad
norm in one small device-to-host copy, before the optimizer step. When one is non-finite, the step
is replayed on a deep copy of the model (the live module keeps its hooks untouched) with temporary
forward and full backward hooks on every module, which names the module that produced the first
non-finite value and the phase; a reproducer is written for ``reproscope diagnose replay``.
"""

from ..config import Recipe
from .hooks import ActivationStats, HookHandles, tensor_stats
from .probe import Instrument, SpikeDetector, probe_schedule
from .tripwire import NonFiniteReport, Tripwire, format_report, locate_nonfinite

__all__ = ["ActivationStats", "HookHandles", "tensor_stats", "Instrument", "SpikeDetector", "probe_schedule",
           "NonFiniteReport", "Tripwire", "format_report", "locate_nonfinite", "standard_callbacks"]


def standard_callbacks(recipe: Recipe) -> list:
    """What ``reproscope train`` attaches to its Trainer: the probes (when ``instrument.enabled``) and
    the NaN/Inf tripwire (always)."""
    return ([Instrument(recipe.instrument)] if recipe.instrument.enabled else []) + [Tripwire()]
