"""Model registry, after timm's ``@register_model`` without its pretrained-config bulk.

Each constructor is registered with the facts the paper reports about it, so that
``reproscope models`` can print our numbers beside the paper's.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..config import ConfigError, nearest


@dataclass(frozen=True)
class ModelInfo:
    name: str
    fn: Callable[..., nn.Module]
    paper: str
    paper_params_m: float | None = None  # millions, as the paper's table prints it
    paper_top1: float | None = None  # ImageNet-1K top-1 the paper reports
    default_img_size: int = 224
    description: str = ""
    options: frozenset[str] | None = None  # the keywords it takes (options_of); None = not declared


def options_of(builder: Callable, *targets) -> frozenset[str]:
    """The keywords a family of models takes, read from signatures, never from an error's text: the
    builder's named parameters, and for what its ``**kwargs`` forward to, the fields of each config
    dataclass and the named parameters of each constructor in ``targets``."""
    names = {n for n, p in inspect.signature(builder).parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for t in targets:
        if dataclasses.is_dataclass(t):
            names |= {f.name for f in dataclasses.fields(t)}
        else:
            names |= {n for n, p in inspect.signature(t).parameters.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("self", "cfg")}
    return frozenset(names)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(*, paper: str, paper_params_m: float | None = None, paper_top1: float | None = None,
                   default_img_size: int = 224, options: frozenset[str] | None = None):
    """Decorator: register ``fn`` under its function name; ``options``: the keywords it takes
    (``options_of`` its family's builder), so a key it does not take is refused before the call."""
    def deco(fn):
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[fn.__name__] = ModelInfo(fn.__name__, fn, paper, paper_params_m, paper_top1,
                                           default_img_size, doc[0] if doc else "", options)
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name={name!r}: unknown model{nearest(name, _REGISTRY)}; "
                          f"`reproscope models` lists them")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    return model_info(name).fn(**kwargs)
