"""Which tensors a model's forward pass touches, read from any ``nn.Module`` (the user's own included).

- ``TensorUse``: a torch function mode that records the order in which given tensors are first passed
  to any torch function or tensor method (so a tensor used in a parent's own ``forward`` code, e.g. a
  layer scale or a position embedding, is placed where it is used, not where its module starts).
- ``plain_tensor_attributes``: tensors kept as plain module attributes (``self.alpha = torch.ones(1)``),
  neither ``nn.Parameter`` nor buffer, that the forward pass uses. Such a tensor is never trained (not
  in ``parameters()``), not saved (not in ``state_dict()``) and not moved by ``.to(device)`` or cast by
  ``.double()``: a re-implementation that stores DyT's alpha, weight and bias this way computes the
  same function at init and never learns them.

Pure torch (model layer): ``checks`` and ``diagnostics`` both import it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode


class TensorUse(TorchFunctionMode):
    """Records, for the tensors given by ``id``, the rank of their first use by any torch op.

    ``tensors``: {id(tensor): name}; after the ``with`` block, ``order`` is {name: rank} for the tensors
    that were used (rank 0 first)."""

    def __init__(self, tensors: dict[int, str]):
        super().__init__()
        self.tensors, self.order = tensors, {}

    def _see(self, a) -> None:
        if isinstance(a, (list, tuple)):
            for b in a:
                self._see(b)
        elif isinstance(a, dict):
            self._see(list(a.values()))
        elif isinstance(a, torch.Tensor):
            name = self.tensors.get(id(a))
            if name is not None and name not in self.order:
                self.order[name] = len(self.order)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._see(args)
        self._see(list(kwargs.values()))
        return func(*args, **kwargs)


def forward_watching(model: nn.Module, x: torch.Tensor, named: dict[str, torch.Tensor]):
    """(output, {name: rank of first use}) of one no-grad forward pass of ``x`` that watches the ``named``
    tensors; tensors the pass never touches are absent. The model's train/eval mode is left as it was."""
    mode = TensorUse({id(t): n for n, t in named.items()})
    with torch.no_grad(), mode:
        out = model(x)
    return out, mode.order


def tensor_use_order(model: nn.Module, x: torch.Tensor, named: dict[str, torch.Tensor]) -> dict[str, int]:
    """{name: rank of first use} for the ``named`` tensors on one no-grad forward pass of ``x``."""
    return forward_watching(model, x, named)[1]


def used_plain(cands: dict[str, tuple[str, str, torch.Tensor]], order: dict[str, int]
               ) -> list[tuple[str, str, tuple[int, ...]]]:
    """The (module name, attribute, shape) of the ``plain_tensor_candidates`` that ``order`` saw used."""
    return [(mname, attr, tuple(t.shape)) for n, (mname, attr, t) in cands.items() if n in order]


def plain_tensor_candidates(model: nn.Module) -> dict[str, tuple[str, str, torch.Tensor]]:
    """{full name: (module name, attribute, tensor)} for every torch.Tensor in a module's ``vars()`` that is
    neither a registered parameter nor a buffer (a tensor shared by two modules is listed once, under
    the first)."""
    out, seen = {}, set()
    for mname, m in model.named_modules():
        for attr, v in vars(m).items():
            if not isinstance(v, torch.Tensor) or isinstance(v, nn.Parameter):
                continue
            if attr in m._parameters or attr in m._buffers or id(v) in seen:
                continue
            seen.add(id(v))
            out[f"{mname}.{attr}" if mname else attr] = (mname, attr, v)
    return out


def plain_tensor_attributes(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str, tuple[int, ...]]]:
    """(module name, attribute name, shape) of every plain tensor attribute the forward pass of ``x`` uses,
    in module order (``named_modules()``), then attribute order.

    A plain tensor attribute is a ``torch.Tensor`` in a module's ``vars()`` that is neither an
    ``nn.Parameter`` nor a registered buffer: not trained, not in ``state_dict``, not moved by ``.to()``.
    "Used" means some torch op received it on one no-grad forward pass of ``x`` ([B, C, H, W], on the
    model's device and dtype); tensors only kept for bookkeeping are not listed. Runs the model once, in
    eval mode, and restores its train/eval mode."""
    cands = plain_tensor_candidates(model)
    if not cands:
        return []
    was_training = model.training
    model.eval()
    try:
        used = tensor_use_order(model, x, {n: t for n, (_, _, t) in cands.items()})
    finally:
        model.train(was_training)
    return used_plain(cands, used)
