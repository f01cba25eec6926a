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
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.profiler import record_function

from ..config import ConfigError, Recipe
from ..console import log as console
from ..data.augment import BatchTransform
from ..data.datasets import ArrayDataset, build_datasets, build_loaders, check_labels
from ..model.build import build_model
from ..runfiles import METRICS
from ..runtime import autocast, distributed, place_model, prepare_process, rng_state, set_rng_state
from .callbacks import EVENTS, Callback
from .checkpoint import CheckpointManager, load_checkpoint, save_weights
from .display import LogWindow, TrainDisplay, oom_advice, say_run_end
from .ema import ModelEma
from .evaluation import evaluate, evaluate_run
from .events import EventWriter
from .guard import DivergenceWatch, StepDecision, StepGuard
from .optim import build_optimization
from .rundir import MetricsLog, NullLog, write_run_record

__all__ = ["EVENTS", "Callback", "Trainer", "evaluate"]


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
            ConfigError: a recipe this machine or dataset cannot run (device, batch split, labels, size, sync_bn).
        """
        self.recipe, self.run_dir, self.model_source = recipe, Path(run_dir), model_source
        self.callbacks: list[Any] = list(callbacks)
        r = recipe
        self.dist, self.device, self.amp_dtype = prepare_process(r.precision, r.run)
        if r.data.batch_size % self.dist.world_size:
            raise ConfigError(f"data.batch_size={r.data.batch_size} is the global batch and must divide evenly "
                              f"over {self.dist.world_size} processes")
        self.train_set, self.val_set = datasets or build_datasets(r.data, download=download, progress=r.run.progress)
        self.num_classes = r.data.num_classes or self.train_set.num_classes
        check_labels(self.train_set, self.val_set, self.num_classes)
        self.orig_model, self.eager_model, self.channels_last = place_model(
            model if model is not None else model_factory(self.num_classes) if model_factory else build_model(
                r.model, self.num_classes, r.data.img_size), self.device, r.precision.channels_last, self.dist, r.dist)
        self.model = self.eager_model  # compiled in fit(), after train_start has attached hooks
        self.ema = ModelEma(self.orig_model, r.reg.ema_decay) if r.reg.ema_decay > 0 else None
        self.train_loader, self.val_loader = build_loaders(
            self.train_set, self.val_set, r, self.device, self.num_classes, make_transform,
            channels_last=self.channels_last, dist=self.dist)
        o = build_optimization(self.orig_model, r, len(self.train_loader), len(self.train_set), self.amp_dtype, self.device)
        self.optimizer, self.schedule, self.scaler, self.criterion = o.optimizer, o.schedule, o.scaler, o.criterion
        self.accum, self.steps_per_epoch, self.total_steps = o.accum, o.steps_per_epoch, o.total_steps
        self.named_params = [(n, p) for n, p in self.orig_model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        self.guard = StepGuard(r.instrument, scaler=self.scaler.is_enabled())
        self.divergence = DivergenceWatch(self.num_classes)
        self.zero_grad = zero_grad
        self._eager_requested = False  # request_eager_step(): this step runs the uncompiled module
        self._fixed_lr: float | None = None  # set_lr(): overrides the schedule while set
        self._started = False  # start() ran (train_start fired) and fit() has not ended
        self.step, self.best_top1, self.last_eval = 0, -1.0, {}  # optimizer steps taken; evaluations
        self.skipped_steps = self.rollbacks = self.scaler_skips = 0  # scaler_skips: fp16 overflow back-offs
        self.stop_requested, self.stop_reason, self.signal = False, "", None  # signal: from request_stop
        self.tripped: StepDecision | None = None  # the non-finite step's decision that stopped the run
        self.last_decision: StepDecision | None = None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = CheckpointManager(self.run_dir, r.run.keep_last, self.dist.is_main)
        self.log = MetricsLog(self.run_dir, tensorboard=tensorboard) if self.dist.is_main else NullLog()
        self.events = EventWriter(self.log, advice="; lower optim.lr, add warmup or optim.grad_clip")

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

    @property
    def log_every(self) -> int:
        """``run.log_every``: the ``log`` event fires every this many optimizer steps (``TrainerView``)."""
        return self.recipe.run.log_every

    # ------------------------------------------------------------------ the step
    def step_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of optimizer step ``step`` (0-based), as ``fit()`` would draw them."""
        epoch, i = divmod(step, self.steps_per_epoch)
        batches = self.train_loader.epoch(epoch, start_batch=i * self.accum, first_step=step * self.accum)
        return [next(batches) for _ in range(self.accum)]

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One optimizer step over ``accum_steps`` micro-batches. Returns on-device scalars.

        A guard between clipping and the optimizer step reads the loss and grad norm (one small
        device-to-host copy per step) and applies the NaN policy and the spike policy. Under DDP, parameters
        that got no gradient raise ``distributed.UnusedParametersError`` (a ConfigError) at the next forward.
        """
        self.fire("step_start", step=self.step + 1)
        rng_before = rng_state()
        lr = self.schedule(self.step) if self._fixed_lr is None else self._fixed_lr
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        model = self.eager_model if self._eager_requested else self.model
        self._eager_requested = False
        loss_sum = torch.zeros((), device=self.device)
        for x, y in micro_batches:
            with record_function("forward"), autocast(self.device, self.amp_dtype):
                loss = self.criterion(distributed.forward(model, x, self.orig_model), y)
            with record_function("backward"):
                self.scaler.scale(loss / len(micro_batches)).backward()
            loss_sum += loss.detach().float()
        with record_function("optimizer"):
            return self._optimizer_step(micro_batches, loss_sum, lr, rng_before)

    def _optimizer_step(self, micro_batches, loss_sum, lr, rng_before) -> dict[str, torch.Tensor]:
        self.scaler.unscale_(self.optimizer)
        self.fire("after_backward")
        # the norm now, the clipping after the guard's decision: clipping a norm that overflowed would turn
        # finite gradients into NaN (inf / inf) and hide a divergence behind a "non-finite" report
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        loss_mean, loss_v, gn_v, any_stop = distributed.step_sync(  # the global mean loss (all ranks) gets logged
            loss_sum / len(micro_batches), grad_norm, self.stop_requested, self.dist)
        if any_stop and not self.stop_requested:  # another rank got a signal
            self.request_stop("another process is stopping")
        decision = self._announce(self.guard.decide_step(loss_v, gn_v, self.step + 1, self.params), micro_batches,
                                  rng_before)
        self._act(decision, grad_norm)
        if decision.action == "step" and decision.code != "scaler-overflow":  # a finite run flagged as diverging
            ev = self.divergence.flag(loss_v, gn_v, decision.step, find=lambda flagged, findings: self.fire(
                "diverging", flagged=flagged, findings=findings))
            if ev is not None:
                self.events.diverging(ev)
        return {"loss": loss_mean, "grad_norm": grad_norm.detach(), "lr": torch.tensor(lr)}

    def _announce(self, d: StepDecision, micro_batches, rng_before) -> StepDecision:
        """Fire the decision's event and log it; returns it with the listeners' findings."""
        if d.code == "scaler-overflow":
            self.scaler_skips += 1
            self.events.scaler_overflow(d, self.scaler.get_scale(), self.guard.scaler_overflows)
        elif d.code == "grad-norm-overflow":
            d = self.events.grad_norm_overflow(d, self.named_params)
        elif d.code == "loss-spike":
            last = self.train_loader.last_indices
            self.events.loss_spike(d, batch_indices=last.tolist() if last is not None else None)
            self.fire("spike", decision=d)
        elif d.code == "nonfinite":
            findings: dict = {}
            self.fire("nonfinite", decision=d, batches=micro_batches, rng_state=rng_before, findings=findings)
            d = dataclasses.replace(d, findings=findings)
            self.events.nonfinite(d, findings)
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
        ckpt = load_checkpoint(self.checkpoints.last, map_location=self.device)
        scale = self.schedule.scale * 0.5
        bad_step = self.step + 1
        self.load_state_dict(ckpt)  # the guard keeps its count of rollbacks in a row
        self.schedule.scale = scale
        self.rollbacks += 1
        self.events.rollback(bad_step, self.step, scale, self.checkpoints.last)

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
                console.info("torch.compile: the first steps compile the model (about a minute on a CPU)")
            self.model = torch.compile(self.eager_model)

    def fit(self) -> dict[str, float]:
        """Train to ``total_steps`` (or a stop), evaluating and checkpointing each epoch; returns the last
        evaluation (top1, top5, loss). The run record is written first, the final weights last."""
        r = self.recipe
        if self.dist.is_main:
            write_run_record(self.run_dir, r, self.orig_model, world_size=self.dist.world_size,
                             splits={"train": self.train_set, "val": self.val_set}, model_source=self.model_source)
        self.start()
        if self.ema is not None and self.dist.is_main:
            self.events.ema_horizon(self.step, r.reg.ema_decay, self.total_steps)
        if r.instrument.nan_policy == "rollback" and not self.checkpoints.last.exists():
            self.save_checkpoint()  # something to roll back to before the first epoch ends
        bar = TrainDisplay(r, self.steps_per_epoch, self.total_steps, self.step, r.run.progress, self.dist.is_main)
        try:
            while self.step < self.total_steps and not self.stop_requested:
                self._train_epoch(bar)
            if self.stop_requested:
                diverged = self.tripped is not None and self.tripped.code == "grad-norm-overflow"
                bar.stopped(self.step, self.stop_reason, self.save_checkpoint(), self.run_dir, not diverged)
        finally:
            bar.close()
            self.log.flush()
        self.fire("train_end")
        self._started = False
        if self.dist.is_main:
            say_run_end(self.divergence.flagged, self.run_dir / METRICS, self.scaler_skips,
                        self.scaler.get_scale())
            save_weights(self.orig_model.state_dict(), self.run_dir / "model.safetensors")  # the safe format
        self.log.close()
        return self.last_eval

    def _train_epoch(self, bar: TrainDisplay) -> None:
        r = self.recipe
        epoch, start = self.epoch, self.step % self.steps_per_epoch
        bar.epoch_start(epoch)
        self.fire("epoch_start", epoch=epoch)
        self.model.train()
        t_epoch, window = time.perf_counter(), LogWindow(self.step, self.device)
        batches = self.train_loader.epoch(epoch, start_batch=start * self.accum, first_step=self.step * self.accum)
        for i in range(start, self.steps_per_epoch):
            micro = [next(batches) for _ in range(self.accum)]
            out = self._first_step_guarded(micro) if i == start else self.train_step(micro)
            action = self.last_decision.action
            if action == "rollback":  # restart the loop at the restored step
                return bar.moved_to(self.step)
            if action == "stop":
                break
            window.add(out["loss"])
            bar.stepped()
            self.fire("step_end", **out)
            if self.step % r.run.log_every == 0 or i == self.steps_per_epoch - 1:
                loss, img_per_s = window.close(self.step, self.accum * r.data.batch_size)
                vals = {"loss": loss, "grad_norm": out["grad_norm"].item(), "lr": out["lr"].item(),
                        "skipped_steps": self.skipped_steps, "img_per_s": img_per_s}
                self.log.log("train", self.step, epoch=epoch, **vals)
                bar.logged(self.step, vals)
                self.fire("log", **vals)
            if self.stop_requested:
                break
            if self.step >= self.total_steps:  # the last step (sched.max_steps may end an epoch early)
                self._end_epoch(epoch, time.perf_counter() - t_epoch, bar, i + 1 - start)
                return
            if r.run.ckpt_every and self.step % r.run.ckpt_every == 0 and i < self.steps_per_epoch - 1:
                self.save_checkpoint()
        else:
            self._end_epoch(epoch, time.perf_counter() - t_epoch, bar, self.steps_per_epoch - start)

    def _first_step_guarded(self, micro):
        """The first step of a (resumed) epoch: an out-of-memory here gets advice, not a traceback."""
        try:
            return self.train_step(micro)
        except torch.OutOfMemoryError as e:
            raise ConfigError(oom_advice(self.step + 1, self.recipe.data.batch_size, self.accum, self.device)) from e

    def _end_epoch(self, epoch: int, seconds: float, bar: TrainDisplay, steps: int) -> None:
        """``seconds`` timed ``steps`` optimizer steps of this epoch (fewer than an epoch's after a resume
        mid-epoch or at sched.max_steps): both are logged; evaluate when due, then checkpoint."""
        r = self.recipe
        self.log.log("train", self.step, epoch_time_s=seconds, epoch_steps=steps)
        if (epoch + 1) % r.run.eval_every == 0 or self.step >= self.total_steps:
            self.last_eval, both = evaluate_run(self.model, self.ema.module if self.ema else None, self.val_loader,
                                                self.amp_dtype, r.reg.eval_ema, r.run.progress and self.dist.is_main)
            self.log.log("val", self.step, epoch=epoch, **self.last_eval, **both)
            self.fire("eval_end", **self.last_eval)
            bar.evaluated(epoch, self.last_eval, both, seconds, steps, r.reg.eval_ema)
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

    def load_state_dict(self, ckpt: dict) -> None:
        """Restore everything ``state_dict`` saved (a resume, a rollback); what changed in the recipe since is
        ``train.run.resume_changes``' business."""
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
        """Write ``ckpt-step<N>.pt`` (``CheckpointManager``: last.pt, best.pt, keep-last) and fire ``checkpoint``."""
        top1 = self.last_eval.get("top1", -1.0)
        new_best = top1 > self.best_top1 and self.step % self.steps_per_epoch == 0
        if new_best:
            self.best_top1 = top1
        path = self.checkpoints.save(self.state_dict, self.step, new_best)
        distributed.barrier(self.dist)  # rank 0 writes; the others wait for the file
        self.fire("checkpoint", path=path)
        return path
