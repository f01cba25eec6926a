"""Optimizer parameter groups, the per-iteration lr schedule, and what one optimizer step needs besides the model."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from collections.abc import Callable

import torch
import torch.nn as nn

from ..config import ConfigError, OptimConfig, Recipe, ScheduleConfig
from ..data.augment import soft_cross_entropy

# Layers whose parameters are decided by their ndim alone (weight matrices / kernels decayed, vectors
# not): a parameter registered directly on one of these is never read as a token or an embedding.
_STANDARD_LAYERS: tuple[type, ...] = tuple(t for t in (
    nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag,
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None),
    nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase, nn.PReLU) if t is not None)

DECAY_RULES = ("decay", "1-d", "no_weight_decay()", "position-embedding", "class-token")


def _declared_no_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters that the model or any submodule lists in its ``no_weight_decay()``.

    timm's convention: a module's ``no_weight_decay()`` returns names relative to that module
    (``pos_embed``, ``blocks.0.attn.relative_position_bias_table``); ``fnmatch`` wildcards are allowed
    (as timm's optimizer factory allows them). A name also matches every parameter below that module
    whose last component it is (``"relative_position_bias_table"`` listed on the root covers each block's).
    """
    out: set[str] = set()
    for prefix, mod in model.named_modules():
        fn = getattr(mod, "no_weight_decay", None)
        if not callable(fn):
            continue
        listed = {str(s) for s in fn()}
        if not listed:
            continue
        for rel, _ in mod.named_parameters():
            last = rel.rsplit(".", 1)[-1]
            if rel in listed or last in listed or any(fnmatch.fnmatchcase(rel, s) for s in listed):
                out.add(f"{prefix}.{rel}" if prefix else rel)
    return out


def decay_rules(model: nn.Module) -> dict[str, str]:
    """``{param name: rule}`` for every trainable parameter: which rule decides its weight decay.

    The rules, first match wins:

    ``"1-d"`` (no decay)
        ``ndim <= 1``: norm and DyT weights/biases/alpha, biases, 1-D layer scales.
    ``"no_weight_decay()"`` (no decay)
        the model or one of its submodules lists it in its own ``no_weight_decay()`` (timm's convention;
        see :func:`_declared_no_decay` for how names are matched).
    ``"class-token"`` (no decay) and ``"position-embedding"`` (no decay)
        decided by kind, not by name: a parameter registered directly on a module that is not a standard
        layer (``_STANDARD_LAYERS``: Linear, Conv*, Embedding, norm layers, MultiheadAttention, RNNs, ...),
        with ``ndim >= 3`` and leading dim 1, is something added to or concatenated with the token
        sequence (a weight matrix or kernel has no leading batch dim of 1). Of those, a ``[1, k, C]``
        parameter is a ``"class-token"`` (cls / register / distillation tokens) when ``k == 1`` or when
        the same module holds another ``[1, N, C]`` one with the same ``C`` and a larger ``N`` (the
        position embedding next to its register tokens); every other one (``[1, N, C]``,
        ``[1, C, H, W]``, ``[1, H, W, C]``) is a ``"position-embedding"``. Shape alone cannot tell a
        ``[1, 1, C]`` token from a layer scale stored as ``[1, 1, C]``, or a ``[1, C, H, W]`` embedding
        from a ``[1, C, 1, 1]`` scale; all of them get no decay, only the label reads them as tokens.
    ``"decay"``
        everything else: weight matrices, conv kernels, embedding tables, and other 2-D parameters. In
        particular a relative-position-bias table (Swin's ``relative_position_bias_table``,
        ``[(2W-1)^2, heads]`` on the attention module) is decayed unless the model declares it in a
        ``no_weight_decay()`` (timm's Swin does, so it is then ``"no_weight_decay()"``): the same default
        as timm, whose optimizer factory only exempts 1-D parameters and declared names.
    """
    declared = _declared_no_decay(model)
    modules = dict(model.named_modules())
    # tokens / embeddings: directly registered, ndim >= 3, leading dim 1, on a non-standard module
    seq: dict[str, str] = {}
    for mname, mod in modules.items():
        if isinstance(mod, _STANDARD_LAYERS):
            continue
        own = [(n, p) for n, p in mod.named_parameters(recurse=False) if p.ndim >= 3 and p.shape[0] == 1]
        for n, p in own:
            full = f"{mname}.{n}" if mname else n
            token = p.ndim == 3 and (p.shape[1] == 1 or any(
                q.ndim == 3 and q.shape[2] == p.shape[2] and q.shape[1] > p.shape[1] for _, q in own))
            seq[full] = "class-token" if token else "position-embedding"
    rules: dict[str, str] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1:
            rules[n] = "1-d"
        elif n in declared:
            rules[n] = "no_weight_decay()"
        else:
            rules[n] = seq.get(n, "decay")
    return rules


def no_decay_names(model: nn.Module) -> set[str]:
    """Trainable parameters that get no weight decay: every rule of :func:`decay_rules` but ``"decay"``
    (1-D parameters, names declared in a ``no_weight_decay()``, class/register tokens and position
    embeddings found by kind)."""
    return {n for n, r in decay_rules(model).items() if r != "decay"}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    nd = no_decay_names(model)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if n in nd else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "group": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1, nesterov=cfg.beta1 > 0)


class WarmupCosine:
    """Per-iteration schedule: linear warmup from 0 to ``peak``, then cosine to ``min_lr``.

    The lr is a pure function of the step, so a resumed run has exactly the same lr.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, min_lr: float):
        self.peak, self.total, self.warmup, self.min_lr = peak, max(1, total_steps), warmup_steps, min_lr
        self.scale = 1.0  # multiplied in by the NaN "rollback" policy

    @classmethod
    def from_config(cls, optim: OptimConfig, sched: ScheduleConfig, steps_per_epoch: int) -> "WarmupCosine":
        return cls(optim.lr, sched.epochs * steps_per_epoch,
                   int(round(sched.warmup_epochs * steps_per_epoch)), sched.min_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.scale * self.peak * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.scale * (self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + math.cos(math.pi * t)))

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, d: dict) -> None:
        self.scale = float(d.get("scale", 1.0))


@dataclasses.dataclass(frozen=True)
class Optimization:
    """What the Trainer's optimizer step needs besides the model (:func:`build_optimization`).

    ``accum``: micro-batches per optimizer step (``optim.accum_steps``); ``steps_per_epoch``: optimizer
    steps per epoch; ``total_steps``: optimizer steps in the run (``sched.max_steps`` may cut it);
    ``scaler``: a GradScaler, enabled only for fp16; ``criterion(logits [B, K], targets [B] or [B, K]) -> loss``.
    """

    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    scaler: torch.amp.GradScaler
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    accum: int
    steps_per_epoch: int
    total_steps: int


def build_optimization(model: nn.Module, recipe: Recipe, batches_per_epoch: int, images: int,
                       amp_dtype: torch.dtype | None, device: torch.device) -> Optimization:
    """Optimizer, schedule, loss scaler and criterion for ``model`` under ``recipe``, with the step counts.
    ``batches_per_epoch``: the train loader's length (micro-batches); ``images``: the train set's size.

    Raises:
        ConfigError: ``optim.accum_steps`` micro-batches are more than one epoch holds.
    """
    accum = recipe.optim.accum_steps
    steps_per_epoch = batches_per_epoch // accum
    if steps_per_epoch < 1:
        raise ConfigError(f"optim.accum_steps={accum} x data.batch_size={recipe.data.batch_size} is larger "
                          f"than one epoch of {images} images; lower one of them")
    total = recipe.sched.epochs * steps_per_epoch
    if recipe.sched.max_steps:  # a smoke run: the first max_steps of the real schedule, then eval + checkpoint
        total = min(total, recipe.sched.max_steps)
    return Optimization(
        optimizer=build_optimizer(model, recipe.optim),
        schedule=WarmupCosine.from_config(recipe.optim, recipe.sched, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        criterion=functools.partial(soft_cross_entropy, label_smoothing=recipe.reg.label_smoothing),
        accum=accum, steps_per_epoch=steps_per_epoch, total_steps=total)
