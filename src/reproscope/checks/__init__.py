"""Checks that catch the bugs that wreck reproductions, before the GPU-day is spent.

Each check works on any ``nn.Module`` plus a batch of data and returns a :class:`CheckResult`:
pass / warn / fail, what was measured against what was expected, a plain-words explanation and
the most likely causes. They are plain functions, usable from pytest::

    from reproscope.checks import CheckData, run_checks
    results = run_checks(lambda: MyNet(num_classes=10), CheckData(x, y, num_classes=10))
    assert all(r.status != "fail" for r in results), [r.summary() for r in results]

Implemented here: loss-at-init, init-scale, grad-flow, batch-independence, overfit-batch,
recipe-audit. (Still to come: input-independent baseline, data, determinism, lr-range.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class CheckResult:
    name: str
    status: str  # "pass", "warn" or "fail"
    measured: str
    expected: str
    explanation: str = ""
    causes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def summary(self) -> str:
        return f"{self.status.upper():4}  {self.name:<19} {self.measured}  (expected {self.expected})"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckData:
    x: torch.Tensor  # a batch of model inputs, as the model sees them (normalised)
    y: torch.Tensor  # integer labels
    num_classes: int
    label_smoothing: float = 0.0
    lr: float = 1e-3


CHECKS: dict[str, Callable] = {}


def check(name: str):
    def deco(fn):
        CHECKS[name] = fn
        return fn
    return deco


def _no_dropout(model: nn.Module) -> nn.Module:
    """Dropout and drop path off (train mode otherwise kept)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if type(m).__name__ == "DropPath":
            m.p = 0.0
    return model


# ----------------------------------------------------------------------------- checks

@check("loss-at-init")
def loss_at_init(make_model, data: CheckData) -> CheckResult:
    """A freshly initialised classifier should be unsure: loss ~ ln(K), small logits."""
    torch.manual_seed(0)
    model = _no_dropout(make_model())
    with torch.no_grad():
        logits = model(data.x).float()
        loss = F.cross_entropy(logits, data.y, label_smoothing=data.label_smoothing).item()
    k = data.num_classes
    expected = math.log(k)  # uniform predictions give ln K with or without label smoothing
    ratio = loss / expected
    scale = logits.std().item()
    status = "pass" if 0.8 <= ratio <= 1.25 else "warn" if 0.6 <= ratio <= 1.6 else "fail"
    return CheckResult(
        "loss-at-init", status, f"loss {loss:.3f}, logit std {scale:.3g}", f"ln({k}) = {expected:.3f} (x0.8-1.25)",
        "At initialisation every class should be about equally likely, so the cross-entropy is close to "
        "ln(K). A much larger loss means confident wrong predictions: the output layer starts too large.",
        [] if status == "pass" else ["weights initialised with too large a std (logits far from 0)",
                                     "a missing or wrong final normalisation", "labels outside [0, K)"],
        {"loss": loss, "ln_k": expected, "logit_std": scale})


@check("init-scale")
def init_scale(make_model, data: CheckData, max_input_std: float = 10.0) -> CheckResult:
    """Output std of every residual block through depth, relative to the stream entering block 0.

    Limit 3 * sqrt(depth): in a pre-norm residual network with unit-scale branches the stream's std
    grows about like sqrt(depth); a factor 3 above that (or below its inverse) is an init bug. The
    stream entering the first block must itself be moderate (std <= 10 for normalised inputs).
    """
    torch.manual_seed(0)
    model = _no_dropout(make_model())
    blocks = _block_modules(model)
    stds: dict[str, float] = {}
    if len(blocks) < 2:
        return CheckResult("init-scale", "warn", f"{len(blocks)} blocks found", ">= 2 blocks",
                           "No repeated blocks were found to compare (looked for 'blocks.N' / 'stages.N' modules).")
    hooks = [blocks[0][1].register_forward_pre_hook(
        lambda m, args: stds.__setitem__("<input>", args[0].float().std().item()))]
    hooks += [m.register_forward_hook(lambda m, i, o, n=n: stds.__setitem__(n, o.float().std().item()))
              for n, m in blocks]
    with torch.no_grad():
        model(data.x)
    for h in hooks:
        h.remove()
    vals = list(stds.values())
    ref = max(vals[0], 1e-12)
    ratios = [v / ref for v in vals[1:]]
    lo, hi = min(ratios), max(ratios)
    factor = 3 * math.sqrt(len(blocks))
    bad = (hi > factor or lo < 1 / factor or vals[0] > max_input_std
           or not all(math.isfinite(v) for v in vals))
    return CheckResult(
        "init-scale", "fail" if bad else "pass",
        f"block output std / input std: {lo:.3g} .. {hi:.3g} (input std {vals[0]:.3g})",
        f"within x{factor:.3g} (3 sqrt(depth)) of the stream entering block 0, whose std <= {max_input_std:g}",
        "The activation scale should stay within an order of magnitude through depth at init. Growth "
        "means exploding activations (init too large, a missing norm); decay means the signal dies.",
        [] if not bad else ["weight init std too large or too small", "a dropped normalisation layer",
                            "a residual connection dropped (signal decays) or doubled"],
        {"block_std": stds})


def _block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for n, m in model.named_modules():
        parts = n.split(".")
        if len(parts) >= 2 and parts[-1].isdigit() and parts[-2] in ("blocks",):
            out.append((n, m))
    if not out:  # conv nets: stages.N.blocks.M or stages.N.M
        out = [(n, m) for n, m in model.named_modules() if n.count(".") == 2 and n.startswith("stages.")
               and n.split(".")[-1].isdigit()]
    return out


@check("grad-flow")
def grad_flow(make_model, data: CheckData) -> CheckResult:
    """Every trainable parameter gets a finite, non-zero gradient."""
    torch.manual_seed(0)
    model = _no_dropout(make_model())
    model.train()
    F.cross_entropy(model(data.x), data.y).backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    dead = [n for n, p in model.named_parameters() if p.grad is not None and torch.isfinite(p.grad).all()
            and p.grad.abs().max() == 0]
    n_trainable = sum(p.requires_grad for p in model.parameters())
    status = "fail" if (unused or nonfinite or dead) else "warn" if frozen else "pass"
    measured = (f"{n_trainable} trainable; {len(unused)} unused, {len(dead)} zero-grad, {len(nonfinite)} non-finite,"
                f" {len(frozen)} frozen")
    causes = []
    if unused:
        causes.append(f"parameters not used in forward (e.g. {unused[0]}): a dead branch or a layer built but not called")
    if dead:
        causes.append(f"parameters whose gradient is exactly zero (e.g. {dead[0]}): a detach(), a dead ReLU "
                      f"region, or a branch multiplied by zero")
    if nonfinite:
        causes.append(f"non-finite gradients (e.g. {nonfinite[0]})")
    if frozen:
        causes.append(f"frozen parameters (e.g. {frozen[0]}): intended?")
    return CheckResult("grad-flow", status, measured, "every trainable parameter: finite, non-zero gradient",
                       "Backpropagation from the loss should reach every trainable parameter.", causes,
                       {"frozen": frozen, "unused": unused, "dead": dead, "nonfinite": nonfinite})


@check("batch-independence")
def batch_independence(make_model, data: CheckData) -> CheckResult:
    """In eval mode, sample i's output must not depend on input j != i.

    BatchNorm-style layers mix samples in train mode by design, so the check runs in eval mode,
    where they use running statistics; a remaining dependence is a reshape/transposition bug.
    """
    torch.manual_seed(0)
    model = make_model().eval()
    x = data.x[: min(4, len(data.x))].clone().requires_grad_(True)
    out = model(x)
    out[0].float().sum().backward()
    g = x.grad.flatten(1).abs().sum(1)  # [B]
    leak = g[1:].max().item() if len(g) > 1 else 0.0
    own = g[0].item()
    bad = leak > 1e-6 * max(own, 1e-12)
    norms = [type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return CheckResult(
        "batch-independence", "fail" if bad else "pass",
        f"|d out_0 / d x_j| for j != 0: {leak:.3g} (own input: {own:.3g})", "0 for every other sample",
        "A sample's prediction must depend only on that sample. Gradient flowing from sample 0's output "
        "into another sample's input means the model mixes samples, usually through a reshape or "
        "transpose over the batch dimension." + (f" Ran in eval mode because of {norms[0]}." if norms else ""),
        ["a reshape/view/transpose that moves data across the batch dimension",
         "a norm or pooling over dim 0"] if bad else [],
        {"leak": leak, "own": own})


@check("overfit-batch")
def overfit_batch(make_model, data: CheckData, steps: int = 150, batch: int = 16) -> CheckResult:
    """One fixed small batch, no augmentation/dropout/drop path/label smoothing: loss -> ~0, 100% accuracy."""
    from ..instrument.hooks import parameter_norms
    torch.manual_seed(0)
    model = _no_dropout(make_model()).train()
    x, y = data.x[:batch], data.y[:batch]
    opt = torch.optim.AdamW(model.parameters(), lr=data.lr, weight_decay=0.0)
    losses = []
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    zero_grad_layers: list[str] = []
    for i in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if i == 0:
            _, g = parameter_norms(named)
            zero_grad_layers = [n for (n, _), v in zip(named, g.tolist()) if v == 0 or v != v]
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    final = losses[-1]
    ok = math.isfinite(final) and final < 0.1 and acc == 1.0
    status = "pass" if ok else "warn" if math.isfinite(final) and final <= 0.5 and acc >= 0.9 else "fail"
    causes = []
    if not math.isfinite(final):
        causes.append(f"the loss became non-finite at step {len(losses)}: lr too high ({data.lr:g}) or an unstable op")
    elif losses[-1] > 0.9 * losses[0]:
        causes.append("the loss stayed flat: lr too low, gradients not reaching the weights, or the "
                      "output squashed before the loss (e.g. softmax before cross-entropy)")
    elif final >= 0.1 and acc == 1.0:
        causes.append(f"every example is classified right but the loss is stuck at {final:.2f}: the outputs are "
                      "bounded before the loss (softmax or sigmoid applied before cross-entropy) or the "
                      "targets are smoothed")
    elif final >= 0.1:
        causes.append("the loss fell but not to ~0: too few steps for this lr, too much regularisation, "
                      "or labels that contradict each other (shuffled labels)")
    if zero_grad_layers:
        causes.append(f"{len(zero_grad_layers)} parameters got no gradient at step 1 (e.g. {zero_grad_layers[0]})")
    if max(losses) > 3 * losses[0]:
        causes.append("the loss spiked above 3x its start: lr too high")
    return CheckResult(
        "overfit-batch", status, f"loss {losses[0]:.3f} -> {final:.4f}, accuracy {acc:.0%} after {len(losses)} steps",
        "loss < 0.1 and 100% accuracy on the batch",
        f"A model that can learn anything must memorise {len(y)} examples; failing to means the "
        "optimisation path itself is broken.", causes,
        {"losses": losses[:: max(1, len(losses) // 30)], "accuracy": acc, "zero_grad_params": zero_grad_layers})


def recipe_audit(recipe, model: nn.Module | None = None) -> CheckResult:
    """Deviations from the parent paper recipe, plus smells."""
    from ..recipes import deviation_log
    from ..train.optim import param_groups
    smells = []
    dev = deviation_log(recipe)
    if model is not None:
        groups = param_groups(model, recipe.optim.weight_decay)
        one_d_decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"] if p.ndim <= 1]
        if one_d_decayed:
            smells.append(f"{len(one_d_decayed)} 1-D parameters (norm/DyT/bias) get weight decay")
    if recipe.sched.warmup_epochs >= recipe.sched.epochs:
        smells.append(f"warmup ({recipe.sched.warmup_epochs} epochs) is not shorter than training "
                      f"({recipe.sched.epochs} epochs)")
    if recipe.reg.ema_decay > 0 and recipe.data.dataset == "shapes10":
        steps = recipe.sched.epochs * (recipe.data.train_size // (recipe.data.batch_size * recipe.optim.accum_steps))
        if 1 / (1 - recipe.reg.ema_decay) > steps / 2:
            smells.append(f"EMA decay {recipe.reg.ema_decay} averages over ~{1 / (1 - recipe.reg.ema_decay):.0f} "
                          f"steps, more than half of the {steps} training steps")
    if recipe.parent:
        from ..recipes import get_recipe
        parent = get_recipe(recipe.parent)
        r_ratio = (recipe.optim.lr / recipe.data.batch_size) / (parent.optim.lr / parent.data.batch_size)
        if not 0.25 <= r_ratio <= 4:
            smells.append(f"lr/batch is {r_ratio:.2g}x the paper's (linear scaling would keep it at 1x)")
    if recipe.reg.label_smoothing >= 0.5:
        smells.append(f"label smoothing {recipe.reg.label_smoothing} leaves almost no signal in the targets")
    status = "fail" if smells else "pass"
    return CheckResult("recipe-audit", status, f"{len(dev)} deviations from the parent, {len(smells)} smells",
                       "no smells", "Differences from the paper recipe, and settings that usually indicate a mistake.",
                       smells, {"deviations": dev})


def run_checks(make_model, data: CheckData, names: list[str] | None = None) -> list[CheckResult]:
    """Run the model/data checks (all by default) and return their results."""
    out = []
    for name in names or list(CHECKS):
        try:
            out.append(CHECKS[name](make_model, data))
        except Exception as e:  # a check that crashes is itself a finding
            out.append(CheckResult(name, "fail", f"raised {type(e).__name__}: {e}", "no error",
                                   "The check could not run on this model/data.", [str(e)]))
    return out
