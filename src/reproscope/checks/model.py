"""Checks on a freshly initialised model: loss at init, scale through depth, gradient flow, batch independence.

Thresholds, and why (measured on every registered model at 32 px by ``tests/test_checks.py``):
- loss-at-init: loss / ln K within 0.8-1.25 passes (healthy models: 0.97-1.27; MambaOut-T's
  logits start at std ~1), beyond 0.6-1.6 fails.
- init-scale: block output std within 3 sqrt(depth) of the stream entering the block's stage (a
  pre-norm residual stream with unit branches grows like sqrt(depth); conv nets are compared stage by
  stage, since their downsampling layers change the scale by design, e.g. ConvNeXt-DyT shrinks ~30x
  over its stages at init without a norm to undo it); weight gain std * sqrt(fan_in) <= 3
  (He init is sqrt(2); our models stay <= 1.7, a 10x init gives >= 8); the median block's output
  correlates with its input >= 0.3 (residual blocks at init pass their input through: healthy
  models 0.9-1.0, a block without its skip connection ~0); at most 50% of the units of a squashing
  layer (DyT, tanh) saturated at init (|pre-activation| > 2: DyT alpha0 = 0.5 gives 0%, 50 gives ~90%).
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.layers import dyt_like, saturated_fraction
from .core import Causes, CheckData, CheckResult, block_modules, check, fresh

MAX_GAIN = 3.0
MIN_SKIP_CORR = 0.3
MAX_SATURATED = 0.5


@check("loss-at-init")
def loss_at_init(make_model, data: CheckData) -> CheckResult:
    """A freshly initialised classifier should be unsure: loss ~ ln(K), small logits."""
    model = fresh(make_model)
    with torch.no_grad():
        logits = model(data.x).float()
        loss = F.cross_entropy(logits, data.y, label_smoothing=data.label_smoothing).item()
    k = data.num_classes
    expected = math.log(k)  # uniform predictions give ln K with or without label smoothing
    ratio = loss / expected
    scale = logits.std().item()
    status = "pass" if 0.8 <= ratio <= 1.25 else "warn" if 0.6 <= ratio <= 1.6 else "fail"
    causes, codes = (([], []) if status == "pass" else
                     (["weights initialised with too large a std (logits far from 0)",
                       "a missing or wrong final normalisation"], ["init-too-large", "final-norm-wrong"]))
    head, head_gain, body_gain = _head_gain(model)
    if status == "fail" and ratio > 1.6 and head_gain > 3 and body_gain <= 3:
        # the classifier alone starts large (e.g. torchvision's EfficientNet scales its head init by
        # 1/sqrt(K), sized for K = 1000): a noisy start, not a broken network
        status, codes = "warn", ["large-head-init"]
        causes = [f"the classifier {head} starts with gain std*sqrt(fan_in) = {head_gain:.3g} while the rest of the "
                  f"network is at {body_gain:.3g} (median): its init is sized for another number of classes; "
                  f"training starts from confident guesses but is not broken (re-initialise the head with a small "
                  f"std, e.g. trunc_normal 0.02, for a clean start)"]
    return CheckResult(
        "loss-at-init", status, f"loss {loss:.3f}, logit std {scale:.3g}", f"ln({k}) = {expected:.3f} (x0.8-1.25)",
        "At initialisation every class should be about equally likely, so the cross-entropy is close to "
        "ln(K). A much larger loss means confident wrong predictions: the output layer starts too large.",
        causes, {"loss": loss, "ln_k": expected, "logit_std": scale, "head_gain": head_gain}, codes)


def _head_gain(model: nn.Module) -> tuple[str, float, float]:
    """(name, weight gain) of the last Linear layer (the classifier, by definition order) and the
    median gain of every other Linear/Conv weight (see ``weight_gains``)."""
    gains = weight_gains(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears or f"{linears[-1]}.weight" not in gains:
        return "", 0.0, 0.0
    head = f"{linears[-1]}.weight"
    rest = sorted(v for n, v in gains.items() if n != head)
    return linears[-1], gains[head], (rest[len(rest) // 2] if rest else 0.0)


def _stage(name: str) -> str:
    """'blocks.3' -> 'blocks'; 'stages.1.blocks.2' and 'stages.1.2' -> 'stages.1'."""
    prefix = name.rsplit(".", 1)[0]
    return prefix[: -len(".blocks")] if prefix.endswith(".blocks") else prefix


def weight_gains(model: nn.Module, fan: str = "in") -> dict[str, float]:
    """std(W) * sqrt(fan) of every Linear / Conv weight, ``fan`` "in" (inputs per output unit) or
    "out" (outputs per input unit, torch's convention: out_channels x kernel size, groups ignored):
    1 for LeCun init, sqrt(2) for He init (He et al. 2015, Sec. 2.2: either fan preserves a variance,
    fan_in the forward one, fan_out the backward one)."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.weight.numel() > 1:
            w = m.weight.detach().float()
            n_fan = w[0].numel() if fan == "in" else w.shape[0] * w[0, 0].numel()
            out[f"{n}.weight"] = w.std().item() * math.sqrt(n_fan)
    return out


def _saturation_hooks(model: nn.Module, sat: dict[str, float]):
    """Fraction of units past |2| before the squash, for DyT (alpha * x) and tanh/hardtanh layers."""
    hooks = []
    for n, m in model.named_modules():
        if dyt_like(m) and getattr(m, "squash", "tanh") != "identity":
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, n=n: sat.__setitem__(n, saturated_fraction(mod.alpha * i[0]).item())))
        elif isinstance(m, (nn.Tanh, nn.Hardtanh)):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, n=n: sat.__setitem__(n, saturated_fraction(i[0]).item())))
    return hooks


@check("init-scale")
def init_scale(make_model, data: CheckData, max_input_std: float = 10.0) -> CheckResult:
    """Scale through depth at init: block output std, weight gains, skip paths and squash saturation."""
    model = fresh(make_model)
    blocks = block_modules(model)
    if len(blocks) < 2:
        return CheckResult("init-scale", "warn", f"{len(blocks)} blocks found", ">= 2 blocks",
                           "Scale through depth is measured at the model's repeated blocks.",
                           ["no repeated blocks found to compare (looked for 'blocks.N' / 'stages.N' modules, then "
                            "for two or more modules of one class inside nn.Sequential / nn.ModuleList / "
                            "nn.ModuleDict): keep your blocks in one of these containers to have them measured"],
                           {}, ["no-blocks"])
    stds: dict[str, float] = {}
    corr: dict[str, float] = {}
    sat: dict[str, float] = {}

    def block_hook(mod, args, out, n):
        x, out = _first_tensor(args), _first_tensor(out)
        if out is None:
            return
        stds[n] = out.float().std().item()
        if x is not None and x.shape == out.shape:  # how much of the block's input comes straight through
            corr[n] = _skip_corr(x, out)

    def stage_hook(mod, args, st):
        x = _first_tensor(args)
        if x is not None:
            inputs[st] = x.float().std().item()

    # stages (conv nets) change width and resolution between groups of blocks: compare each block with
    # the stream entering its own stage; a ViT has one stage
    stage = {n: _stage(n) for n, _ in blocks}
    firsts = {}
    for n, m in blocks:
        firsts.setdefault(stage[n], (n, m))
    inputs: dict[str, float] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, st=st: stage_hook(m, args, st)) for st, (_, m) in firsts.items()]
    hooks += [m.register_forward_hook(lambda m, i, o, n=n: block_hook(m, i, o, n)) for n, m in blocks]
    hooks += _saturation_hooks(model, sat)
    with torch.no_grad():
        model(data.x)
    for h in hooks:
        h.remove()
    measured = [n for n, _ in blocks if n in stds and stage[n] in inputs]  # blocks that saw and gave tensors
    if len(measured) < 2:
        return CheckResult("init-scale", "warn", f"{len(measured)} of {len(blocks)} blocks took and gave tensors",
                           ">= 2 blocks", "Scale through depth is measured at the model's repeated blocks.",
                           [f"the blocks found ({blocks[0][0]}, ...) did not take and return tensors, so their "
                            "scale could not be measured"], {}, ["no-blocks"])
    first_in = inputs[stage[measured[0]]]
    vals = [first_in] + list(stds.values())
    ratios = [stds[n] / max(inputs[stage[n]], 1e-12) for n in measured]
    lo, hi = min(ratios), max(ratios)
    factor = 3 * math.sqrt(max(sum(1 for n in measured if stage[n] == st) for st in firsts))
    stds = {"<input>": first_in, **stds}
    gains, gains_out = weight_gains(model), weight_gains(model, "out")
    # too large by both fans: He init in fan_out mode (torchvision's convs) gives a bottleneck layer
    # (fan_in >> fan_out, e.g. a squeeze-excitation reduction) a large fan_in gain, and is correct
    gain = {n: min(g, gains_out[n]) for n, g in gains.items()}  # the better of the two fans
    big = {n: gains[n] for n, g in gain.items() if g > MAX_GAIN}
    skip = statistics.median(corr.values()) if corr else 1.0
    saturated = {n: s for n, s in sat.items() if s > MAX_SATURATED}
    causes = Causes()
    if hi > factor or vals[0] > max_input_std or not all(math.isfinite(v) for v in vals):
        causes.add("activations-grow", f"activations grow through depth (x{hi:.3g}, limit x{factor:.3g}) or enter the blocks too large "
                      f"(std {vals[0]:.3g}): weight init too large, inputs not normalised, or a dropped norm")
    if lo < 1 / factor:
        causes.add("activations-decay", f"activations decay through depth (x{lo:.3g}): init too small or a residual connection dropped")
    if big:
        n = max(big, key=big.get)
        causes.add("init-std-too-large", f"{len(big)} weights start with gain std*sqrt(fan) > {MAX_GAIN:g} by fan_in and by fan_out "
                      f"(e.g. {n}: {big[n]:.3g} by fan_in; "
                      f"He init is 1.41): weight init std too large")
    skip_zeroed = None
    if skip < MIN_SKIP_CORR:  # the arbiter: a block whose branch is silenced must return its input
        skip_zeroed = _skip_with_branches_zeroed(make_model, data)
    if skip < MIN_SKIP_CORR and (skip_zeroed is None or skip_zeroed < 0.99):
        causes.add("residual-dropped", f"block outputs do not carry their inputs (median correlation {skip:.2f}, expected >= "
                      f"{MIN_SKIP_CORR}; {skip_zeroed if skip_zeroed is not None else float('nan'):.2f} with every "
                      f"block's parameters zeroed): a residual (skip) connection is dropped")
    if saturated:
        n = max(saturated, key=saturated.get)
        causes.add("squash-saturated", f"{len(saturated)} squashing layers are saturated at init (e.g. {n}: {saturated[n]:.0%} of units "
                      f"past |2|): DyT alpha0 (or the input scale) too large, gradients through them vanish")
    return CheckResult(
        "init-scale", "fail" if causes else "pass",
        f"block std x{lo:.3g}..x{hi:.3g} of input std {vals[0]:.3g}; max gain {max(gain.values(), default=0):.3g}; "
        f"skip corr {skip:.2f}; max saturation {max(sat.values(), default=0):.0%}",
        f"within x{factor:.3g}; gain <= {MAX_GAIN:g}; skip corr >= {MIN_SKIP_CORR}; saturation <= {MAX_SATURATED:.0%}",
        "At init the activation scale should stay within an order of magnitude through depth, weights should "
        "start near He/LeCun scale or below, residual blocks should pass their input through, and squashing "
        "layers (DyT, tanh) should work in their linear range.",
        causes.sentences, {"block_std": stds, "skip_corr": corr, "saturation": sat, "large_gains": big,
                           "skip_corr_branches_zeroed": skip_zeroed}, causes.codes)


def _first_tensor(obj) -> torch.Tensor | None:
    """``obj`` if it is a tensor, else the first tensor in a tuple/list (a hook's ``args``, or a block
    that takes a list of feature maps, as DenseNet's layers do), else None."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in (_first_tensor(o) for o in obj) if t is not None), None)
    return None


def _skip_corr(x: torch.Tensor, out: torch.Tensor) -> float:
    """Correlation of a block's output with its input (both centred, flattened); 0 for a constant output."""
    a, b = (x - x.mean()).flatten().float(), (out - out.mean()).flatten().float()
    return F.cosine_similarity(a, b, dim=0).item() if b.norm() > 0 else 0.0


def _skip_with_branches_zeroed(make_model, data: CheckData) -> float | None:
    """Median correlation of each shape-preserving block's output with its input when every parameter
    of every block is zero: a residual block then returns its input exactly (corr 1), a block whose
    skip was dropped returns a constant. Tells a dropped skip from a branch that starts anti-correlated
    with its input (e.g. mimetic attention init, W_proj W_v ~ -0.4 I). None when no block keeps its shape."""
    model = fresh(make_model)
    blocks = block_modules(model)
    with torch.no_grad():
        for _, m in blocks:
            for p in m.parameters():
                p.zero_()
    corr: list[float] = []

    def hook(mod, args, out):
        if args[0].shape == out.shape:
            corr.append(_skip_corr(args[0], out))
    hooks = [m.register_forward_hook(hook) for _, m in blocks]
    with torch.no_grad():
        model(data.x)
    for h in hooks:
        h.remove()
    return statistics.median(corr) if corr else None


@check("grad-flow")
def grad_flow(make_model, data: CheckData, allow_frozen: bool = False) -> CheckResult:
    """Every trainable parameter gets a finite, non-zero gradient; nothing is frozen unless allowed.

    A frozen parameter fails: reproductions train from scratch, so a frozen block is a bug unless the
    caller says otherwise (``allow_frozen=True``, e.g. for fine-tuning).
    """
    model = fresh(make_model).train()
    F.cross_entropy(model(data.x), data.y).backward()
    named = list(model.named_parameters())
    frozen = [n for n, p in named if not p.requires_grad]
    unused = [n for n, p in named if p.requires_grad and p.grad is None]
    nonfinite = [n for n, p in named if p.grad is not None and not torch.isfinite(p.grad).all()]
    dead = [n for n, p in named if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() == 0]
    late = _zero_at_init_only(model, data, dead) if dead and not nonfinite else []
    dead = [n for n in dead if n not in late]
    n_trainable = sum(p.requires_grad for _, p in named)
    bad = unused or nonfinite or dead or (frozen and not allow_frozen)
    status = "fail" if bad else "warn" if frozen else "pass"
    measured = (f"{n_trainable} trainable; {len(unused)} unused, {len(dead)} zero-grad, {len(nonfinite)} non-finite,"
                f" {len(frozen)} frozen" + (f"; {len(late)} zero at init only" if late else ""))
    causes = Causes()
    if unused:
        causes.add("unused-params", f"parameters not used in forward (e.g. {unused[0]}): a dead branch or a layer built but not called")
    if dead:
        causes.add("zero-grad-params", f"parameters whose gradient is exactly zero (e.g. {dead[0]}): a detach(), a dead ReLU "
                      f"region, or a branch multiplied by zero")
    if nonfinite:
        causes.add("nonfinite-grads", f"non-finite gradients (e.g. {nonfinite[0]})")
    if frozen:
        causes.add("frozen-params", f"{len(frozen)} parameters are frozen (requires_grad=False, e.g. {frozen[0]}): a block left "
                      f"frozen will never train")
    return CheckResult("grad-flow", status, measured, "every parameter trainable, with a finite, non-zero gradient",
                       "Backpropagation from the loss should reach every parameter of a model trained from scratch. "
                       "A gradient that is zero at init only (a zero-initialised scale downstream, e.g. the last "
                       "BatchNorm of a residual branch or a layer scale of 0) reaches the parameter after one step.",
                       causes.sentences, {"frozen": frozen, "unused": unused, "dead": dead, "nonfinite": nonfinite,
                                          "zero_at_init_only": late}, causes.codes)


def _zero_at_init_only(model: nn.Module, data: CheckData, dead: list[str]) -> list[str]:
    """Of the parameters whose gradient is zero at init, those that get a non-zero gradient after one
    plain SGD step (lr 0.01) on the same batch: zero only because a scale downstream starts at 0."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in params.values():
            if p.grad is not None:
                p.add_(p.grad, alpha=-0.01)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(data.x), data.y).backward()
    return [n for n in dead if params[n].grad is not None and params[n].grad.abs().max() > 0]


@check("batch-independence")
def batch_independence(make_model, data: CheckData) -> CheckResult:
    """In eval mode, sample i's output must not depend on input j != i.

    BatchNorm-style layers mix samples in train mode by design, so the check runs in eval mode,
    where they use running statistics; a remaining dependence is a reshape/transposition bug.
    """
    model = fresh(make_model).eval()
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
        ["a reshape/view/transpose that moves data across the batch dimension (mixes samples)",
         "a norm or pooling over dim 0"] if bad else [],
        {"leak": leak, "own": own}, ["mixes-samples", "batch-dim-reduction"] if bad else [])
