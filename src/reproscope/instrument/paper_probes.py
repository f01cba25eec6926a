"""Collect the data behind each paper's analysis figures, on one batch, for any run.

- DyT Fig. 2 / 4: input -> output pairs of chosen norm layers (first, middle, last), output taken
  before the affine: (x - mean) / std for LayerNorm, tanh(alpha x) for DyT.
- DyT Fig. 8: alpha of each DyT layer against 1 / std of its input comes from the probe log
  (``stats.jsonl``: ``params[<layer>.alpha].weight_norm`` and ``layers[<layer>].in_std``).
- KAT: per group-rational layer, the input range against the [-3, 3] range the rational was fitted
  on, and per GR-KAN layer the output/input variance ratio.
- MambaOut: per stage, the fraction of gate activations GELU(g) near zero (|.| < 0.01).

Collection only; ``reproscope.report.figures`` draws the PNGs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.dtypes import MIXED_DTYPE, is_dtype_error
from ..model.layers import dyt_like
from ..model.mambaout import GatedCNNBlock
from .hooks import HookHandles

MAX_POINTS = 4000


def _sample(t: torch.Tensor, n: int = MAX_POINTS, seed: int = 0) -> torch.Tensor:
    t = t.flatten()
    if t.numel() <= n:
        return t.cpu()
    g = torch.Generator(device="cpu").manual_seed(seed)
    return t.cpu()[torch.randperm(t.numel(), generator=g)[:n]]


def rational_like(m: nn.Module) -> bool:
    """KAT-like: a module whose class name contains "Rational" and that has parameters (ours, or a
    user's rational written from the paper)."""
    return "rational" in type(m).__name__.lower() and any(True for _ in m.parameters(recurse=False))


@torch.no_grad()
def collect(model: nn.Module, x: torch.Tensor) -> dict:
    """The paper-figure probes on one batch ``x``. Duck-typed, so a user's own layers count: DyT-like is
    any module with a tensor ``alpha`` (``layers.dyt_like``; its curve is tanh(alpha x) unless it says
    ``squash`` otherwise), KAT-like any ``rational_like`` module (its input range against the [-3, 3] fit
    range) and its parent (the output/input variance ratio of that GR-KAN layer), MambaOut-like our
    ``GatedCNNBlock``.

    A model whose forward raises for mixed floating dtypes (a float64 buffer met by float32
    activations, run here without the training step's autocast) is not measured: the result's lists
    stay empty and ``not_measured`` says why (``model.dtypes.MIXED_DTYPE``); other errors propagate."""
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) or dyt_like(m)]
    chosen = {n for n, _ in (norms[:1] + norms[len(norms) // 2:len(norms) // 2 + 1] + norms[-1:])} if norms else set()
    out: dict = {"norm_curves": {}, "kat": {}, "mambaout_gates": {}}
    handles = HookHandles()
    gates: dict[str, list[torch.Tensor]] = {}

    def norm_hook(name):
        def hook(m, inputs, output):
            xi = inputs[0].float()
            if dyt_like(m):
                if getattr(m, "squash", "tanh") == "tanh":
                    y = torch.tanh(m.alpha.float() * xi)
                else:
                    y = (output.float() - m.bias) / m.weight
                kind = f"DyT (alpha {m.alpha.float().mean().item():.3g})"
            else:
                y = F.layer_norm(xi, m.normalized_shape, eps=m.eps)
                kind = "LayerNorm"
            idx = torch.randperm(xi.numel(), generator=torch.Generator().manual_seed(0))[:MAX_POINTS]
            out["norm_curves"][name] = {"x": xi.flatten().cpu()[idx], "y": y.flatten().cpu()[idx], "kind": kind}
        return hook

    def kat_hook(name):
        def hook(m, inputs, output):
            xi = inputs[0].float()
            rec = out["kat"].setdefault(name.rsplit(".", 1)[0] if rational_like(m) and "." in name else name, {})
            if rational_like(m):
                q = torch.quantile(_sample(xi, 20000), torch.tensor([0.001, 0.999]))
                rec.update(in_min=xi.min().item(), in_max=xi.max().item(), in_p001=q[0].item(), in_p999=q[1].item(),
                           fit_range=(-3.0, 3.0), init=getattr(m, "init", "?"))
            else:
                rec["var_ratio"] = (output.float().var() / xi.var().clamp(min=1e-12)).item()
        return hook

    def gate_hook(stage):
        def hook(m, inputs, output):
            gates.setdefault(stage, []).append((output.float().abs() < 0.01).float().mean())
        return hook

    for name, m in model.named_modules():
        if name in chosen:
            handles.add(m.register_forward_hook(norm_hook(name)))
        if rational_like(m) or any(rational_like(c) for c in m.children()):
            handles.add(m.register_forward_hook(kat_hook(name)))
        if isinstance(m, GatedCNNBlock):
            stage = ".".join(name.split(".")[:2])
            handles.add(m.act.register_forward_hook(gate_hook(stage)))
    was = model.training
    model.eval()
    try:
        with handles:
            model(x)
    except RuntimeError as e:
        if not is_dtype_error(e):
            raise
        first = str(e).strip().splitlines()[0]
        return {"norm_curves": {}, "kat": {}, "mambaout_gates": {},
                "not_measured": f"{MIXED_DTYPE}: the model's forward raises outside autocast ({first})"}
    finally:
        model.train(was)
    out["mambaout_gates"] = {k: torch.stack(v).mean().item() for k, v in gates.items()}
    return out


def summary(data: dict) -> dict:
    """``collect``'s output reduced to numbers, one small dict per call (a line of
    ``paper_probes.jsonl``): per rational layer its input p0.1/p99.9, min/max and the GR-KAN layer's
    variance ratio; per MambaOut stage the near-zero gate share; per probed DyT layer the share of
    saturated outputs (``SATURATED``); ``not_measured`` (why) when ``collect`` could not run the model."""
    if data.get("not_measured"):
        return {"not_measured": data["not_measured"]}
    kat = {n: {k: v[k] for k in ("in_min", "in_max", "in_p001", "in_p999", "var_ratio") if k in v}
           for n, v in data.get("kat", {}).items()}
    dyt = dyt_saturation(data)
    return {k: v for k, v in (("kat", kat), ("mambaout_gates", data.get("mambaout_gates", {})),
                              ("dyt_saturated", dyt)) if v}


SATURATED = 0.99  # |tanh(alpha x)| above this: the DyT output no longer follows its input (our threshold)


def dyt_saturation(data: dict) -> dict[str, float]:
    """Per probed DyT layer of ``collect``'s output, the share of outputs |tanh(alpha x)| > ``SATURATED``."""
    return {n: (c["y"].abs() > SATURATED).float().mean().item()
            for n, c in data.get("norm_curves", {}).items() if str(c.get("kind", "")).startswith("DyT")}


def probe_findings(data: dict) -> dict:
    """What ``collect``'s output measures that can explain a diverging run, as
    ``{name: {"code", "sentence", <numbers>}}`` (empty when the model has no such layers):

    - ``kat-range``: the largest |input| any rational sees, against the [-3, 3] fit range (KAT
      Sec. 4: outside it the rational is an unfitted ratio of polynomials), and how many rational
      layers have their p0.1-p99.9 range outside it;
    - ``dyt-saturation``: the share of DyT outputs |tanh(alpha x)| > ``SATURATED`` in the probed DyT
      layers (DyT Sec. 3 / Fig. 2: only a few extreme values should land in the flat part).
    """
    out: dict = {}
    kat = [v for v in data.get("kat", {}).values() if "in_min" in v]
    if kat:
        peak = max(max(abs(v["in_min"]), abs(v["in_max"])) for v in kat)
        outside = sum(1 for v in kat if v["in_p001"] < -3 or v["in_p999"] > 3)
        out["kat-range"] = {"code": "kat-range", "max_abs_input": peak, "layers_outside": outside, "layers": len(kat),
                            "sentence": f"rational activations see inputs of magnitude up to {peak:.3g} against their [-3, 3] "
                                        f"fit range ({outside}/{len(kat)} layers have p0.1-p99.9 outside it)"}
    share = dyt_saturation(data)
    if share:
        worst = max(share, key=share.get)
        out["dyt-saturation"] = {"code": "dyt-saturation", "saturated": share,
                                 "sentence": f"DyT outputs saturated (|tanh(alpha x)| > {SATURATED}): "
                                             + ", ".join(f"{n} {v:.0%}" for n, v in share.items())
                                             + f" (worst {worst})"}
    return out
