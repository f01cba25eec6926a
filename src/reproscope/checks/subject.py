"""A recipe as a check subject: its model, its data pipeline and its own Trainer step.

``recipe_subject(recipe)`` returns ``(make_model, CheckData)`` whose runs are real
:class:`~reproscope.train.trainer.Trainer` objects (instrumentation, EMA and compile off; the
recipe's optimizer, parameter groups, precision, loss and augmentation on). A :class:`Mutation`
changes one piece (recipe values, the model, the datasets, or the Trainer's constructor
arguments) and is how the bug zoo (``checks/zoo.py``) plants its bugs in the same code paths that training uses.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..config import Recipe, apply_overrides
from ..console import quiet
from ..data.datasets import build_datasets, check_labels
from ..instrument.tripwire import Tripwire
from ..model.build import build_model
from ..train.trainer import Trainer
from .core import CheckData, DataSource, StepOut

CHECK_OVERRIDES = {"instrument.enabled": False, "run.progress": False, "precision.compile": False,
                   "reg.ema_decay": 0.0, "reg.eval_ema": False}
CLEAN_OVERRIDES = {"reg.label_smoothing": 0.0, "aug.mix_prob": 0.0}


@dataclass(frozen=True)
class Mutation:
    """One change to a recipe's training setup (all optional)."""

    recipe: dict | None = None  # key -> value overrides
    model: Callable[[nn.Module], nn.Module] | None = None
    datasets: Callable | None = None  # (train, val) -> (train, val)
    trainer: dict | None = None  # extra Trainer constructor arguments (e.g. zero_grad=False, make_transform=...)


class TrainerRun:
    """A check's training run on the project's Trainer (see ``core.Run``)."""

    _ids = itertools.count()

    def __init__(self, recipe: Recipe, datasets, model: nn.Module, workdir: Path, mutation: Mutation | None):
        run_dir = workdir / f"run{next(self._ids)}"
        self.tripwire = Tripwire()
        extra = (mutation.trainer if mutation is not None else None) or {}
        with quiet():
            self.trainer = Trainer(recipe, run_dir, tensorboard=False, model=model, datasets=datasets,
                                   callbacks=[self.tripwire], **extra)
        self.model = self.trainer.orig_model

    def step(self, x=None, y=None, lr=None) -> StepOut:
        t = self.trainer
        micro = t.step_batches(t.step) if x is None else [(x, y)]
        t.set_lr(lr)
        self.tripwire.report = None
        with quiet():  # the tripwire's report goes into StepOut instead
            out = t.train_step(micro)
        return StepOut(out["loss"].item(), out["grad_norm"].item(), self.tripwire.report)

    def state_dict(self) -> dict:
        return copy.deepcopy(self.trainer.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)


def strided_indices(n: int, k: int) -> torch.Tensor:
    """k indices spread over [0, n) (folder datasets are sorted by class)."""
    return torch.linspace(0, n - 1, min(n, k)).round().long().unique()


def recipe_subject(recipe: Recipe, *, mutation: Mutation | None = None, make_model=None, n: int = 64,
                   n_val: int = 512, out_dir: Path | None = None, workdir: Path | None = None,
                   progress: bool = False):
    """(make_model, CheckData, recipe as given) for ``recipe`` (mutation applied); ``make_model``
    defaults to the recipe's model."""
    if mutation is not None and mutation.recipe:
        recipe = apply_overrides(recipe, mutation.recipe)
    as_given = recipe
    recipe = apply_overrides(recipe, CHECK_OVERRIDES)
    clean = apply_overrides(recipe, CLEAN_OVERRIDES)
    train, val = build_datasets(recipe.data, progress=progress)
    if mutation is not None and mutation.datasets is not None:
        train, val = mutation.datasets(train, val)
    k = recipe.data.num_classes or train.num_classes
    check_labels(train, val, k)  # once, before any check (each would crash on it)
    tmp = None
    if workdir is None:  # removed when the CheckData is garbage-collected, or at exit
        tmp = tempfile.TemporaryDirectory(prefix="reproscope-checks-")
        workdir = Path(tmp.name)

    base_factory = make_model or (lambda: build_model(recipe.model, k, recipe.data.img_size))

    def factory():
        m = base_factory()
        return mutation.model(m) if mutation is not None and mutation.model is not None else m

    def runner(model, is_clean: bool = False):
        return TrainerRun(clean if is_clean else recipe, (train, val), model, workdir, mutation)

    probe = runner(factory())  # its loaders are the recipe's pipeline (mutations included)
    t = probe.trainer
    tr_idx, val_idx = strided_indices(len(train), n), strided_indices(len(val), n_val)
    x, y = t.val_loader.transform(*t.train_loader.raw_batch(tr_idx))  # training images, evaluation transform
    val_x, val_y = t.val_loader.make_batch(val_idx)
    source = DataSource(train.images, train.labels, val.images, val.labels,
                        train_batch=lambda i: t.step_batches(i)[0],
                        val_batch=lambda: t.val_loader.make_batch(val_idx),
                        class_names=list(train.classes))
    data = CheckData(x.cpu(), y.cpu(), k, recipe.reg.label_smoothing, lr=recipe.optim.lr,
                     val_x=val_x.cpu(), val_y=val_y.cpu(), source=source, runner=runner, out_dir=out_dir,
                     workdir=tmp)  # the data owns the temporary run folders: they live as long as it does
    return factory, data, as_given
