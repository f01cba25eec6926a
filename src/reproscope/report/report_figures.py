"""Figures for `reproscope report` and `reproscope compare`: curves of groups of runs, overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plotting import legend_outside, pyplot, save_figure
from .runs import Group


def _band(ax, series: list[tuple[list, list]], label: str, color) -> None:
    """Mean over runs at the steps they share, shaded min-max."""
    if not series:
        return
    n = min(len(s[0]) for s in series)
    if n == 0:
        return
    x = np.asarray(series[0][0][:n], dtype=float)
    ys = np.asarray([s[1][:n] for s in series], dtype=float)
    ax.plot(x, ys.mean(0), color=color, label=f"{label} (n={len(series)})", lw=1.3)
    if len(series) > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.2, lw=0)


def curves_figure(groups: list[Group], vline: int | None = None):
    """Train loss over steps beside val top-1 over epochs, one band per group (mean, shaded min-max), and
    a dotted line at step ``vline`` if given; both x axes tick at whole steps and epochs only."""
    from matplotlib.ticker import MaxNLocator
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(9, 3.2))
    for i, g in enumerate(groups):
        c = f"C{i}"
        _band(a, [([t["step"] for t in r.train], [t["loss"] for t in r.train]) for r in g.runs], g.label, c)
        _band(b, [([v.get("epoch", j) + 1 for j, v in enumerate(r.val)], [v["top1"] for v in r.val]) for r in g.runs],
              g.label, c)
    if vline is not None:
        a.axvline(vline, color="k", ls=":", lw=1, label=f"parting step {vline}")
        legend_outside(a)
    a.set_xlabel("step")
    a.set_ylabel("train loss")
    b.set_xlabel("epoch")
    b.set_ylabel("val top-1 (%)")
    legend_outside(b)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
    return fig


def plot_curves(groups: list[Group], path: Path, vline: int | None = None) -> Path:
    """``curves_figure`` saved as ``path``."""
    return save_figure(curves_figure(groups, vline), path)


def plot_grad_norms(groups: list[Group], path: Path) -> Path:
    """Grad norm over steps (log scale), one band per group, saved as ``path``."""
    from matplotlib.ticker import MaxNLocator
    fig, ax = pyplot().subplots(figsize=(6, 2.6))
    for i, g in enumerate(groups):
        _band(ax, [([t["step"] for t in r.train if "grad_norm" in t], [t["grad_norm"] for t in r.train
                                                                         if "grad_norm" in t]) for r in g.runs],
              g.label, f"C{i}")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("grad norm")
    legend_outside(ax)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
