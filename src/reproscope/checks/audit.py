"""recipe-audit: deviations from the parent paper recipe, plus settings that usually mean a mistake.

The smells are :func:`reproscope.instrument.loop_audit.smells`, the same code (and codes) that audit
a user's own loop under ``reproscope.watch(..., paper=...)``; here they run on the recipe's facts.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from ..config import ConfigError
from ..instrument.loop_audit import recipe_facts, smells
from ..recipes import deviation_log, get_recipe
from ..train.optim import decay_rules, param_groups
from .core import Causes, CheckResult


def effective_batch(recipe) -> int:
    """Images per optimizer step: ``data.batch_size`` (the global batch, all processes) x ``optim.accum_steps``."""
    return recipe.data.batch_size * recipe.optim.accum_steps


def _facts(recipe, model: nn.Module | None, train_len: int | None) -> dict:
    """The recipe's facts for the smells: the parameters the Trainer would decay against their kind
    (with ``model``), and the run's steps only when the training set's size is known."""
    facts = recipe_facts(recipe)
    if train_len is None and recipe.data.dataset == "shapes10":
        train_len = recipe.data.train_size
    if train_len:
        facts["sched.total_steps"] = recipe.sched.epochs * (train_len // effective_batch(recipe))
    else:
        facts.pop("sched.total_steps", None)
    if model is not None:
        rules = decay_rules(model)
        names = {p: n for n, p in model.named_parameters()}
        facts["optim.decayed_no_decay"] = sorted(
            names[p] for g in param_groups(model, recipe.optim.weight_decay) if g["weight_decay"] > 0
            for p in g["params"] if rules.get(names[p], "decay") != "decay")
    return facts


def recipe_audit(recipe, model: nn.Module | None = None, train_len: int | None = None) -> CheckResult:
    """Deviations from the parent paper recipe, plus smells (codes: ``decay-on-1d-params``,
    ``warmup-not-shorter``, ``ema-too-slow``, ``lr-batch-ratio``, ``label-smoothing-high``)."""
    causes = Causes()
    dev = deviation_log(recipe)
    try:
        ref = get_recipe(recipe.parent or recipe.name)
    except ConfigError:
        ref = None
    who = (f"the parent paper recipe {ref.name}'s" if recipe.parent else f"the registered {ref.name}'s") if ref else ""
    for f in smells(_facts(recipe, model, train_len), ref, ref_name=who):
        if f.code == "lr-batch-ratio":
            f = dataclasses.replace(f, reason=f.reason + _accum_fix(recipe, ref))
        causes.add(f.code, f.reason)
    status = "fail" if causes else "pass"
    return CheckResult("recipe-audit", status, f"{len(dev)} deviations from the parent, {len(causes.codes)} smells",
                       "no smells", "Differences from the paper recipe, and settings that usually indicate a mistake.",
                       causes.sentences, {"deviations": dev}, causes.codes)


def _accum_fix(recipe, ref) -> str:
    """', or keep the lr with --set optim.accum_steps=N' when accumulation restores the reference's batch."""
    eff, eff_ref = effective_batch(recipe), effective_batch(ref)
    if recipe.optim.lr / eff > ref.optim.lr / eff_ref and eff < eff_ref and eff_ref % recipe.data.batch_size == 0:
        return f", or keep the lr with --set optim.accum_steps={eff_ref // recipe.data.batch_size}"
    return ""
