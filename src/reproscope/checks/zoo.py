"""The bug zoo: classic bugs planted in a correct recipe, to prove that the checks catch them.

Each :class:`Bug` is a small documented mutation (``checks/subject.Mutation``) of a correct recipe:
its values, its model, its datasets, or its built Trainer. ``reproscope zoo`` runs
``diagnose all`` on every bug and on the correct recipes, and prints the detection table that the
README shows. ``expect`` names the check that must fail and ``code`` the cause code it must report
(``CheckResult.codes``; wording is never matched); the checks themselves know nothing about these bugs (they measure effects: gradients,
losses, hashes, saturation), so passing the zoo is evidence, not a tautology.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, nearest
from ..data.augment import BatchTransform
from .core import block_modules
from .subject import Mutation


class NotPlantable(ValueError):
    """A bug that cannot be planted in this model (it lacks the part the bug changes)."""


@dataclass(frozen=True)
class Bug:
    name: str
    what: str  # the bug in one line, as a user would have written it
    mutation: Mutation
    expect: str  # the check that must fail
    code: str  # a cause code that check must report
    recipe: str = "quickstart"
    any_model: bool = True  # plantable in a user's model (zoo --model); False: it rewrites our ViT's code


# ----------------------------------------------------------------------------- model mutations

def _softmax_before_ce(m: nn.Module) -> nn.Module:
    m.register_forward_hook(lambda mod, i, out: out.softmax(-1))
    return m


def _freeze_block(m: nn.Module) -> nn.Module:
    blocks = block_modules(m)
    if len(blocks) < 2:
        raise NotPlantable("frozen-block needs repeated blocks (blocks.N or stages.N.M modules)")
    for p in blocks[1][1].parameters():  # blocks.1 of a ViT
        p.requires_grad_(False)
    return m


def _init_times_10(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                mod.weight.mul_(10)
    return m


def _no_residual_forward(self, x):
    x = self.drop_path1(self.attn(self.norm1(x)))  # bug: `x = x + ...` lost
    return self.drop_path2(self.mlp(self.norm2(x)))


def _drop_residual(m: nn.Module) -> nn.Module:
    for blk in m.blocks:
        blk.forward = types.MethodType(_no_residual_forward, blk)
    return m


def _mix_samples(m: nn.Module) -> nn.Module:
    def hook(mod, i, out):  # [B, N, C] -> [N, B, C] -> reshaped back as if it were [B, N, C]
        return out.transpose(0, 1).reshape(out.shape)
    next(iter(m.children())).register_forward_hook(hook)  # the stem: a ViT's patch_embed
    return m


def _dropout_at_eval(m: nn.Module) -> nn.Module:
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    if not linears:
        raise NotPlantable("dropout-at-eval needs a Linear classifier")
    # before the last Linear (a ViT's head); F.dropout defaults to training=True
    linears[-1].register_forward_pre_hook(lambda mod, args: (F.dropout(args[0], 0.2),))
    return m


# ----------------------------------------------------------------------------- data mutations

def _shuffle_labels(train, val):
    g = torch.Generator().manual_seed(0)
    return dataclasses.replace(train, labels=train.labels[torch.randperm(len(train), generator=g)]), val


def _overlap(train, val):
    n = len(val) // 2  # half the validation set replaced by training images
    images, labels = val.images.clone(), val.labels.clone()
    images[:n], labels[:n] = train.images[:n], train.labels[:n]
    return train, dataclasses.replace(val, images=images, labels=labels)


# ----------------------------------------------------------------------------- trainer mutations
# (planted through the Trainer's constructor arguments: zero_grad, make_transform)

class _Unnormalised(BatchTransform):
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * 255  # the [0, 1] floats scaled back to 0-255, no mean/std


def _augment_val(**kw) -> BatchTransform:
    return BatchTransform(**{**kw, "train": True})  # the validation transform augments too


BUGS: list[Bug] = [
    Bug("labels-shuffled", "training labels permuted, images kept", Mutation(datasets=_shuffle_labels),
        "input-independent", "targets-uninformative"),
    Bug("zero-grad-forgotten", "optimizer.zero_grad() never called: gradients accumulate across steps",
        Mutation(trainer={"zero_grad": False}), "overfit-batch", "grad-leak"),
    Bug("unnormalised-inputs", "inputs fed as 0-255 floats, no mean/std normalisation", Mutation(trainer={"make_transform": _Unnormalised}), "data", "not-normalised"),
    Bug("softmax-before-ce", "the model returns softmax probabilities into cross-entropy",
        Mutation(model=_softmax_before_ce), "overfit-batch", "outputs-bounded"),
    Bug("frozen-block", "blocks[1] left with requires_grad=False", Mutation(model=_freeze_block), "grad-flow", "frozen-params"),
    Bug("lr-1000x", "optim.lr 1000x too high (2.0)", Mutation(recipe={"optim.lr": 2.0}), "lr-range", "lr-too-high"),
    Bug("lr-zero", "optim.lr effectively 0 (1e-9; exactly 0 is refused by the config)",
        Mutation(recipe={"optim.lr": 1e-9}), "lr-range", "lr-too-low"),
    Bug("init-10x", "every Linear/Conv weight initialised with 10x the std", Mutation(model=_init_times_10),
        "init-scale", "init-std-too-large"),
    Bug("residual-dropped", "each block computes x = f(x) instead of x = x + f(x)", Mutation(model=_drop_residual),
        "init-scale", "residual-dropped", any_model=False),
    Bug("mix-samples-reshape", "patch tokens reshaped [B, N, C] -> [N, B, C] -> viewed back as [B, N, C]",
        Mutation(model=_mix_samples), "batch-independence", "mixes-samples"),
    Bug("augment-val", "the training augmentation applied to validation data", Mutation(trainer={"make_transform": _augment_val}), "data", "val-augmented"),
    Bug("dropout-at-eval", "F.dropout(x, 0.2) before the head (training=True by default)",
        Mutation(model=_dropout_at_eval), "determinism", "eval-random"),
    Bug("train-val-overlap", "half of the validation images are copies of training images", Mutation(datasets=_overlap),
        "data", "train-val-overlap"),
    Bug("label-smoothing-1", "reg.label_smoothing=1.0: uniform targets", Mutation(recipe={"reg.label_smoothing": 1.0}),
        "input-independent", "targets-uninformative"),
    Bug("dyt-alpha0-50", "DyT alpha0 = 50 instead of 0.5", Mutation(recipe={"model.dyt_alpha0": 50.0}),
        "init-scale", "squash-saturated", recipe="quickstart-dyt", any_model=False),
]

ZOO_RECIPE_OVERRIDES = {"data.train_size": 2000, "data.val_size": 300, "data.batch_size": 64}  # shapes10 shrunk


def get_bug(name: str) -> Bug:
    for b in BUGS:
        if b.name == name:
            return b
    names = [b.name for b in BUGS]
    raise ConfigError(f"unknown bug {name!r}{nearest(name, names)}; the zoo has: {', '.join(names)}")


def caught(bug: Bug, results) -> bool:
    """The expected check failed and reports the bug's cause code."""
    r = next((r for r in results if r.name == bug.expect), None)
    return r is not None and r.status == "fail" and bug.code in r.codes


CORRECT_RECIPES = ("quickstart", "quickstart-dyt", "dyt-vit_tiny", "dyt-vit_tiny_ln", "dyt-convnext_tiny",
                   "kat-kat_tiny", "kat-vit_tiny", "mambaout-mambaout_femto", "mambaout-vit_tiny")

# What the checks found in our own built-in recipes, unchanged (no mutation). Such a recipe must fail
# exactly its expected check, with the cause named, and no other check.
# Correct, widely used models (and two of ours) that `diagnose all` must not FAIL on the zoo's data
# (tests/test_user_models.py; `python experiments/false_alarm_panel.py` prints what each gets).
CORRECT_MODELS = (
    "torchvision.models:resnet18", "torchvision.models:mobilenet_v3_small", "torchvision.models:efficientnet_b0",
    "timm:convnext_atto", "timm:deit_tiny_patch16_224", "timm:resnet10t", "vit_tiny", "mambaout_femto",
)

RECIPE_FINDINGS = {
    "dyt-convnext_tiny": Bug(
        "dyt-convnext_tiny-slow-start",
        "none planted: ConvNeXt-T with DyT at 32 px starts with logit std ~1e-4 and does not learn in its schedule "
        "(its LayerNorm twin does; experiments/convnext_dyt_plateau.py)",
        Mutation(), "input-independent", "outputs-near-zero", recipe="dyt-convnext_tiny"),
}
