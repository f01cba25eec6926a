"""``reproscope train`` as a Python call: the trainer, the standard instruments and the run's figures.

This module sits at the top with the CLI: it is the one place that puts the layers together
(``train.run`` opens the run and builds the Trainer, ``instrument.standard_callbacks`` attaches the
probes and the NaN/Inf tripwire, ``report.figures`` draws the paper-figure probes at the end).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .config import SECTIONS, Recipe
from .instrument import standard_callbacks
from .report.figures import plot_run
from .runfiles import DEVIATIONS, SUMMARY
from .train.run import open_run, run_summary, start_trainer, stop_on_signals
from .train.rundir import TB_DETAIL, TB_DIR, DetailWriter, tb_tag, write_json
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
        ConfigError: a recipe this machine or dataset cannot run, or a model whose floating dtypes
            clash so that its forward raises (``model.dtypes.MixedDtypeError``, code ``mixed-dtype``).
            A new run folder of a start that failed is removed.
    """
    start = open_run(recipe, run_dir=run_dir, resume=resume, overwrite=overwrite, overrides=overrides,
                     trust_pickle=trust_pickle)
    recipe = start.recipe
    try:
        trainer = start_trainer(start, callbacks=[*standard_callbacks(recipe), *callbacks], download=download,
                                trust_pickle=trust_pickle, weights=weights, model_spec=model_spec)
    except BaseException:
        if start.created and start.run_dir.is_dir():  # this call made it: a start that failed leaves no run folder
            shutil.rmtree(start.run_dir, ignore_errors=True)
        raise
    t0, steps_before = time.perf_counter(), trainer.step
    with stop_on_signals(trainer):
        metrics = trainer.fit()
    if not trainer.dist.is_main:
        return trainer, metrics
    summary = run_summary(trainer, time.perf_counter() - t0, steps_before)
    write_json(start.run_dir / SUMMARY, summary)
    if trainer.log.tb is not None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import; only here
        if recipe.instrument.enabled and recipe.instrument.probes:
            with DetailWriter(start.run_dir / TB_DIR / TB_DETAIL) as detail:
                plot_run(start.run_dir, detail, trainer.step)
        with SummaryWriter(log_dir=str(start.run_dir / TB_DIR)) as tb:
            tensorboard_summary(tb, recipe, start.run_dir, summary, trainer.step)
    return trainer, metrics


# the HPARAMS tab's columns: the knobs runs are usually compared on, then the run's deviation keys (the
# whole config, ~70 keys, pushed the one that differed off-screen; it stays in the TEXT tab)
HPARAM_KEYS = ("model.name", "model.norm", "run.seed", "optim.lr", "optim.weight_decay", "data.dataset",
               "data.batch_size", "data.img_size", "sched.epochs", "precision.amp")


def tensorboard_summary(tb, recipe: Recipe, run_dir: Path, summary: dict, step: int) -> None:
    """The resolved config and the deviation log as TensorBoard text (TEXT tab), and for the HPARAMS tab
    (runs side by side) the recipe name, ``HPARAM_KEYS`` and the keys of the deviation log, with the
    final and best top-1 (``~hparam/final_top1``, ``~hparam/best_top1``: their tag group sorts after
    ``train/`` and ``val/``, see ``train.rundir.tb_tag``)."""
    import json
    tb.add_text("config", "```\n" + json.dumps(recipe.to_dict(), indent=1) + "\n```", step)
    devs_file = run_dir / DEVIATIONS
    devs = json.loads(devs_file.read_text()).get("deviations", []) if devs_file.is_file() else []
    rows = [f"| {d.get('key')} | {d.get('parent')} | {d.get('value')} | {d.get('reason', '')} |" for d in devs]
    tb.add_text("deviations", "| field | paper | ours | reason |\n|---|---|---|---|\n" + "\n".join(rows)
                if rows else "no deviations from the parent recipe", step)
    flat = {f"{sec}.{k}": v for sec, fields in recipe.to_dict().items() if sec in SECTIONS for k, v in fields.items()}
    keys = dict.fromkeys([*HPARAM_KEYS, *sorted(d["key"] for d in devs if d.get("key") in flat)])
    hparams = {"recipe": recipe.name, **{k: (flat[k] if isinstance(flat[k], (int, float, str, bool)) else str(flat[k]))
                                         for k in keys if k in flat}}
    metrics = {tb_tag("hparam", k): summary[k] for k in ("final_top1", "best_top1") if summary.get(k) is not None}
    if metrics:
        tb.add_hparams(hparams, metrics, run_name=".", global_step=step)
