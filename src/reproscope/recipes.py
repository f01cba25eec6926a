"""Registered recipes. ``reproscope recipes`` lists them; ``recipes show NAME`` resolves one."""

from __future__ import annotations

import dataclasses

from .config import (AugConfig, ConfigError, DataConfig, ModelConfig, OptimConfig, Recipe, RegConfig,
                     ScheduleConfig, nearest, validate)

_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in _RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    _RECIPES[recipe.name] = validate(recipe)
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}{nearest(name, _RECIPES)}; `reproscope recipes` lists them")
    return _RECIPES[name]


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
_paper_smoke("dyt-convnext_tiny", "DyT paper: ConvNeXt-T with DyT, stem stride 2, on shapes10 32 px",
             ModelConfig(name="convnext_tiny", norm="dyt", patch_size=2))
_paper_smoke("kat-kat_tiny", "KAT paper: KAT-T (GR-KAN MLPs), patch 8, on shapes10 32 px",
             ModelConfig(name="kat_tiny", patch_size=8))
_paper_smoke("kat-vit_tiny", "KAT paper baseline: ViT-Ti with a GELU MLP, patch 8, on shapes10 32 px",
             ModelConfig(name="vit_tiny", patch_size=8))
_paper_smoke("mambaout-mambaout_femto", "MambaOut paper: MambaOut-Femto, stem stride 2, on shapes10 32 px",
             ModelConfig(name="mambaout_femto", patch_size=2))
_paper_smoke("mambaout-vit_tiny", "MambaOut paper baseline: DeiT-T (ViT-Ti, LayerNorm), patch 8, on shapes10 32 px",
             ModelConfig(name="vit_tiny", norm="ln", patch_size=8))
