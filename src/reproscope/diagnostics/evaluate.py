"""`reproscope diagnose eval --checkpoint PATH`: why a trained model scores near chance on validation.

The symptom is common in public reports about released checkpoints and custom data layouts: training
accuracy is fine, validation top-1 is about 1/K. The causes are few, and each one can be told apart
by evaluating the same weights under the hypothesis that explains it:

1. ``checkpoint-keys``: the state dict against the model: a ``module.`` (DDP) / ``_orig_mod.``
   (torch.compile) / ``model.`` prefix, missing and unexpected keys, shape mismatches. A
   ``load_state_dict(strict=False)`` silently leaves every missing tensor at its random init.
2. ``class-mapping``: train and val class folders (names, sorted order: ImageFolder indexes each
   split's sorted folder names, so a class missing from val shifts every later index), and the
   confusion matrix on val: when a permutation of the predicted classes (Hungarian assignment) is
   far more accurate than the diagonal, the model was trained with another class order.
3. ``preprocessing``: the val images under the configured transform and under the usual mistakes
   (no mean/std, 0-255 instead of 0-1, 0-255 normalised, BGR channel order, the whole image resized
   instead of centre-cropped, ImageNet's mean/std); a variant far better
   than the configured one is how the model was trained.
4. ``raw-vs-ema``: both sets of weights when the checkpoint holds an EMA; an EMA whose horizon
   1/(1 - decay) is long against the steps trained still averages in the random init (``ema-lags``).
   When the EMA scores far below the raw weights and the model has BatchNorm, a copy of the EMA gets
   its BatchNorm statistics recomputed on training images (``torch.optim.swa_utils.update_bn``): an
   EMA that recovers there averaged the weights but not the running statistics (``ema-stale-bn``).
5. ``eval-mode``: the model in train mode (BatchNorm batch statistics, dropout on) against eval mode;
   a large gap either way names the BatchNorm statistics or a forgotten ``model.eval()``.

Each result is a ``checks.CheckResult`` with codes beside its sentences. Thresholds (ours, no paper
gives them): a hypothesis "explains" the symptom when it gains at least ``GAIN`` (0.2) top-1 over the
configured evaluation and ends above twice chance.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks.core import CheckResult
from ..checks.subject import strided_indices
from ..checks.training import frozen_norm_statistics
from ..config import ConfigError, Recipe, apply_overrides, recipe_from_dict
from ..data.augment import center_crop
from ..data.datasets import build_datasets, channel_stats
from ..data.folders import DataError
from ..model.build import build_model
from ..model.spec import spec_in_run, user_model
from ..runfiles import CONFIG, MODEL_SOURCE
from ..train.checkpoint import CheckpointError, load_file, read_state_dict, saved_recipe

GAIN = 0.2  # top-1 (fraction) a hypothesis must add over the configured evaluation to explain it
PREFIXES = ("module.", "_orig_mod.", "model.")
EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict")  # ours, and common names elsewhere (timm's)


@dataclass
class Checkpoint:
    """What a checkpoint file holds: ``model`` state dict, ``ema`` (or None), the recipe dict and
    the step it was saved at (None when the file does not say), and the file's run directory."""

    model: dict
    ema: dict | None
    recipe: dict | None
    step: int | None
    path: Path


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> Checkpoint:
    """A reproscope checkpoint, a ``{"state_dict": ...}`` / ``{"model": ...}`` file (with an EMA under
    one of ``EMA_KEYS``), a plain state dict, a ``.safetensors`` file, or a run directory (its
    ``last.pt``). Without a recipe inside, the recipe is the run's ``config.json`` beside the file.

    Raises:
        CheckpointError: unreadable file, or no state dict of tensors inside.
    """
    path = Path(path)
    if path.is_dir():  # a run directory: its last checkpoint
        if not (path / "last.pt").is_file():
            raise CheckpointError(f"{path} is a directory without a last.pt; give the checkpoint file itself")
        path = path / "last.pt"
    obj = load_file(path, trust_pickle=trust_pickle)
    recipe = None
    if isinstance(obj, dict):
        try:
            recipe = saved_recipe(obj)
        except (KeyError, ValueError):
            recipe = None
    if recipe is None and (path.parent / CONFIG).is_file():  # weights inside a run directory
        recipe = json.loads((path.parent / CONFIG).read_text())
    ema, step = None, None
    if isinstance(obj, dict):
        step = obj.get("step") if isinstance(obj.get("step"), int) else None
        ema = next((obj[k] for k in EMA_KEYS if isinstance(obj.get(k), dict)), None)
    sd = read_state_dict(obj, path)  # prefixes are kept: a "module." prefix is one of the causes diagnosed
    return Checkpoint(sd, ema if isinstance(ema, dict) else None, recipe, step, path)


# ----------------------------------------------------------------------------- 1. keys

def _strip_prefix(sd: dict, model_keys: set[str]) -> tuple[dict, str]:
    """``sd`` with a prefix every key carries (and the model's keys do not) removed, and that prefix."""
    for p in PREFIXES:
        if all(k.startswith(p) for k in sd) and not all(k.startswith(p) for k in model_keys):
            return {k[len(p):]: v for k, v in sd.items()}, p
    return sd, ""


def load_and_check_keys(model: nn.Module, sd: dict) -> CheckResult:
    """Load ``sd`` into ``model`` (non-strict, after stripping a DDP/compile prefix) and say what did
    not match. FAIL on missing keys or shape mismatches (those tensors stay at init), WARN on a
    stripped prefix or unexpected keys alone."""
    own = model.state_dict()
    sd, prefix = _strip_prefix(sd, set(own))
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    model.load_state_dict({k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}, strict=False)
    causes, codes = [], []
    if prefix:
        causes.append(f"every key starts with {prefix!r} (saved from a {'DDP-wrapped' if prefix == 'module.' else 'wrapped'} "
                      f"model); stripped here - strip it in your loader too, or load_state_dict fails or, with "
                      f"strict=False, loads nothing")
        codes.append("keys-prefix")
    if missing:
        causes.append(f"{len(missing)} of the model's {len(own)} tensors are not in the checkpoint (e.g. "
                      f"{', '.join(missing[:4])}): they stay at their random init; load_state_dict(strict=False) "
                      f"hides exactly this")
        codes.append("keys-missing")
    if shapes:
        k, a, b = shapes[0]
        causes.append(f"{len(shapes)} tensors differ in shape (e.g. {k}: checkpoint {list(a)}, model {list(b)}): "
                      f"another model size or number of classes; not loaded")
        codes.append("keys-shape")
    if unexpected:
        causes.append(f"{len(unexpected)} checkpoint tensors have no place in the model (e.g. "
                      f"{', '.join(unexpected[:4])}): another architecture or a renamed module")
        codes.append("keys-unexpected")
    status = "fail" if (missing or shapes) else "warn" if causes else "pass"
    return CheckResult("checkpoint-keys", status,
                       f"{len(own) - len(missing) - len(shapes)}/{len(own)} tensors loaded; {len(unexpected)} unexpected",
                       "every model tensor loaded, none left over",
                       "The checkpoint's tensors must fill the whole model; a tensor left at init makes the "
                       "predictions random.", causes, {"missing": missing, "unexpected": unexpected,
                                                       "shape_mismatch": shapes, "prefix": prefix}, codes)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 256, train_mode: bool = False) -> torch.Tensor:
    """Predicted class per image, [N] int64, for model inputs ``x`` [N, C, H, W]. ``train_mode`` runs the
    model in train mode (batch statistics, dropout) without moving BatchNorm running statistics."""
    was = model.training
    model.train(train_mode)
    try:
        with frozen_norm_statistics(model):
            return torch.cat([model(x[i:i + batch]).float().argmax(1) for i in range(0, len(x), batch)])
    finally:
        model.train(was)


def top1(pred: torch.Tensor, y: torch.Tensor) -> float:
    return (pred == y).float().mean().item()


# ----------------------------------------------------------------------------- 2. class mapping

def best_permutation(pred: torch.Tensor, y: torch.Tensor, k: int) -> tuple[float, dict[int, int]]:
    """Top-1 under the best one-to-one relabelling of the predictions (Hungarian assignment on the
    [K, K] confusion matrix) and the relabelling ``{predicted: true}`` where it differs from identity."""
    from scipy.optimize import linear_sum_assignment
    conf = torch.zeros(k, k, dtype=torch.long)
    conf.index_put_((pred.clamp(0, k - 1), y), torch.ones_like(y), accumulate=True)
    rows, cols = linear_sum_assignment(-conf.numpy())
    acc = conf[rows, cols].sum().item() / max(len(y), 1)
    return acc, {int(r): int(c) for r, c in zip(rows, cols) if r != c}


def class_mapping(pred: torch.Tensor, y: torch.Tensor, k: int, classes: list[str],
                  train_top1: float | None = None) -> CheckResult:
    """FAIL ``class-order`` when relabelling the predictions explains the val top-1. ``train_top1``
    (the same evaluation on training images) says whether both splits or only val are affected."""
    acc = top1(pred, y)
    perm_acc, moved = best_permutation(pred, y, k)
    name = (lambda i: classes[i] if i < len(classes) else str(i))
    causes, codes = [], []
    if perm_acc - acc >= GAIN and perm_acc > 2 / k:
        pairs = ", ".join(f"predicted {name(p)} is val {name(t)}" for p, t in list(moved.items())[:5])
        causes.append(f"relabelling the predictions lifts val top-1 from {acc:.1%} to {perm_acc:.1%} ({pairs}"
                      f"{', ...' if len(moved) > 5 else ''}): "
                      + (f"training images score {train_top1:.1%} too, so the checkpoint was trained with another "
                         f"class list than this data's (another folder sort or CSV mapping, or a released "
                         f"checkpoint's own class order); map its outputs to these classes"
                         if train_top1 is not None and train_top1 < acc + GAIN else
                         "the model was trained with another class order than this val set's (class-to-index built "
                         "per split, a different folder sort, a CSV mapping); build one class list from train and "
                         "index val with it"))
        codes.append("class-order")
    return CheckResult("class-mapping", "fail" if causes else "pass",
                       f"val top-1 {acc:.1%}; best relabelling {perm_acc:.1%} ({len(moved)} classes moved)",
                       f"no relabelling gains >= {GAIN:.0%}",
                       "A model that learned the classes under one index order scores near chance when val "
                       "uses another; the confusion matrix then has its mass off the diagonal, in a permutation.",
                       causes, {"top1": acc, "permuted_top1": perm_acc, "relabelling": moved, "num_classes": k}, codes)


def folder_mismatch(err: DataError) -> CheckResult:
    """The data loader refused the train/val layout: the class-mapping result that says why."""
    return CheckResult("class-mapping", "fail", "train and val folders do not give one class list",
                       "the same class folders in train/ and val/",
                       "ImageFolder indexes each split's sorted folder names: a class missing from val, an extra "
                       "one, or a flat val folder (read as a single class, or none) shifts or breaks every label.",
                       [str(err)], {}, ["class-folders"])


# ----------------------------------------------------------------------------- 3. preprocessing

def preprocessing_variants(raw: torch.Tensor, size: int, mean, std, only_configured: bool = False
                           ) -> dict[str, torch.Tensor]:
    """The val images ``raw`` (uint8 [N, 3, H, W]) as model inputs under the configured transform and
    the usual mistakes; keys name each variant (``only_configured``: the configured one alone)."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x01 = center_crop(raw, size).float() / 255  # as the validation BatchTransform prepares it
    if only_configured:
        return {"configured": (x01 - m) / s}
    squashed = F.interpolate(raw.float() / 255, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)  # the whole image resized: no centre crop
    return {"configured": (x01 - m) / s,
            "resized whole image, no centre crop": (squashed - m) / s,
            "no mean/std (0-1)": x01,
            "0-255, no mean/std": x01 * 255,
            "0-255 normalised with 0-1 mean/std": (x01 * 255 - m) / s,
            "BGR channel order": ((x01 - m) / s).flip(1),
            "ImageNet mean/std": (x01 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)}


def preprocessing(model: nn.Module, variants: dict[str, torch.Tensor], y: torch.Tensor, k: int) -> CheckResult:
    """FAIL ``preprocessing-mismatch`` when another input transform than the configured one is how the
    model scores well."""
    accs = {name: top1(predict(model, x), y) for name, x in variants.items()}
    best = max(accs, key=accs.get)
    causes, codes = [], []
    if best != "configured" and accs[best] - accs["configured"] >= GAIN and accs[best] > 2 / k:
        causes.append(f"with {best} the val top-1 is {accs[best]:.1%}, with the configured transform "
                      f"{accs['configured']:.1%}: the model was trained on inputs prepared that way; evaluate "
                      f"with the training transform (same scale, mean/std, channel order)")
        codes.append("preprocessing-mismatch")
    return CheckResult("preprocessing", "fail" if causes else "pass",
                       "; ".join(f"{n} {a:.1%}" for n, a in accs.items()),
                       f"no variant beats the configured transform by >= {GAIN:.0%}",
                       "Validation must prepare images as training did; a different scale, normalisation or "
                       "channel order feeds the model inputs it never saw.", causes, {"top1": accs}, codes)


# ----------------------------------------------------------------------------- 4. raw vs EMA

def recalibrated(model: nn.Module, train_x: torch.Tensor, batch: int = 64) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are recomputed on the model inputs
    ``train_x`` [N, C, H, W], in batches of ``batch`` (``torch.optim.swa_utils.update_bn``: reset, then
    the cumulative average over the batches, in train mode); in eval mode on return. ``model`` is
    not changed."""
    from torch.optim.swa_utils import update_bn
    twin = copy.deepcopy(model)
    with torch.no_grad():
        update_bn([train_x[i:i + batch] for i in range(0, len(train_x), batch)], twin)
    return twin.eval()


def raw_vs_ema(model: nn.Module, ema: dict, x: torch.Tensor, y: torch.Tensor, decay: float,
               steps: int | None, train_x: torch.Tensor | None = None) -> CheckResult:
    """Top-1 of the raw and the EMA weights on ``x`` [N, C, H, W] with labels ``y`` [N]; WARN when the EMA
    is far worse: ``ema-stale-bn`` when the EMA with its BatchNorm statistics recomputed on the training
    inputs ``train_x`` (see ``recalibrated``) comes within ``GAIN`` of the raw weights (the EMA averaged
    the weights but not the BatchNorm buffers), else ``ema-lags``. Without ``train_x`` or BatchNorm,
    the recalibration is not tried (``details["ema_recalibrated_top1"]`` is None)."""
    raw_acc = top1(predict(model, x), y)
    raw_sd = {k: v.clone() for k, v in model.state_dict().items()}
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    recal_acc = None
    try:
        model.load_state_dict(ema)
        ema_acc = top1(predict(model, x), y)
        if raw_acc - ema_acc >= GAIN and has_bn and train_x is not None and len(train_x) > 1:
            recal_acc = top1(predict(recalibrated(model, train_x), x), y)
    finally:
        model.load_state_dict(raw_sd)
    horizon = 1 / (1 - decay) if 0 < decay < 1 else math.nan
    causes, codes = [], []
    if raw_acc - ema_acc >= GAIN and recal_acc is not None and raw_acc - recal_acc < GAIN:
        causes.append(f"the EMA weights score {ema_acc:.1%}, the raw weights {raw_acc:.1%}, and the EMA with its "
                      f"BatchNorm statistics recomputed on {len(train_x)} training images {recal_acc:.1%}: the EMA's "
                      f"BatchNorm running_mean/running_var are stale (the weights were averaged, the buffers were "
                      f"not); average the buffers with the same decay (timm's ModelEmaV3 does; "
                      f"AveragedModel(use_buffers=True)), or run torch.optim.swa_utils.update_bn on the EMA model "
                      f"before evaluating it")
        codes.append("ema-stale-bn")
    elif raw_acc - ema_acc >= GAIN:
        trained = f"{steps} steps trained" if steps is not None else "the steps trained unknown"
        why = (f"the EMA averages over ~{horizon:.0f} steps (decay {decay:g}) against {trained}, so it still holds "
               f"the early weights; evaluate the raw weights, or lower reg.ema_decay for a short run"
               if 0 < decay < 1 else
               f"the recipe has no EMA (reg.ema_decay {decay:g}), so these EMA weights were not averaged over this "
               f"run; evaluate the raw weights")
        recal = (f" (recomputing its BatchNorm statistics gives {recal_acc:.1%}: not the buffers)"
                 if recal_acc is not None else "")
        causes.append(f"the EMA weights score {ema_acc:.1%}{recal}, the raw weights {raw_acc:.1%}: {why}")
        codes.append("ema-lags")
    measured = f"raw {raw_acc:.1%}, EMA {ema_acc:.1%}" + (
        f", EMA with BatchNorm statistics recomputed {recal_acc:.1%}" if recal_acc is not None else "")
    return CheckResult("raw-vs-ema", "warn" if causes else "pass", measured,
                       f"EMA within {GAIN:.0%} of raw", "An EMA of the weights helps only once the run is many "
                       "times longer than its averaging horizon, and only when its BatchNorm statistics follow "
                       "its weights.", causes,
                       {"raw_top1": raw_acc, "ema_top1": ema_acc, "ema_recalibrated_top1": recal_acc,
                        "horizon_steps": horizon, "steps": steps}, codes)


# ----------------------------------------------------------------------------- 5. eval mode

def eval_mode(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, batch: int) -> CheckResult:
    """Top-1 in eval mode and in train mode (batch statistics at ``batch`` images, dropout on)."""
    ev, tr = top1(predict(model, x, batch), y), top1(predict(model, x, batch, train_mode=True), y)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    causes, codes = [], []
    if ev - tr >= GAIN:
        causes.append(f"in train mode the model scores {tr:.1%} (eval mode {ev:.1%}): an evaluation that forgets "
                      f"model.eval() gets this (BatchNorm batch statistics, dropout on); call model.eval() "
                      f"before validating")
        codes.append("train-mode-eval")
    elif tr - ev >= GAIN and tr > 2 / k:
        causes.append(f"in eval mode the model scores {ev:.1%}, in train mode {tr:.1%}: "
                      + ("the BatchNorm running statistics do not match the weights (not updated, reset, or not "
                         "saved with them); recompute them on training batches, or check that buffers are saved"
                         if has_bn else "a module computes something else in eval mode"))
        codes.append("running-stats")
    return CheckResult("eval-mode", "fail" if "running-stats" in codes else "warn" if causes else "pass",
                       f"eval mode {ev:.1%}, train mode {tr:.1%} (batches of {batch})",
                       f"within {GAIN:.0%} of each other",
                       "Evaluation runs in eval mode: BatchNorm uses its running statistics and dropout is off.",
                       causes, {"eval_top1": ev, "train_mode_top1": tr}, codes)


# ----------------------------------------------------------------------------- the command

def _make_model(recipe: Recipe, model_spec: str | None, ckpt: Checkpoint, k: int, in_chans: int):
    if model_spec:
        return user_model(model_spec, k, img_size=recipe.data.img_size, in_chans=in_chans)()
    src = ckpt.path.parent / MODEL_SOURCE
    if src.is_file():
        spec = spec_in_run(json.loads(src.read_text()), ckpt.path.parent)
        print(f"eval: rebuilding the run's model from {spec} (the run trained it; --model chooses another)")
        return user_model(spec, k, img_size=recipe.data.img_size, in_chans=in_chans)()
    return build_model(recipe.model, k, recipe.data.img_size)


def run_eval_diagnosis(recipe: Recipe | None, checkpoint: str | Path, *, model_spec: str | None = None,
                       overrides: list[str] | None = None, trust_pickle: bool = False,
                       n_val: int = 1000, n_train: int = 500) -> list[CheckResult]:
    """The results 1-5 of the module docstring for ``checkpoint`` on ``recipe``'s data (the recipe the
    checkpoint carries when ``recipe`` is None); ``overrides`` apply on top.

    Raises:
        CheckpointError: unreadable checkpoint. ConfigError: no recipe given and none in the file.
    """
    ckpt = read_checkpoint(checkpoint, trust_pickle=trust_pickle)
    if recipe is None:
        if ckpt.recipe is None:
            raise ConfigError(f"{checkpoint} carries no recipe: pass --recipe NAME (and --set data.root=... for "
                              f"your data)")
        recipe = recipe_from_dict(ckpt.recipe)
    recipe = apply_overrides(recipe, overrides or [])
    results: list[CheckResult] = []
    try:
        train, val = build_datasets(recipe.data, progress=False)
    except DataError as e:
        return [folder_mismatch(e)]
    k = recipe.data.num_classes or train.num_classes
    model = _make_model(recipe, model_spec, ckpt, k, int(train.images.shape[1]))
    results.append(load_and_check_keys(model, ckpt.model))
    model.eval()
    mean, std = channel_stats(train)
    vi = strided_indices(len(val), n_val)
    if results[0].status == "fail":  # weights left at init: every accuracy below would be of a random model
        return results + [_not_measured(n) for n in ("class-mapping", "preprocessing", "eval-mode")]
    variants = preprocessing_variants(val.images[vi], recipe.data.img_size, mean, std)
    vy = val.labels[vi].long()
    ti = strided_indices(len(train), n_train)
    tx = preprocessing_variants(train.images[ti], recipe.data.img_size, mean, std, only_configured=True)["configured"]
    train_acc = top1(predict(model, tx), train.labels[ti].long())
    pred = predict(model, variants["configured"])
    mapping = class_mapping(pred, vy, k, list(val.classes), train_acc)
    mapping.details["train_top1"] = train_acc
    mapping.measured += f"; training images {train_acc:.1%}"
    results.append(mapping)
    results.append(preprocessing(model, variants, vy, k))
    if ckpt.ema is not None:
        results.append(raw_vs_ema(model, ckpt.ema, variants["configured"], vy, recipe.reg.ema_decay, ckpt.step,
                                  train_x=tx))
    results.append(eval_mode(model, variants["configured"], vy, k, recipe.data.eval_batch_size))
    return results


def _not_measured(name: str) -> CheckResult:
    return CheckResult(name, "warn", "not measured: the checkpoint does not fill the model",
                       "the weights loaded", "Measured on the trained weights only.",
                       ["fix checkpoint-keys first: with tensors left at init the accuracies are of a random model"],
                       {}, ["not-measured"])


SUSPECT_WARNS = ("keys-prefix", "ema-lags", "ema-stale-bn", "train-mode-eval")  # handled here, but a user's loader may not


def verdict(results: list[CheckResult]) -> str:
    """One line: the first failing cause's code, or that none of the causes checked explains it."""
    for r in results:
        if r.status == "fail":
            return f"verdict: {r.name} [{r.codes[0] if r.codes else r.status}] - fix it first, then run this again"
    cm = next((r for r in results if r.name == "class-mapping" and "train_top1" in r.details), None)
    if cm is not None and cm.details["train_top1"] < 2 / cm.details["num_classes"]:  # under twice chance
        return (f"verdict: the weights score {cm.details['train_top1']:.1%} on training images too (val "
                f"{cm.details['top1']:.1%}): the model has not learned the task, so the fault is in training, not in "
                f"the evaluation; train longer, or run `reproscope diagnose all --model ...` on the training setup")
    warns = [f"{r.name} [{c}]" for r in results if r.status == "warn" for c in r.codes if c in SUSPECT_WARNS]
    if warns:
        return (f"verdict: these weights evaluate correctly here; if your own evaluation scores near chance, "
                f"look at {', '.join(warns)} above: each one breaks an evaluation that does not handle it")
    return ("verdict: no cause checked here explains a low validation score (keys, class order, preprocessing, "
            "EMA, eval mode); compare your evaluation loop with `reproscope train`'s, or run `reproscope diagnose "
            "all --model ...` on the training setup")


def diagnose_eval(recipe: Recipe | None, checkpoint: str, *, model_spec: str | None = None,
                  overrides: list[str] | None = None, trust_pickle: bool = False, as_json: bool = False) -> int:
    """`reproscope diagnose eval`: print the results; 1 when any FAILs, else 0."""
    from .diagnose import format_results
    results = run_eval_diagnosis(recipe, checkpoint, model_spec=model_spec, overrides=overrides,
                                 trust_pickle=trust_pickle)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    else:
        print(format_results(results))
        print("\n" + verdict(results))
    return 1 if any(r.status == "fail" for r in results) else 0
