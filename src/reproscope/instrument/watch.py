"""``reproscope.watch``: the Trainer's instruments inside your own training loop.

    with reproscope.watch(model, optimizer, run_dir="runs/mine", config=my_hparams) as w:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if w.step(loss, targets=y):   # False: non-finite, located, reproducer written, step to skip
                optimizer.step()
            optimizer.zero_grad()
        w.evaluate(top1=..., loss=...)    # optional, once per epoch

What it does, with the same code the Trainer uses (``Instrument``, ``StepGuard``, ``DivergenceWatch``,
``locate_nonfinite``, ``MetricsLog``): probes on the Trainer's schedule (per-module activation and
gradient statistics, parameter norms, update-to-weight ratios) into ``stats.jsonl`` and TensorBoard;
the loss, grad norm and events into ``metrics.jsonl``; loss-spike events; and on a non-finite loss or
gradient norm, a replay on a copy of the model that names the first module and the phase, plus a
reproducer ``nonfinite-stepN.pt`` for ``reproscope diagnose replay``.

How it fits a loop that is not ours: ``step`` is called after ``backward`` and before
``optimizer.step()``, so the update of step N is measured when the next forward starts (a forward
pre-hook on the model) or when the ``with`` block ends. Hooks go on the uncompiled module
(``model._orig_mod`` for a ``torch.compile``d model, ``model.module`` under DDP), registered once
and removed on exit. Those that run at every step run eagerly (``torch.compiler.disable``); the
per-layer probe hooks are off outside probe steps, and probe steps run uncompiled as in the Trainer
(``torch.compiler.set_stance("force_eager")`` from before the step's forward to its ``step``), so a
compiled model keeps one graph and never traces the instruments.
With gradient accumulation call ``step`` on optimizer steps only. A ``GradScaler`` passed as
``scaler=``: a step whose loss is finite but whose (scaled) gradients overflow is the scaler's to skip and
back off; it is counted (``scaler_skips``) and logged, not reported as a NaN. The grad norm is logged
as the gradients are (scaled, unless you called ``scaler.unscale_`` first).

Replay: pass ``targets=`` (and ``criterion=``, default cross-entropy) for an exact replay; without
targets the backward phase is replayed with a surrogate loss (the mean square of the outputs).
The reproducer rebuilds your model from ``model_spec`` (``file.py:factory``) or, when it is not
given, from the model's class (its source file and name, called with ``num_classes``).

Your loop, as a recipe: a :class:`~reproscope.instrument.loop.LoopObserver` reads the optimizer, its
param groups and the lr of every step, the schedule from that lr curve, clipping, accumulation,
label smoothing and mixing from the targets, drop path, precision, an ``ema=`` and whether
evaluation ran in eval mode (``data=`` adds the transforms and the sampler). ``config.json`` holds
it in the recipe's shape ("not observed" where the loop did not show a key), ``loop.json`` the
evidence and how the loop ended (finished, stopped after a non-finite step, interrupted, an
exception); with ``against=NAME`` (a registered recipe, or a paper key ``dyt`` / ``kat`` / ``mambaout``
for that paper's recipe) ``deviations.json`` holds every deviation from it, coded
(``instrument.loop_audit``), and the closing summary prints the likely mistakes. A deliberate choice is
declared with ``deviations={"sched.warmup_epochs": "reason", ...}``: it is logged as declared, with its
reason, and is never a likely mistake.

Every random state a step uses (python, numpy, torch CPU and CUDA) is taken before each training
forward, so a NaN reproducer replays the step's dropout and drop-path draws exactly.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import InstrumentConfig, flat_items
from ..console import install_console
from ..console import log as console
from ..recipes import get_recipe
from ..runtime import distributed, rng_state, set_rng_state
from ..train.events import EventWriter
from ..train.guard import DivergenceWatch, StepDecision, StepGuard
from ..train.rundir import MetricsLog, NullLog, run_environment, write_record
from .loop import LoopObserver, train_mode_modules
from .loop_audit import RUN_LENGTH_KEYS, audit, read_declared, resolve_against
from .loop_data import describe_data
from .probe import Instrument
from .tripwire import trip


def _surrogate(out, _targets):
    return out.float().square().mean()


class _TrainerView:
    """Your loop as a :class:`~reproscope.train.callbacks.TrainerView`: what the Trainer-facing
    ``Instrument`` reads from a trainer."""

    def __init__(self, model: nn.Module, run_dir: Path, dist, log, log_every: int):
        self.orig_model, self.run_dir, self.dist, self.log = model, run_dir, dist, log
        self.log_every = log_every
        self.step = 0
        self.val_loader = None  # no validation data in your loop: no per-epoch paper-figure probes

    def request_eager_step(self) -> None:
        """The Instrument asks for the uncompiled module on probe steps: ``Watch`` has arranged it before
        the step's forward (:meth:`Watch._stance`), since your loop calls your model itself."""


class Watch:
    """See the module docstring. ``run_dir`` is created; ``config`` (any JSON-able dict) is written to
    ``user_config.json``.

    Args:
        model: your module (a ``torch.compile``d or DDP-wrapped one is unwrapped for the hooks).
        optimizer: your optimizer (its groups, lr curve and the norms it sees are read through hooks).
        run_dir: the run directory (created).
        config: your own hyperparameters, kept whole under ``user_config``.
        against: a registered recipe name (``reproscope recipes``) or a paper key (``dyt``, ``kat``,
            ``mambaout``: that paper's recipe): the loop is audited against it (``deviations.json``,
            printed at the end).
        deviations: your deliberate choices, ``{key: reason}`` (recipe keys such as
            ``sched.warmup_epochs``, or an audit code such as ``ema-missing``), or a JSON / YAML file of
            that mapping: declared rows carry your reason and are never likely mistakes.
        ema: your EMA (``torch.optim.swa_utils.AveragedModel``, timm ``ModelEma*``, or any object with
            ``decay``): its decay and whether evaluation used it.
        data: your training ``DataLoader`` / ``Dataset``, or ``{"train": ..., "val": ..., "mixup": ...}``:
            transforms, sampler and mixing are read from them (``instrument.loop_data``).
        instrument: the probe settings (``InstrumentConfig``; ``nan_policy`` "rollback" acts as "skip":
            a loop that is not ours has no checkpoint to roll back to).
        log_every: steps between two ``metrics.jsonl`` rows (loss, grad norm, lr of every group).
        criterion: your loss function (the replay uses it; an ``nn.CrossEntropyLoss`` also tells the
            label smoothing).
        scaler: your ``torch.amp.GradScaler``.
        model_spec: ``file.py:factory`` that rebuilds your model for a NaN reproducer.
        tensorboard: write TensorBoard events beside ``metrics.jsonl``.
        paper: the earlier name of ``against`` (a DeprecationWarning).

    Raises:
        ConfigError: ``against`` is neither a registered recipe nor a paper key, or a declared key is not
            a recipe key or audit code (the message names the nearest).
    """

    def __init__(self, model: nn.Module, optimizer=None, run_dir: str | Path = "runs/watch", config: dict | None = None,
                 *, against: str | None = None, deviations: dict | str | Path | None = None, ema=None, data=None,
                 instrument: InstrumentConfig | None = None, log_every: int = 10, criterion=None, scaler=None,
                 model_spec: str | None = None, tensorboard: bool = True, paper: str | None = None):
        if paper is not None:  # the earlier name of against=
            warnings.warn("watch(paper=) is now watch(against=): a recipe name or a paper key", DeprecationWarning,
                          stacklevel=3)
            against = against or paper
        self.against = resolve_against(against) if against else None  # fails now, not at the end of the run
        self.declared = read_declared(deviations)  # a bad key fails now too
        self.model = model
        self.orig_model = unwrap(model)
        self.optimizer, self.scaler, self.criterion = optimizer, scaler, criterion
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dist = distributed.from_env()
        self.log = MetricsLog(self.run_dir, tensorboard=tensorboard) if self.dist.is_main else NullLog()
        self.events = EventWriter(self.log)
        self.step_count = 0
        self.log_every = log_every
        self._view = _TrainerView(self.orig_model, self.run_dir, self.dist, self.log, log_every)
        self.cfg = instrument or InstrumentConfig()
        self.instrument = Instrument(self.cfg)
        scaler_on = scaler is not None and scaler.is_enabled()
        self.guard = StepGuard(self.cfg, scaler=scaler_on)  # the Trainer's decision table
        self.last_decision: StepDecision | None = None
        self.stop_requested = False  # a decision said stop (non-finite with nan_policy=stop, a divergence)
        self.divergence: DivergenceWatch | None = None  # made once the number of classes is known
        self.nonfinite_steps: list[int] = []
        self.scaler_skips = 0
        self.spike_count = 0
        self.last_input: torch.Tensor | None = None
        self.num_classes: int | None = None
        self.model_spec = model_spec or _infer_spec(self.orig_model)
        self.loop = LoopObserver(self.orig_model, optimizer, scaler=scaler, criterion=criterion, ema=ema,
                                 compiled=unwrap(model) is not model and hasattr(model, "_orig_mod"),
                                 world_size=self.dist.world_size)
        self.data = _describe(data)
        self._pending_end = False
        self._armed = False
        self._handles = []
        self._closed = False
        self._eager = False  # probe steps run uncompiled (_stance)
        self.user_config = config or {}
        self._train_shape: tuple | None = None  # of the first input seen by step(): a training batch
        self.evals = 0
        self._t_eval = time.perf_counter()
        self._steps_at_eval: list[int] = []
        self.audit: dict | None = None
        self.ending: dict = {"how": "running", "step": 0}
        self._rng: dict | None = None  # every RNG's state before the last training forward (the replay's)
        self._last_row: tuple | None = None  # the last step's metrics row, when log_every skipped it
        if self.dist.is_main:
            script = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else Path.cwd()
            write_record(self.run_dir, user_config=self.user_config,
                         environment=run_environment(self.dist.world_size, code=script),
                         model_source={"spec": self.model_spec})
            self._write_config()

    def __enter__(self) -> "Watch":
        self.instrument.on_train_start(self._view)
        self._register()
        self.loop.attach()
        self._stance(1)
        return self

    def _register(self) -> None:
        # eager even when the user compiled the model: dynamo would otherwise trace the instruments' step
        # bookkeeping into the model's graph and recompile it as that state changes
        self._handles = [self.orig_model.register_forward_pre_hook(torch.compiler.disable(self._before_forward)),
                         self.orig_model.register_forward_hook(torch.compiler.disable(self._after_forward))]

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc_type)

    def _before_forward(self, module, args) -> None:
        if self._pending_end:  # the optimizer has stepped since step(): finish that step's probe
            self._pending_end = False
            self.instrument.on_step_end(self._view)
        if not self._armed:
            self._armed = True
            self.instrument.on_step_start(self._view, step=self.step_count + 1)
        if args and isinstance(args[0], torch.Tensor):
            self.last_input = args[0]
        if module.training and torch.is_grad_enabled():  # a training forward: what its replay must restore
            self._rng = rng_state()

    def _after_forward(self, module, args, out) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            self.num_classes = out.shape[1]

    def step(self, loss: torch.Tensor, targets: torch.Tensor | None = None) -> bool:
        """Call once per optimizer step, after ``backward()``, before ``optimizer.step()``.

        The step gets the Trainer's decision (``train.guard.StepGuard``: ok, loss-spike,
        scaler-overflow, grad-norm-overflow, nonfinite; kept in ``last_decision``). Returns True when the
        optimizer should step: False on a non-finite loss or gradient norm (the module and phase are
        printed and logged, a reproducer is written), on a grad-norm overflow of finite gradients
        (``grad-norm-overflow``: the largest gradients are named) and on a skipped spike; then skip
        ``optimizer.step()``, and end the loop when ``stop_requested`` is set. A GradScaler overflow
        returns True: the scaler skips that step itself. ``targets``: the batch's labels (hard or
        soft): an exact NaN replay, and the loop audit's label smoothing and mixing.
        """
        named = [(n, p) for n, p in self.orig_model.named_parameters() if p.grad is not None]
        gn_t = torch.nn.utils.get_total_norm([p.grad for _, p in named]) if named else torch.zeros((), device=loss.device)
        lv, gn = torch.stack([loss.detach().float(), gn_t.float().to(loss.device)]).tolist()  # one sync
        self._view.step = self.step_count
        if self._train_shape is None and self.last_input is not None:  # the first training batch's shape
            self._train_shape = tuple(self.last_input.shape)  # (a last partial batch is smaller)
        self.instrument.on_after_backward(self._view)
        self.loop.on_step(loss, targets)
        params = (p for _, p in named)  # read only on an overflowed norm
        d = self._announce(self.guard.decide_step(lv, gn, self.step_count + 1, params), targets, named)
        if d.action == "step" and d.code != "scaler-overflow":
            self._watch_divergence(lv, gn)
        self.last_decision = d
        self.step_count += 1
        self._view.step = self.step_count
        lrs = {} if self.optimizer is None else {
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            **({f"lr_group{i}": float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}
               if len(self.optimizer.param_groups) > 1 else {})}
        self._last_row = (self.step_count, {"loss": lv, "grad_norm": gn, **lrs})  # logged on exit if not logged
        if self.step_count % self.log_every == 0 or self.step_count == 1:
            self.log.log("train", self.step_count, **self._last_row[1])
            self._last_row = None
        self._pending_end, self._armed = True, False
        self._stance(self.step_count + 1)
        return d.action == "step"

    def _stance(self, step: int | None) -> None:
        """Probe steps run uncompiled, as in the Trainer: dynamo traces a compiled module's hooks with it,
        and the probes' hooks, on, would split and recompile the graph. A compiled forward cannot change
        its own course once called, so the stance for step ``step`` (None: the run is over) is set here,
        before its forward: ``torch.compiler.set_stance("force_eager")`` (every compiled function in the
        process runs eagerly for that step), ``"default"`` otherwise."""
        eager = step is not None and self.instrument.probes_at(step)  # watch probes whatever cfg.enabled says
        if eager != self._eager:
            self._eager = eager
            torch.compiler.set_stance("force_eager" if eager else "default")

    def _announce(self, d: StepDecision, targets, named) -> StepDecision:
        """Log the decision's event as the Trainer does (the same ``EventWriter``)."""
        if d.code == "scaler-overflow":
            self.scaler_skips += 1  # fp16 overflow: the scaler skips this step and backs off
            self.events.scaler_overflow(d, self.scaler.get_scale(), self.guard.scaler_overflows)
        elif d.code == "loss-spike":
            self.spike_count += 1
            self.events.loss_spike(d)
        elif d.code == "grad-norm-overflow":
            d = self.events.grad_norm_overflow(d, named)
        elif d.code == "nonfinite":
            d = dataclasses.replace(d, findings=self._nonfinite(targets))
            self.events.nonfinite(d, d.findings)
            console.warning("  step %d: %s", d.step, "not applied: step() returned False (skip optimizer.step()); "
                            "w.stop_requested is set: end the loop (instrument.nan_policy=stop)" if d.action == "stop"
                            else "not applied: step() returned False (skip optimizer.step()); the loop goes on "
                            "(instrument.nan_policy=skip)")
        if d.action == "stop":
            self.stop_requested = True
        return d

    def _watch_divergence(self, loss: float, grad_norm: float) -> None:
        if self.divergence is None:
            self.divergence = DivergenceWatch(self.num_classes or 2)
        ev = self.divergence.flag(loss, grad_norm, self.step_count + 1, find=self._probe_divergence)
        if ev is not None:
            self.events.diverging(ev)

    def _probe_divergence(self, flagged: dict, findings: dict) -> None:
        """The paper-figure probes at the step a finite run is flagged as diverging."""
        if self.cfg.probes and self.dist.is_main and self.last_input is not None:
            findings.update(self.instrument.probe_now(self.orig_model, self.last_input[:64].detach(), self.run_dir,
                                                      "probes_at_divergence.pt"))

    def evaluate(self, **metrics: float) -> None:
        """Log evaluation metrics (e.g. ``top1=``, ``top5=``, ``loss=``) at the current step; one call per
        epoch makes the run directory's epochs (``reproscope report`` counts them). Call it after your
        evaluation forwards: the loop audit reads whether they ran in eval mode, and on the EMA."""
        now = time.perf_counter()
        ran = self.loop.on_evaluate()
        if ran["train_mode"] and self.evals == 0 and self.dist.is_main:
            kinds = train_mode_modules(self.orig_model)
            effect = (f"its {' and '.join(kinds)} behave{'s' * (len(kinds) == 1)} differently there" if kinds else
                      "it has no BatchNorm, dropout or drop path, so nothing of those changed")
            console.warning(f"warning: the model was in train mode in {ran['train_mode']} evaluation forwards "
                            f"(call model.eval() before evaluating; {effect})")
        self.log.log("train", self.step_count, epoch_time_s=now - self._t_eval)
        self.log.log("val", self.step_count, epoch=self.evals, **metrics)
        self._t_eval = now
        self.evals += 1
        if self.dist.is_main:
            self._write_config()

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch: from ``data=``'s length when given (one step per ``accum`` loader batches,
        or per loader batch when the loop splits each into micro-batches), else steps / ``evaluate`` calls."""
        n = self.data.get("train_batches")
        if n:
            accum = max(1, self.loop.forwards_per_step.most_common(1)[0][0]) if self.loop.forwards_per_step else 1
            loader_batch = self.data.get("observed", {}).get("data.batch_size")
            forward_batch = self.loop.batch_sizes.most_common(1)[0][0] if self.loop.batch_sizes else None
            if loader_batch and forward_batch and forward_batch * accum <= loader_batch * self.dist.world_size:
                return n  # the loop splits each loader batch into its micro-batches: one step per loader batch
            return max(1, n // accum)  # one micro-batch per loader batch
        return self.step_count // self.evals if self.evals else None

    def facts(self) -> tuple[dict, dict]:
        """What the loop showed, as flat recipe keys (absent = not observed), and the evidence. A loop
        that ended early (``ending``) showed only part of its schedule: the keys that depend on the
        run's length (``RUN_LENGTH_KEYS``) are then not observed, kept in ``details["truncated"]``."""
        spe = self.steps_per_epoch()
        facts, details = self.loop.facts(spe)
        seen_batch = facts.get("data.batch_size")  # per training forward: the loop may split a loader batch
        facts.update(self.data.get("observed", {}))
        if seen_batch is not None:
            facts["data.batch_size"] = seen_batch
        details["data"] = {k: v for k, v in self.data.items() if k != "observed"}
        if self.evals or spe:
            facts["sched.epochs"] = round(self.step_count / spe, 2) if spe and self.data.get("train_batches") \
                else self.evals
        if self._train_shape and "data.batch_size" not in facts:
            facts["data.batch_size"] = int(self._train_shape[0])
        if self.ending["how"] not in ("finished", "running"):
            details["truncated"] = {k: facts.pop(k) for k in RUN_LENGTH_KEYS if k in facts}
        return facts, details

    def _write_config(self) -> None:
        """``config.json`` in the recipe's shape with the keys the loop showed (never a default taken as
        equal), the others listed under ``not_observed``, and ``trained_by``; ``loop.json`` the evidence
        and the ending; ``deviations.json`` the audit against ``against`` (when given). Every command that
        reads runs reads it as any run (``report.runs.load_run``)."""
        facts, details = self.facts()
        recipe_keys = [k for k in flat_items(get_recipe("quickstart"))
                       if not k.startswith(("run.", "instrument.", "dist."))]
        cfg: dict = {"name": "watch", "trained_by": "watch", "parent": self.against.name if self.against else "",
                     "user_config": self.user_config}
        for key in recipe_keys:
            section, name = key.split(".")
            cfg.setdefault(section, {})
            if key in facts:
                cfg[section][name] = facts[key]
        cfg["model"]["name"] = self.model_spec
        cfg["run"] = {"log_every": self.log_every}
        cfg["not_observed"] = sorted(k for k in recipe_keys if k not in facts and k != "model.name")
        cfg["ending"] = dict(self.ending)
        write_record(self.run_dir, config=cfg, loop={"facts": facts, "details": details, "steps": self.step_count,
                                                    "evaluations": self.evals, "ending": dict(self.ending),
                                                    "declared": self.declared})
        if self.against is not None:
            self.audit = audit(facts, self.against, declared=self.declared, ending=self.ending)
            write_record(self.run_dir, deviations=self.audit)

    def _nonfinite(self, targets) -> dict:
        """Replay the step and write the reproducer (the input recorded as it is: any shape); returns the
        event's fields (module, phase, reproducer)."""
        x = self.last_input
        criterion = self.criterion or (F.cross_entropy if targets is not None else _surrogate)
        step = self.step_count + 1
        for h in self._handles:  # the replay deep-copies the model with its hooks; ours hold open files
            h.remove()
        self.loop.detach()
        now = rng_state()  # the replay restores the step's state; the loop goes on from where it was
        try:
            _, fields = trip(self.orig_model, [(x, targets)], criterion, step=step, run_dir=self.run_dir,
                             write=self.dist.is_main, rng_state=self._rng, recipe_json=json.dumps(get_recipe("quickstart").to_dict()),
                             model_source={"spec": self.model_spec}, num_classes=self.num_classes or 0)
        finally:
            set_rng_state(now)
            self._register()
            self.loop.attach()
        self.nonfinite_steps.append(step)
        return fields

    def close(self, exc_type: type | None = None) -> None:
        """Finish the last probe, remove every hook, record how the loop ended (``ending``), flush and
        close the files (idempotent). ``exc_type``: the exception that left the ``with`` block, if any."""
        if self._closed:
            return
        self._closed = True
        self.ending = self._ending(exc_type)
        self._stance(None)
        if self._pending_end:
            self._pending_end = False
            self.instrument.on_step_end(self._view)
        for h in self._handles:
            h.remove()
        self._handles = []
        self.loop.detach()
        self.instrument.close()
        if self._last_row is not None:  # the last step, so the curves and "last loss" reach the loop's end
            self.log.log("train", self._last_row[0], **self._last_row[1])
            self._last_row = None
        if self.dist.is_main:
            self._write_config()
            self._print_audit()
        self.log.close()

    def _ending(self, exc_type: type | None) -> dict:
        """How the loop ended: ``{"how": code, "step": last step, "reason": sentence}``. Codes: finished,
        stopped-nonfinite (a stop decision, or the loop ended right after a non-finite step),
        stopped-diverging (a grad-norm overflow stop), interrupted (KeyboardInterrupt), exception."""
        n, last = self.step_count, self.last_decision
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            return {"how": "interrupted", "step": n, "reason": f"interrupted at step {n} (KeyboardInterrupt)"}
        if exc_type is not None:
            return {"how": "exception", "step": n, "reason": f"ended at step {n} by {exc_type.__name__}"}
        if last is not None and last.code == "grad-norm-overflow":
            return {"how": "stopped-diverging", "step": n, "reason": f"stopped at step {n} (gradient norm overflow)"}
        if last is not None and last.code == "nonfinite":
            return {"how": "stopped-nonfinite", "step": n, "reason": f"stopped at step {n} (non-finite loss)"}
        skipped = f"; {len(self.nonfinite_steps)} non-finite step(s) skipped" if self.nonfinite_steps else ""
        return {"how": "finished", "step": n, "reason": f"finished after {n} steps{skipped}"}

    def _print_audit(self) -> None:
        if self.ending["how"] != "finished":
            console.warning(f"watched loop {self.ending['reason']}: the settings that depend on the run's length "
                            f"(epochs, schedule end, EMA horizon) are not observed")
        if self.audit is None:
            return
        rows = self.audit["deviations"]
        mistakes = [r for r in rows if r["mistake"]]
        declared = sum(1 for r in rows if r.get("declared"))
        say = console.warning if mistakes else console.info  # a likely mistake reaches you even unconfigured
        say(f"loop audit against {self.against.name}: {len(rows)} deviation{'s' * (len(rows) != 1)} "
            f"({declared} declared), {len(mistakes)} likely mistake{'s' * (len(mistakes) != 1)} "
            f"(deviations.json in {self.run_dir}; `reproscope audit {self.run_dir}` prints the table)")
        for r in mistakes:
            console.warning(f"  [{r['code']}] {r['key']}: {r['reason']}")
        for key in self.audit.get("declared_unused", []):
            console.warning(f"  declared {key!r} is not a deviation of this loop from {self.against.name}: "
                            f"nothing to declare (remove it from deviations=)")
        if self.audit["not_observed"]:
            say(f"  not observed: {', '.join(self.audit['not_observed'])}")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


def _describe(data) -> dict:
    """``describe_data`` of ``data=`` (a loader / dataset, or a dict with train, val, mixup), plus the
    number of training batches when the train loader has a length."""
    if data is None:
        return {}
    parts = data if isinstance(data, dict) else {"train": data}
    out = describe_data(parts.get("train"), parts.get("val"), parts.get("mixup"))
    train = parts.get("train")
    if isinstance(train, torch.utils.data.DataLoader):
        try:
            out["train_batches"] = len(train)
        except TypeError:  # an iterable dataset without a length
            pass
    return out


def _infer_spec(model: nn.Module) -> str:
    """``file.py:ClassName`` for a model whose class is defined at the top level of a source file."""
    cls = type(model)
    try:
        src = inspect.getsourcefile(cls)
    except (TypeError, KeyError):
        src = None
    if src is None and getattr(cls.forward, "__code__", None) is not None:  # a module not in sys.modules
        src = cls.forward.__code__.co_filename
    if src and "." not in cls.__qualname__:
        return f"{src}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def watch(model: nn.Module, optimizer=None, run_dir: str | Path = "runs/watch", config: dict | None = None, *,
          against: str | None = None, deviations: dict | str | Path | None = None, ema=None, data=None,
          instrument: InstrumentConfig | None = None, log_every: int = 10, criterion=None, scaler=None,
          model_spec: str | None = None, tensorboard: bool = True, paper: str | None = None) -> Watch:
    """Our instruments, and the loop audit, inside your own training loop::

        with reproscope.watch(model, optimizer, run_dir="runs/mine", against="dyt",
                              deviations={"sched.epochs": "one L4 day: 30 of the paper's 300 epochs"}) as w:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                if w.step(loss, targets=y):   # False: skip optimizer.step() (see Watch.step)
                    optimizer.step()
                optimizer.zero_grad()
            w.evaluate(top1=...)

    Every argument is described on :class:`Watch`; this returns one. Its messages (events, the loop audit)
    go through ``logging.getLogger("reproscope")``; when your script configured no logging at all, this
    shows them on standard output as the CLI does (:func:`reproscope.console.install_console`).
    """
    if not logging.getLogger().handlers and not console.handlers:
        install_console()
    return Watch(model, optimizer, run_dir, config, against=against, deviations=deviations, paper=paper, ema=ema,
                 data=data, instrument=instrument,
                 log_every=log_every, criterion=criterion, scaler=scaler, model_spec=model_spec,
                 tensorboard=tensorboard)
