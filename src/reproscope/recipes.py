"""Registered recipes. ``reproscope recipes`` lists them; ``recipes show NAME`` resolves one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import (
    SECTIONS,
    AugConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PrecisionConfig,
    Recipe,
    RegConfig,
    ScheduleConfig,
    apply_overrides,
    flat_items,
    nearest,
    recipe_diff,
    recipe_from_dict,
    validate,
)

_RECIPES: dict[str, Recipe] = {}


class RecipeError(ValueError):
    """A recipe that cannot be registered (raised at import time, so a bad recipe never ships)."""


def check_deviations(recipe: Recipe) -> None:
    """A recipe with a parent must give a reason for every field that differs, and only for those."""
    if not recipe.parent:
        if recipe.deviations:
            raise RecipeError(f"recipe {recipe.name!r} lists deviations but declares no parent")
        return
    if recipe.parent not in _RECIPES:
        raise RecipeError(f"recipe {recipe.name!r}: parent {recipe.parent!r} is not registered"
                          f"{nearest(recipe.parent, _RECIPES)}")
    diff = recipe_diff(_RECIPES[recipe.parent], recipe)
    unexplained = sorted(set(diff) - set(recipe.deviations))
    if unexplained:
        k = unexplained[0]
        raise RecipeError(f"recipe {recipe.name!r}: {', '.join(unexplained)} differ from parent {recipe.parent!r} "
                          f"without a stated reason (e.g. {k}: {diff[k][0]!r} -> {diff[k][1]!r}); "
                          f"add it to deviations")
    stale = sorted(set(recipe.deviations) - set(diff))
    if stale:
        raise RecipeError(f"recipe {recipe.name!r}: deviations give reasons for {', '.join(stale)}, "
                          f"which do not differ from parent {recipe.parent!r}")


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in _RECIPES:
        raise RecipeError(f"recipe {recipe.name!r} is registered twice")
    validate(recipe)
    check_deviations(recipe)
    _RECIPES[recipe.name] = recipe
    return recipe


# keys whose change repeats a recipe rather than departs from it: never a row of the deviation log
NOT_DEVIATIONS = frozenset({"run.seed"})


def deviation_log(recipe: Recipe) -> list[dict]:
    """Every field in which ``recipe`` (as resolved, overrides included) differs from its parent paper
    recipe, with the reason: the recipe's stated one, or 'command-line override' for --set changes (the
    recipe's reason was written for the recipe's value, so it is not repeated beside another one).
    The seed (``NOT_DEVIATIONS``) is left out: another seed is a repeat of the recipe, not a departure."""
    rows = []
    registered = _RECIPES.get(recipe.name)
    parent = _RECIPES.get(recipe.parent) if recipe.parent else None
    overridden = recipe_diff(registered, recipe) if registered is not None else {}
    base = parent or registered
    if base is None:
        return rows
    for key, (was, now) in recipe_diff(base, recipe).items():
        if key in NOT_DEVIATIONS:
            continue
        reason = recipe.deviations.get(key, "")
        if key in overridden:
            reason = f"command-line override (recipe had {overridden[key][0]!r})"  # its reason was for that value
        rows.append({"key": key, "parent": was, "value": now, "reason": reason})
    return rows


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}{nearest(name, _RECIPES)}; `reproscope recipes` lists them")
    return _RECIPES[name]


def recipe_from_file(path: str, default: str = "quickstart") -> Recipe:
    """The recipe a config file describes (``reproscope train --config FILE``): a run's ``config.json``
    (the whole recipe, as a run wrote it), or a JSON / YAML mapping of overrides on a registered recipe,
    flat (``{"optim.lr": 1e-3}``) or nested (``{"optim": {"lr": 1e-3}}``), with an optional
    ``recipe: NAME`` (else ``default``). Every key and value is validated as ``--set`` is.

    Raises:
        ConfigError: a missing or unreadable file, or a bad key or value (the message names the file).
    """
    import json
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text()
    yaml_file = p.suffix in (".yaml", ".yml")
    if yaml_file:
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), or give the "
                              f"same mapping as JSON") from None
    try:
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"--config {path}: not valid {'YAML' if yaml_file else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        if "name" in data and any(isinstance(v, dict) for k, v in data.items() if k in SECTIONS):
            return recipe_from_dict(data)  # a run's config.json
        base = get_recipe(str(data.pop("recipe", default)))
        flat = {}
        for k, v in data.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        return apply_overrides(base, flat)
    except ConfigError as e:
        raise ConfigError(f"--config {path}: {e}") from None


def list_recipes() -> list[Recipe]:
    return [_RECIPES[k] for k in sorted(_RECIPES)]


DEFAULT_RECIPE = "quickstart"

# ----------------------------------------------------------------------------- built-in data

QUICKSTART = register_recipe(Recipe(
    name="quickstart",
    description="ViT-quick (LayerNorm) on built-in shapes10 at 32 px: the 3-minute CPU quickstart",
    model=ModelConfig(name="vit_quick", norm="ln"),
    data=DataConfig(dataset="shapes10", img_size=32, train_size=12000, val_size=2000, batch_size=128),
    optim=OptimConfig(lr=2e-3, weight_decay=0.05),
    sched=ScheduleConfig(epochs=20, warmup_epochs=1.0, min_lr=1e-5),
    aug=AugConfig(hflip=0.5, crop_pad=2),
    reg=RegConfig(label_smoothing=0.0),
))

register_recipe(dataclasses.replace(
    QUICKSTART, name="quickstart-dyt",
    description="the quickstart with DyT in place of every LayerNorm (DyT paper's method)",
    model=dataclasses.replace(QUICKSTART.model, norm="dyt"),
))


# ----------------------------------------------------------------------------- one recipe per paper
# Each trains the paper's smallest model, or its controlled baseline, on built-in shapes10 at 32 px,
# so it runs offline on a CPU. These are smoke-scale recipes, not the papers' recipes.

def _paper_smoke(name: str, description: str, model: ModelConfig, epochs: int = 10) -> Recipe:
    return register_recipe(dataclasses.replace(
        QUICKSTART, name=name, description=description, model=model,
        sched=dataclasses.replace(QUICKSTART.sched, epochs=epochs)))


_paper_smoke("dyt-vit_tiny", "DyT paper: ViT-Ti with DyT (alpha0 0.5), patch 8, on shapes10 32 px",
             ModelConfig(name="vit_tiny", norm="dyt", patch_size=8))
_paper_smoke("dyt-vit_tiny_ln", "DyT paper baseline: ViT-Ti with LayerNorm, patch 8, on shapes10 32 px",
             ModelConfig(name="vit_tiny", norm="ln", patch_size=8))
_paper_smoke("dyt-convnext_tiny", "DyT paper: ConvNeXt-T with DyT, stem stride 2, on shapes10 32 px (known slow "
             "start: logit std ~1e-4 at init; `reproscope diagnose input-independent` flags it, see README)",
             ModelConfig(name="convnext_tiny", norm="dyt", patch_size=2))
_paper_smoke("kat-kat_tiny", "KAT paper: KAT-T (GR-KAN MLPs), patch 8, on shapes10 32 px",
             ModelConfig(name="kat_tiny", patch_size=8))
_paper_smoke("kat-vit_tiny", "KAT paper baseline: ViT-Ti with a GELU MLP, patch 8, on shapes10 32 px",
             ModelConfig(name="vit_tiny", patch_size=8))
_paper_smoke("mambaout-mambaout_femto", "MambaOut paper: MambaOut-Femto, stem stride 2, on shapes10 32 px",
             ModelConfig(name="mambaout_femto", patch_size=2))
_paper_smoke("mambaout-vit_tiny", "MambaOut paper baseline: DeiT-T (ViT-Ti, LayerNorm), patch 8, on shapes10 32 px",
             ModelConfig(name="vit_tiny", norm="ln", patch_size=8))


# ----------------------------------------------------------------------------- paper recipes
# Exactly as published; every value names its source. "batch" is the paper's global batch.

def _paper(name: str, description: str, sources: dict[str, str], **sections) -> Recipe:
    r = Recipe(name=name, description=description, **sections)
    missing = sorted(k for k in PAPER_KEYS if k not in sources)
    if missing:
        raise RecipeError(f"paper recipe {name!r}: no source given for {', '.join(missing)}")
    return register_recipe(dataclasses.replace(r, sources=dict(sources)))


PAPER_KEYS = tuple(k for k in flat_items(QUICKSTART) if k.split(".")[0] in ("optim", "sched", "aug", "reg")) + (
    "model.name", "model.norm", "model.drop_path", "data.img_size", "data.batch_size", "data.eval_crop_pct",
    "precision.amp")

_DEIT_AUG = AugConfig(hflip=0.5, crop_pad=0, rrc_scale_min=0.08, interpolation="bicubic", randaug_n=2, randaug_m=9,
                      randaug_mstd=0.5, color_jitter=0.4, random_erasing=0.25, mixup_alpha=0.8, cutmix_alpha=1.0,
                      mix_prob=1.0, mix_switch_prob=0.5)
_IN1K = DataConfig(dataset="imagenet", root="", img_size=224, batch_size=4096, eval_crop_pct=0.875)


def _sources(**groups: str) -> dict[str, str]:
    """Expand {prefix_or_key: source} to every key it covers ('aug' -> every aug.* key)."""
    out = {}
    for k in PAPER_KEYS:
        for prefix, src in groups.items():
            prefix = prefix.replace("__", ".")
            if k == prefix or k.startswith(prefix + "."):
                out[k] = src
    return out


_DYT_SRC = _sources(optim="DyT App. A (ConvNeXt/DeiT recipe: AdamW 0.9/0.999, eps 1e-8, lr 4e-3, wd 0.05, no clip)",
                    sched="DyT App. A (300 epochs, 20 warmup, cosine to 1e-6)",
                    aug="DyT App. A (RandAugment m9-mstd0.5, jitter 0.4, bicubic, RE 0.25, mixup 0.8, cutmix 1.0, "
                        "switch 0.5, hflip, RRC 0.08); colour jitter is inert under RandAugment in timm",
                    reg="DyT App. A (label smoothing 0.1, EMA 0.9999 evaluated)",
                    model__name="DyT Table 1 (ViT-B)", model__norm="DyT Sec. 3", model__drop_path="DyT App. A (ViT-B 0.1)",
                    data__img_size="DyT App. A (224 px)", data__batch_size="DyT App. A (batch 4096)",
                    data__eval_crop_pct="DyT App. A (resize 256, crop 224)",
                    precision__amp="DyT App. A / reference (fp32 with TF32, no AMP)")
DYT_VIT_B = _paper(
    "dyt-vit_base-paper", "DyT paper recipe for ViT-B/16 with DyT on ImageNet-1K (as published)", _DYT_SRC,
    model=ModelConfig(name="vit_base", norm="dyt", dyt_alpha0=0.5, drop_path=0.1, global_pool="avg"),
    data=_IN1K,
    optim=OptimConfig(lr=4e-3, weight_decay=0.05, beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=0.0),
    sched=ScheduleConfig(epochs=300, warmup_epochs=20, min_lr=1e-6),
    aug=_DEIT_AUG, reg=RegConfig(label_smoothing=0.1, ema_decay=0.9999, eval_ema=True),
    precision=PrecisionConfig(amp="fp32", tf32=True))
DYT_VIT_B_LN = _paper(
    "dyt-vit_base_ln-paper", "DyT paper's LayerNorm baseline: ViT-B/16 with LN, same recipe",
    {**_DYT_SRC, "model.norm": "DyT Table 1 (LN baseline)"},
    **{k: getattr(DYT_VIT_B, k) for k in ("data", "optim", "sched", "aug", "reg", "precision")},
    model=dataclasses.replace(DYT_VIT_B.model, norm="ln"))

_KAT_SRC = _sources(optim="KAT Sec. 5.2 / reference script (DeiT recipe: AdamW, lr 1e-3 at batch 1024, wd 0.05)",
                    sched="KAT Sec. 5.2 (300 epochs) / DeiT (5 warmup epochs, cosine to 1e-5)",
                    aug="KAT reference script (DeiT: RandAugment m9-mstd0.5, RE 0.25, mixup 0.8, cutmix 1.0)",
                    reg="KAT reference script (label smoothing 0.1, EMA 0.9999)",
                    model__name="KAT Table 5 (KAT-T)", model__norm="KAT Sec. 4 (ViT with LN)",
                    model__drop_path="KAT reference script (0.1)", data__img_size="KAT Sec. 5.2 (224 px)",
                    data__batch_size="KAT Sec. 5.2 (batch 1024)", data__eval_crop_pct="KAT reference script (0.875)",
                    precision__amp="KAT reference script (AMP)")
KAT_T = _paper(
    "kat-kat_tiny-paper", "KAT paper recipe for KAT-T on ImageNet-1K (DeiT recipe, as published)", _KAT_SRC,
    model=ModelConfig(name="kat_tiny", drop_path=0.1),
    data=dataclasses.replace(_IN1K, batch_size=1024),
    optim=OptimConfig(lr=1e-3, weight_decay=0.05),
    sched=ScheduleConfig(epochs=300, warmup_epochs=5, min_lr=1e-5),
    aug=_DEIT_AUG, reg=RegConfig(label_smoothing=0.1, ema_decay=0.9999, eval_ema=True),
    precision=PrecisionConfig(amp="bf16"))

_MO_SRC = _sources(optim="MambaOut Sec. 4.2 / Table 5 (AdamW 0.9/0.999, eps 1e-8, lr 4e-3, wd 0.05, no clip)",
                   sched="MambaOut Table 5 (300 epochs, 20 warmup, cosine)",
                   aug="MambaOut Table 5 (DeiT: RandAugment 9/0.5, mixup 0.8, cutmix 1.0, switch 0.5, RE 0.25)",
                   reg="MambaOut Table 5 (label smoothing 0.1, no EMA)",
                   model__name="MambaOut Table 1 (Femto)", model__norm="MambaOut Sec. 3 (LayerNorm)",
                   model__drop_path="MambaOut Table 5 (Femto 0.025)", data__img_size="MambaOut Sec. 4.2 (224 px)",
                   data__batch_size="MambaOut Table 5 (batch 4096)", data__eval_crop_pct="DeiT recipe (0.875)",
                   precision__amp="not stated; reference trains with AMP")
MAMBAOUT_F = _paper(
    "mambaout-mambaout_femto-paper", "MambaOut paper recipe for MambaOut-Femto on ImageNet-1K (as published)", _MO_SRC,
    model=ModelConfig(name="mambaout_femto", drop_path=0.025),
    data=_IN1K,
    optim=OptimConfig(lr=4e-3, weight_decay=0.05),
    sched=ScheduleConfig(epochs=300, warmup_epochs=20, min_lr=1e-6),
    aug=_DEIT_AUG, reg=RegConfig(label_smoothing=0.1, ema_decay=0.0),
    precision=PrecisionConfig(amp="bf16"))


# ----------------------------------------------------------------------------- reduced recipes
# Derived from the paper recipes for the public subsets, on one L4 GPU. Every changed field carries
# its reason; registration fails for a change without one. Two tiers:
# - day (``<paper>-<model>-<subset>``): what `reproscope plan --fit 24 --paper P --dataset D` proposes,
#   the most faithful campaign whose likely L4 time fits a day (``DAY``; tests/test_plan.py checks the
#   two agree, so a change to the budget model forces a re-derivation here);
# - quick (``...-quick``): ViT-Ti-size models at the subset's reduced resolution, minutes to hours.

@dataclasses.dataclass(frozen=True)
class Dataset:
    """A public subset the reduced recipes target (also the planner's table, ``diagnostics.budget``)."""
    name: str  # data.dataset
    subset: str  # the reduced recipes' subset key
    n_train: int  # images in the training split
    n_val: int  # images in the standard validation split
    native: int  # px of its images (0 = full-size ImageNet photos, >= 224)


# most faithful to ImageNet-1K first: full-size ImageNet photos, many classes before few
DATASETS = (Dataset("imagenet-100", "imagenet100", 126_689, 5_000, 0),
            Dataset("imagenette", "imagenette", 9_469, 3_925, 0),
            Dataset("tiny-imagenet", "tinyimagenet", 100_000, 10_000, 64),
            Dataset("cifar100", "cifar100", 50_000, 10_000, 32),
            Dataset("cifar10", "cifar10", 50_000, 10_000, 32))
_DATASET = {d.subset: d for d in DATASETS}

_SUBSETS = {
    "imagenet100": dict(
        data={"dataset": "imagenet-100", "root": "data/imagenet", "img_size": 224},
        reasons={"data.dataset": "ImageNet-100 (CMC's 100 classes) of your ImageNet copy: top-1 over 100 classes is "
                                 "not comparable to the paper's 1000-class number",
                 "data.root": "an ImageFolder ImageNet (train/, val/); only the 100 classes are read",
                 "data.img_size": "the paper's 224 px"},
        patch=16, stem=4),
    "imagenette": dict(
        data={"dataset": "imagenette", "root": "../shared/datasets/imagenette", "img_size": 160},
        reasons={"data.dataset": "public 10-class ImageNet subset: top-1 over 10 classes (3,925 val images) is not "
                                 "comparable to the paper's 1000-class number",
                 "data.root": "the shared development copy (every image squashed to 224x224 and re-encoded as JPEG "
                              "q~75: aspect ratios are lost before any crop)",
                 "data.img_size": "160 px (the imagenette2-160 scale) keeps 300 epochs of a ViT-Ti short"},
        patch=16, stem=4),
    "tinyimagenet": dict(
        data={"dataset": "tiny-imagenet", "root": "data/tiny-imagenet-200", "img_size": 64},
        reasons={"data.dataset": "public 200-class ImageNet subset at 64 px: top-1 not comparable to the paper's",
                 "data.root": "default download place",
                 "data.img_size": "Tiny-ImageNet images are 64 px"},
        patch=8, stem=2),
    "cifar10": dict(
        data={"dataset": "cifar10", "root": "data/cifar", "img_size": 32, "eval_crop_pct": 1.0},
        reasons={"data.dataset": "CIFAR-10: 10 classes of 32 px photos, not ImageNet; top-1 not comparable to the "
                                 "paper's", "data.root": "default download place",
                 "data.img_size": "CIFAR images are 32 px", "data.eval_crop_pct": "no eval crop at 32 px"},
        patch=4, stem=2),
    "cifar100": dict(
        data={"dataset": "cifar100", "root": "data/cifar", "img_size": 32, "eval_crop_pct": 1.0},
        reasons={"data.dataset": "CIFAR-100: 100 classes of 32 px photos, not ImageNet; top-1 not comparable to the "
                                 "paper's", "data.root": "default download place",
                 "data.img_size": "CIFAR images are 32 px", "data.eval_crop_pct": "no eval crop at 32 px"},
        patch=4, stem=2),
}
_SINGLE_GPU_BATCH = 256
_L4_MICRO_BATCH = {"vit_base": 128}  # ViT-B at 224 px: 24 GB holds 192 (timm's RTX 3090 benchmark); 128 is safe


def reduced_name(parent: Recipe, model_name: str, subset: str, tier: str = "") -> str:
    """The name of the reduced recipe of paper recipe ``parent`` for ``model_name`` on ``subset``:
    ``<paper>-<model>[_ln]-<subset>[-<tier>]`` (``_ln`` for a ViT/KAT on a LayerNorm paper recipe)."""
    is_vit = model_name.startswith(("vit", "kat"))
    return (f"{parent.name.removesuffix('-paper').split('-')[0]}-{model_name}"
            f"{'_ln' if parent.model.norm == 'ln' and is_vit else ''}-{subset}{'-' + tier if tier else ''}")


def _reduced(parent: Recipe, subset: str, model_name: str, model_reason: str = "", *, tier: str = "",
             img_size: int = 0, epochs: int = 0, plan_note: str = "") -> Recipe:
    spec, sizes = _SUBSETS[subset], _DATASET[subset]
    changes: dict[str, object] = {f"data.{k}": v for k, v in spec["data"].items()}
    reasons = dict(spec["reasons"])
    changes["data.batch_size"] = _SINGLE_GPU_BATCH
    reasons["data.batch_size"] = (f"one L4: batch {_SINGLE_GPU_BATCH} instead of {parent.data.batch_size} "
                                  f"(also gives enough optimizer steps on a small dataset)")
    if model_name in _L4_MICRO_BATCH and (img_size or spec["data"]["img_size"]) >= 160:
        micro = _L4_MICRO_BATCH[model_name]
        changes["data.batch_size"], changes["optim.accum_steps"] = micro, _SINGLE_GPU_BATCH // micro
        reasons["data.batch_size"] = (f"one L4 (24 GB): micro-batch {micro}, accumulated to {_SINGLE_GPU_BATCH} "
                                      f"(paper: {parent.data.batch_size})")
        reasons["optim.accum_steps"] = f"{_SINGLE_GPU_BATCH // micro} micro-batches of {micro} make the batch of {_SINGLE_GPU_BATCH}"
    changes["optim.lr"] = parent.optim.lr * _SINGLE_GPU_BATCH / parent.data.batch_size
    reasons["optim.lr"] = f"linear scaling rule: {parent.optim.lr:g} x {_SINGLE_GPU_BATCH}/{parent.data.batch_size}"
    if model_name != parent.model.name:
        changes["model.name"] = model_name
        reasons["model.name"] = model_reason
    is_vit = model_name.startswith(("vit", "kat"))
    res = img_size or spec["data"]["img_size"]
    if img_size and img_size != spec["data"]["img_size"]:
        changes["data.img_size"] = img_size
        reasons["data.img_size"] = (f"{img_size} px, upsampled from the images' native {sizes.native} px: "
                                    if sizes.native and img_size > sizes.native else f"{img_size} px: ") + plan_note
        if spec["data"].get("eval_crop_pct") == 1.0 and img_size >= 128:  # small images upsampled: crop as the paper
            changes.pop("data.eval_crop_pct")
    if sizes.native and res > sizes.native:
        reasons["data.dataset"] += f"; its {sizes.native} px images are upsampled to {res} px"
    patch = (16 if is_vit else 4) if res >= 128 else (spec["patch"] if is_vit else spec["stem"])
    if patch != (16 if is_vit else 4):
        changes["model.patch_size"] = patch
        reasons["model.patch_size"] = (f"patch {patch} keeps a {res // patch}-token-wide grid"
                                       if is_vit else f"stem stride {patch} keeps the last feature map >= 2x2")
    if epochs and epochs != parent.sched.epochs:
        changes["sched.epochs"] = epochs
        reasons["sched.epochs"] = f"{epochs} of the paper's {parent.sched.epochs} epochs: {plan_note}"
        warmup = round(parent.sched.warmup_epochs * epochs / parent.sched.epochs, 2)
        changes["sched.warmup_epochs"] = warmup
        reasons["sched.warmup_epochs"] = f"warmup shortened in proportion ({parent.sched.warmup_epochs:g} of {parent.sched.epochs})"
    if parent.precision.amp != "bf16":
        changes["precision.amp"] = "bf16"
        reasons["precision.amp"] = "bf16 autocast roughly doubles L4 throughput; DyT notes fp32 vs bf16 as a gotcha"
    steps = (epochs or parent.sched.epochs) * sizes.n_train // _SINGLE_GPU_BATCH
    if parent.reg.ema_decay > 0.999 and steps < 3 / (1 - parent.reg.ema_decay):
        changes["reg.ema_decay"] = 0.999
        reasons["reg.ema_decay"] = (f"{parent.reg.ema_decay:g} averages over ~{1 / (1 - parent.reg.ema_decay):,.0f} "
                                    f"steps, too long for this run's ~{steps:,}")
    base = apply_overrides(parent, changes)
    reasons = {k: v for k, v in reasons.items() if k in recipe_diff(parent, base)}  # e.g. the paper's 224 px kept
    name = reduced_name(parent, model_name, subset, tier)
    what = (f"quick tier: {model_name} at {res} px" if tier == "quick" else
            f"one L4 GPU-day: {model_name} at {res} px, {epochs or parent.sched.epochs} epochs")
    return register_recipe(dataclasses.replace(
        base, name=name, parent=parent.name, sources={}, deviations=reasons,
        description=f"{parent.name} reduced to {subset} ({what})"))


_TI = "ViT-Ti: the smallest DeiT size, minutes to hours on an L4 (paper: ViT-B/L)"
_DEIT_T = "the paper's baseline, DeiT-T (ViT-Ti with a GELU MLP), on the same recipe"
for _subset in _SUBSETS:  # the quick tier
    if _subset == "imagenet100":
        continue
    _reduced(DYT_VIT_B, _subset, "vit_tiny", _TI, tier="quick")
    _reduced(DYT_VIT_B_LN, _subset, "vit_tiny", _TI, tier="quick")
    _reduced(KAT_T, _subset, "kat_tiny", tier="quick")
    _reduced(KAT_T, _subset, "vit_tiny", _DEIT_T, tier="quick")
    _reduced(MAMBAOUT_F, _subset, "mambaout_femto", tier="quick")
    _reduced(MAMBAOUT_F, _subset, "vit_tiny", _DEIT_T, tier="quick")

# The day tier: `reproscope plan --fit 24 --paper P --dataset D` -> (method model, baseline model, px, epochs)
DAY = {
    ("dyt", "imagenet100"): ("vit_base", "vit_base", 160, 50), ("dyt", "imagenette"): ("vit_base", "vit_base", 224, 300),
    ("dyt", "tinyimagenet"): ("vit_base", "vit_base", 192, 50), ("dyt", "cifar100"): ("vit_base", "vit_base", 224, 50),
    ("dyt", "cifar10"): ("vit_base", "vit_base", 224, 50),
    ("kat", "imagenet100"): ("kat_tiny", "vit_tiny", 224, 50), ("kat", "imagenette"): ("kat_tiny", "vit_tiny", 224, 300),
    ("kat", "tinyimagenet"): ("kat_tiny", "vit_tiny", 224, 50), ("kat", "cifar100"): ("kat_tiny", "vit_tiny", 224, 150),
    ("kat", "cifar10"): ("kat_tiny", "vit_tiny", 224, 150),
    ("mambaout", "imagenet100"): ("mambaout_femto", "vit_tiny", 224, 100),
    ("mambaout", "imagenette"): ("mambaout_femto", "vit_tiny", 224, 300),
    ("mambaout", "tinyimagenet"): ("mambaout_femto", "vit_tiny", 224, 150),
    ("mambaout", "cifar100"): ("mambaout_femto", "vit_tiny", 224, 200),
    ("mambaout", "cifar10"): ("mambaout_femto", "vit_tiny", 224, 200),
}
_DAY_PARENTS = {"dyt": (DYT_VIT_B, DYT_VIT_B_LN), "kat": (KAT_T, KAT_T), "mambaout": (MAMBAOUT_F, MAMBAOUT_F)}
for (_paper_key, _subset), (_method, _baseline, _px, _epochs) in DAY.items():
    _note = f"reproscope plan --fit 24 --paper {_paper_key} --dataset {_subset} (the most faithful campaign in an L4 day)"
    _mp, _bp = _DAY_PARENTS[_paper_key]
    _reduced(_mp, _subset, _method, "the paper's model; the budget allowed no larger one", img_size=_px,
             epochs=_epochs, plan_note=_note)
    _reduced(_bp, _subset, _baseline, "the paper's model; the budget allowed no larger one" if _paper_key == "dyt"
             else _DEIT_T, img_size=_px, epochs=_epochs, plan_note=_note)


# ----------------------------------------------------------------------------- CPU scale
# The campaigns for a machine without a GPU (docs/reproductions/): a quick-tier reduction shrunk again
# until 3 seeds x 2 variants train on 2 CPU cores in about an hour. Labelled CPU scale everywhere it is
# used; the GPU-scale runs are the day-tier recipes above.

_CPU_ROOTS = {  # the shared development copies (../shared/datasets/README.md)
    "imagenette": ("Imagenette", "../shared/datasets/imagenette", None),
    "cifar10": ("CIFAR-10", "../shared/datasets/cifar10", "the shared development copy of CIFAR-10 (every image re-encoded as "
                "JPEG q75 by a public mirror: expect a small loss against the official binary batches)"),
}


def _cpu_scale(reduced: Recipe, model: str = "vit_quick", model_reason: str = "", name: str = "",
               lr_reason: str = "", epochs: int = 15, warmup_epochs: float = 1.0) -> Recipe:
    """``reduced`` shrunk to the CPU campaigns' common footing (32 px images, a 0.46-0.49M-parameter
    model, batch 128, lr 4e-4, no mixing or EMA, fp32; 15 epochs of Imagenette, ~1,100 steps), so the
    DyT, KAT and MambaOut CPU campaigns are comparable; ``model`` replaces the reduced recipe's model.
    ``epochs``/``warmup_epochs`` size a larger dataset to the same hour (CIFAR-10: 4 epochs, ~1,600 steps).

    Raises:
        KeyError: ``reduced`` is on a dataset without a shared CPU copy (``_CPU_ROOTS``).
    """
    parent = get_recipe(reduced.parent)
    subset = reduced.data.dataset
    title, root, root_reason = _CPU_ROOTS[subset]
    per_epoch = round(next(d for d in DATASETS if d.name == subset).n_train / 128)
    steps = round(epochs * per_epoch, -2)
    conv = model.startswith(("convnext", "mambaout"))
    changes = {"model.name": model, "model.patch_size": 2 if conv else 4, "model.drop_path": 0.0, "data.img_size": 32,
               "data.root": root, "data.batch_size": 128, "optim.lr": 4e-4, "sched.epochs": epochs,
               "sched.warmup_epochs": warmup_epochs, "aug.mix_prob": 0.0, "reg.ema_decay": 0.0, "reg.eval_ema": False,
               "precision.amp": "fp32"}
    linear = parent.optim.lr * 128 / parent.data.batch_size
    reasons = {
        **reduced.deviations,  # what the reduction changed and this step keeps (dataset, eval crop, ...)
        "model.name": model_reason or ("CPU scale: ViT width 96, depth 4, 4 heads (0.46M parameters with 10 classes) "
                                       f"instead of the paper's {parent.model.name} (the quick tier's {reduced.model.name})"),
        "model.patch_size": ("stem stride 2 at 32 px keeps the last feature map 2x2" if conv else
                             "patch 4 at 32 px keeps an 8x8 token grid (64 tokens, as ViT-Ti/16 at 128 px)"),
        "model.drop_path": (f"a sub-1M-parameter model trained for {epochs} epochs underfits; stochastic depth would "
                            f"only slow it"),
        "data.batch_size": f"CPU scale: batch 128 gives ~{per_epoch} optimizer steps per {title} epoch",
        "optim.lr": lr_reason or (f"{4e-4 / linear:.1f}x the linear-scaling lr ({parent.optim.lr:g} x 128/"
                                  f"{parent.data.batch_size} = {linear:.3g}): a {epochs}-epoch run needs a larger step"),
        "sched.epochs": f"CPU scale: {epochs} epochs (~{steps:.0f} steps) so 6 runs fit in about an hour on 2 cores",
        "sched.warmup_epochs": (f"warmup shortened in proportion to training (paper: {parent.sched.warmup_epochs:g} "
                                f"of {parent.sched.epochs} epochs)") if parent.sched.warmup_epochs >= 15 else (
                                f"{warmup_epochs:g} warmup epoch (~{round(warmup_epochs * per_epoch)} steps), the CPU "
                                f"campaigns' common footing (paper: {parent.sched.warmup_epochs:g} of "
                                f"{parent.sched.epochs} epochs)"),
        "aug.mix_prob": (f"mixup/cutmix off: at {epochs} epochs a sub-1M-parameter model underfits, and mixing only "
                         f"lowers both variants' accuracy"),
        "reg.ema_decay": f"EMA off: ~{steps:.0f} steps are too few for a useful weight average",
        "reg.eval_ema": "no EMA to evaluate",
        "precision.amp": "CPU: fp32 (the paper's mixed precision is a GPU speed-up; bf16 autocast on CPU is slower)",
    }
    if reduced.data.img_size != 32:  # the shared Imagenette copy's images are 224x224
        reasons["data.img_size"] = "CPU scale: 32 px (cache built from the shared 224 px copy)"
    if root_reason:
        reasons["data.root"] = root_reason
    base = apply_overrides(reduced, changes)
    name = name or reduced.name.replace(reduced.model.name, model) + "-cpu"
    return register_recipe(dataclasses.replace(
        base, name=name, deviations={k: reasons[k] for k in recipe_diff(parent, base)},
        description=f"{reduced.parent} at CPU scale on {title} 32 px ({model}, {epochs} epochs)"))


for _reduced_name in ("dyt-vit_tiny-imagenette-quick", "dyt-vit_tiny_ln-imagenette-quick"):
    _cpu_scale(get_recipe(_reduced_name), name=_reduced_name.replace("vit_tiny", "vit_quick").replace("-quick", "-cpu"),
               lr_reason="3.2x the linear-scaling lr (4e-3 x 128/4096 = 1.25e-4): "
                                                    "a 15-epoch run needs a larger step")
# DyT's second dataset (the CIFAR-10 part of docs/reproductions/dyt.md): the same footing, sized by steps;
# 50,000 images make 4 epochs about as many steps (~1,600) as Imagenette's 15 (~1,100) in the same hour.
for _reduced_name in ("dyt-vit_tiny-cifar10-quick", "dyt-vit_tiny_ln-cifar10-quick"):
    _cpu_scale(get_recipe(_reduced_name), name=_reduced_name.replace("vit_tiny", "vit_quick").replace("-quick", "-cpu"),
               lr_reason="3.2x the linear-scaling lr (4e-3 x 128/4096 = 1.25e-4), as on Imagenette",
               epochs=4, warmup_epochs=0.25)
# KAT (docs/reproductions/kat.md): KAT-T's GR-KAN block at vit_quick's size vs the same ViT with its GELU MLP,
# both on the KAT paper's (DeiT) recipe: the paper's Table 5 comparison, KAT-T vs DeiT-T.
_cpu_scale(get_recipe("kat-kat_tiny-imagenette-quick"), "kat_quick",
           "CPU scale: KAT width 96, depth 4, 4 heads, 8 rational groups (0.46M parameters with 10 classes) "
           "instead of KAT-T",
           name="kat-kat_quick-imagenette-cpu")
_cpu_scale(get_recipe("mambaout-mambaout_femto-imagenette-quick"), "mambaout_quick",
           "CPU scale: MambaOut depths (2, 2, 3, 2), widths (16, 32, 64, 112) (0.49M parameters with 10 classes) "
           "instead of Femto",
           name="mambaout-mambaout_quick-imagenette-cpu")
_cpu_scale(get_recipe("mambaout-mambaout_femto-imagenette-quick"), "vit_quick",
           "the paper's baseline (DeiT-T, a ViT with LayerNorm) at CPU scale: vit_quick, 0.46M parameters with 10 classes",
           name="mambaout-vit_quick-imagenette-cpu")
_cpu_scale(get_recipe("kat-kat_tiny-imagenette-quick"), "vit_quick",
           "the paper's baseline (DeiT-T: the same ViT with a GELU MLP) at CPU scale: vit_quick, 0.46M parameters with 10 classes",
           name="kat-vit_quick-imagenette-cpu")
