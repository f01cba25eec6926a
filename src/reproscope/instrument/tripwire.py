"""NaN/Inf tripwire: find the module that *produced* the first non-finite value.

``torch.autograd.detect_anomaly`` blames the backward op that consumed a NaN. Here the failing
step is replayed on a deep copy of the model (so the live, possibly compiled, module never gets
hooks added or removed) with temporary forward and full backward hooks on every module:

- forward: the first module, in execution order, whose output is non-finite (hooks fire when a
  module finishes, so an inner module is named before the block that contains it); when that
  module's input was already non-finite, the value was born in code no module owns (``torch.sqrt``
  in a parent's ``forward``): the report names the gap, "between A (finite output) and B
  (non-finite input)", and the innermost module whose input was still finite, whose ``forward``
  holds that code;
- backward, if the forward was clean: the first module whose gradient w.r.t. its input became
  non-finite while the gradient it received (w.r.t. its output) was finite;
- when no module qualifies, the first module that received a non-finite gradient, with the last
  one that passed back a finite gradient before it: the gap between them, in the backward of a
  parent's own code;
- otherwise the first module holding a non-finite parameter gradient.

A batch that is already non-finite is the data's fault (phase ``input``). Two places no submodule owns
are named as such: the model's own ``forward`` after its last submodule
(every submodule's output finite, the model's output not: "born after 'fc', in Net.forward"), and
the loss (the model's output finite, the criterion's value not: phase ``loss``).

The replay uses the same batch, the same parameters (the optimizer has not stepped) and the RNG
state saved at the start of the step. User hooks are copied with the model, so a fault injected by
a hook is replayed too.

:class:`Tripwire` is the trainer's callback for this (the ``nonfinite`` event); ``reproscope.watch``
calls :func:`trip` for a loop that is not ours. Both write the same reproducer, print the same
report and log the same event fields.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..console import log as console
from ..model.layers import first_tensor
from ..runtime import autocast as autocast_ctx
from ..runtime import set_rng_state
from ..train.callbacks import Callback
from ..train.checkpoint import atomic_save
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
    between: list[str] = field(default_factory=list)  # [finite side, non-finite side] when born between modules

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(x) -> dict:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return {}
    return dict(zip(STAT_NAMES, tensor_stats(x).tolist()))


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

    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    clock = [0]

    def pre(module, inputs):
        clock[0] += 1
        starts.setdefault(names[module], clock[0])

    def fwd(module, inputs, output):
        clock[0] += 1
        ends.setdefault(names[module], clock[0])
        forward_events.append((names[module], module, first_tensor(inputs), first_tensor(output)))

    def bwd(module, grad_input, grad_output):
        backward_events.append((names[module], _all_finite(grad_input), _all_finite(grad_output)))

    for m in names:
        handles.add(m.register_forward_pre_hook(pre))
        handles.add(m.register_forward_hook(fwd))
        handles.add(m.register_full_backward_hook(bwd))
    model_outputs: list = []  # the whole model's output per batch: code after the last submodule shows here
    handles.add(replica.register_forward_hook(lambda m, i, o: model_outputs.append(first_tensor(o))))
    losses: list[float] = []
    if rng_state is not None:
        set_rng_state(rng_state)
    loss_value = None
    with handles, warnings.catch_warnings():
        # modules whose inputs need no grad (the first conv) report output grads only; that is fine here
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            for x, y in batches:
                with autocast():
                    loss = criterion(replica(x), y)
                loss_value = float(loss.detach())
                losses.append(loss_value)
                loss.backward()
        except RuntimeError as e:  # e.g. an in-place op that full backward hooks cannot wrap
            if not forward_events:
                raise
            backward_events.append((f"<backward failed: {e}>", None, None))
    report = NonFiniteReport(step=step, phase="none", module="", loss=loss_value)
    report.nonfinite_params = [n for n, p in replica.named_parameters() if not torch.isfinite(p).all()]
    report.nonfinite_grads = [n for n, p in replica.named_parameters()
                              if p.grad is not None and not torch.isfinite(p.grad).all()]
    modules = dict(replica.named_modules())
    inputs_finite = {n: inp is None or not inp.is_floating_point() or bool(torch.isfinite(inp).all())
                     for n, _, inp, _ in forward_events}
    bad_x = next((x for x, _ in batches if isinstance(x, torch.Tensor) and x.is_floating_point()
                  and not torch.isfinite(x).all()), None)
    if bad_x is not None:  # the data, not the model: the batch arrived non-finite
        report.phase, report.module, report.module_type = "input", "<input>", "data"
        report.input_stats = _stats(bad_x)
        return report
    for name, module, inp, out in forward_events:
        if isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
            report.phase = "forward"
            report.input_stats, report.output_stats = _stats(inp), _stats(out)
            if inputs_finite[name]:
                report.module, report.module_type = name, type(module).__name__
                return report
            done = [n for n, _, _, _ in forward_events if ends[n] < starts.get(name, 0)]
            owner = _owner(name, inputs_finite)
            report.between = [done[-1] if done else "<input>", name]
            report.module, report.module_type = owner, type(modules[owner]).__name__
            return report
    bad_out = next((o for o in model_outputs if isinstance(o, torch.Tensor) and o.is_floating_point()
                    and not torch.isfinite(o).all()), None)
    if bad_out is not None:  # every submodule finite, the model's output not: its own forward after them
        report.phase, report.module, report.module_type = "forward", "", type(replica).__name__
        report.between = [forward_events[-1][0] if forward_events else "<input>", "<output>"]
        report.input_stats = _stats(forward_events[-1][3]) if forward_events else {}
        report.output_stats = _stats(bad_out)
        return report
    if losses and not all(math.isfinite(v) for v in losses):  # a finite output, a non-finite loss
        report.phase, report.module = "loss", "<loss>"
        report.module_type = getattr(criterion, "__name__", None) or type(criterion).__name__
        report.output_stats = _stats(model_outputs[0]) if model_outputs else {}
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
    for i, (name, gin_ok, gout_ok) in enumerate(backward_events):
        if gout_ok is False:  # the first module handed a non-finite gradient by code no module owns
            ok_before = [n for n, gi, _ in backward_events[:i] if gi]
            prev = ok_before[-1] if ok_before else "<loss>"
            owner = _common(name, prev if ok_before else "")
            report.phase, report.between = "backward", [prev, name]
            report.module, report.module_type = owner, type(modules[owner]).__name__
            report.grad_output_finite, report.grad_input_finite = gout_ok, gin_ok
            return report
    if report.nonfinite_grads:
        first = report.nonfinite_grads[0]
        report.phase, report.module = "parameters", first.rsplit(".", 1)[0]
    return report


def _owner(name: str, inputs_finite: dict[str, bool]) -> str:
    """The innermost ancestor of ``name`` whose input was finite ("" = the model): its forward made the value."""
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
        anc = ".".join(parts[:k])
        if inputs_finite.get(anc):
            return anc
    return ""


def _common(a: str, b: str) -> str:
    """The innermost module containing both ``a`` and ``b`` ("" = the model)."""
    common = []
    for x, y in zip(a.split(".")[:-1], b.split(".")[:-1]):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def format_report(r: NonFiniteReport) -> str:
    lines = [f"NON-FINITE at step {r.step}: phase {r.phase}, module '{r.module}' ({r.module_type})"]
    code = f"{r.module_type}.forward ('{r.module or '<model>'}'), in code no submodule owns"
    if r.between and r.phase == "forward":
        lines = [f"NON-FINITE at step {r.step}: phase forward, born between '{r.between[0]}' (finite output) and "
                 f"'{r.between[1]}' (non-finite input): in {code}"]
    elif r.between:
        lines = [f"NON-FINITE at step {r.step}: phase backward, born between '{r.between[0]}' (passed back a finite "
                 f"gradient) and '{r.between[1]}' (received a non-finite one), in the backward of {code}"]
    if r.phase == "forward" and r.between and r.between[1] == "<output>":
        lines = [f"NON-FINITE at step {r.step}: phase forward, born after '{r.between[0]}' (its output finite) in "
                 f"{r.module_type}.forward's own code after its last submodule: the model's output is non-finite"]
    if r.phase == "input":
        lines = [f"NON-FINITE at step {r.step}: phase input, the batch given to the model already holds non-finite "
                 f"values: the data (its loading, decoding or normalisation), not the model"]
    if r.phase == "loss":
        lines = [f"NON-FINITE at step {r.step}: phase loss, born in the loss ({r.module_type}): the model's output "
                 f"is finite"]
    if r.phase == "none":
        lines = [f"NON-FINITE at step {r.step}, but the replay was finite everywhere (loss {r.loss}): the fault "
                 f"is not reproducible from this state (non-deterministic kernel, or a transient input)"]
    if r.phase == "backward" and not r.between:
        lines.append(f"  the gradient it received was finite ({r.grad_output_finite}); the gradient it passed back "
                     f"was not: the fault is in this module's backward")
    who = f"'{r.between[1]}' " if r.between and r.between[1] != "<output>" else ""
    if r.between and r.between[1] == "<output>":
        r = dataclasses.replace(r, input_stats={})  # the last submodule's output is not the model's input
    for label, st in (("input", r.input_stats), ("output", r.output_stats)):
        if st:
            lines.append(f"  {who}{label:<6} " + "  ".join(_stat(k, v) for k, v in st.items()))
    if r.input_stats or r.output_stats:
        lines.append("  (mean, std, rms and absmax over the finite values; nonfinite and near_zero: shares of all values)")
    if r.nonfinite_params:
        lines.append(f"  parameters with non-finite values: {', '.join(r.nonfinite_params[:10])}")
    if r.nonfinite_grads:
        lines.append(f"  parameters with non-finite grads ({len(r.nonfinite_grads)}): {', '.join(r.nonfinite_grads[:10])}")
    return "\n".join(lines)


def _stat(name: str, value: float) -> str:
    """One statistic as the report prints it: the two shares as percentages, the rest to 4 digits."""
    return f"{name} {value:.1%}" if name in ("nonfinite", "near_zero") else f"{name} {value:.4g}"


def save_reproducer(path: Path, *, recipe_json: str, model_source: dict | None, num_classes: int, model: nn.Module,
                    batches, rng: dict | None, step: int, report: NonFiniteReport, optimizer=None) -> Path:
    """Write what ``reproscope diagnose replay`` needs (weights-only loadable) to ``path``, atomically."""
    atomic_save({"recipe_json": recipe_json, "model_source_json": json.dumps(model_source), "num_classes": num_classes,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else None,
                 "batches": [(x.detach().cpu(), None if y is None else y.detach().cpu()) for x, y in batches],
                 "rng": rng, "step": step, "report": report.to_dict()}, path)
    return path


def event_fields(report: NonFiniteReport, reproducer: Path) -> dict:
    """The report as the fields of a ``nonfinite`` metrics event (the replay's loss as ``replay_loss``)."""
    return {"reproducer": str(reproducer),
            **{("replay_loss" if k == "loss" else k): v for k, v in report.to_dict().items() if k != "step"}}


def trip(model: nn.Module, batches, criterion, *, step: int, run_dir: Path, write: bool, autocast=nullcontext,
         rng_state: dict | None = None, policy: str = "", **reproducer) -> tuple[NonFiniteReport, dict]:
    """Locate the fault of step ``step``, write ``run_dir/nonfinite-step<step>.pt`` (when ``write``: rank 0),
    print the report; returns the report and its event fields. ``reproducer``: the keyword arguments of
    :func:`save_reproducer` besides path, model, batches, rng, step and report."""
    report = locate_nonfinite(model, batches, criterion, step=step, autocast=autocast, rng_state=rng_state)
    path = Path(run_dir) / f"nonfinite-step{step}.pt"
    if write:
        save_reproducer(path, model=model, batches=batches, rng=rng_state, step=step, report=report, **reproducer)
    console.warning("%s", format_report(report) + f"\n  reproducer: {path}  (reproscope diagnose replay {path})"
                    + (f"\n  policy: {policy}" if policy else ""))
    return report, event_fields(report, path)


class Tripwire(Callback):
    """The trainer's NaN/Inf tripwire: on the ``nonfinite`` event, name the module and phase, write the
    reproducer and add both to the event's findings. ``report`` is the last :class:`NonFiniteReport`."""

    def __init__(self):
        self.report: NonFiniteReport | None = None

    def on_nonfinite(self, trainer, decision, batches, rng_state, findings) -> None:
        self.report, fields = trip(
            trainer.orig_model, batches, trainer.criterion, step=decision.step, run_dir=trainer.run_dir,
            write=trainer.dist.is_main, autocast=lambda: autocast_ctx(trainer.device, trainer.amp_dtype),
            rng_state=rng_state, policy=decision.policy, recipe_json=json.dumps(trainer.recipe.to_dict()),
            model_source=trainer.model_source, num_classes=trainer.num_classes, optimizer=trainer.optimizer)
        findings.update(fields)
