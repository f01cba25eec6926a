"""Floating dtypes a model mixes, read from any ``nn.Module`` (the user's own included).

A position embedding built with numpy and registered with ``torch.from_numpy(array)`` is float64;
added to float32 tokens it promotes the residual stream to float64, and the next LayerNorm or Linear
with float32 weights raises (``mixed dtype (CPU): all inputs must share same datatype``, ``mat1 and
mat2 must have the same dtype``). ``dtype_outliers`` names every parameter and buffer whose floating
dtype differs from the model's dominant parameter dtype, ``dtype_message`` says it in one line with
the fix, and ``is_dtype_error`` tells such a failure from any other. The code is ``MIXED_DTYPE``.

Pure torch (model layer): ``train``, ``instrument``, ``checks`` and ``diagnostics`` import it.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..config import ConfigError

MIXED_DTYPE = "mixed-dtype"  # the machine-readable code of a model whose floating tensors disagree in dtype

# the messages torch raises when one op gets tensors of two floating dtypes (CPU and CUDA kernels)
_DTYPE_ERROR = re.compile(r"dtype|datatype|scalar type|Input type \(.*\) and (weight|bias) type", re.IGNORECASE)


def dominant_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype that holds the most parameter elements of ``model`` (buffers when it has no
    floating parameters); None when it has neither."""
    counts: dict[torch.dtype, int] = {}
    for tensors in (model.parameters(), model.buffers()):
        for t in tensors:
            if t.is_floating_point():
                counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
        if counts:
            break
    return max(counts, key=counts.get) if counts else None


def dtype_outliers(model: nn.Module) -> list[tuple[str, str, torch.dtype]]:
    """``(name, "parameter" | "buffer", dtype)`` for every floating parameter and buffer of ``model``
    whose dtype differs from ``dominant_dtype(model)``, in ``named_parameters`` then ``named_buffers``
    order; empty when the model uses one floating dtype."""
    main = dominant_dtype(model)
    out = [(n, "parameter", p.dtype) for n, p in model.named_parameters() if p.is_floating_point() and p.dtype != main]
    out += [(n, "buffer", b.dtype) for n, b in model.named_buffers() if b.is_floating_point() and b.dtype != main]
    return out


_METHOD = {torch.float32: "float", torch.float64: "double", torch.float16: "half", torch.bfloat16: "bfloat16"}


def _short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def dtype_message(model: nn.Module, outliers: list[tuple[str, str, torch.dtype]] | None = None) -> str | None:
    """One line naming each of ``model``'s ``dtype_outliers`` (``outliers`` when given) and the fix, or
    None when there are none, e.g. "buffer pos_embed is float64 while the model's parameters are float32:
    ... call .float() on it ... or build it with dtype=torch.float32 ..."."""
    outliers = dtype_outliers(model) if outliers is None else outliers
    if not outliers:
        return None
    main = dominant_dtype(model)
    names = ", ".join(f"{kind} {n} is {_short(d)}" for n, kind, d in outliers[:6])
    more = f" (+{len(outliers) - 6} more)" if len(outliers) > 6 else ""
    cast = f".{_METHOD[main]}()" if main in _METHOD else f".to(torch.{_short(main)})"
    first = outliers[0][0].rsplit(".", 1)[-1]
    return (f"{names}{more} while the model's parameters are {_short(main)}: an op that meets both dtypes "
            f"raises, or turns the activations {_short(outliers[0][2])}; call {cast} on it where the model "
            f"is built (register_buffer({first!r}, tensor{cast})), or build it with dtype=torch.{_short(main)} "
            f"(torch.from_numpy keeps numpy's float64)")


def is_dtype_error(e: BaseException) -> bool:
    """Whether ``e`` is torch's refusal of an op whose inputs have different dtypes (a RuntimeError
    saying "mixed dtype", "same dtype", "expected scalar type", "Input type (double) and bias type
    (float)", ...)."""
    return isinstance(e, RuntimeError) and bool(_DTYPE_ERROR.search(str(e)))


class MixedDtypeError(ConfigError):
    """A model that cannot run because its floating tensors disagree in dtype; ``code`` is ``MIXED_DTYPE``
    and ``outliers`` the ``dtype_outliers`` it names."""

    code = MIXED_DTYPE

    def __init__(self, message: str, outliers: list[tuple[str, str, torch.dtype]]):
        super().__init__(message)
        self.outliers = outliers
