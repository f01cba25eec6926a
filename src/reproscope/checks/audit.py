"""recipe-audit: deviations from the parent paper recipe, plus settings that usually mean a mistake."""

from __future__ import annotations

import torch.nn as nn

from ..recipes import deviation_log, get_recipe
from ..train.optim import param_groups
from .core import Causes, CheckResult


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
    if recipe.parent:
        parent = get_recipe(recipe.parent)
        r_ratio = (recipe.optim.lr / recipe.data.batch_size) / (parent.optim.lr / parent.data.batch_size)
        if not 0.25 <= r_ratio <= 4:
            smells.add("lr-batch-ratio", f"lr/batch is {r_ratio:.2g}x the paper's (linear scaling would keep it at 1x)")
    if recipe.reg.label_smoothing >= 0.5:
        smells.add("label-smoothing-high", f"label smoothing {recipe.reg.label_smoothing} leaves almost no signal in the targets")
    status = "fail" if smells else "pass"
    return CheckResult("recipe-audit", status, f"{len(dev)} deviations from the parent, {len(smells.codes)} smells",
                       "no smells", "Differences from the paper recipe, and settings that usually indicate a mistake.",
                       smells.sentences, {"deviations": dev}, smells.codes)
