"""Starting and resuming a training run from a recipe (what ``reproscope train`` does)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Recipe, apply_overrides, recipe_from_dict
from .checkpoint import CheckpointError, load_checkpoint
from .rundir import new_run_dir, prepare_run_dir
from .trainer import Trainer


def find_resume_checkpoint(recipe: Recipe, run_dir: Path | None) -> Path | None:
    """``--resume auto``: the newest loadable checkpoint in ``run_dir``, or else in the newest
    run directory of this recipe under ``run.out_dir``. None when there is nothing to resume."""
    if run_dir is not None:
        dirs = [run_dir]
    else:
        parent = Path(recipe.run.out_dir)
        dirs = sorted(parent.glob(f"{recipe.name}-*"), key=lambda p: p.stat().st_mtime, reverse=True) \
            if parent.is_dir() else []
    for d in dirs:
        ckpts = sorted(d.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        ckpts = [c for c in ckpts if c.name != "best.pt"] + [c for c in ckpts if c.name == "best.pt"]
        for c in ckpts:
            try:
                load_checkpoint(c)
            except CheckpointError as e:
                print(f"resume auto: skipping {c}: {e}")
                continue
            return c
    return None


def train(recipe: Recipe, *, run_dir: str | Path | None = None, resume: str | None = None,
          overwrite: bool = False, overrides: list[str] | None = None, callbacks=(),
          download: bool = False) -> tuple[Trainer, dict]:
    """Train ``recipe`` (or resume it). Returns the trainer and the last eval metrics."""
    ckpt_path: Path | None = None
    rd = Path(run_dir) if run_dir else None
    if resume == "auto":
        ckpt_path = find_resume_checkpoint(recipe, rd)
        if ckpt_path is None:
            print("resume auto: no checkpoint found; starting a new run")
    elif resume:
        p = Path(resume)
        ckpt_path = p / "last.pt" if p.is_dir() else p
    ckpt = None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        rd = ckpt_path.parent
        saved = rd / "config.json"
        recipe = recipe_from_dict(json.loads(saved.read_text()) if saved.is_file() else ckpt["recipe"])
        if overrides:
            recipe = apply_overrides(recipe, overrides)
            print(f"resume: applying overrides on top of the saved config: {' '.join(overrides)}")
        print(f"resuming {ckpt_path} at step {ckpt['step']}")
    if rd is None:
        rd = new_run_dir(recipe.run.out_dir, recipe.name)
    prepare_run_dir(rd, resume=resume is not None, overwrite=overwrite)
    trainer = Trainer(recipe, rd, callbacks=callbacks, download=download)
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
    return trainer, trainer.fit()
