"""Hook-based collectors for any ``nn.Module``: per-module activation and gradient statistics.

Only collection lives here: statistics are computed on the device inside hooks (never ``.item()``)
and moved to the host once per probe, by :meth:`ActivationStats.collect`.

Design for torch.compile (see the package docstring): forward hooks are registered once on the
uncompiled module, before compilation, and toggled by ``enabled``; while disabled they return at
once, so the compiled graph holds nothing of them. Probe steps run the uncompiled module, where the
enabled hook also attaches a tensor hook to the module output to see its gradient in backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..model.layers import dyt_like, first_tensor, saturated_fraction

STAT_NAMES = ("mean", "std", "rms", "absmax", "nonfinite", "near_zero")
NEAR_ZERO = 1e-6


RAW = ("sum", "sumsq", "absmax", "n_nonfinite", "n_near_zero", "n")


def raw_moments(x: torch.Tensor) -> torch.Tensor:
    """[sum, sum of squares, abs-max, #non-finite, #near zero, n] on device: few kernels, no sync."""
    x = x.detach()
    x = x if x.dtype == torch.float32 else x.float()
    if not x.numel():
        return x.new_zeros(6)
    a = x.abs()  # reused for abs-max and the near-zero count
    norm = torch.linalg.vector_norm(x)  # fused sum of squares, no temporary
    return torch.stack([x.sum(), norm * norm, a.max(), (~torch.isfinite(x)).sum().float(),
                        (a < NEAR_ZERO).sum().float(), x.new_tensor(float(x.numel()))])


def derive(raw: list[float]) -> dict[str, float]:
    """Host side: mean, std, rms, absmax and fractions from raw moments (NaN when non-finite values exist)."""
    s1, s2, amax, nbad, nzero, n = raw
    n = max(n, 1.0)
    mean = s1 / n
    var = max(s2 / n - mean * mean, 0.0) if s2 == s2 else float("nan")
    return {"mean": mean, "std": var ** 0.5 if var == var else var, "rms": (s2 / n) ** 0.5 if s2 >= 0 else s2,
            "absmax": amax, "nonfinite": nbad / n, "near_zero": nzero / n}


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


def grad_moments(g: torch.Tensor) -> torch.Tensor:
    """[sum of squares, #non-finite, n] of a gradient, on device."""
    g = g.detach()
    g = g if g.dtype == torch.float32 else g.float()
    norm = torch.linalg.vector_norm(g)
    return torch.stack([norm * norm, (~torch.isfinite(g)).sum().float(), g.new_tensor(float(g.numel()))])


def sample_elements(x: torch.Tensor, samples: int = 0, elements: int = 0) -> torch.Tensor:
    """The first ``samples`` samples of ``x`` (dim 0), flattened, then at most ``elements`` of them,
    evenly strided. The stride is made coprime with the last dimension so that every channel is
    visited (a stride that divides the channel count would sample the same channels only)."""
    if samples and x.ndim and x.shape[0] > samples:
        x = x[:samples]
    flat = x.reshape(-1)
    n = flat.numel()
    if elements and n > elements:
        s = -(-n // elements)
        last = x.shape[-1] if x.ndim else 1
        while math.gcd(s, last) != 1:
            s += 1
        flat = flat[::s]
    return flat


def default_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every named module except the root, pure containers (Sequential, ModuleList, ModuleDict) and
    pass-through layers (Identity, Dropout) whose output repeats their input."""
    skip = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.Dropout)
    return [(n, m) for n, m in model.named_modules()
            if n and not isinstance(m, skip) and type(m).__name__ != "DropPath"]


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
                 keep_outputs: bool = False, samples: int = 0, elements: int = 0):
        self.enabled = False
        self.samples = samples  # stats over the first N samples of dim 0 (0 = all) to bound the cost
        self.elements = elements  # ... and at most this many of their elements, evenly strided (0 = all)
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
            out = first_tensor(output)
            if out is None:
                return None
            self.order.append(name)
            k, e = self.samples, self.elements
            self.forward[name] = raw_moments(sample_elements(out, k, e))
            inp = first_tensor(inputs)
            if dyt_like(module) and inp is not None:
                alpha = module.alpha.detach()
                xi = sample_elements(inp.detach(), k, e).float()
                # a per-channel alpha scales the whole input before sampling (a scalar one scales the sample)
                pre = alpha * xi if alpha.numel() == 1 else sample_elements(alpha * inp.detach(), k, e).float()
                # [fraction saturated (|alpha x| > 2), std of the input] for DyT Fig. 8
                self.saturation[name] = torch.stack([saturated_fraction(pre), xi.std()])
            if self.keep_outputs:
                self.outputs[name] = out.detach()
            if out.requires_grad:
                out.register_hook(lambda g: self.backward.__setitem__(name, grad_moments(sample_elements(g, k, e))))
            return None
        return hook

    def clear(self) -> None:
        self.forward, self.backward, self.saturation, self.outputs, self.order = {}, {}, {}, {}, []

    def collect(self, extra: dict[str, torch.Tensor] | None = None, reduce=None) -> dict[str, dict[str, float]]:
        """Move everything to the host in one transfer and return {module: {stat: value}}.

        ``extra`` 1-D device tensors travel in the same transfer and come back as lists under "__extra__"
        (they must be equal on every process). ``reduce(flat, ops)`` combines the flat vector across
        processes before the transfer; ``ops`` marks each entry "sum", "max" or "mean".
        """
        extra = extra or {}
        names = list(self.forward)
        parts = [self.forward[n] for n in names]
        gnames = list(self.backward)
        parts += [self.backward[n] for n in gnames]
        snames = list(self.saturation)
        parts += [self.saturation[n].reshape(2) for n in snames]
        parts += [extra[k].reshape(-1) for k in extra]
        if not parts:
            return {"__extra__": {}}
        flat = torch.cat([p.reshape(-1).float() for p in parts])
        if reduce is not None:
            ops = (["sum", "sum", "max", "sum", "sum", "sum"] * len(names) + ["sum"] * 3 * len(gnames)
                   + ["mean", "mean"] * len(snames) + ["max"] * sum(t.numel() for t in extra.values()))
            flat = reduce(flat, ops)
        flat = flat.cpu().tolist()  # one sync
        out: dict[str, dict[str, float]] = {}
        i = 0
        for n in names:
            out[n] = derive(flat[i:i + len(RAW)])
            i += len(RAW)
        for n in gnames:
            s2, nbad, cnt = flat[i:i + 3]
            out.setdefault(n, {}).update(grad_rms=(s2 / max(cnt, 1)) ** 0.5 if s2 >= 0 else s2,
                                         grad_nonfinite=nbad / max(cnt, 1))
            i += 3
        for n in snames:
            out.setdefault(n, {}).update(saturated=flat[i], in_std=flat[i + 1])
            i += 2
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
