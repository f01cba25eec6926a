"""The Trainer: one optimizer-step path, a handful of named events, exact resume.

Step order (never duplicated per precision): autocast forward -> backward (accumulated over
``optim.accum_steps`` micro-batches) -> unscale -> grad norm -> guard decision -> clip ->
step -> zero_grad -> EMA update. bf16/fp32 need no loss scaling; the GradScaler is enabled only
for fp16, and the same calls run either way.

Events are the no-op methods of :class:`~reproscope.train.callbacks.Callback` (train_start,
epoch_start, step_start, after_backward, nonfinite, spike, diverging, step_end, log, eval_end, epoch_end,
checkpoint, train_end). Instruments attach through them without editing the loop; this module
imports nothing of ``reproscope.instrument`` (``reproscope.launch.train`` attaches the standard
instruments and the tripwire). ``orig_model`` is the uncompiled module: checkpoints and instruments
always go through it.

What a caller may change, and how: ``zero_grad=False`` and ``make_transform`` (constructor),
``request_eager_step()``, ``set_lr()`` and ``request_stop()`` (methods).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from ..config import ConfigError, Recipe, recipe_from_dict
from ..model.build import build_model
from ..model.observe import drop_path_rates, drop_path_rule
from ..runtime.progress import progress
from ..runtime import (autocast, distributed, is_conv_model, resolve_amp, resolve_device, rng_state,
                       seed_everything, set_rng_state)
from ..recipes import deviation_log, get_recipe
from .augment import BatchTransform, soft_cross_entropy
from .callbacks import EVENTS, Callback
from .checkpoint import atomic_save, load_checkpoint, read_manifest, saved_recipe, save_weights, write_manifest
from .data import ArrayDataset, BatchLoader, build_datasets, channel_stats, check_labels
from .ema import ModelEma
from .events import Event
from .guard import DivergenceWatch, StepDecision, StepGuard, overflow_findings
from .guard import grads_finite as guard_grads_finite
from .optim import WarmupCosine, build_optimizer
from .rundir import MetricsLog, NullLog, environment, write_json

__all__ = ["EVENTS", "Callback", "Trainer", "evaluate"]


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


class Trainer:
    """Build everything a recipe names, then ``fit()``."""

    def __init__(self, recipe: Recipe, run_dir: Path, *, callbacks=(), tensorboard: bool = True,
                 model: nn.Module | None = None, download: bool = False,
                 datasets: tuple[ArrayDataset, ArrayDataset] | None = None,
                 model_factory=None, model_source: dict | None = None,
                 zero_grad: bool = True, make_transform=BatchTransform):
        """``model`` (a built module) or ``model_factory(num_classes) -> nn.Module`` replaces the recipe's
        registered model; ``model_source`` (e.g. ``{"spec": ..., "file": ..., "sha256": ...}``) is then
        written to ``model_source.json`` and logged as a deviation. ``callbacks``: :class:`Callback`
        objects, called in order. ``zero_grad=False`` never clears gradients (they accumulate across
        steps: the bug zoo plants this). ``make_transform(cfg=, img_size=, mean=, std=, num_classes=,
        label_smoothing=, train=)`` builds the train and val batch transforms (default
        :class:`BatchTransform`).

        Raises:
            ConfigError: a recipe this machine or dataset cannot run (device, batch split, labels, size).
        """
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.model_source = model_source
        self.callbacks: list[Any] = list(callbacks)
        r = recipe
        if r.run.threads:
            torch.set_num_threads(r.run.threads)
        if r.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.dist = distributed.from_env()
        self.device = resolve_device(r.precision.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        distributed.init(self.dist, self.device.type)
        if r.data.batch_size % self.dist.world_size:
            raise ConfigError(f"data.batch_size={r.data.batch_size} is the global batch and must divide evenly "
                              f"over {self.dist.world_size} processes")
        self.amp_dtype = resolve_amp(r.precision.amp, self.device)
        if self.device.type == "cuda" and r.precision.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        seed_everything(r.run.seed)

        self.train_set, self.val_set = datasets or build_datasets(r.data, download=download, progress=r.run.progress)
        self.num_classes = r.data.num_classes or self.train_set.num_classes
        check_labels(self.train_set, self.val_set, self.num_classes)
        if model is None:
            model = (model_factory(self.num_classes) if model_factory is not None
                     else build_model(r.model, self.num_classes, r.data.img_size))
        self.orig_model = model.to(self.device)
        cl = r.precision.channels_last
        self.channels_last = cl == "on" or (cl == "auto" and self.device.type == "cuda"
                                            and is_conv_model(self.orig_model))
        if self.channels_last:
            self.orig_model = self.orig_model.to(memory_format=torch.channels_last)
        self.eager_model = self.orig_model
        if self.dist.enabled:  # gradients are averaged across ranks; orig_model stays the unwrapped module
            from torch.nn.parallel import DistributedDataParallel
            self.eager_model = DistributedDataParallel(
                self.orig_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = self.eager_model  # compiled in fit(), after train_start has attached hooks
        self._eager_requested = False  # request_eager_step(): this step runs the uncompiled module
        self._fixed_lr: float | None = None  # set_lr(): overrides the schedule while set
        self.zero_grad = zero_grad
        self._started = False  # start() ran (train_start fired) and fit() has not ended
        self.ema = ModelEma(self.orig_model, r.reg.ema_decay) if r.reg.ema_decay > 0 else None

        mean, std = channel_stats(self.train_set)
        ls = r.reg.label_smoothing
        tf = dict(cfg=r.aug, img_size=r.data.img_size, mean=mean, std=std, num_classes=self.num_classes)
        self.train_loader = BatchLoader(
            self.train_set, r.data.batch_size, self.device, make_transform(**tf, label_smoothing=ls, train=True),
            train=True, seed=r.run.seed, channels_last=self.channels_last, device_cache=r.data.device_cache,
            dist=self.dist)
        self.val_loader = BatchLoader(
            self.val_set, r.data.eval_batch_size, self.device, make_transform(**tf, label_smoothing=0.0, train=False),
            train=False, channels_last=self.channels_last, device_cache=r.data.device_cache)
        self.accum = r.optim.accum_steps
        self.steps_per_epoch = len(self.train_loader) // self.accum
        if self.steps_per_epoch < 1:
            raise ConfigError(f"optim.accum_steps={self.accum} x data.batch_size={r.data.batch_size} is larger "
                              f"than one epoch of {len(self.train_set)} images; lower one of them")
        self.total_steps = r.sched.epochs * self.steps_per_epoch
        if r.sched.max_steps:  # a smoke run: the first max_steps of the real schedule, then eval + checkpoint
            self.total_steps = min(self.total_steps, r.sched.max_steps)
        self.optimizer = build_optimizer(self.orig_model, r.optim)
        self.schedule = WarmupCosine.from_config(r.optim, r.sched, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = functools.partial(soft_cross_entropy, label_smoothing=r.reg.label_smoothing)
        self.named_params = [(n, p) for n, p in self.orig_model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]

        self.step = 0  # optimizer steps taken
        self.best_top1 = -1.0
        self.last_eval: dict[str, float] = {}
        self.stop_requested = False
        self.stop_reason = ""
        self.tripped: StepDecision | None = None  # the non-finite step's decision that stopped the run
        self.last_decision: StepDecision | None = None
        self.skipped_steps = 0
        self.rollbacks = 0
        self.signal = None  # request_stop(..., signal=) from train.run.stop_on_signals on SIGTERM/SIGINT
        self.guard = StepGuard(r.instrument, scaler=self.scaler.is_enabled())
        self.resume_changes: list[dict] = []  # keys changed on resume (see _note_resume_changes)
        self.divergence = DivergenceWatch(self.num_classes)
        self.scaler_skips = 0  # fp16 steps the GradScaler skipped (overflow) and backed off from
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.run_dir, tensorboard=tensorboard) if self.dist.is_main else NullLog()

    # ------------------------------------------------------------------ setup helpers
    def add_callback(self, cb: Callback) -> None:
        """Append ``cb`` (before ``fit()``, so that it sees ``train_start``)."""
        self.callbacks.append(cb)

    def fire(self, event: str, **info: Any) -> None:
        assert event in EVENTS, event
        for cb in self.callbacks:
            fn = getattr(cb, f"on_{event}", None)
            if fn is not None:
                fn(self, **info)

    def request_stop(self, reason: str, signal: int | None = None) -> None:
        """Stop at the next step boundary, after saving a checkpoint; ``signal``: the signal number that
        asked for it (kept in ``self.signal``)."""
        self.stop_requested, self.stop_reason = True, reason
        if signal is not None:
            self.signal = signal

    def request_eager_step(self) -> None:
        """Run the step now starting (call from ``on_step_start``) on the uncompiled module, e.g. so that
        toggled hooks fire; later steps use the compiled one again."""
        self._eager_requested = True

    def set_lr(self, lr: float | None) -> None:
        """Every parameter group trains at ``lr`` from the next step on; None gives the schedule back."""
        self._fixed_lr = lr

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    # ------------------------------------------------------------------ the step
    def step_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of optimizer step ``step`` (0-based), as ``fit()`` would draw them."""
        epoch, i = divmod(step, self.steps_per_epoch)
        batches = self.train_loader.epoch(epoch, start_batch=i * self.accum, first_step=step * self.accum)
        return [next(batches) for _ in range(self.accum)]

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One optimizer step over ``accum_steps`` micro-batches. Returns on-device scalars.

        A guard between clipping and the optimizer step reads the loss and grad norm (one small
        device-to-host copy per step) and applies the NaN policy and the spike policy.
        """
        self.fire("step_start", step=self.step + 1)
        rng_before = rng_state()
        lr = self._apply_lr()
        model = self.eager_model if self._eager_requested else self.model
        self._eager_requested = False
        loss_sum = torch.zeros((), device=self.device)
        for x, y in micro_batches:
            with record_function("forward"), autocast(self.device, self.amp_dtype):
                loss = self.criterion(model(x), y)
            with record_function("backward"):
                self.scaler.scale(loss / len(micro_batches)).backward()
            loss_sum += loss.detach().float()
        with record_function("optimizer"):
            return self._optimizer_step(micro_batches, loss_sum, lr, rng_before)

    def _apply_lr(self) -> float:
        if self._fixed_lr is None:
            return self.schedule.apply(self.optimizer, self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = self._fixed_lr
        return self._fixed_lr

    def _optimizer_step(self, micro_batches, loss_sum, lr, rng_before) -> dict[str, torch.Tensor]:
        self.scaler.unscale_(self.optimizer)
        self.fire("after_backward")
        # the norm now, the clipping after the guard's decision: clipping a norm that overflowed would turn
        # finite gradients into NaN (inf / inf) and hide a divergence behind a "non-finite" report
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        loss_mean = loss_sum / len(micro_batches)
        flag = torch.tensor(float(self.stop_requested), device=self.device)
        vals = distributed.all_reduce_sum(torch.stack([loss_mean, grad_norm.detach().float(), flag]), self.dist)
        vals = vals / torch.tensor([self.dist.world_size, self.dist.world_size, 1.0], device=self.device)
        loss_mean = vals[0]  # the global mean loss (all ranks), what gets logged
        loss_v, gn_v, stop_v = vals.tolist()  # one sync per step
        if stop_v > 0 and not self.stop_requested:  # another rank got a signal
            self.request_stop("another process is stopping")
        grads_finite = None
        if math.isfinite(loss_v) and not math.isfinite(gn_v) and not self.scaler.is_enabled():
            grads_finite = guard_grads_finite(self.params)
        decision = self.guard.decide(loss_v, gn_v, self.step + 1, grads_finite=grads_finite)
        decision = self._announce(decision, micro_batches, rng_before)
        self._act(decision, grad_norm)
        if decision.action == "step" and decision.code != "scaler-overflow":
            self._watch_divergence(loss_v, gn_v, decision.step)
        return {"loss": loss_mean, "grad_norm": grad_norm.detach(), "lr": torch.tensor(lr)}

    def _watch_divergence(self, loss: float, grad_norm: float, step: int) -> None:
        ev = self.divergence.flag(loss, grad_norm, step,
                                  find=lambda flagged, findings: self.fire("diverging", flagged=flagged, findings=findings))
        if ev is not None:
            self.log.log("event", step, type=Event.DIVERGING, **{k: v for k, v in ev.items() if k != "step"})
            print(f"DIVERGING at step {step}: {ev['reason']} (still finite; lower optim.lr, add warmup or "
                  f"optim.grad_clip)", flush=True)
            for f in ev["findings"].values():
                print(f"  {f.get('sentence', f)}", flush=True)

    def _announce(self, d: StepDecision, micro_batches, rng_before) -> StepDecision:
        """Fire the decision's event and log it; returns it with the listeners' findings."""
        if d.code == "scaler-overflow":
            self.scaler_skips += 1
            self.log.log("event", d.step, type=Event.SCALER_OVERFLOW, scale=float(self.scaler.get_scale()),
                         in_a_row=self.guard.scaler_overflows)
        elif d.code == "grad-norm-overflow":
            d = dataclasses.replace(d, findings=overflow_findings(self.named_params))
            self.log.log("event", d.step, type=Event.GRAD_NORM_OVERFLOW, loss=d.loss,
                         grad_norm_fp64=d.findings["grad_norm_fp64"],
                         largest_grads=[[n, v] for n, v in d.findings["largest_grads"]])
            print(f"DIVERGED: {d.reason()}", flush=True)
        elif d.code == "loss-spike":
            last = self.train_loader.last_indices
            self.log.log("event", d.step, type=Event.LOSS_SPIKE, skipped=d.action == "skip",
                         batch_indices=last.tolist() if last is not None else None, **d.spike)
            self.fire("spike", decision=d)
        elif d.code == "nonfinite":
            findings: dict = {}
            self.fire("nonfinite", decision=d, batches=micro_batches, rng_state=rng_before, findings=findings)
            d = dataclasses.replace(d, findings=findings)
            self.log.log("event", d.step, type=Event.NONFINITE, policy=d.policy, loss=d.loss, grad_norm=d.grad_norm,
                         **findings)
            if not findings:
                print(f"NON-FINITE at step {d.step} (loss {d.loss}, grad norm {d.grad_norm}); policy {d.policy}. "
                      f"Attach reproscope.instrument.Tripwire() to name the module", flush=True)
        return d

    def _act(self, d: StepDecision, grad_norm: torch.Tensor) -> None:
        """The one place a decision changes the training state."""
        self.last_decision = d
        clip = self.recipe.optim.grad_clip
        if d.action == "step":
            if clip > 0 and d.code != "scaler-overflow":
                torch.nn.utils.clip_grads_with_norm_(self.params, clip, grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        if d.action == "step":
            if self.ema is not None:
                self.ema.update(self.orig_model)
            self.step += 1
        elif d.action == "skip":
            self.skipped_steps += 1
            self.step += 1
        elif d.action == "rollback":
            self._rollback()
        elif d.action == "stop":
            self.tripped = d
            self.request_stop(d.reason())

    def _rollback(self) -> None:
        ckpt = load_checkpoint(self.run_dir / "last.pt", map_location=self.device)
        scale = self.schedule.scale * 0.5
        bad_step = self.step + 1
        self.load_state_dict(ckpt)  # the guard keeps its count of rollbacks in a row
        self.schedule.scale = scale
        self.rollbacks += 1
        print(f"rollback: restored step {self.step} from {self.run_dir / 'last.pt'}; lr scale now {scale:g}",
              flush=True)
        self.log.log("event", bad_step, type=Event.ROLLBACK, restored_step=self.step, lr_scale=scale)

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        """Fire ``train_start``, then wrap the model in ``torch.compile`` (``precision.compile``): the order
        that puts hooks on the uncompiled module. ``fit()`` calls it; call it yourself before driving
        ``train_step`` directly. Once until ``fit()`` ends (``train_end``)."""
        if self._started:
            return
        self._started = True
        self.fire("train_start")
        if self.recipe.precision.compile and self.model is self.eager_model:
            if self.dist.is_main and self.recipe.run.progress:  # the first steps wait for the compiler
                print("torch.compile: the first steps compile the model (about a minute on a CPU)", flush=True)
            self.model = torch.compile(self.eager_model)

    def _epoch_label(self, epoch: int) -> str:
        """"epoch 3/15", or with ``sched.max_steps`` cutting the schedule short "epoch 1/15, stopping at
        step 40 (sched.max_steps)"."""
        r = self.recipe
        if r.sched.max_steps and r.sched.max_steps < self.steps_per_epoch * r.sched.epochs:
            return f"epoch {epoch + 1}/{r.sched.epochs}, stopping at step {r.sched.max_steps} (sched.max_steps)"
        return f"epoch {epoch + 1}/{r.sched.epochs}"

    def fit(self) -> dict[str, float]:
        r = self.recipe
        if self.dist.is_main:
            if not (self.run_dir / "config.json").exists():  # the run's original config; changes on resume
                write_json(self.run_dir / "config.json", r.to_dict())  # go to deviations.json with their step
            write_json(self.run_dir / "environment.json", {**environment(), "world_size": self.dist.world_size})
            write_json(self.run_dir / "data.json", {  # what was trained and evaluated on, and what was left out
                split: {"name": ds.name, "images": len(ds), "classes": len(ds.classes),
                        "skipped_unreadable": ds.skipped} for split, ds in (("train", self.train_set), ("val", self.val_set))})
            devs = deviation_log(r) + self._resume_deviations()
            if self.model_source is not None:
                write_json(self.run_dir / "model_source.json", self.model_source)
                devs = self._user_model_deviations(devs)
            write_json(self.run_dir / "deviations.json", {"recipe": r.name, "parent": r.parent, "deviations": devs})
        self.start()
        self._warn_ema_horizon()
        if r.instrument.nan_policy == "rollback" and not (self.run_dir / "last.pt").exists():
            self.save_checkpoint()  # something to roll back to before the first epoch ends
        bar = _progress(r.run.progress and self.dist.is_main, total=self.total_steps, initial=self.step)
        try:
            while self.step < self.total_steps and not self.stop_requested:
                self._train_epoch(bar)
            if self.stop_requested:
                path = self.save_checkpoint()
                diverged = self.tripped is not None and self.tripped.code == "grad-norm-overflow"
                bar.write(f"stopped at step {self.step} ({self.stop_reason}); checkpoint {path}"
                          + ("" if diverged else f"\nresume with: reproscope train --resume {self.run_dir}"))
        finally:
            bar.close()
            self.log.flush()
        self.fire("train_end")
        self._started = False
        if self.divergence.flagged is not None and self.dist.is_main:
            ev = self.divergence.flagged
            print(f"this run diverged at step {ev['step']}: {ev['reason']}; see the diverging event in "
                  f"{self.run_dir / 'metrics.jsonl'}", flush=True)
            for f in (ev.get("findings") or {}).values():
                print(f"  at step {ev['step']}: {f.get('sentence', f)}", flush=True)
        if self.scaler_skips and self.dist.is_main:
            print(f"fp16: the GradScaler skipped {self.scaler_skips} overflowing steps (scale now "
                  f"{self.scaler.get_scale():g})", flush=True)
        if self.dist.is_main:  # the final weights in the ecosystem's safe format
            save_weights(self.orig_model.state_dict(), self.run_dir / "model.safetensors")
        self.log.close()
        return self.last_eval

    def _user_model_deviations(self, devs: list[dict]) -> list[dict]:
        """For a ``--model`` run: the recipe's ``model.*`` rows describe a model that did not run, so they
        go; the model rows say what the user's model *is* (spec, parameter count, drop-path rates and
        their rule over depth, read from its modules) against the paper recipe's model."""
        r = self.recipe
        paper = get_recipe(r.parent).model if r.parent else r.model
        n = sum(p.numel() for p in self.orig_model.parameters())
        rows = [{"key": "model.name", "parent": paper.name, "value": self.model_source["spec"],
                 "reason": f"the user's own model (--model), {n / 1e6:.2f}M parameters; the recipe's model.* "
                           f"keys do not apply to it"}]
        rates = [p for _, p in drop_path_rates(self.orig_model)]
        rule, top = drop_path_rule(rates), max(rates, default=0.0)
        if top != paper.drop_path or (rule not in ("linear", "off")):
            rows.append({"key": "model.drop_path", "parent": paper.drop_path, "value": top,
                         "reason": f"observed in the user's model: {len(rates)} stochastic-depth modules, {rule} over depth"})
        return rows + [d for d in devs if not d["key"].startswith("model.")]

    def _warn_ema_horizon(self) -> None:
        """EMA averages over ~1 / (1 - decay) steps; more than half the run means its weights lag far behind."""
        d = self.recipe.reg.ema_decay
        if self.ema is None or not self.dist.is_main or 1 / (1 - d) <= self.total_steps / 2:
            return
        msg = (f"reg.ema_decay={d} averages over ~{1 / (1 - d):.0f} steps, more than half of this run's "
               f"{self.total_steps} steps: the EMA weights will lag the raw ones (both are evaluated and logged)")
        print(f"warning: {msg}", flush=True)
        self.log.log("event", self.step, type=Event.EMA_HORIZON, horizon_steps=1 / (1 - d), total_steps=self.total_steps)

    def _train_epoch(self, bar) -> None:
        r = self.recipe
        epoch, start = self.epoch, self.step % self.steps_per_epoch
        bar.set_description(self._epoch_label(epoch))
        self.fire("epoch_start", epoch=epoch)
        self.model.train()
        t_epoch = t_log = time.perf_counter()
        logged_at, window_loss = self.step, torch.zeros((), device=self.device)
        batches = self.train_loader.epoch(epoch, start_batch=start * self.accum, first_step=self.step * self.accum)
        for i in range(start, self.steps_per_epoch):
            micro = [next(batches) for _ in range(self.accum)]
            out = self._first_step_guarded(micro) if i == start else self.train_step(micro)
            action = self.last_decision.action
            if action == "rollback":  # restart the loop at the restored step
                bar.n = self.step
                bar.refresh()
                return
            if action == "stop":
                break
            window_loss += out["loss"]
            bar.update(1)
            self.fire("step_end", **out)
            if self.step % r.run.log_every == 0 or i == self.steps_per_epoch - 1:
                n = max(1, self.step - logged_at)
                vals = {"loss": (window_loss / n).item(), "grad_norm": out["grad_norm"].item(),
                        "lr": out["lr"].item(), "skipped_steps": self.skipped_steps}
                now = time.perf_counter()
                vals["img_per_s"] = n * self.accum * r.data.batch_size / max(now - t_log, 1e-9)
                self.log.log("train", self.step, epoch=epoch, **vals)
                bar.set_postfix(loss=f"{vals['loss']:.3f}", lr=f"{vals['lr']:.2e}", at=f"step {self.step}",
                                refresh=False)
                self.fire("log", **vals)
                logged_at, window_loss, t_log = self.step, window_loss.zero_(), now
            if self.stop_requested:
                break
            if self.step >= self.total_steps:  # the last step (sched.max_steps may end an epoch early)
                self._end_epoch(epoch, time.perf_counter() - t_epoch, bar, i + 1 - start)
                return
            ckpt_every = r.run.ckpt_every
            if ckpt_every and self.step % ckpt_every == 0 and i < self.steps_per_epoch - 1:
                self.save_checkpoint()
        else:
            self._end_epoch(epoch, time.perf_counter() - t_epoch, bar, self.steps_per_epoch - start)

    def _first_step_guarded(self, micro):
        """The first step of a (resumed) epoch: an out-of-memory here gets advice, not a traceback."""
        try:
            return self.train_step(micro)
        except torch.OutOfMemoryError as e:
            bs = self.recipe.data.batch_size
            raise ConfigError(f"out of memory at step {self.step + 1} with data.batch_size={bs} on {self.device}: "
                              f"try --set data.batch_size={max(1, bs // 2)} (and --set optim.accum_steps="
                              f"{2 * self.accum} to keep the effective batch)") from e

    def _end_epoch(self, epoch: int, seconds: float, bar, steps: int) -> None:
        """``seconds`` timed ``steps`` optimizer steps of this epoch (fewer than an epoch's after a resume
        mid-epoch or at sched.max_steps): both are logged, and the console says when it is a part."""
        r = self.recipe
        self.log.log("train", self.step, epoch_time_s=seconds, epoch_steps=steps)
        timed = f"{seconds:.1f}s" if steps == self.steps_per_epoch else (
            f"{seconds:.1f}s for {steps} of its {self.steps_per_epoch} steps")
        if (epoch + 1) % r.run.eval_every == 0 or self.step >= self.total_steps:
            show = self.recipe.run.progress and self.dist.is_main
            raw = evaluate(self.model, self.val_loader, self.amp_dtype, show)
            both = {}
            if self.ema is not None:  # both weights, always: an EMA that lags the run shows as a gap
                ema = evaluate(self.ema.module, self.val_loader, self.amp_dtype, show, "eval (EMA)")
                both = {**{f"raw_{k}": v for k, v in raw.items()}, **{f"ema_{k}": v for k, v in ema.items()}}
                raw = ema if r.reg.eval_ema else raw
            self.last_eval = raw
            self.log.log("val", self.step, epoch=epoch, **self.last_eval, **both)
            self.fire("eval_end", **self.last_eval)
            extra = (f"  (raw {both['raw_top1']:.2f}, EMA {both['ema_top1']:.2f}; reported: "
                     f"{'EMA' if r.reg.eval_ema else 'raw'})" if both else "")
            bar.write(f"{self._epoch_label(epoch)}  val top-1 {self.last_eval['top1']:.2f}  "
                      f"top-5 {self.last_eval['top5']:.2f}  loss {self.last_eval['loss']:.4f}  ({timed}){extra}")
        self.fire("epoch_end", epoch=epoch)
        self.save_checkpoint()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.orig_model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best_top1": self.best_top1,
            "skipped_steps": self.skipped_steps,
            "rollbacks": self.rollbacks,
            "last_eval": self.last_eval,
            "rng": rng_state(),
            "recipe_json": json.dumps(self.recipe.to_dict()),
            "instrument": {**self.guard.state_dict(), "divergence": self.divergence.state_dict(),
                           "scaler_skips": self.scaler_skips},
        }

    def _resume_deviations(self) -> list[dict]:
        """Keys changed when this run was resumed, each with the step from which it applies (kept across
        resumes in ``resume_changes.json``)."""
        path = self.run_dir / "resume_changes.json"
        old = json.loads(path.read_text()) if path.is_file() else []
        new = [c for c in self.resume_changes if c not in old]
        if new:
            write_json(path, old + new)
        return [{"key": c["key"], "parent": c["was"], "value": c["now"],
                 "reason": f"changed on resume from step {c['from_step']} (the steps before it ran with the parent value)"}
                for c in old + new]

    def _note_resume_changes(self, ckpt: dict) -> None:
        """Compare the checkpoint's recipe with this one: changed keys are recorded, and a schedule that
        jumps at the resumed step is warned about (the lr of the step under both schedules)."""
        try:
            saved = saved_recipe(ckpt)
        except (KeyError, json.JSONDecodeError):
            saved = None
        if not saved:
            return
        now, step = self.recipe.to_dict(), int(ckpt["step"])
        skip = ("run", "instrument")
        self.resume_changes = [{"key": f"{sec}.{k}", "was": v, "now": now.get(sec, {}).get(k), "from_step": step}
                               for sec, vals in saved.items() if isinstance(vals, dict) and sec not in skip
                               for k, v in vals.items() if now.get(sec, {}).get(k) != v]
        if not self.resume_changes:
            return
        old = recipe_from_dict(saved)
        before = WarmupCosine.from_config(old.optim, old.sched, self.steps_per_epoch)(step)
        after = self.schedule(step)
        keys = ", ".join(f"{c['key']} {c['was']} -> {c['now']}" for c in self.resume_changes)
        jump = f"; the lr at step {step} jumps {after / max(before, 1e-30):.3g}x ({before:.3g} -> {after:.3g})" \
            if not 0.8 <= after / max(before, 1e-30) <= 1.25 else ""
        print(f"warning: resuming with changed settings ({keys}){jump}; recorded as deviations from step {step}, "
              f"config.json keeps the run's original settings", flush=True)

    def load_state_dict(self, ckpt: dict) -> None:
        if ckpt is not None and self.run_dir.joinpath("config.json").exists() and "recipe_json" in ckpt:
            self._note_resume_changes(ckpt)
        self.orig_model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt.get("schedule", {}))
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.best_top1 = float(ckpt.get("best_top1", -1.0))
        self.skipped_steps = int(ckpt.get("skipped_steps", 0))
        self.rollbacks = max(self.rollbacks, int(ckpt.get("rollbacks", 0)))
        self.last_eval = dict(ckpt.get("last_eval") or {})
        set_rng_state(ckpt["rng"])
        inst = ckpt.get("instrument") or {}
        self.guard.load_state_dict(inst)
        self.divergence.load_state_dict(inst.get("divergence") or {})
        self.scaler_skips = int(inst.get("scaler_skips", 0))

    def save_checkpoint(self) -> Path:
        """Write ``ckpt-step<N>.pt`` atomically, point ``last.pt`` at it, keep the last K, update best."""
        path = self.run_dir / f"ckpt-step{self.step:08d}.pt"
        top1 = self.last_eval.get("top1", -1.0)
        new_best = top1 > self.best_top1 and self.step % self.steps_per_epoch == 0
        if new_best:
            self.best_top1 = top1
        if self.dist.is_main:  # rank 0 writes; the others wait for the file
            state = self.state_dict()
            entry = {"step": self.step, "sha256": atomic_save(state, path)}
            manifest = read_manifest(self.run_dir)
            manifest[path.name] = manifest["last.pt"] = entry
            _atomic_link(path, self.run_dir / "last.pt")
            if new_best:  # the same bytes: another name for this checkpoint, not a second write
                _atomic_link(path, self.run_dir / "best.pt")
                manifest["best.pt"] = entry
            for old in sorted(self.run_dir.glob("ckpt-step*.pt"))[:-self.recipe.run.keep_last]:
                old.unlink(missing_ok=True)
                manifest.pop(old.name, None)
            write_manifest(self.run_dir, manifest)
        distributed.barrier(self.dist)
        self.fire("checkpoint", path=path)
        return path


def _atomic_link(target: Path, link: Path) -> None:
    """``link`` becomes another name for ``target`` (hard link, or a copy where links are not supported)."""
    import os
    import shutil
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, link)


def _progress(enabled: bool, total: int, initial: int):
    """The training bar: tqdm on a terminal; plain lines (``LineProgress``) when stderr is redirected."""
    return progress(total, desc="train", enabled=enabled, initial=initial)
