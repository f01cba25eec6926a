"""Checks on a freshly initialised model: loss at init, scale through depth, gradient flow, batch independence.

Thresholds, and why (measured on every registered model at 32 px by ``tests/test_checks.py`` and on
the correct-model panel, ``checks.panel`` (``benchmarks/check_panel.py``); each check's docstring has the details):
- loss-at-init: loss / ln K within 0.8-1.25 passes (healthy models: 0.97-1.27; MambaOut-T's
  logits start at std ~1), within 0.6-1.6 warns, beyond fails; a classifier-only large init up to
  8 ln K warns (torchvision's MNASNet: 5.92), beyond 8 ln K fails (a 100x head: 11.5-72).
- init-scale: block output std within 3 sqrt(depth) of the stream entering the block's stage (a
  pre-norm residual stream with unit branches grows like sqrt(depth); conv nets are compared stage by
  stage, since their downsampling layers change the scale by design, e.g. ConvNeXt-DyT shrinks ~30x
  over its stages at init without a norm to undo it); weight gain std * sqrt(fan_in) <= 3
  (He init is sqrt(2); our models stay <= 1.7, a 10x init gives >= 8); where a block has an identity
  path (read from the ops its forward runs), the median block's output correlates with its input
  >= 0.3 (residual blocks at init pass their input through: healthy models 0.9-1.0, a block without
  its skip connection ~0); blocks without one are not measured for it; at most 50% of the units of a
  squashing layer (DyT, tanh) saturated at init (|pre-activation| > 2: DyT alpha0 = 0.5 gives 0%, 50
  gives ~90%).
- grad-flow: a parameter is dead when its gradient stays exactly 0 for 3 AdamW steps at an input
  size where no stage is reduced to one spatial position.
- batch-independence: |d out_0 / d x_j| <= 1e-6 |d out_0 / d x_0| (exactly 0 on correct models).
"""
from __future__ import annotations

import math
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..model.layers import dyt_like, saturated_fraction
from .core import Causes, CheckData, CheckResult, block_modules, check, fresh, not_measured

MAX_GAIN = 3.0
MIN_SKIP_CORR = 0.3
MAX_SATURATED = 0.5
MAX_HEAD_RATIO = 8.0  # loss / ln K beyond which even a head-only large init fails (see loss_at_init)


@check("loss-at-init")
def loss_at_init(make_model, data: CheckData) -> CheckResult:
    """A freshly initialised classifier should be unsure: loss ~ ln(K), small logits.

    Measures the cross-entropy of a fresh model on the check batch, as a multiple of ln K, and the
    share of examples the softmax is saturated on (top probability > 0.99). Passes within 0.8-1.25 ln K,
    warns within 0.6-1.6 ln K, fails beyond. One exception, by measurement: a loss up to
    ``MAX_HEAD_RATIO`` (8) ln K that comes from the classifier alone (its gain std*sqrt(fan_in) > 3
    while the median layer's is <= 3) is a large but trainable head init, a WARN
    (``large-head-init``): heads sized for K = 1000 start large at K = 10, 32 px: torchvision's
    EfficientNet-B0 at 2.35 ln K, timm's ReXNet 2.76, DLA-46-C 3.55 (a 1x1 Conv head), torchvision's
    MNASNet 5.92 ln K with 39 % of examples saturated, the largest of the correct-model panel
    (``checks.panel``, ``benchmarks/check_panel.py``), and it memorises a batch in 20 steps. Beyond
    8 ln K the logits are many times too large whatever their source and it fails
    (``logits-too-large``): a head initialised 100x too large gives 11.5 ln K on our ViT-quick, 12.7
    on a plain CNN (the planted bugs of ``tests/test_panel.py``) and 19-49 ln K with 66-92 % of
    examples saturated on ViT-Ti, ResNet-18, ConvNeXt-atto and ResNet-10t. 8 sits between the
    largest correct start and the smallest 100x head (their geometric mean is ~8.3). Correct models
    otherwise start at 0.97-1.3 ln K.
    ResNet-10t). Always measured (one forward pass)."""
    model = fresh(make_model)
    with torch.no_grad():
        logits = model(data.x).float()
        loss = F.cross_entropy(logits, data.y, label_smoothing=data.label_smoothing).item()
        saturated = (logits.softmax(1).amax(1) > 0.99).float().mean().item() if logits.ndim == 2 else 0.0
    k = data.num_classes
    expected = math.log(k)  # uniform predictions give ln K with or without label smoothing
    ratio = loss / expected
    scale = logits.std().item()
    status = "pass" if 0.8 <= ratio <= 1.25 else "warn" if 0.6 <= ratio <= 1.6 else "fail"
    causes = Causes()
    head, head_gain, body_gain = _head_gain(model, data.x, k)
    head_alone = head_gain > MAX_GAIN and body_gain <= MAX_GAIN
    if status == "fail" and 1.6 < ratio <= MAX_HEAD_RATIO and head_alone:
        # the classifier alone starts large (e.g. torchvision's EfficientNet scales its head init by
        # 1/sqrt(K), sized for K = 1000): a noisy start, not a broken network
        status = "warn"
        causes.add("large-head-init", f"the classifier {head} starts with gain std*sqrt(fan_in) = {head_gain:.3g} while "
                   f"the rest of the network is at {body_gain:.3g} (median): a large but trainable head init (loss "
                   f"{ratio:.2f} ln K <= {MAX_HEAD_RATIO:g} ln K, {saturated:.0%} of examples saturated), e.g. sized for "
                   f"another number of classes; re-initialise the head with a small std (trunc_normal 0.02) for a "
                   f"clean start")
    elif status == "fail" and ratio > MAX_HEAD_RATIO:
        where = (f"the classifier {head} alone (gain std*sqrt(fan_in) {head_gain:.3g}, the rest of the network "
                 f"{body_gain:.3g}): its init is too large" if head_alone else
                 "weights initialised with too large a std, or a missing or wrong final normalisation")
        causes.add("logits-too-large", f"the loss is {ratio:.1f}x ln K with {saturated:.0%} of examples predicted at "
                   f"p > 0.99 (logit std {scale:.3g}): the logits start far too large; cause: {where}")
        if head_alone:
            causes.add("head-init-too-large", f"{head} is initialised {head_gain / max(body_gain, 1e-12):.3g}x the "
                       f"network's median gain")
        causes.add("init-too-large", "weights initialised with too large a std (logits far from 0)")
    elif status != "pass":
        causes.add("init-too-large", "weights initialised with too large a std (logits far from 0)")
        causes.add("final-norm-wrong", "a missing or wrong final normalisation")
    return CheckResult(
        "loss-at-init", status, f"loss {loss:.3f} ({ratio:.2f} ln K), logit std {scale:.3g}, {saturated:.0%} saturated",
        f"ln({k}) = {expected:.3f} (x0.8-1.25; a large head up to x{MAX_HEAD_RATIO:g} warns)",
        "At initialisation every class should be about equally likely, so the cross-entropy is close to "
        "ln(K). A much larger loss means confident wrong predictions: the output layer starts too large.",
        causes.sentences, {"loss": loss, "ln_k": expected, "ratio": ratio, "logit_std": scale, "head_gain": head_gain,
                           "saturated": saturated}, causes.codes)


def _head_gain(model: nn.Module, x: torch.Tensor | None = None, k: int | None = None) -> tuple[str, float, float]:
    """(name, weight gain) of the classifier and the median gain of every other Linear/Conv weight (see
    ``weight_gains``). The classifier is the last Linear or Conv layer to run whose output has ``k``
    channels (dim 1), found with forward hooks on ``x`` (a 1x1 Conv head such as timm's DLA ``fc``
    counts); without ``x`` or such a layer, the last Linear layer by definition order."""
    gains = weight_gains(model)
    head = _classifier(model, x, k) if x is not None and k else ""
    if not head:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else ""
    if not head or f"{head}.weight" not in gains:
        return "", 0.0, 0.0
    rest = sorted(v for n, v in gains.items() if n != f"{head}.weight")
    return head, gains[f"{head}.weight"], (rest[len(rest) // 2] if rest else 0.0)


def _classifier(model: nn.Module, x: torch.Tensor, k: int) -> str:
    """The name of the last Linear/Conv layer run on ``x`` ([N, C, H, W]) whose output has ``k`` channels
    in dim 1 ([N, k] or [N, k, H, W]); "" when none does."""
    ran: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, out, n=n: ran.append(n)
                                       if isinstance(out, torch.Tensor) and out.ndim >= 2 and out.shape[1] == k else None)
               for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(x[:2])
    except Exception:  # a model that fails on two images: the definition-order fallback
        ran = []
    finally:
        for h in handles:
            h.remove()
    return ran[-1] if ran else ""


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


def _is_norm(m: nn.Module) -> bool:
    """A normalisation layer: BatchNorm, LayerNorm, GroupNorm and their subclasses, a class named *Norm*
    that holds no Conv/Linear (timm's ``ConvNormAct`` is a conv layer), or DyT-like."""
    if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or dyt_like(m):
        return True
    return "Norm" in type(m).__name__ and not any(isinstance(c, (nn.Linear, nn.modules.conv._ConvNd))
                                                  for c in m.modules())


def _same_data(a, b: torch.Tensor) -> bool:
    """``a`` is ``b`` or a view of all of it (same first element, same size)."""
    return isinstance(a, torch.Tensor) and (a is b or (a.numel() == b.numel() and a.dtype == b.dtype
                                                       and a.numel() > 0 and a.data_ptr() == b.data_ptr()))


class SkipTracer(TorchFunctionMode):
    """Which blocks have an identity path, from the ops their forward actually runs.

    Inside a block, its input is followed through the ops that keep it an identity path: views and
    reshapes (``permute``, ``reshape``, ``contiguous``, ...) and scaling by a smaller tensor or a number
    (a residual scale, ``x * gamma``). The block has a skip path when an addition (``+``, ``+=``,
    ``torch.add``, ``add_``) takes such a tensor as an operand, as ``x + f(x)`` and ``s * x + f(x)`` do.
    A block that concatenates its input (DenseNet, ShuffleNet, MobileViT's fusion) has none. Also
    records which blocks feed their input straight into a normalisation layer and into no other layer
    (pre-norm blocks: a design that needs the input added back; ``t.direct`` holds the blocks whose
    input also reaches a layer that is not a norm). Use: ``with SkipTracer(model, blocks) as t: model(x)``;
    then ``t.skip`` and ``t.prenorm`` hold block names."""

    ADDS = frozenset({"add", "__add__", "__radd__", "__iadd__", "add_"})
    KEEPS = frozenset({"mul", "__mul__", "__rmul__", "mul_", "__imul__", "div", "__truediv__", "div_",
                       "permute", "reshape", "view", "flatten", "unflatten", "transpose", "contiguous", "clone",
                       "to", "float", "type_as", "squeeze", "unsqueeze", "movedim"})
    # elementwise activations after the add carry x + f(x) on to the block's output (ResNet's
    # relu(x + f(x))); applied to the block's input itself they make no identity path
    PASSES = frozenset({"relu", "relu_", "gelu", "silu", "silu_", "hardswish", "hardswish_", "leaky_relu",
                        "leaky_relu_", "elu", "mish", "hardtanh", "hardtanh_", "relu6", "dropout"})

    def __init__(self, model: nn.Module, blocks: list[tuple[str, nn.Module]]):
        super().__init__()
        self.derived: dict[str, list[torch.Tensor]] = {}  # the blocks running now -> their input and its identity copies
        self.skip: set[str] = set()
        self.summed: dict[str, list[torch.Tensor]] = {}  # the blocks running now -> x + f(x) and what carries it on
        self.reaches: set[str] = set()  # blocks whose output still carries the identity path (x + f(x), relu of it)
        self.prenorm: set[str] = set()
        self.handles = []
        for n, m in blocks:
            self.handles.append(m.register_forward_pre_hook(lambda mod, args, n=n: self._enter(n, args)))
            self.handles.append(m.register_forward_hook(lambda mod, args, out, n=n: self._leave(n, out)))
        self.direct: set[str] = set()  # blocks whose input also goes straight into a layer that is not a norm
        for m in model.modules():
            if _is_norm(m):
                self.handles.append(m.register_forward_pre_hook(lambda mod, args: self._norm(args)))
            elif not any(True for _ in m.children()) and not isinstance(m, (nn.Identity, nn.Dropout)):
                self.handles.append(m.register_forward_pre_hook(lambda mod, args: self._direct(args)))

    def _enter(self, n: str, args) -> None:
        x = _first_tensor(args)
        if x is not None:
            self.derived[n] = [x]

    def _leave(self, n: str, out) -> None:  # (a forward hook that returned a value would replace the output)
        out = _first_tensor(out)
        if n in self.derived and (self._carries(n, out) or any(_same_data(out, d) for d in self.summed.get(n, []))):
            self.reaches.add(n)
        self.derived.pop(n, None)
        self.summed.pop(n, None)

    def _carries(self, n: str, t) -> bool:
        return any(_same_data(t, d) for d in self.derived[n])

    def _norm(self, args) -> None:
        x = _first_tensor(args)
        if x is not None:
            self.prenorm.update(n for n, d in self.derived.items() if _same_data(x, d[0]))

    def _direct(self, args) -> None:
        x = _first_tensor(args)
        if x is not None:
            self.direct.update(n for n, d in self.derived.items() if _same_data(x, d[0]))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.derived and (name in self.ADDS or name in self.KEEPS or name in self.PASSES):
            ops = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            for n in list(self.derived):
                ident = [o for o in ops if self._carries(n, o)]
                summed = [o for o in ops if any(_same_data(o, d) for d in self.summed.get(n, []))]
                src = ident or summed
                if not src or not isinstance(out, torch.Tensor) or out.numel() != src[0].numel():
                    if ident and name in self.ADDS:
                        self.skip.add(n)
                    continue
                others_smaller = all(o.numel() < src[0].numel() for o in ops if not any(o is t for t in src))
                if name in self.ADDS:
                    if ident:
                        self.skip.add(n)
                    self.summed.setdefault(n, []).append(out)  # x + f(x): the residual stream, on to the output?
                elif name in self.KEEPS and others_smaller:
                    (self.derived[n] if ident else self.summed.setdefault(n, [])).append(out)
                elif name in self.PASSES and summed:
                    self.summed[n].append(out)
        return out

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return super().__exit__(*exc)


class ConcatStream(TorchFunctionMode):
    """Dense connectivity: blocks whose output is concatenated onto their input by the caller.

    A DenseNet-style layer returns only its new features and its caller grows the stream,
    ``x = torch.cat([x, layer(x)], 1)`` (or keeps a list and concatenates it in the next layer): the
    block's output is then a branch, not the stream, and a branch scaled down at init (a layer scale of
    1e-6) says nothing about the stream's scale. For each block whose output and input (any of its
    input tensors) are operands of one later ``torch.cat``, ``stream[name]`` is the std of that
    concatenation (all channels): the stream after the block. Use: ``with ConcatStream(blocks) as c:
    model(x)``."""

    CATS = frozenset({"cat", "concat", "concatenate"})

    def __init__(self, blocks: list[tuple[str, nn.Module]]):
        super().__init__()
        self.ins: dict[str, list[torch.Tensor]] = {}
        self.outs: dict[str, torch.Tensor] = {}
        self.stream: dict[str, float] = {}
        self.handles = [m.register_forward_hook(lambda mod, args, out, n=n: self._leave(n, args, out))
                        for n, m in blocks]

    def _leave(self, n: str, args, out) -> None:
        out = _first_tensor(out)
        if out is not None and n not in self.outs:
            self.ins[n], self.outs[n] = _tensors(args), out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") in self.CATS and isinstance(out, torch.Tensor):
            parts = _tensors(args[0] if args else kwargs.get("tensors", ()))
            for n, o in self.outs.items():
                if n not in self.stream and any(p is o for p in parts) and any(
                        any(p is i for i in self.ins[n]) for p in parts):
                    self.stream[n] = out.float().std().item()
        return out

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return super().__exit__(*exc)


def _tensors(obj) -> list[torch.Tensor]:
    """Every tensor in ``obj`` (a tensor, or nested tuples/lists of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


@check("init-scale")
def init_scale(make_model, data: CheckData, max_input_std: float = 10.0) -> CheckResult:
    """Scale through depth at init: block output std, weight gains, skip paths and squash saturation.

    Measures, in one forward pass of a fresh model on the check batch, at the model's repeated blocks
    (``block_modules``): (1) each block's output std against the stream entering its stage: within
    3 sqrt(depth) passes (a pre-norm residual stream with unit branches grows like sqrt(depth); conv
    nets are compared stage by stage, their downsampling changes the scale by design); (2) every
    Linear/Conv weight's gain std * sqrt(fan) <= 3 by fan_in or by fan_out (He init is 1.41; a 10x init
    gives >= 8); (3) where a block has an identity path, the median correlation of its output with its
    input >= 0.3 (residual blocks pass their input through at init: 0.9-1.0 on the registered models
    and the correct-model panel, checks.panel; a dropped skip ~0); (4) at most 50 % of a squashing
    layer's units (DyT, tanh) saturated, |pre-activation| > 2 (DyT alpha0 0.5 gives 0 %, 50 ~90 %).

    Whether a block has an identity path is read from the ops its forward runs (``SkipTracer``): an
    addition that takes the block's input, a view of it or a scaled copy, as x + f(x) does. A block
    without one (a non-residual CNN such as SqueezeNet or ShuffleNet, a hybrid that fuses its input by
    concatenation) is not measured for (3): "no skip path: not measured" (issue 34: such correct models
    measured a correlation of 0.04 and failed). A pre-norm block (its input goes straight into a
    normalisation layer) that never adds its input back is a dropped residual: that design only
    works as x + f(norm(x)). When no repeated blocks are found the check warns (``no-blocks``).

    A block whose output its caller concatenates onto its input (DenseNet-style dense connectivity,
    ``ConcatStream``) is judged by that concatenation's std, the stream after the block: its own
    output is only the new features (issue 45: a branch under a 1e-6 layer scale measured 1.4e-6 and
    failed as "activations decay ... a residual connection dropped"). A block that concatenates its
    input itself is measured on its whole output, all channels.
    """
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
    shapes_kept: set[str] = set()
    hooks += [m.register_forward_hook(lambda m, i, o, n=n: _shape_kept(i, o, n, shapes_kept)) for n, m in blocks]
    with torch.no_grad(), SkipTracer(model, blocks) as tracer, ConcatStream(blocks) as dense:
        model(data.x)
    for h in hooks:
        h.remove()
    stds.update({n: v for n, v in dense.stream.items() if n in stds})  # the stream, not the new features alone
    no_skip = [n for n in shapes_kept if n not in tracer.skip]  # shape-preserving blocks without an identity path
    # a skip path is measured where there is one and it reaches the block's output (TinyViT adds its input
    # back, then runs a depthwise conv + BN on the sum: the block's output no longer carries its input)
    not_at_output = sorted(n for n in corr if n in tracer.skip and n not in tracer.reaches)
    corr = {n: c for n, c in corr.items() if n in tracer.skip and n in tracer.reaches}
    # pre-norm blocks that never add their input back: the input goes into a norm and nowhere else (a block
    # that also feeds it to a conv, as MobileOne's BatchNorm identity branch beside its conv branches, is not one)
    dropped = sorted(n for n in no_skip if n in tracer.prenorm and n not in tracer.direct)
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
    skip = statistics.median(corr.values()) if corr else None
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
    if skip is not None and skip < MIN_SKIP_CORR:  # the arbiter: a block whose branch is silenced must return its input
        skip_zeroed = _skip_with_branches_zeroed(make_model, data, set(corr))
    if skip is not None and skip < MIN_SKIP_CORR and (skip_zeroed is None or skip_zeroed < 0.99):
        causes.add("residual-dropped", f"block outputs do not carry their inputs (median correlation {skip:.2f}, expected >= "
                      f"{MIN_SKIP_CORR}; {skip_zeroed if skip_zeroed is not None else float('nan'):.2f} with every "
                      f"block's parameters zeroed): a residual (skip) connection is dropped")
    if dropped:
        causes.add("residual-dropped", f"{len(dropped)} of {len(shapes_kept)} shape-preserving blocks normalise their input "
                   f"first (pre-norm) but never add it back (no addition takes the block's input; e.g. {dropped[0]}): "
                   f"a pre-norm block is x + f(norm(x)), its residual (skip) connection is dropped")
    if saturated:
        n = max(saturated, key=saturated.get)
        causes.add("squash-saturated", f"{len(saturated)} squashing layers are saturated at init (e.g. {n}: {saturated[n]:.0%} of units "
                      f"past |2|): DyT alpha0 (or the input scale) too large, gradients through them vanish")
    return CheckResult(
        "init-scale", "fail" if causes else "pass",
        f"block std x{lo:.3g}..x{hi:.3g} of input std {vals[0]:.3g}; max gain {max(gain.values(), default=0):.3g}; "
        f"{_skip_text(skip, corr, shapes_kept, not_at_output)}; max saturation {max(sat.values(), default=0):.0%}",
        f"within x{factor:.3g}; gain <= {MAX_GAIN:g}; skip corr >= {MIN_SKIP_CORR}; saturation <= {MAX_SATURATED:.0%}",
        "At init the activation scale should stay within an order of magnitude through depth, weights should "
        "start near He/LeCun scale or below, residual blocks should pass their input through, and squashing "
        "layers (DyT, tanh) should work in their linear range.",
        causes.sentences, {"block_std": stds, "skip_corr": corr, "saturation": sat, "large_gains": big,
                           "skip_corr_branches_zeroed": skip_zeroed, "skip_paths": sorted(tracer.skip),
                           "no_skip_path": sorted(no_skip), "prenorm_without_skip": dropped,
                           "skip_not_at_output": not_at_output, "std_of_concatenated_stream": sorted(dense.stream)},
        causes.codes)


def _first_tensor(obj) -> torch.Tensor | None:
    """``obj`` if it is a tensor, else the first tensor in a tuple/list (a hook's ``args``, or a block
    that takes a list of feature maps, as DenseNet's layers do), else None."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in (_first_tensor(o) for o in obj) if t is not None), None)
    return None


def _shape_kept(args, out, n: str, kept: set[str]) -> None:
    x, out = _first_tensor(args), _first_tensor(out)
    if x is not None and out is not None and x.shape == out.shape:
        kept.add(n)


def _skip_text(skip: float | None, corr: dict, kept: set[str], not_at_output: list[str] = ()) -> str:
    after = (f"; {len(not_at_output)} add their input back before a last layer, not measured" if not_at_output else "")
    if skip is None:
        if not_at_output:
            return f"skip corr: identity path does not reach the output of {len(not_at_output)} blocks: not measured"
        return "skip corr: no skip path: not measured" if kept else "skip corr: no shape-preserving block: not measured"
    return f"skip corr {skip:.2f} ({len(corr)} of {len(kept)} shape-preserving blocks have an identity path{after})"


def _skip_corr(x: torch.Tensor, out: torch.Tensor) -> float:
    """Correlation of a block's output with its input (both centred, flattened); 0 for a constant output."""
    a, b = (x - x.mean()).flatten().float(), (out - out.mean()).flatten().float()
    return F.cosine_similarity(a, b, dim=0).item() if b.norm() > 0 else 0.0


def _skip_with_branches_zeroed(make_model, data: CheckData, names: set[str] | None = None) -> float | None:
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
    hooks = [m.register_forward_hook(hook) for n, m in blocks if names is None or n in names]
    with torch.no_grad():
        model(data.x)
    for h in hooks:
        h.remove()
    return statistics.median(corr) if corr else None


DEAD_STEPS = 3  # optimizer steps a zero-gradient parameter is watched for
MAX_MEASURE_SIZE = 256  # px: the largest input grad-flow resizes to, to measure what a small input cannot


@check("grad-flow")
def grad_flow(make_model, data: CheckData, allow_frozen: bool = False) -> CheckResult:
    """Every trainable parameter gets a finite, non-zero gradient; nothing is frozen unless allowed.

    Measures one backward pass of cross-entropy on the check batch: parameters without a gradient
    (unused), with a non-finite one, with an exactly zero one, and frozen ones. Unused, non-finite or
    dead parameters fail, and so does a frozen one (reproductions train from scratch, so a frozen
    block is a bug unless the caller says otherwise, ``allow_frozen=True``, e.g. for fine-tuning).

    A zero gradient is not yet a dead parameter. It is dead only if it stays exactly zero for
    ``DEAD_STEPS`` (3) AdamW steps in which the rest of the model moved, at an input size at which
    every stage of the model keeps more than one spatial position. A zero-initialised scale downstream
    (the last BatchNorm of a residual branch, a layer scale of 0) gives zero gradients at init only; an
    input too small for the model gives them at that size only: at 32 px a metaformer's last stage
    is 1x1, where its pooling mixer pool(x) - x is exactly 0, and a hybrid's attention runs over one
    token, where softmax is constant (issue 34: 44 and 6 such parameters on correct models). So when
    some module's output keeps a single spatial position at the check size (found by comparing the
    module output shapes at the check size and at twice it), the watch runs at the smallest of 2x, 4x, 8x
    the size (at most ``MAX_MEASURE_SIZE``, 256 px, or the model's declared input size when larger, which
    is tried too: timm's ``pretrained_cfg["input_size"]``) at which none does, with the check images
    resized (and the model rebuilt for that size when its factory offers ``at_size(px)``). Whether an
    output has one position at a size is read from every size seen (``_collapsed_at``), so a last stage
    that is 1x1 at both 32 and 64 px, 2x2 at 128 px, counts (issue 45: a hybrid whose attention biases
    are zero at 64 px was called dead there; every parameter moves at 128 px). When no such size can
    run, or a parameter still zero at the largest size the model runs at belongs to a layer that sees a
    single position there, those parameters are "not measured at this size" (status skip, code
    ``not-measured-at-this-size``). A planted dead branch (a branch multiplied by 0, a detach) stays
    zero at every size.
    """
    model = fresh(make_model).train()
    F.cross_entropy(model(data.x), data.y).backward()
    named = list(model.named_parameters())
    frozen = [n for n, p in named if not p.requires_grad]
    unused = [n for n, p in named if p.requires_grad and p.grad is None]
    nonfinite = [n for n, p in named if p.grad is not None and not torch.isfinite(p.grad).all()]
    zero = [n for n, p in named if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() == 0]
    size = int(data.x.shape[-1])
    watch = {"size": size, "measured_at": size, "collapsed": [], "unmeasured": []}
    dead, late = zero, []
    if zero and not nonfinite:
        dead, watch = _watch_zero_grads(make_model, data, zero)
        late = [n for n in zero if n not in dead and n not in watch["unmeasured"]]
    unmeasured = watch["unmeasured"]
    n_trainable = sum(p.requires_grad for _, p in named)
    bad = unused or nonfinite or dead or (frozen and not allow_frozen)
    status = "fail" if bad else "warn" if frozen else "skip" if unmeasured else "pass"
    at = watch["measured_at"]
    where = f" at {at} px" if at != size else ""
    measured = (f"{n_trainable} trainable; {len(unused)} unused, {len(dead)} dead, {len(nonfinite)} non-finite, "
                f"{len(frozen)} frozen")
    if late and at != size:
        upto, who = watch.get("collapsed_up_to") or (size, watch["collapsed"][0])
        measured += (f"; {len(late)} with a zero gradient at {size} px only ({who} keeps one spatial position at "
                     f"{'up to ' if upto != size else ''}{upto} px; all move at {at} px within {DEAD_STEPS} steps)")
    elif late:
        measured += f"; {len(late)} zero at init only (non-zero within {DEAD_STEPS} steps)"
    causes = Causes()
    if unused:
        causes.add("unused-params", f"parameters not used in forward (e.g. {unused[0]}): a dead branch or a layer built but not called")
    if dead:
        causes.add("zero-grad-params", f"{len(dead)} parameters whose gradient stays exactly zero for {DEAD_STEPS} AdamW steps "
                   f"in which the rest of the model moved{where} (e.g. {dead[0]}): a detach(), a dead ReLU region, or a "
                   f"branch multiplied by zero")
    if nonfinite:
        causes.add("nonfinite-grads", f"non-finite gradients (e.g. {nonfinite[0]})")
    if frozen:
        causes.add("frozen-params", f"{len(frozen)} parameters are frozen (requires_grad=False, e.g. {frozen[0]}): a block left "
                      f"frozen will never train")
    if unmeasured:
        need = watch.get("needed")
        upto, who = watch.get("collapsed_up_to") or (size, watch["collapsed"][0])
        also = f", and {who} still sees one at {upto} px, the largest size it runs at" if upto != size else ""
        limit = max(MAX_MEASURE_SIZE, watch.get("declared") or 0)
        causes.add("not-measured-at-this-size", f"not measured at this size: {len(unmeasured)} parameters (e.g. "
                   f"{unmeasured[0]}) get a zero gradient at {size} px, where {watch['collapsed'][0]} keeps a single "
                   f"spatial position{also}; " + (
                       f"they would be measured at {need} px" if need else
                       f"the model could not run at a size up to {limit} px where every stage keeps more than one "
                       f"position, to measure them")
                   + (f" (the model's declared input size is {watch['declared']} px)" if watch.get("declared") else ""))
    if status == "skip":
        measured = f"not measured at {size} px: {measured}"
    return CheckResult("grad-flow", status, measured, "every parameter trainable, with a finite, non-zero gradient",
                       "Backpropagation from the loss should reach every parameter of a model trained from scratch. "
                       "A gradient that is zero at init only (a zero-initialised scale downstream, e.g. the last "
                       "BatchNorm of a residual branch or a layer scale of 0), or only at an input too small for the "
                       "model (a stage reduced to one position), is not a dead parameter.",
                       causes.sentences, {"frozen": frozen, "unused": unused, "dead": dead, "nonfinite": nonfinite,
                                          "zero_at_init_only": late, **watch}, causes.codes)


def _module_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The output shape of every named module (its first tensor; the smallest when called twice) in one
    forward pass of ``x`` in eval mode, without gradients."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(mod, args, out, n):
        t = _first_tensor(out)
        if t is not None and (n not in shapes or t.numel() < math.prod(shapes[n])):
            shapes[n] = tuple(t.shape)
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n)) for n, m in model.named_modules() if n]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return shapes


def _positions(shape: tuple, other: tuple) -> int | None:
    """Spatial positions of an output of shape ``shape``: the product of its dimensions that change
    with the input size (they differ in ``other``, the same output at another input size); None when
    none does (not a spatial tensor, e.g. pooled features)."""
    if len(shape) != len(other):
        return None
    grow = [a for a, b in zip(shape, other) if a != b]
    return math.prod(grow) if grow else None


def _looks_collapsed(shape: tuple) -> bool:
    """An output that may have a single spatial position, judged from one size only: [B, C, 1, 1],
    [B, 1, 1, C] or [B, 1, C] (a squeeze-excitation's pooled [B, C, 1, 1] looks the same)."""
    return (len(shape) == 4 and (shape[2:] == (1, 1) or shape[1:3] == (1, 1))) or (len(shape) == 3 and shape[1] == 1)


def _factory_at(make_model, px: int):
    """A factory for the model built for ``px`` when ``make_model`` offers ``at_size(px)``, else None."""
    at = getattr(make_model, "at_size", None)
    return at(px) if callable(at) else None


def _shapes_at(make_model, x: torch.Tensor, px: int):
    """(module shapes at ``px``, the factory that ran) with ``x`` resized: the check's model first,
    then the model rebuilt for ``px``; (None, None) when neither runs."""
    xs = F.interpolate(x, size=(px, px), mode="bilinear", align_corners=False)
    for factory in (make_model, _factory_at(make_model, px)):
        if factory is None:
            continue
        try:
            return _module_shapes(fresh(factory), xs), factory
        except Exception:
            continue
    return None, None


def _declared_size(model: nn.Module) -> int | None:
    """The input size a timm model declares (``pretrained_cfg`` / ``default_cfg`` input_size), if any."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(size[-1]) if size else None


def _collapsed_at(shapes_by_size: dict[int, dict], px: int) -> list[str]:
    """The modules whose output has exactly one spatial position at ``px``: the product of its dimensions
    that change across the input sizes measured (``shapes_by_size``: size -> module shapes) is 1 there. A
    module 1x1 at 32 and 64 px and 2x2 at 128 px is collapsed at 64 px; one whose shape never changes is
    not spatial (pooled features)."""
    base = shapes_by_size[px]
    out = []
    for n, sh in base.items():
        others = [sb[n] for t, sb in shapes_by_size.items() if t != px and sb and n in sb and len(sb[n]) == len(sh)]
        vary = [i for i in range(len(sh)) if any(o[i] != sh[i] for o in others)]
        if vary and math.prod(sh[i] for i in vary) == 1:
            out.append(n)
    return out


def _watch_zero_grads(make_model, data: CheckData, zero: list[str]) -> tuple[list[str], dict]:
    """(the parameters of ``zero`` that are dead, what was measured): see ``grad_flow``."""
    size = int(data.x.shape[-1])
    x, y = data.x[:16], data.y[:16]
    declared = _declared_size(fresh(make_model))
    watch = {"size": size, "measured_at": size, "collapsed": [], "unmeasured": [], "declared": declared}
    base = _module_shapes(fresh(make_model), x[:2])
    limit = max(MAX_MEASURE_SIZE, declared or 0)  # up to the model's native size when it declares a larger one
    sizes = [size * 2 ** k for k in range(1, 16) if size * 2 ** k <= limit]
    sizes = sorted(set(sizes) | ({declared} if declared and declared > size else set()))
    shapes: dict[int, dict] = {size: base}
    factories: dict[int, object] = {size: make_model}

    def at(px: int) -> dict | None:
        if px not in shapes:
            shapes[px], factories[px] = _shapes_at(make_model, x[:2], px)
        return shapes[px]

    if at(2 * size) is None:  # the model runs at this size only: a 1x1 / one-token output may be the cause
        still = _zero_after_steps(make_model, x, y, data.lr, zero)
        watch["collapsed"] = [n for n, sh in base.items() if _looks_collapsed(sh)]
        if still and watch["collapsed"]:
            watch["unmeasured"], watch["needed"] = still, None
            return [], watch
        return still, watch
    watch["collapsed"] = _collapsed_at(shapes, size)
    if not watch["collapsed"]:
        return _zero_after_steps(make_model, x, y, data.lr, zero), watch
    px = None
    for i, s in enumerate(sizes):  # the smallest size at which no module keeps a single spatial position
        if at(s) is None:
            continue
        if i + 1 < len(sizes):
            at(sizes[i + 1])  # a larger size shows which outputs that are 1x1 up to s are spatial
        if not _collapsed_at(shapes, s):
            px = s
            break
    watch["tried"] = [s for s in sizes if s in shapes and shapes[s] is not None]
    watch["collapsed"] = _collapsed_at(shapes, size)  # with every size seen: also outputs 1x1 at 2x the size
    below = [s for s in watch["tried"] if s < (px or limit + 1) and _collapsed_at(shapes, s)]
    watch["collapsed_up_to"] = (max(below), _collapsed_at(shapes, max(below))[0]) if below else (size, watch["collapsed"][0])
    if px is None:
        watch["unmeasured"] = list(zero)
        watch["needed"] = None
        return [], watch
    watch["measured_at"] = px
    xs = F.interpolate(x, size=(px, px), mode="bilinear", align_corners=False)
    still = _zero_after_steps(factories[px], xs, y, data.lr, zero)
    if still and not any(t > px and shapes[t] is not None for t in shapes):
        # no larger size ran to show that an output 1x1 up to px is spatial: a parameter whose module sees a
        # single position at px ([B, C, 1, 1], one token) is not measured there, not dead
        seen = _input_shapes(factories[px], xs[:2], {n.rsplit(".", 1)[0] for n in still})
        one = [n for n in still if _looks_collapsed(seen.get(n.rsplit(".", 1)[0], ()))]
        if one:
            watch["unmeasured"], watch["needed"] = one, None
            watch["collapsed_up_to"] = (px, one[0].rsplit(".", 1)[0])
            still = [n for n in still if n not in one]
    return still, watch


def _input_shapes(make_model, x: torch.Tensor, names: set[str]) -> dict[str, tuple[int, ...]]:
    """The shape of the first input tensor of each named module on one eval forward pass of ``x``."""
    model = fresh(make_model).eval()
    seen: dict[str, tuple[int, ...]] = {}

    def pre(mod, args, n):
        t = _first_tensor(args)
        if t is not None and n not in seen:
            seen[n] = tuple(t.shape)
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: pre(mod, a, n)) for n, m in model.named_modules()
             if n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _zero_after_steps(make_model, x: torch.Tensor, y: torch.Tensor, lr: float, zero: list[str],
                      steps: int = DEAD_STEPS) -> list[str]:
    """Of ``zero``, the parameters of a fresh model whose gradient on (x, y) is exactly zero at each of
    ``steps`` AdamW steps (lr ``lr``): dead, provided the other parameters moved (if none did, all are)."""
    model = fresh(make_model).train()
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=lr, weight_decay=0.0)
    alive: set[str] = set()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        alive.update(n for n, p in params.items() if p.grad is not None and bool(p.grad.abs().max() > 0))
        opt.step()
    if not alive - set(zero):
        return list(zero)
    return [n for n in zero if n not in alive]


@check("batch-independence")
def batch_independence(make_model, data: CheckData) -> CheckResult:
    """In eval mode, sample i's output must not depend on input j != i.

    Measures the gradient of sample 0's outputs with respect to the other inputs of a 4-image batch,
    |d out_0 / d x_j|, against sample 0's own, |d out_0 / d x_0|. Fails above 1e-6 of it: a model
    that keeps samples apart gives exactly 0 (every model of the correct-model panel, checks.panel,
    and of ``reproscope models``), a reshape across the batch dimension gives the same order as
    the own gradient. BatchNorm-style layers mix samples in train mode by design, so the check runs in
    eval mode, where they use running statistics; a remaining dependence is a reshape/transposition
    bug. Not measured (status skip) when no gradient reaches the input at all: the output then does
    not depend on it (input-independent reports that).
    """
    model = fresh(make_model).eval()
    x = data.x[: min(4, len(data.x))].clone().requires_grad_(True)
    out = model(x)
    if out.requires_grad:
        out[0].float().sum().backward()
    if x.grad is None:  # no gradient reaches the input: the output does not depend on it, so it mixes nothing
        return not_measured("batch-independence", "no gradient reaches the input (the output does not depend on "
                            "it; input-independent reports that), so there is no sample mixing to measure",
                            "0 for every other sample", code="output-ignores-input")
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
