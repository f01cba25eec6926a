"""``reproscope.watch``: the Trainer's instruments inside your own training loop.

    with reproscope.watch(model, optimizer, run_dir="runs/mine", config=my_hparams) as w:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if w.step(loss, targets=y):   # False: non-finite, located, reproducer written, step to skip
                optimizer.step()
            optimizer.zero_grad()
        w.evaluate(top1=..., loss=...)    # optional, once per epoch

What it does, with the same code the Trainer uses (``Instrument``, ``SpikeDetector``,
``locate_nonfinite``, ``MetricsLog``): probes on the Trainer's schedule (per-module activation and
gradient statistics, parameter norms, update-to-weight ratios) into ``stats.jsonl`` and TensorBoard;
the loss, grad norm and events into ``metrics.jsonl``; loss-spike events; and on a non-finite loss or
gradient norm, a replay on a copy of the model that names the first module and the phase, plus a
reproducer ``nonfinite-stepN.pt`` for ``reproscope diagnose replay``.

How it fits a loop that is not ours: ``step`` is called after ``backward`` and before
``optimizer.step()``, so the update of step N is measured when the next forward starts (a forward
pre-hook on the model) or when the ``with`` block ends. Hooks go on the uncompiled module
(``model._orig_mod`` for a ``torch.compile``d model, ``model.module`` under DDP), registered once
and removed on exit.
With gradient accumulation call ``step`` on optimizer steps only. A ``GradScaler`` passed as
``scaler=``: a step whose loss is finite but whose (scaled) gradients overflow is the scaler's to skip and
back off; it is counted (``scaler_skips``) and logged, not reported as a NaN. The grad norm is logged
as the gradients are (scaled, unless you called ``scaler.unscale_`` first).

Replay: pass ``targets=`` (and ``criterion=``, default cross-entropy) for an exact replay; without
targets the backward phase is replayed with a surrogate loss (the mean square of the outputs).
The reproducer rebuilds your model from ``model_spec`` (``file.py:factory``) or, when it is not
given, from the model's class (its source file and name, called with ``num_classes``).
"""

from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import InstrumentConfig, apply_overrides
from ..recipes import get_recipe
from ..runtime import distributed
from ..train.guard import DivergenceWatch, SpikeDetector
from ..train.rundir import MetricsLog, NullLog, environment, write_json
from .probe import Instrument
from .tripwire import trip


def _surrogate(out, _targets):
    return out.float().square().mean()


class _TrainerView:
    """What the Trainer-facing ``Instrument`` reads from a trainer, for a loop that is not ours."""

    def __init__(self, model: nn.Module, run_dir: Path, dist, log, log_every: int):
        self.orig_model, self.run_dir, self.dist, self.log = model, run_dir, dist, log
        self.recipe = SimpleNamespace(run=SimpleNamespace(log_every=log_every))
        self.step = 0
        self.val_loader = None  # no validation data in your loop: no per-epoch paper-figure probes

    def request_eager_step(self) -> None:
        """The Instrument asks for the uncompiled module on probe steps; in your loop your model runs as you call it."""


class Watch:
    """See the module docstring. ``run_dir`` is created; ``config`` (any JSON-able dict) is written to
    ``user_config.json``."""

    def __init__(self, model: nn.Module, optimizer=None, run_dir: str | Path = "runs/watch", config: dict | None = None,
                 *, instrument: InstrumentConfig | None = None, log_every: int = 10, criterion=None, scaler=None,
                 model_spec: str | None = None, tensorboard: bool = True):
        self.model = model
        self.orig_model = unwrap(model)
        self.optimizer, self.scaler, self.criterion = optimizer, scaler, criterion
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dist = distributed.from_env()
        self.log = MetricsLog(self.run_dir, tensorboard=tensorboard) if self.dist.is_main else NullLog()
        self.step_count = 0
        self.log_every = log_every
        self._view = _TrainerView(self.orig_model, self.run_dir, self.dist, self.log, log_every)
        self.cfg = instrument or InstrumentConfig()
        self.instrument = Instrument(self.cfg)
        self.spikes = SpikeDetector(self.cfg.spike_window, self.cfg.spike_threshold)
        self.divergence: DivergenceWatch | None = None  # made once the number of classes is known
        self.nonfinite_steps: list[int] = []
        self.scaler_skips = 0
        self.spike_count = 0
        self.last_input: torch.Tensor | None = None
        self.num_classes: int | None = None
        self.model_spec = model_spec or _infer_spec(self.orig_model)
        self._pending_end = False
        self._armed = False
        self._handles = []
        self._closed = False
        self.user_config = config or {}
        self._train_shape: tuple | None = None  # of the first input seen by step(): a training batch
        self.evals = 0
        self._t_eval = time.perf_counter()
        self._steps_at_eval: list[int] = []
        if self.dist.is_main:
            write_json(self.run_dir / "user_config.json", self.user_config)
            self._write_config()
            write_json(self.run_dir / "environment.json", {**environment(), "world_size": self.dist.world_size})
            write_json(self.run_dir / "model_source.json", {"spec": self.model_spec})

    def __enter__(self) -> "Watch":
        self.instrument.on_train_start(self._view)
        self._register()
        return self

    def _register(self) -> None:
        self._handles = [self.orig_model.register_forward_pre_hook(self._before_forward),
                         self.orig_model.register_forward_hook(self._after_forward)]

    def __exit__(self, *exc) -> None:
        self.close()

    def _before_forward(self, module, args) -> None:
        if self._pending_end:  # the optimizer has stepped since step(): finish that step's probe
            self._pending_end = False
            self.instrument.on_step_end(self._view)
        if not self._armed:
            self._armed = True
            self.instrument.on_step_start(self._view, step=self.step_count + 1)
        if args and isinstance(args[0], torch.Tensor):
            self.last_input = args[0]

    def _after_forward(self, module, args, out) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            self.num_classes = out.shape[1]

    def step(self, loss: torch.Tensor, targets: torch.Tensor | None = None) -> bool:
        """Call once per optimizer step, after ``backward()``, before ``optimizer.step()``.

        Returns False when the loss or the gradient norm is non-finite (the module and phase are
        printed and logged, a reproducer is written): skip ``optimizer.step()`` then. A GradScaler
        overflow (scale about to drop) returns True: the scaler skips that step itself.
        """
        grads = [p.grad for p in self.orig_model.parameters() if p.grad is not None]
        scale = self.scaler.get_scale() if self.scaler is not None and self.scaler.is_enabled() else 1.0
        gn_t = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        lv, gn = torch.stack([loss.detach().float(), gn_t.float().to(loss.device)]).tolist()  # one sync
        self._view.step = self.step_count
        if self._train_shape is None and self.last_input is not None:  # the first training batch's shape
            self._train_shape = tuple(self.last_input.shape)  # (a last partial batch is smaller)
        self.instrument.on_after_backward(self._view)
        ok = math.isfinite(lv) and math.isfinite(gn)
        if not ok and self.scaler is not None and self.scaler.is_enabled() and math.isfinite(lv):
            self.scaler_skips += 1  # fp16 overflow: the scaler skips this step and backs off
            self.log.log("event", self.step_count + 1, type="scaler_skip", scale=scale)
            ok = True
        elif not ok:
            self._nonfinite(lv, gn, targets)
        else:
            spike = self.spikes.check(lv)
            if spike is not None:
                self.spike_count += 1
                self.log.log("event", self.step_count + 1, type="loss_spike", **spike)
            self._watch_divergence(lv, gn)
        self.step_count += 1
        self._view.step = self.step_count
        if self.step_count % self.log_every == 0 or self.step_count == 1:
            self.log.log("train", self.step_count, loss=lv, grad_norm=gn)
        self._pending_end, self._armed = True, False
        return ok

    def _watch_divergence(self, loss: float, grad_norm: float) -> None:
        if self.divergence is None:
            self.divergence = DivergenceWatch(self.num_classes or 2)
        ev = self.divergence.check(loss, grad_norm, self.step_count + 1)
        if ev is not None and ev["step"] == self.step_count + 1:
            findings = {}
            if self.cfg.probes and self.dist.is_main and self.last_input is not None:  # the paper-figure probes now
                findings = self.instrument.probe_now(self.orig_model, self.last_input[:64].detach(), self.run_dir,
                                                     "probes_at_divergence.pt")
            ev["findings"] = findings
            self.log.log("event", ev["step"], type="divergence", **{k: v for k, v in ev.items() if k != "step"})
            print(f"DIVERGING at step {ev['step']}: {ev['reason']} (still finite)", flush=True)
            for f in findings.values():
                print(f"  {f['sentence']}", flush=True)

    def evaluate(self, **metrics: float) -> None:
        """Log evaluation metrics (e.g. ``top1=``, ``top5=``, ``loss=``) at the current step; one call per
        epoch makes the run directory's epochs (``reproscope report`` counts them)."""
        now = time.perf_counter()
        self.log.log("train", self.step_count, epoch_time_s=now - self._t_eval)
        self.log.log("val", self.step_count, epoch=self.evals, **metrics)
        self._t_eval = now
        self.evals += 1
        if self.dist.is_main:
            self._write_config()

    def _write_config(self) -> None:
        """``config.json`` in the recipe's shape, with what a watched loop tells us (batch and image size
        from the last input, lr and weight decay from the optimizer, epochs = ``evaluate`` calls), so
        ``report`` and ``compare`` read the run; the keys a loop does not expose are absent, and your own
        ``config`` dict is kept whole under ``user_config``."""
        x = self._train_shape
        g = self.optimizer.param_groups[0] if self.optimizer is not None and self.optimizer.param_groups else {}
        cfg = {"name": "watch", "parent": "", "user_config": self.user_config,
               "model": {"name": self.model_spec},
               "data": {"dataset": "your loop", "root": "-", "batch_size": int(x[0]) if x else 0,
                        "img_size": int(x[-1]) if x and len(x) == 4 else 0,
                        "num_classes": self.num_classes or 0},
               "optim": {"name": type(self.optimizer).__name__ if self.optimizer is not None else "-",
                         "lr": g.get("lr"), "weight_decay": g.get("weight_decay"), "accum_steps": 1},
               "sched": {"epochs": max(self.evals, 1)},
               "precision": {"amp": "fp16 (GradScaler)" if self.scaler is not None and self.scaler.is_enabled()
                             else "as in your loop"},
               "run": {"log_every": self.log_every}}
        write_json(self.run_dir / "config.json", cfg)

    def _nonfinite(self, loss: float, grad_norm: float, targets) -> None:
        x = self.last_input
        criterion = self.criterion or (F.cross_entropy if targets is not None else _surrogate)
        step = self.step_count + 1
        for h in self._handles:  # the replay deep-copies the model with its hooks; ours hold open files
            h.remove()
        recipe = apply_overrides(get_recipe("quickstart"), {"data.img_size": int(x.shape[-1])}) if x is not None else None
        try:
            _, fields = trip(self.orig_model, [(x, targets)], criterion, step=step, run_dir=self.run_dir,
                             write=self.dist.is_main, recipe_json=json.dumps(recipe.to_dict()) if recipe else "{}",
                             model_source={"spec": self.model_spec}, num_classes=self.num_classes or 0)
        finally:
            self._register()
        self.log.log("event", step, type="nonfinite", loss=loss, grad_norm=grad_norm, **fields)
        self.nonfinite_steps.append(step)

    def close(self) -> None:
        """Finish the last probe, remove every hook, flush and close the files (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._pending_end:
            self._pending_end = False
            self.instrument.on_step_end(self._view)
        for h in self._handles:
            h.remove()
        self._handles = []
        self.instrument.close()
        if self.dist.is_main:
            self._write_config()
        self.log.close()


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


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


def watch(model: nn.Module, optimizer=None, run_dir: str | Path = "runs/watch", config: dict | None = None,
          **kwargs) -> Watch:
    """``with reproscope.watch(model, optimizer, run_dir=..., config=...) as w:`` (see ``Watch``)."""
    return Watch(model, optimizer, run_dir, config, **kwargs)
