"""``reproscope train`` as a Python call: the trainer, the standard instruments and the run's figures.

This module sits at the top with the CLI: it is the one place that puts the layers together
(``train.run`` opens the run and builds the Trainer, ``instrument.standard_callbacks`` attaches the
probes and the NaN/Inf tripwire, ``diagnostics.figures`` draws the paper-figure probes at the end).
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import Recipe
from .diagnostics.figures import plot_run
from .instrument import standard_callbacks
from .train.run import open_run, run_summary, start_trainer, stop_on_signals
from .train.rundir import write_json
from .train.trainer import Trainer


def train(recipe: Recipe, *, run_dir: str | Path | None = None, resume: str | None = None,
          overwrite: bool = False, overrides: list[str] | None = None, callbacks=(),
          download: bool = False, trust_pickle: bool = False,
          weights: str | Path | None = None, model_spec: str | None = None) -> tuple[Trainer, dict]:
    """Train ``recipe`` (or resume it) with the standard instruments; returns the trainer and the last
    eval metrics. ``callbacks`` run after the standard ones. The other arguments: see
    ``train.run.open_run`` (run_dir, resume, overwrite, overrides, trust_pickle) and
    ``train.run.start_trainer`` (download, weights, model_spec).

    Raises:
        CheckpointError: an unreadable, unsafe or mismatching checkpoint or weights file.
        RunDirError: an existing, non-empty ``run_dir`` without ``overwrite`` or ``resume``.
        ConfigError: a recipe this machine or dataset cannot run.
    """
    start = open_run(recipe, run_dir=run_dir, resume=resume, overwrite=overwrite, overrides=overrides,
                     trust_pickle=trust_pickle)
    recipe = start.recipe
    trainer = start_trainer(start, callbacks=[*standard_callbacks(recipe), *callbacks], download=download,
                            trust_pickle=trust_pickle, weights=weights, model_spec=model_spec)
    t0, steps_before = time.perf_counter(), trainer.step
    with stop_on_signals(trainer):
        metrics = trainer.fit()
    if trainer.dist.is_main:
        write_json(start.run_dir / "summary.json", run_summary(trainer, time.perf_counter() - t0, steps_before))
    if recipe.instrument.enabled and recipe.instrument.probes and trainer.dist.is_main:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import; only here
        with SummaryWriter(log_dir=str(start.run_dir / "tb")) as tb:
            plot_run(start.run_dir, tb, trainer.step)
    return trainer, metrics
