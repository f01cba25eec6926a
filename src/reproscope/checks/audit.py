"""recipe-audit: deviations from the parent paper recipe, plus settings that usually mean a mistake."""

from __future__ import annotations

import torch.nn as nn

from ..config import ConfigError
from ..recipes import deviation_log, get_recipe
from ..train.optim import param_groups
from .core import Causes, CheckResult


def effective_batch(recipe) -> int:
    """Images per optimizer step: ``data.batch_size`` (the global batch, all processes) x ``optim.accum_steps``."""
    return recipe.data.batch_size * recipe.optim.accum_steps


def lr_per_image(recipe, bounds: tuple[float, float] = (0.25, 4.0)) -> str:
    """A sentence when lr / effective batch is outside ``bounds`` x the reference's, else "".

    The reference is the parent paper recipe, or, for a recipe without one, the registered recipe of
    the same name (so ``--set data.batch_size=...`` on a paper recipe is held against the paper's own
    values). The linear scaling rule (Goyal et al. 2017, Sec. 2.1: lr proportional to the batch) gives
    the lr that would keep the ratio; the bounds (4x either way) are ours.
    """
    try:
        ref = get_recipe(recipe.parent or recipe.name)
    except ConfigError:
        return ""
    eff, eff_ref = effective_batch(recipe), effective_batch(ref)
    ratio = (recipe.optim.lr / eff) / (ref.optim.lr / eff_ref)
    if bounds[0] <= ratio <= bounds[1]:
        return ""
    scaled = ref.optim.lr * eff / eff_ref
    who = f"the parent paper recipe {ref.name}'s" if recipe.parent else f"the registered {ref.name}'s"
    fix = f"--set optim.lr={scaled:.3g}"
    if ratio > 1 and eff < eff_ref and eff_ref % recipe.data.batch_size == 0:
        fix += f", or keep the lr with --set optim.accum_steps={eff_ref // recipe.data.batch_size}"
    return (f"lr per image is {ratio:.3g}x {who}: lr {recipe.optim.lr:g} at effective batch {eff} "
            f"(batch {recipe.data.batch_size} x accum {recipe.optim.accum_steps}) vs lr {ref.optim.lr:g} at {eff_ref}; "
            f"linear scaling gives {fix}")


def recipe_audit(recipe, model: nn.Module | None = None, train_len: int | None = None) -> CheckResult:
    """Deviations from the parent paper recipe, plus smells."""
    smells = Causes()
    dev = deviation_log(recipe)
    if model is not None:
        groups = param_groups(model, recipe.optim.weight_decay)
        one_d_decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"] if p.ndim <= 1]
        if one_d_decayed:
            smells.add("decay-on-1d-params", f"{len(one_d_decayed)} 1-D parameters (norm/DyT/bias) get weight decay")
    if recipe.sched.warmup_epochs >= recipe.sched.epochs:
        smells.add("warmup-not-shorter", f"warmup ({recipe.sched.warmup_epochs} epochs) is not shorter than training "
                      f"({recipe.sched.epochs} epochs)")
    if train_len is None and recipe.data.dataset == "shapes10":
        train_len = recipe.data.train_size
    if recipe.reg.ema_decay > 0 and train_len:
        steps = recipe.sched.epochs * (train_len // (recipe.data.batch_size * recipe.optim.accum_steps))
        if 1 / (1 - recipe.reg.ema_decay) > steps / 2:
            smells.add("ema-too-slow", f"EMA decay {recipe.reg.ema_decay} averages over ~{1 / (1 - recipe.reg.ema_decay):.0f} "
                          f"steps, more than half of the {steps} training steps")
    lr_note = lr_per_image(recipe)
    if lr_note:
        smells.add("lr-batch-ratio", lr_note)
    if recipe.reg.label_smoothing >= 0.5:
        smells.add("label-smoothing-high", f"label smoothing {recipe.reg.label_smoothing} leaves almost no signal in the targets")
    status = "fail" if smells else "pass"
    return CheckResult("recipe-audit", status, f"{len(dev)} deviations from the parent, {len(smells.codes)} smells",
                       "no smells", "Differences from the paper recipe, and settings that usually indicate a mistake.",
                       smells.sentences, {"deviations": dev}, smells.codes)
