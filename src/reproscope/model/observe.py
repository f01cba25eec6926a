"""What a model *is*, read from any ``nn.Module`` (the user's own included): its stochastic-depth rates
and their rule over depth. Used by the Trainer's deviation log for ``--model`` runs and by the loop
audit of ``reproscope.watch``; duck-typed, so code nobody here wrote is read the same way.
"""

from __future__ import annotations

import torch.nn as nn


def drop_path_rates(model: nn.Module) -> list[tuple[str, float]]:
    """(module name, rate) of every stochastic-depth module, in module order: anything with a
    ``drop_prob`` (timm) or a class name containing DropPath / StochasticDepth with a ``p``."""
    out = []
    for name, m in model.named_modules():
        rate = getattr(m, "drop_prob", None)
        if rate is None and any(k in type(m).__name__ for k in ("DropPath", "StochasticDepth")):
            rate = getattr(m, "p", None)
        if isinstance(rate, (int, float)):
            out.append((name, float(rate)))
    return out


def drop_path_rule(rates: list[float]) -> str:
    """"off" (none or all 0), "constant" (one rate > 0), "linear" (rising linearly with depth, as
    DeiT/ConvNeXt/the three papers do; timm puts ``nn.Identity`` at rate 0 and repeats a block's rate
    for its two branches, so consecutive repeats are merged and a missing first block is allowed),
    or "other". The linear test: residual of a straight-line fit within 10 % of the largest rate (ours)."""
    if not rates or max(rates) == 0:
        return "off"
    merged = [r for i, r in enumerate(rates) if i == 0 or r != rates[i - 1]]
    if len(merged) == 1:
        return "constant"
    if any(b < a for a, b in zip(merged, merged[1:])):
        return "other"
    n = len(merged)
    xs = range(n)
    mx, my = (n - 1) / 2, sum(merged) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, merged)) / sum((x - mx) ** 2 for x in xs)
    resid = max(abs(my + slope * (x - mx) - y) for x, y in zip(xs, merged))
    return "linear" if resid <= 0.1 * max(merged) else "other"
