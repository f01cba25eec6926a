"""NaN/Inf tripwire: find the module that *produced* the first non-finite value.

``torch.autograd.detect_anomaly`` blames the backward op that consumed a NaN. Here the failing
step is replayed on a deep copy of the model (so the live, possibly compiled, module never gets
hooks added or removed) with temporary forward and full backward hooks on every module:

- forward: the first module, in execution order, whose output is non-finite (hooks fire when a
  module finishes, so an inner module is named before the block that contains it);
- backward, if the forward was clean: the first module whose gradient w.r.t. its input became
  non-finite while the gradient it received (w.r.t. its output) was finite;
- otherwise the first module holding a non-finite parameter gradient.

The replay uses the same batch, the same parameters (the optimizer has not stepped) and the RNG
state saved at the start of the step. User hooks are copied with the model, so a fault injected by
a hook is replayed too.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .hooks import STAT_NAMES, HookHandles, tensor_stats


@dataclass
class NonFiniteReport:
    step: int
    phase: str  # "forward", "backward" or "parameters" (or "none" when the replay was clean)
    module: str
    module_type: str = ""
    input_stats: dict = field(default_factory=dict)
    output_stats: dict = field(default_factory=dict)
    grad_output_finite: bool | None = None
    grad_input_finite: bool | None = None
    nonfinite_params: list[str] = field(default_factory=list)
    nonfinite_grads: list[str] = field(default_factory=list)
    loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(x) -> dict:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return {}
    return dict(zip(STAT_NAMES, tensor_stats(x).tolist()))


def _first(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for t in x:
            if isinstance(t, torch.Tensor):
                return t
    return None


def _all_finite(xs) -> bool | None:
    ts = [t for t in (xs if isinstance(xs, (tuple, list)) else (xs,)) if isinstance(t, torch.Tensor)]
    if not ts:
        return None
    return all(bool(torch.isfinite(t).all()) for t in ts)


def locate_nonfinite(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], criterion,
                     *, step: int = 0, autocast=nullcontext, rng_state: dict | None = None) -> NonFiniteReport:
    """Replay ``batches`` through a copy of ``model`` with full hooks and name the culprit."""
    replica = copy.deepcopy(model)
    replica.train(model.training)
    for p in replica.parameters():
        p.grad = None
    # every module but the root, containers included: a fault injected at a Sequential's output
    # belongs to the Sequential, not to the next layer that reads it
    names = {m: n for n, m in replica.named_modules() if n}
    forward_events: list[tuple[str, nn.Module, object, object]] = []
    backward_events: list[tuple[str, bool | None, bool | None]] = []
    handles = HookHandles()

    def fwd(module, inputs, output):
        forward_events.append((names[module], module, _first(inputs), _first(output)))

    def bwd(module, grad_input, grad_output):
        backward_events.append((names[module], _all_finite(grad_input), _all_finite(grad_output)))

    for m in names:
        handles.add(m.register_forward_hook(fwd))
        handles.add(m.register_full_backward_hook(bwd))
    if rng_state is not None:
        from ..train.trainer import set_rng_state
        set_rng_state(rng_state)
    loss_value = None
    import warnings
    with handles, warnings.catch_warnings():
        # modules whose inputs need no grad (the first conv) report output grads only; that is fine here
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            for x, y in batches:
                with autocast():
                    loss = criterion(replica(x), y)
                loss_value = float(loss.detach())
                loss.backward()
        except RuntimeError as e:  # e.g. an in-place op that full backward hooks cannot wrap
            if not forward_events:
                raise
            backward_events.append((f"<backward failed: {e}>", None, None))
    report = NonFiniteReport(step=step, phase="none", module="", loss=loss_value)
    report.nonfinite_params = [n for n, p in replica.named_parameters() if not torch.isfinite(p).all()]
    report.nonfinite_grads = [n for n, p in replica.named_parameters()
                              if p.grad is not None and not torch.isfinite(p.grad).all()]
    for name, module, inp, out in forward_events:
        if isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
            report.phase, report.module, report.module_type = "forward", name, type(module).__name__
            report.input_stats, report.output_stats = _stats(inp), _stats(out)
            return report
    for name, gin_ok, gout_ok in backward_events:
        if gin_ok is False and gout_ok is not False:
            module = dict(replica.named_modules()).get(name)
            report.phase, report.module = "backward", name
            report.module_type = type(module).__name__ if module is not None else ""
            report.grad_input_finite, report.grad_output_finite = gin_ok, gout_ok
            ev = next((e for e in forward_events if e[0] == name), None)
            if ev is not None:
                report.input_stats, report.output_stats = _stats(ev[2]), _stats(ev[3])
            return report
    if report.nonfinite_grads:
        first = report.nonfinite_grads[0]
        report.phase, report.module = "parameters", first.rsplit(".", 1)[0]
    return report


def format_report(r: NonFiniteReport) -> str:
    lines = [f"NON-FINITE at step {r.step}: phase {r.phase}, module '{r.module}' ({r.module_type})"]
    if r.phase == "none":
        lines = [f"NON-FINITE at step {r.step}, but the replay was finite everywhere (loss {r.loss}): the fault "
                 f"is not reproducible from this state (non-deterministic kernel, or a transient input)"]
    if r.phase == "backward":
        lines.append(f"  the gradient it received was finite ({r.grad_output_finite}); the gradient it passed back "
                     f"was not: the fault is in this module's backward")
    for label, st in (("input", r.input_stats), ("output", r.output_stats)):
        if st:
            lines.append(f"  {label:<6} " + "  ".join(f"{k} {v:.4g}" for k, v in st.items()))
    if r.nonfinite_params:
        lines.append(f"  parameters with non-finite values: {', '.join(r.nonfinite_params[:10])}")
    if r.nonfinite_grads:
        lines.append(f"  parameters with non-finite grads ({len(r.nonfinite_grads)}): {', '.join(r.nonfinite_grads[:10])}")
    return "\n".join(lines)
