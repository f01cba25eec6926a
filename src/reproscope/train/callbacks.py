"""The trainer's extension points: :class:`Callback`, whose no-op methods are the events.

Subclass it and override what you need; the trainer calls ``on_<event>(trainer, **info)`` on every
callback passed as ``Trainer(callbacks=[...])`` (or ``add_callback`` before ``fit``), in order.
A callback reads the trainer; the supported ways to change what the trainer does are its methods
``request_stop``, ``request_eager_step`` and ``set_lr`` and its constructor arguments, never
assignment into its attributes. (Any object with some of these methods works too; the base class
documents the contract.)

What every callback may read from the trainer that calls it is :class:`TrainerView`; the Trainer
implements it, and so does ``reproscope.watch``'s view of your own loop, so an instrument written
against it runs in both. The Trainer offers more (``optimizer``, ``criterion``, ``device``, ...) to
callbacks that only run there (the tripwire's replay).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch.nn as nn


@runtime_checkable
class TrainerView(Protocol):
    """What a callback may read from any trainer (the Trainer, or ``reproscope.watch``'s loop).

    Attributes:
        orig_model: the uncompiled, unwrapped module: register hooks here.
        run_dir: the run folder (files an instrument writes go here).
        dist: ``runtime.distributed`` info (``enabled``, ``is_main``, ``rank``, ``world_size``).
        log: the run's ``MetricsLog`` (``.log(kind, step, **values)``; ``.tb`` the TensorBoard writer or None,
            ``.detail`` the per-layer detail's, see ``rundir.DetailWriter``).
        step: optimizer steps taken so far.
        log_every: how often (in optimizer steps) the ``log`` event fires.
        val_loader: the validation ``BatchLoader``, or None when the loop has none.
    """

    orig_model: nn.Module
    run_dir: Path
    dist: Any
    log: Any
    step: int
    log_every: int
    val_loader: Any

    def request_eager_step(self) -> None:
        """Run the step now starting on the uncompiled module (a loop that has none ignores it)."""


class Callback:
    """Every event the trainer fires, as a documented no-op."""

    def on_train_start(self, trainer) -> None:
        """Once per ``fit()``, before ``torch.compile`` wraps the model: register hooks on
        ``trainer.orig_model`` here (never on the compiled module)."""

    def on_epoch_start(self, trainer, epoch: int) -> None:
        """Before the first step of ``epoch`` (0-based)."""

    def on_step_start(self, trainer, step: int) -> None:
        """Before optimizer step ``step`` (1-based) runs its forward; call ``trainer.request_eager_step()``
        here to have this step run the uncompiled module."""

    def on_after_backward(self, trainer) -> None:
        """Gradients are summed over the micro-batches and unscaled, not yet clipped; the optimizer has
        not stepped."""

    def on_nonfinite(self, trainer, decision, batches, rng_state: dict, findings: dict) -> None:
        """The loss or grad norm of ``decision.step`` is non-finite; parameters are still those the step
        started from and ``batches`` are its micro-batches, ``rng_state`` the RNG state at its start.
        Add what you find to ``findings`` (e.g. ``module``, ``phase``, ``reproducer``): the trainer logs
        it with the event and names it in the stop message. ``decision.action`` is what happens next."""

    def on_spike(self, trainer, decision) -> None:
        """A loss spike (``decision.spike`` holds loss, median, MAD, score); ``decision.action`` says
        whether the step is taken or skipped."""

    def on_diverging(self, trainer, flagged: dict, findings: dict) -> None:
        """A finite run was flagged as diverging (``guard.DivergenceWatch``; ``flagged`` holds step, reason,
        loss, grad_norm and their starts), once per run, after the step. Add what explains it to
        ``findings`` as ``{name: {"code": ..., "sentence": ..., <numbers>}}`` (e.g. what the paper-figure
        probes see now): the trainer logs it with the event and repeats each sentence at the end."""

    def on_step_end(self, trainer, loss, grad_norm, lr) -> None:
        """Every step that was taken or skipped: on-device scalar tensors (reading them syncs)."""

    def on_log(self, trainer, **values: float) -> None:
        """Every ``run.log_every`` steps: python floats (loss, grad_norm, lr, img_per_s, ...)."""

    def on_eval_end(self, trainer, **metrics: float) -> None:
        """After an evaluation: top1, top5 (percent) and loss."""

    def on_epoch_end(self, trainer, epoch: int) -> None:
        """After the epoch's evaluation, before its checkpoint."""

    def on_checkpoint(self, trainer, path) -> None:
        """A checkpoint was written to ``path`` (every rank, after rank 0 wrote it)."""

    def on_train_end(self, trainer) -> None:
        """``fit()`` is done (finished or stopped): remove hooks, close files. May be called again by a
        later ``fit()``; make it idempotent."""


EVENTS = tuple(name[3:] for name in vars(Callback) if name.startswith("on_"))
