"""A recipe's ``model.*`` keys -> a registered model, the one place that decides which options reach it.

Every key of :class:`~reproscope.config.ModelConfig` whose value is still the config's default is
dropped (the model then uses its own default); the others are passed as keywords of the same name
(``drop_path`` is passed as ``drop_path_rate``). A keyword the model's family does not take (its
signatures, ``registry.options_of``) is refused before the call with a
:class:`~reproscope.config.ConfigError` naming the ``model.*`` key.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from ..config import ConfigError, ModelConfig
from .registry import model_info

_KEYWORD = {"drop_path": "drop_path_rate"}  # ModelConfig field -> constructor keyword where they differ
_FIELD = {v: k for k, v in _KEYWORD.items()}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def model_kwargs(cfg: ModelConfig) -> dict:
    """The constructor keywords for the ``model.*`` keys that are set (differ from ModelConfig's default)."""
    return {_KEYWORD.get(k, k): v for k, v in dataclasses.asdict(cfg).items()
            if k != "name" and v != _DEFAULTS[k]}


def build_model(cfg: ModelConfig, num_classes: int, img_size: int) -> nn.Module:
    """The registered model ``cfg.name`` for ``num_classes`` classes at ``img_size`` pixels.

    Raises:
        ConfigError: an unknown model name, a ``model.*`` key the model does not take, or a value it refuses.
    """
    info = model_info(cfg.name)
    kw = {"num_classes": num_classes, "img_size": img_size, **model_kwargs(cfg)}
    refused = sorted(k for k in kw if info.options is not None and k not in info.options)
    if refused:  # asked of the family's signatures (registry.options_of), before the call
        key = _FIELD.get(refused[0], refused[0])
        raise ConfigError(f"model.{key}={getattr(cfg, key, '?')!r} is not an option of model.name={cfg.name!r}; "
                          f"remove --set model.{key} or choose a model that has it")
    try:
        return info.fn(**kw)
    except ValueError as e:
        raise ConfigError(f"model.name={cfg.name!r} could not be built with {kw}: {e}") from e
