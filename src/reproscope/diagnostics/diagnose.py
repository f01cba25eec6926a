"""`reproscope diagnose <check>|all`: run the checks on a recipe's model and data (or a user's model)."""

from __future__ import annotations

import importlib
import json

import torch

from ..checks import CHECKS, CheckData, recipe_audit, run_checks
from ..config import ConfigError, Recipe, nearest


def load_factory(spec: str):
    """'package.module:factory' -> the factory (called with num_classes=K when it accepts it)."""
    if ":" not in spec:
        raise ConfigError(f"--model {spec!r}: expected package.module:factory")
    mod, fn = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--model {spec!r}: cannot import it ({e})") from e
    return factory


def check_data(recipe: Recipe, n: int = 64) -> CheckData:
    from ..train.augment import BatchTransform
    from ..train.data import build_datasets, channel_stats
    train, _ = build_datasets(recipe.data, progress=False)
    mean, std = channel_stats(train)
    k = recipe.data.num_classes or train.num_classes
    tf = BatchTransform(recipe.aug, recipe.data.img_size, mean, std, k, 0.0, train=False)
    idx = torch.arange(min(n, len(train)))
    x, y = tf(train.images[idx], train.labels[idx])
    return CheckData(x, y, k, recipe.reg.label_smoothing, lr=recipe.optim.lr)


def diagnose(recipe: Recipe, which: str, model_spec: str | None = None, as_json: bool = False) -> int:
    names = list(CHECKS) + ["recipe-audit"]
    if which != "all" and which not in names:
        raise ConfigError(f"unknown check {which!r}{nearest(which, names)}; available: {', '.join(names)}, all")
    data = check_data(recipe)
    if model_spec:
        factory = load_factory(model_spec)

        def make_model():
            try:
                return factory(num_classes=data.num_classes)
            except TypeError:
                return factory()
    else:
        from ..train.trainer import build_model

        def make_model():
            return build_model(recipe, data.num_classes)
    results = run_checks(make_model, data, [n for n in CHECKS if which in ("all", n)])
    if which in ("all", "recipe-audit"):
        results.append(recipe_audit(recipe, make_model()))
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    else:
        for r in results:
            print(r.summary())
        for r in results:
            if r.status != "pass":
                print(f"\n{r.name}: {r.explanation}")
                for c in r.causes:
                    print(f"  - {c}")
    return 1 if any(r.status == "fail" for r in results) else 0
