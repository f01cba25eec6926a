"""Hook-based collectors for any ``nn.Module``: per-module activation and gradient statistics.

Only collection lives here: statistics are computed on the device inside hooks (never ``.item()``)
and moved to the host once per probe, by :meth:`ActivationStats.collect`.

Design for torch.compile (see the package docstring): forward hooks are registered once on the
uncompiled module, before compilation, and toggled by ``enabled``; while disabled they return at
once, so the compiled graph holds nothing of them. Probe steps run the uncompiled module, where the
enabled hook also attaches a tensor hook to the module output to see its gradient in backward.
"""

from __future__ import annotations

import torch
import torch.nn as nn

STAT_NAMES = ("mean", "std", "rms", "absmax", "nonfinite", "near_zero")
GRAD_NAMES = ("grad_rms", "grad_nonfinite")
NEAR_ZERO = 1e-6


def tensor_stats(x: torch.Tensor) -> torch.Tensor:
    """[mean, std, rms, absmax, fraction non-finite, fraction |x| < 1e-6] over finite values, on device."""
    x = x.detach().float().flatten()
    finite = torch.isfinite(x)
    n_fin = finite.sum().clamp(min=1)
    xf = torch.where(finite, x, torch.zeros((), device=x.device))
    mean = xf.sum() / n_fin
    var = (torch.where(finite, x - mean, torch.zeros((), device=x.device)) ** 2).sum() / n_fin
    rms = torch.sqrt((xf * xf).sum() / n_fin)
    return torch.stack([mean, var.sqrt(), rms, xf.abs().max() if x.numel() else mean * 0,
                        1 - finite.float().mean(), (x.abs() < NEAR_ZERO).float().mean()])


def grad_stats(g: torch.Tensor) -> torch.Tensor:
    g = g.detach().float()
    finite = torch.isfinite(g)
    gf = torch.where(finite, g, torch.zeros((), device=g.device))
    return torch.stack([torch.sqrt((gf * gf).mean()), 1 - finite.float().mean()])


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


def default_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every named module except pure containers (Sequential, ModuleList, ModuleDict) and the root."""
    skip = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return [(n, m) for n, m in model.named_modules() if n and not isinstance(m, skip)]


class HookHandles:
    """A group of hook handles; a context manager whose ``remove()`` is idempotent."""

    def __init__(self, handles=()):
        self._handles = list(handles)

    def add(self, h) -> None:
        self._handles.append(h)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


class ActivationStats:
    """Per-module output statistics (forward) and output-gradient statistics (backward).

    For DyT-like modules (an ``alpha`` parameter) the fraction of saturated inputs, |alpha x| > 2,
    is recorded as well. Keep the returned collector; call ``enabled = True`` on probe steps only.
    """

    def __init__(self, model: nn.Module, modules: list[tuple[str, nn.Module]] | None = None,
                 keep_outputs: bool = False):
        self.enabled = False
        self.keep_outputs = keep_outputs
        self.forward: dict[str, torch.Tensor] = {}
        self.backward: dict[str, torch.Tensor] = {}
        self.saturation: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.handles = HookHandles()
        for name, m in modules if modules is not None else default_modules(model):
            self.handles.add(m.register_forward_hook(self._make_hook(name)))

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            if not self.enabled:
                return None
            out = _first_tensor(output)
            if out is None:
                return None
            self.order.append(name)
            self.forward[name] = tensor_stats(out)
            alpha = getattr(module, "alpha", None)
            inp = _first_tensor(inputs)
            if isinstance(alpha, torch.Tensor) and inp is not None:
                self.saturation[name] = ((alpha.detach() * inp.detach()).abs() > 2).float().mean()
            if self.keep_outputs:
                self.outputs[name] = out.detach()
            if out.requires_grad:
                out.register_hook(lambda g: self.backward.__setitem__(name, grad_stats(g)))
            return None
        return hook

    def clear(self) -> None:
        self.forward, self.backward, self.saturation, self.outputs, self.order = {}, {}, {}, {}, []

    def collect(self, extra: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
        """Move everything to the host in one transfer and return {module: {stat: value}}.

        ``extra`` 1-D device tensors travel in the same transfer and come back as lists under "__extra__".
        """
        extra = extra or {}
        names = list(self.forward)
        parts = [self.forward[n] for n in names]
        gnames = list(self.backward)
        parts += [self.backward[n] for n in gnames]
        snames = list(self.saturation)
        parts += [self.saturation[n].reshape(1) for n in snames]
        parts += [extra[k].reshape(-1) for k in extra]
        if not parts:
            return {"__extra__": {}}
        flat = torch.cat([p.reshape(-1).float() for p in parts]).cpu().tolist()  # one sync
        out: dict[str, dict[str, float]] = {}
        i = 0
        for n in names:
            out[n] = dict(zip(STAT_NAMES, flat[i:i + len(STAT_NAMES)]))
            i += len(STAT_NAMES)
        for n in gnames:
            out.setdefault(n, {}).update(zip(GRAD_NAMES, flat[i:i + len(GRAD_NAMES)]))
            i += len(GRAD_NAMES)
        for n in snames:
            out.setdefault(n, {})["saturated"] = flat[i]
            i += 1
        out["__extra__"] = {}
        for k, t in extra.items():
            out["__extra__"][k] = flat[i:i + t.numel()]
            i += t.numel()
        return out

    def remove(self) -> None:
        self.handles.remove()


@torch.no_grad()
def parameter_norms(params: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight norms, grad norms) as two device tensors, one entry per parameter (grad norm NaN if none)."""
    ps = [p for _, p in params]
    w = torch.stack(torch._foreach_norm([p.detach().float() for p in ps]))
    gs = [p.grad for p in ps]
    have = [g for g in gs if g is not None]
    gn = torch.stack(torch._foreach_norm([g.float() for g in have])) if have else w.new_zeros(0)
    full = torch.full_like(w, float("nan"))
    idx = [i for i, g in enumerate(gs) if g is not None]
    if idx:
        full[torch.tensor(idx, device=w.device)] = gn
    return w, full
