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
