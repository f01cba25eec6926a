"""A training loop held against a paper recipe: every deviation, with a code and its consequence.

One implementation for three callers: ``reproscope.watch(..., paper=NAME)`` (a loop observed by
:class:`.loop.LoopObserver`), ``reproscope audit RUN_DIR --against NAME`` (a watched run read back)
and the ``recipe-audit`` check (a recipe's own facts, :func:`recipe_facts`). Both sides are *facts*:
flat recipe keys (``optim.lr``, ``sched.warmup_epochs`` ...) plus the keys a recipe implies but does
not hold (``sched.decay``: the Trainer's schedule is a cosine; ``model.drop_path_rule``: linear in
depth as every registered model builds it; ``data.shuffle``; ``eval.train_mode``; ``precision.scaler``).

Each finding is a deviation row in the schema of a recipe run's ``deviations.json`` (``key``,
``parent`` = the paper's value, ``value`` = yours, ``reason``) with ``code``, ``source`` (the paper
section the value comes from) and ``mistake`` (a setting that usually means a bug, not a choice).
The codes (machine-readable; tests assert them):

=====================  ================================================================
code                   meaning
=====================  ================================================================
decay-on-1d-params     weight decay on 1-D parameters (norms, DyT alpha, biases), position
                       embeddings or class tokens
no-warmup              the paper warms up, the loop does not
warmup-share           warmup is more than 3x shorter or longer, as a share of the run
warmup-not-shorter     warmup is not shorter than training
sched-shape            the lr decays in another shape (step, linear, constant ...) than cosine
lr-per-epoch           the lr changes once per epoch (a scheduler stepped per epoch)
lr-batch-ratio         lr per image outside 1/4x..4x the paper's (linear scaling rule)
optim-betas            AdamW betas differ from the paper's
optim-class            another optimizer than the paper's
grad-clip              clipping where the paper has none, or none where it clips
clip-before-unscale    with a GradScaler, a clip threshold that is tiny (< 1e-2) while threshold x
                       the scaler's scale is a usual one (0.1..100): clip_grad_norm_ ran on the
                       scaled gradients, before scaler.unscale_
label-smoothing        the paper smooths labels, the loop does not (or the reverse)
label-smoothing-high   smoothing >= 0.5
mixing-missing         the paper mixes (mixup/cutmix), the loop does not
drop-path-rule         drop path constant over depth where the paper's is linear
ema-too-slow           EMA horizon longer than half the run
ema-missing            the paper evaluates an EMA, the loop has none
eval-train-mode        evaluation ran the model in train mode (a likely mistake when the model has
                       BatchNorm, dropout or drop path; the row names those it has)
no-shuffle             the training data is not shuffled
fp16-no-scaler         fp16 autocast without a GradScaler
value                  any other key that differs (a deviation, not a likely mistake)
=====================  ================================================================

A row the user declared (``watch(deviations={key: reason})``, ``reproscope audit --reasons FILE``)
keeps its code, carries ``declared: true``, the user's ``reason`` and the rule's sentence as
``consequence``, and is never a likely mistake. What the paper side holds is what takes effect in the
reference training script (timm's ``train.py``): colour jitter is off when RandAugment is on, and
RandAugment's magnitude and its noise mean nothing without RandAugment. A loop that ended early
(``ending``) showed only part of its schedule: ``RUN_LENGTH_KEYS`` are not observed then.

The 1/4x..4x lr band, the 3x warmup band, "half the run" for EMA and the clip-before-unscale bounds
(``CLIP_TINY``, ``CLIP_USUAL``, 5 %) are ours (no paper gives them); the linear scaling rule is Goyal
et al. 2017, Sec. 2.1; that ``scaler.unscale_`` must come before clipping is torch's AMP guide
("Working with Unscaled Gradients", docs/notes/amp_examples).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, Recipe, flat_items, nearest
from ..papers import PAPERS
from ..recipes import DATASETS, get_recipe, list_recipes

# keys compared value against value (besides the coded rules); operational keys (run.*, instrument.*,
# data.root, workers, caches) are never deviations of the science
COMPARED = ("optim.name", "optim.lr", "optim.weight_decay", "optim.eps", "optim.accum_steps", "data.batch_size", "data.img_size",
            "data.eval_crop_pct", "sched.epochs", "aug.hflip", "aug.rrc_scale_min", "aug.interpolation",
            "aug.crop_pad", "aug.randaug_n", "aug.randaug_m", "aug.randaug_mstd", "aug.color_jitter",
            "aug.random_erasing",
            "aug.mixup_alpha", "aug.cutmix_alpha", "reg.ema_decay", "reg.eval_ema", "model.drop_path", "precision.amp")
# keys a loop may not expose; said "not observed" when absent
EXPECTED = ("optim.name", "optim.lr", "optim.weight_decay", "optim.beta1", "optim.beta2", "optim.grad_clip",
            "optim.accum_steps", "data.batch_size", "data.img_size", "sched.decay", "sched.warmup_epochs",
            "sched.epochs", "reg.label_smoothing", "aug.mixing", "aug.hflip", "aug.rrc_scale_min", "aug.randaug_n",
            "aug.random_erasing", "data.shuffle", "data.eval_crop_pct", "model.drop_path", "reg.ema_decay",
            "reg.eval_ema", "eval.train_mode", "precision.amp")
LR_BAND = (0.25, 4.0)
WARMUP_BAND = 3.0
CODES = ("decay-on-1d-params", "no-warmup", "warmup-share", "warmup-not-shorter", "sched-shape", "lr-per-epoch",
         "lr-batch-ratio", "optim-betas", "optim-class", "grad-clip", "label-smoothing", "label-smoothing-high",
         "mixing-missing", "drop-path-rule", "ema-too-slow", "ema-missing", "eval-train-mode", "no-shuffle",
         "fp16-no-scaler", "clip-before-unscale", "value")
# clip-before-unscale: a clip threshold under CLIP_TINY whose product with the scaler's scale lies within
# 5 % of CLIP_USUAL (the max norms people pass to clip_grad_norm_: 0.1 .. 100; ours)
CLIP_TINY = 1e-2
CLIP_USUAL = (0.1, 100.0)
# facts that depend on how long the loop ran: not observed when it ended early (watch's ``ending``)
RUN_LENGTH_KEYS = ("sched.epochs", "sched.total_steps", "sched.warmup_share", "sched.min_lr", "sched.decay")
# keys a loop's facts hold that a recipe does not (``recipe_facts`` adds them on the paper's side)
LOOP_KEYS = ("sched.decay", "sched.lr_changes_every", "sched.total_steps", "sched.warmup_steps",
             "sched.warmup_share", "model.drop_path_rule", "model.dropout", "data.shuffle", "eval.train_mode",
             "precision.scaler", "optim.decayed_no_decay", "aug.mixing")
# a declared key that names another spelling of a row's key
_DECLARED_ALIASES = {"reg.eval_ema": "reg.ema_decay", "sched.warmup_steps": "sched.warmup_epochs",
                     "sched.warmup_share": "sched.warmup_epochs", "aug.mixing": "aug.mixup_alpha",
                     "aug.cutmix_alpha": "aug.mixup_alpha", "optim.beta2": "optim.beta1",
                     "sched.total_steps": "sched.epochs", "model.drop_path_rule": "model.drop_path",
                     "sched.lr_changes_every": "sched.lr_changes_every", "precision.scaler": "precision.amp"}
# the reference training script's no-decay rule (timm's optimizer factory, param_groups_weight_decay)
NO_DECAY_RULE = ("the reference training script's rule (timm's optimizer factory): no decay for tensors of ndim <= 1 "
                 "and for the names in the model's no_weight_decay() (timm's ViTs list pos_embed and cls_token); "
                 "tensors of 2 or more dimensions are decayed unless listed there")
_RULE_WORDS = {"1-d": "ndim <= 1", "no_weight_decay()": "listed in the model's no_weight_decay()",
               "position-embedding": "a position embedding (the reference model lists it in no_weight_decay())",
               "class-token": "a class token (the reference model lists it in no_weight_decay())"}


def resolve_against(name: str) -> Recipe:
    """The recipe a loop is audited against: a registered recipe name, or a paper key (``dyt``, ``kat``,
    ``mambaout``) for that paper's method recipe (``papers.PaperSpec.plan.method``).

    Raises:
        ConfigError: neither a recipe nor a paper key (the message names the nearest of both).
    """
    if name in PAPERS:
        return get_recipe(PAPERS[name].plan.method[1])
    try:
        return get_recipe(name)
    except ConfigError:
        names = [r.name for r in list_recipes()] + list(PAPERS)
        raise ConfigError(f"against={name!r} is neither a registered recipe nor a paper key "
                          f"({', '.join(sorted(PAPERS))}){nearest(name, names)}; "
                          f"`reproscope recipes` lists the recipes") from None


def read_declared(deviations: dict | str | Path | None) -> dict[str, str]:
    """Your declared deviations, ``{key: reason}``: a mapping, or a JSON / YAML file of one. A key is a
    recipe key (``sched.warmup_epochs``), one of the loop's own keys (``LOOP_KEYS``) or an audit code
    (``ema-missing``).

    Raises:
        ConfigError: a missing or unreadable file, a value that is not a reason, or an unknown key (the
            message names the file or argument, the key, and the nearest known one).
    """
    if deviations is None:
        return {}
    where = "deviations="
    if isinstance(deviations, (str, Path)):
        where = str(deviations)
        p = Path(deviations)
        if not p.is_file():
            raise ConfigError(f"{where}: no such file (a JSON or YAML mapping of key: reason)")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml
                deviations = yaml.safe_load(text)
            else:
                deviations = json.loads(text)
        except Exception as e:  # JSON and YAML errors alike: name the file
            raise ConfigError(f"{where}: not a readable {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'} "
                              f"mapping ({type(e).__name__}: {e})") from None
    if not isinstance(deviations, dict):
        raise ConfigError(f"{where}: give a mapping of key: reason, e.g. {{\"sched.warmup_epochs\": \"why\"}}")
    known = set(flat_items(get_recipe("quickstart"))) | set(LOOP_KEYS) | set(CODES)
    out = {}
    for key, reason in deviations.items():
        if key not in known:
            raise ConfigError(f"{where}: {key!r} is not a recipe key or an audit code{nearest(str(key), known)}; "
                              f"`reproscope keys --names` lists the keys")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{where}: {key!r} needs a reason (a sentence), got {reason!r}")
        out[str(key)] = reason.strip()
    return out


@dataclass(frozen=True)
class Finding:
    """One deviation row (``deviations.json`` schema): ``parent`` the paper's value, ``value`` yours."""
    key: str
    parent: Any
    value: Any
    reason: str
    code: str = "value"
    source: str = ""
    mistake: bool = False
    observed: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def steps_per_epoch(recipe: Recipe) -> int | None:
    """Optimizer steps per epoch of a recipe: its dataset's training images (``recipes.DATASETS``, or
    ``data.train_size`` for the built-in data) over batch x accumulation; None for an unknown dataset."""
    r = recipe
    n = {d.name: d.n_train for d in DATASETS}.get(r.data.dataset)
    if n is None and r.data.dataset == "imagenet":
        n = 1_281_167  # ImageNet-1K's training split
    if n is None and r.data.dataset == "shapes10":
        n = r.data.train_size
    return max(1, n // (r.data.batch_size * r.optim.accum_steps)) if n else None


def recipe_facts(recipe: Recipe) -> dict:
    """A recipe as facts: every flat key, plus what the Trainer does with it (cosine decay per step,
    linear drop path, shuffled data, eval mode, a scaler exactly for fp16, the run's steps)."""
    f = dict(flat_items(recipe))
    spe = steps_per_epoch(recipe)
    a = recipe.aug
    f.update({"sched.decay": "cosine", "sched.lr_changes_every": 1, "model.drop_path_rule":
              "linear" if recipe.model.drop_path > 0 else "off", "data.shuffle": True, "eval.train_mode": False,
              "precision.scaler": recipe.precision.amp == "fp16", "optim.decayed_no_decay": [],
              "aug.mixing": (a.mixup_alpha > 0 or a.cutmix_alpha > 0) and a.mix_prob > 0})
    if spe:
        f["sched.total_steps"] = spe * recipe.sched.epochs
        f["sched.warmup_steps"] = round(recipe.sched.warmup_epochs * spe)
    f["sched.warmup_share"] = recipe.sched.warmup_epochs / recipe.sched.epochs
    return effective(f)


def effective(f: dict) -> dict:
    """Facts as they take effect in timm's training script (and the Trainer, ``data.augment``): colour
    jitter is off when RandAugment is on; RandAugment's magnitude and magnitude noise are dropped when it
    is off (they do nothing). Returns a new dict."""
    f = dict(f)
    if f.get("aug.randaug_n", 0) and f.get("aug.color_jitter"):
        f["aug.color_jitter"] = 0.0
    if f.get("aug.randaug_n", None) == 0:
        f.pop("aug.randaug_m", None)
        f.pop("aug.randaug_mstd", None)
    return f


def source_of(recipe: Recipe, key: str) -> str:
    """Where the recipe's value comes from: the paper recipe's source, or the reduced recipe's reason."""
    if key in recipe.sources:
        return recipe.sources[key]
    parent = get_recipe(recipe.parent) if recipe.parent else None
    if key in recipe.deviations:
        return f"{recipe.name}: {recipe.deviations[key]}"
    if parent is not None:
        return parent.sources.get(_source_key(key), "") or parent.sources.get(key, "")
    return recipe.sources.get(_source_key(key), "")


def _source_key(key: str) -> str:
    return {"sched.decay": "sched.min_lr", "model.drop_path_rule": "model.drop_path", "aug.mixing": "aug.mixup_alpha",
            "sched.warmup_steps": "sched.warmup_epochs"}.get(key, key)


# ----------------------------------------------------------------------------- smells (no paper needed)

def lr_batch_sentence(lr: float, eff: int, ref_lr: float, ref_eff: int, who: str, fix_keys: bool = True) -> str:
    """A sentence when lr per image (lr / effective batch) is outside ``LR_BAND`` x the reference's,
    else "". Linear scaling (Goyal et al. 2017, Sec. 2.1) gives the lr that would keep the ratio."""
    if not (lr and eff and ref_lr and ref_eff):
        return ""
    ratio = (lr / eff) / (ref_lr / ref_eff)
    if LR_BAND[0] <= ratio <= LR_BAND[1]:
        return ""
    scaled = ref_lr * eff / ref_eff
    fix = f"--set optim.lr={scaled:.3g}" if fix_keys else f"lr {scaled:.3g}"
    return (f"lr per image is {ratio:.3g}x {who}: lr {lr:g} at effective batch {eff} vs lr {ref_lr:g} at {ref_eff}; "
            f"linear scaling gives {fix}")


def smells(facts: dict, ref: Recipe | None = None, *, ref_name: str = "", fix_keys: bool = True) -> list[Finding]:
    """Settings that usually mean a mistake, whatever the paper: 1-D parameters decayed, warmup not
    shorter than training, an EMA horizon over half the run, lr per image far from ``ref``'s, a clip
    applied before ``scaler.unscale_`` (:func:`clip_before_unscale_sentence`), label smoothing >= 0.5.
    ``recipe-audit`` runs these on a recipe's facts, the loop audit on a loop's."""
    out = []
    nd = facts.get("optim.decayed_no_decay") or []
    if nd:
        rules = facts.get("optim.decayed_no_decay_rules") or {}
        shown = ", ".join(f"{n} ({_RULE_WORDS.get(rules.get(n), rules.get(n, 'ndim <= 1'))})" for n in nd[:4]) \
            + (f" (+{len(nd) - 4} more)" if len(nd) > 4 else "")
        out.append(Finding("optim.weight_decay", "0 on 1-D, embeddings", f"decayed: {len(nd)} parameters", (
            f"{len(nd)} parameters the reference excludes from weight decay are decayed: {shown}. Decay pulls "
            f"norm gains, DyT's alpha and embeddings toward 0 every step; put them in a group with weight_decay=0. "
            f"Rule: {NO_DECAY_RULE}"), "decay-on-1d-params", mistake=True))
    total, warm = facts.get("sched.total_steps"), facts.get("sched.warmup_steps")
    if total and warm is not None and warm >= total:
        out.append(Finding("sched.warmup_epochs", "< epochs", f"{warm} of {total} steps",
                           f"warmup ({warm} steps) is not shorter than training ({total} steps)",
                           "warmup-not-shorter", mistake=True))
    decay = facts.get("reg.ema_decay") or 0.0
    if 0 < decay < 1 and total and 1 / (1 - decay) > total / 2:
        out.append(Finding("reg.ema_decay", f"horizon <= {total // 2} steps", decay, (
            f"EMA decay {decay} averages over ~{1 / (1 - decay):.0f} steps, more than half of the {total} training "
            f"steps: the EMA weights lag the raw ones"), "ema-too-slow", mistake=True))
    if ref is not None and facts.get("optim.lr") and facts.get("data.batch_size"):
        eff = facts["data.batch_size"] * (facts.get("optim.accum_steps") or 1)
        sent = lr_batch_sentence(facts["optim.lr"], eff, ref.optim.lr, ref.data.batch_size * ref.optim.accum_steps,
                                 ref_name or f"{ref.name}'s", fix_keys)
        if sent:
            out.append(Finding("optim.lr", ref.optim.lr, facts["optim.lr"], sent, "lr-batch-ratio",
                               source_of(ref, "optim.lr"), mistake=True))
    sent = clip_before_unscale_sentence(facts.get("optim.grad_clip"), facts.get("precision.scale_at_clip"))
    if sent:
        clip, scale = facts["optim.grad_clip"], facts["precision.scale_at_clip"]
        out.append(Finding("optim.grad_clip", f"{clip * scale:.3g} on unscaled gradients", clip, sent,
                           "clip-before-unscale", mistake=True))
    ls = facts.get("reg.label_smoothing")
    if ls is not None and ls >= 0.5:
        out.append(Finding("reg.label_smoothing", "< 0.5", ls, f"label smoothing {ls} leaves almost no signal in the "
                           f"targets", "label-smoothing-high", mistake=True))
    return out


def clip_before_unscale_sentence(clip: float | None, scale: float | None) -> str:
    """A sentence when a measured clip threshold ``clip`` is under ``CLIP_TINY`` while ``clip x scale``
    (``scale``: the GradScaler's scale at the clipped steps) is within 5 % of ``CLIP_USUAL``: the loop
    clipped the scaled gradients, before ``scaler.unscale_``, so the threshold acted as max_norm / scale.
    Else ""."""
    if not clip or not scale or clip >= CLIP_TINY:
        return ""
    meant = clip * scale
    if not CLIP_USUAL[0] / 1.05 <= meant <= CLIP_USUAL[1] * 1.05:
        return ""
    return (f"the gradient norm is clipped at {clip:.3g}, which is {meant:.3g} / {scale:g} (the GradScaler's "
            f"scale): clip_grad_norm_ ran on the scaled gradients, before scaler.unscale_, so every step is "
            f"clipped to a norm {scale:g}x smaller than meant; call scaler.unscale_(optimizer) before "
            f"clip_grad_norm_")


def eval_train_mode_sentence(modules: list[str] | None) -> str:
    """What evaluating in train mode did to this model: ``modules`` from ``loop.train_mode_modules``
    (None when the run did not record them: the general sentence)."""
    fix = "(call model.eval() before evaluating)"
    if modules is None:
        return f"the model was in train mode during evaluation: BatchNorm used batch statistics and dropout / " \
               f"drop path stayed on {fix}"
    if not modules:
        return (f"the model was in train mode during evaluation; it has no BatchNorm, dropout or drop-path module, "
                f"so its outputs likely did not change (a module that tests self.training would change them), "
                f"but they will once one is added {fix}")
    effects = {"BatchNorm": "BatchNorm used batch statistics", "dropout": "dropout stayed on",
               "drop path": "drop path stayed on"}
    said = [effects[m] for m in modules if m in effects]
    return (f"the model was in train mode during evaluation: "
            f"{', '.join(said[:-1]) + ' and ' + said[-1] if len(said) > 1 else said[0]} {fix}")


# ----------------------------------------------------------------------------- against the paper

def _differs(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return not math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1e-9)
        except (TypeError, ValueError):
            return a != b
    return a != b


def compare(facts: dict, recipe: Recipe) -> list[Finding]:
    """Every observed fact that differs from ``recipe``'s, coded (see the module docstring)."""
    p = recipe_facts(recipe)
    facts = {k: v for k, v in facts.items() if not (k in ("aug.randaug_m", "aug.randaug_mstd")
                                                    and facts.get("aug.randaug_n") == 0)}
    out: list[Finding] = []
    done: set[str] = set()

    def add(key, value, reason, code, mistake=True, parent=None):
        done.add(key)
        out.append(Finding(key, p.get(key) if parent is None else parent, value, reason, code,
                           source_of(recipe, key), mistake))

    f = facts
    if "optim.name" in f and f["optim.name"] != p["optim.name"]:
        add("optim.name", f["optim.name"], f"the paper trains with {p['optim.name']}", "optim-class")
    if f.get("optim.name") == p["optim.name"] == "adamw" and "optim.beta1" in f and (
            _differs(f["optim.beta1"], p["optim.beta1"]) or _differs(f.get("optim.beta2", p["optim.beta2"]), p["optim.beta2"])):
        add("optim.beta1", f"({f['optim.beta1']}, {f.get('optim.beta2')})",
            f"AdamW betas ({f['optim.beta1']}, {f.get('optim.beta2')}) where the paper has ({p['optim.beta1']}, "
            f"{p['optim.beta2']}): beta2 0.95 is a language-model default; it shortens the second-moment memory "
            f"from ~{1 / (1 - p['optim.beta2']):.0f} to ~{1 / (1 - f.get('optim.beta2', p['optim.beta2'])):.0f} steps",
            "optim-betas", parent=f"({p['optim.beta1']}, {p['optim.beta2']})")
        done.add("optim.beta2")
    _schedule_rules(f, p, add)
    if "optim.grad_clip" in f and (f["optim.grad_clip"] > 0) != (p["optim.grad_clip"] > 0):
        add("optim.grad_clip", f["optim.grad_clip"],
            f"the loop clips the gradient norm at {f['optim.grad_clip']:g} where the paper does not clip" if f["optim.grad_clip"]
            else f"the paper clips at {p['optim.grad_clip']:g}; the loop never clipped", "grad-clip")
    if "reg.label_smoothing" in f and (f["reg.label_smoothing"] > 0) != (p["reg.label_smoothing"] > 0):
        add("reg.label_smoothing", f["reg.label_smoothing"],
            f"the paper smooths labels by {p['reg.label_smoothing']:g}; the loop's targets are not smoothed "
            f"(CrossEntropyLoss(label_smoothing={p['reg.label_smoothing']:g}))" if p["reg.label_smoothing"] > 0
            else f"the loop smooths labels by {f['reg.label_smoothing']:g}; the paper does not", "label-smoothing")
    if "aug.mixing" in f and p["aug.mixing"] and not f["aug.mixing"]:
        add("aug.mixup_alpha", "off", f"the paper mixes batches (mixup {p['aug.mixup_alpha']:g}, cutmix "
            f"{p['aug.cutmix_alpha']:g}); no mixed targets reached step()", "mixing-missing",
            parent=f"mixup {p['aug.mixup_alpha']:g}, cutmix {p['aug.cutmix_alpha']:g}")
    if f.get("model.drop_path_rule") == "constant" and p["model.drop_path_rule"] == "linear":
        add("model.drop_path", f"{f['model.drop_path']:g} in every block",
            f"drop path is the same in every block; the paper's rate rises linearly with depth to "
            f"{p['model.drop_path']:g} (the first blocks are barely dropped)", "drop-path-rule",
            parent=f"linear to {p['model.drop_path']:g}")
    if p["reg.eval_ema"] and f.get("reg.ema_decay", None) == 0.0 and "reg.ema_decay" in f:
        add("reg.ema_decay", 0.0, f"the paper evaluates an EMA of the weights (decay {p['reg.ema_decay']:g}); the "
            f"loop has none (pass ema= to watch if it has one)", "ema-missing")
    if f.get("eval.train_mode"):
        kinds = f.get("eval.train_mode_modules")  # absent from runs recorded before it was
        add("eval.train_mode", True, eval_train_mode_sentence(kinds), "eval-train-mode",
            mistake=kinds is None or bool(kinds))
    if f.get("data.shuffle") is False:
        add("data.shuffle", False, "the training data is not shuffled (DataLoader(shuffle=False)): every epoch "
            "sees the same order, often sorted by class", "no-shuffle")
    if f.get("precision.amp") == "fp16" and f.get("precision.scaler") is False:
        add("precision.amp", "fp16 without GradScaler", "fp16 autocast without a GradScaler: small gradients "
            "underflow to 0 (use torch.amp.GradScaler, or bf16)", "fp16-no-scaler", parent=p["precision.amp"])
    if "sched.min_lr" in f and f.get("optim.lr") and not _same_floor(f, p):
        mine, theirs = f["sched.min_lr"] / f["optim.lr"], p["sched.min_lr"] / p["optim.lr"]
        add("sched.min_lr", f"{f['sched.min_lr']:.3g} ({mine:.2%} of peak)",
            f"the lr ends at {mine:.2%} of its peak; the paper's at {theirs:.2%}", "value", mistake=False,
            parent=f"{p['sched.min_lr']:.3g} ({theirs:.2%} of peak)")
    for key in COMPARED:
        if key in f and key not in done and key in p and _differs(f[key], p[key]) and not _auto_matches(key, f, p):
            add(key, f[key], f"{recipe.name} has {p[key]!r}; the loop {f[key]!r}", "value", mistake=False)
    return out


def _auto_matches(key: str, f: dict, p: dict) -> bool:
    """``precision.amp: auto`` is bf16 on CUDA and fp32 on CPU (``runtime.resolve_amp``): either matches."""
    return key == "precision.amp" and p[key] == "auto" and f[key] in ("bf16", "fp32")


def _same_floor(f: dict, p: dict) -> bool:
    """Whether the loop's last lr is the paper's floor: the same absolute floor (timm's ``min_lr``), or the
    same share of the peak; the last observed lr is one step short of the schedule's end, so a floor
    under 1 % of the peak matches anything under 2 %."""
    if math.isclose(f["sched.min_lr"], p["sched.min_lr"], rel_tol=0.05, abs_tol=1e-12):
        return True
    total, warm = f.get("sched.total_steps"), f.get("sched.warmup_steps") or 0
    if total and total - warm > 1 and f.get("sched.decay") == "cosine":
        # the last observed lr is one step before a cosine's end: floor + (peak - floor)(1 + cos(pi (D-1)/D)) / 2
        d = total - warm
        last = p["sched.min_lr"] + (f["optim.lr"] - p["sched.min_lr"]) * 0.5 * (1 + math.cos(math.pi * (d - 1) / d))
        if p["sched.min_lr"] * 0.95 <= f["sched.min_lr"] <= last * 1.05:
            return True
    mine, theirs = f["sched.min_lr"] / f["optim.lr"], p["sched.min_lr"] / p["optim.lr"]
    return (theirs < 0.01 and mine < 0.02) or math.isclose(mine, theirs, rel_tol=0.1)


def _schedule_rules(f: dict, p: dict, add) -> None:
    if "sched.warmup_steps" in f and f.get("sched.total_steps"):
        if f["sched.warmup_steps"] == 0 and p["sched.warmup_share"] > 0:
            add("sched.warmup_epochs", 0, f"no warmup: the lr starts at its peak; the paper warms up for "
                f"{p['sched.warmup_epochs']:g} of {p['sched.epochs']} epochs ({p['sched.warmup_share']:.1%} of the run)",
                "no-warmup")
        elif p["sched.warmup_share"] > 0 and f["sched.warmup_steps"] > 0:
            ratio = f["sched.warmup_share"] / p["sched.warmup_share"]
            if not 1 / WARMUP_BAND <= ratio <= WARMUP_BAND:
                keep = p["sched.warmup_share"] * f["sched.total_steps"]
                keep = f"{keep:.1f}" if keep < 10 else f"{keep:.0f}"
                hint = " (warmup counted in steps where the paper counts epochs?)" if ratio < 0.1 else ""
                add("sched.warmup_epochs", f"{f['sched.warmup_steps']} steps ({f['sched.warmup_share']:.1%})",
                    f"warmup is {f['sched.warmup_share']:.1%} of the run, {ratio:.2g}x the paper's "
                    f"{p['sched.warmup_share']:.1%}{hint}; the paper's share is {keep} of these "
                    f"{f['sched.total_steps']} steps", "warmup-share",
                    parent=f"{p['sched.warmup_epochs']:g} of {p['sched.epochs']} epochs ({p['sched.warmup_share']:.1%})")
    decay = f.get("sched.decay")
    if decay and decay not in ("unknown", p["sched.decay"]):
        add("sched.decay", decay, f"the lr decays as {decay} where the paper's is a {p['sched.decay']} to "
            f"{p['sched.min_lr']:g}", "sched-shape")
    every = f.get("sched.lr_changes_every") or 0
    if every > 1 and decay != "step":
        add("sched.lr_changes_every", f"every {every} steps", f"the lr changes only every {every} steps "
            f"(a scheduler stepped once per epoch); the paper's changes every step", "lr-per-epoch", parent="every step")


def audit(facts: dict, recipe: Recipe | str, *, declared: dict[str, str] | None = None,
          ending: dict | None = None) -> dict:
    """The whole audit: ``{"recipe", "parent", "deviations": [rows], "not_observed": [keys], "mistakes": n,
    "declared_unused": [keys], "ending": {...}}`` in ``deviations.json``'s schema (``parent`` is the
    recipe audited against). ``declared``: ``{key or code: reason}`` (:func:`read_declared`);
    ``ending``: how a watched loop ended (``Watch.ending``)."""
    recipe = resolve_against(recipe) if isinstance(recipe, str) else recipe
    found = compare(facts, recipe)
    for s in smells(facts, recipe, fix_keys=False):  # a loop has no --set: the fix is said as a value
        prior = next((i for i, x in enumerate(found) if x.key == s.key), None)
        if prior is not None and found[prior].code == "value":
            found[prior] = s  # the coded smell explains that key better than a bare "differs"
        elif prior is None or found[prior].code != s.code:
            found.append(dataclasses.replace(s, source=s.source or source_of(recipe, s.key)))
    rows, used = _declare([x.to_dict() for x in found], declared or {})
    not_observed = [k for k in EXPECTED if k not in facts and k not in {r["key"] for r in rows}]
    for key in sorted(set(declared or {}) - used):  # declared, but the loop did not show it: keep the reason
        k = _DECLARED_ALIASES.get(key, key)
        if k not in facts and (k in EXPECTED or k in RUN_LENGTH_KEYS or k in flat_items(recipe)):
            why = (f"not observed: the loop {ending['reason']}" if ending and ending.get("how") not in
                   ("finished", "running", None) else "not observed in this loop")
            rows.append({"key": k, "parent": recipe_facts(recipe).get(k, "-"), "value": "not observed",
                         "reason": declared[key], "code": "value", "source": source_of(recipe, k), "mistake": False,
                         "observed": False, "declared": True, "consequence": f"{why}, so not compared"})
            used.add(key)
    out = {"recipe": "watch", "parent": recipe.name, "deviations": rows, "not_observed": not_observed,
           "mistakes": sum(1 for r in rows if r["mistake"]), "declared": dict(declared or {}),
           "declared_unused": sorted(k for k in (declared or {}) if k not in used)}
    if ending is not None:
        out["ending"] = dict(ending)
    return out


def _declare(rows: list[dict], declared: dict[str, str]) -> tuple[list[dict], set[str]]:
    """Rows with the user's declared reasons applied (see the module docstring), and the declared keys
    that matched a row."""
    used: set[str] = set()
    for r in rows:
        for key, reason in declared.items():
            if key in (r["key"], r["code"]) or _DECLARED_ALIASES.get(key) == r["key"]:
                used.add(key)
                r.update(declared=True, consequence=r["reason"], reason=reason, mistake=False)
                break
        else:
            r["declared"] = False
    return rows, used
