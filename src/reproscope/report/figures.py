"""Draw the paper-figure probes of a run directory as PNGs (and TensorBoard images).

Reads ``figures/probes.pt`` (collected by ``reproscope.instrument.paper_probes``) and
``stats.jsonl`` (the probe log); writes ``figures/*.png``. Nothing here touches a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..plotting import legend_outside, pyplot, save_figure
from ..runfiles import PAPER_PROBES, STATS
from ..train.checkpoint import load_file


def plot_norm_curves(curves: dict, path: Path, when: str = "") -> Path | None:
    if not curves:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        ax.scatter(c["x"].numpy(), c["y"].numpy(), s=2, alpha=0.3)
        ax.set_title(f"{name}\n{c['kind']}", fontsize=9)
        ax.set_xlabel("input")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
    axes[0][0].set_ylabel("output (before affine)")
    fig.suptitle(f"DyT Fig. 2/4: norm-layer input vs output on one batch{when}", fontsize=10)
    return save_figure(fig, path)


def alpha_vs_inv_std(stats_path: Path) -> dict[str, list[tuple[int, float, float]]]:
    """{dyt layer: [(step, alpha, 1/std of input)]} from stats.jsonl."""
    series: dict[str, list] = {}
    if not stats_path.is_file():
        return series
    for line in stats_path.read_text().splitlines():
        rec = json.loads(line)
        for layer, st in rec["layers"].items():
            a = rec["params"].get(f"{layer}.alpha")
            if a is not None and st.get("in_std"):
                series.setdefault(layer, []).append((rec["step"], a["weight_norm"], 1.0 / st["in_std"]))
    return series


def plot_alpha(series: dict, path: Path) -> Path | None:
    if not series:
        return None
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(series)
    for name in names[:: max(1, len(names) // 5)]:
        s = series[name]
        line, = a1.plot([p[0] for p in s], [p[1] for p in s], label=f"{name} alpha")
        a1.plot([p[0] for p in s], [p[2] for p in s], ls="--", color=line.get_color())
    a1.set_xlabel("step")
    a1.set_title("alpha (solid) and 1/std of input (dashed)", fontsize=9)
    legend_outside(a1)
    last = [series[n][-1] for n in names]
    a2.scatter([p[2] for p in last], [p[1] for p in last], s=12)
    a2.set_xlabel("1/std of input (last probe)")
    a2.set_ylabel("alpha")
    a2.set_title("across layers", fontsize=9)
    fig.suptitle("DyT Fig. 8: alpha tracks 1/std of the layer input", fontsize=10)
    return save_figure(fig, path)


def plot_kat(kat: dict, path: Path, when: str = "") -> Path | None:
    rows = {k: v for k, v in kat.items() if "in_min" in v}
    if not rows:
        return None
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(rows)
    for i, n in enumerate(names):
        r = rows[n]
        a1.plot([i, i], [r["in_min"], r["in_max"]], color="lightgrey", lw=4)
        a1.plot([i, i], [r["in_p001"], r["in_p999"]], color="tab:blue", lw=4)
    a1.axhspan(-3, 3, color="tab:green", alpha=0.1, label="fit range [-3, 3]")
    a1.set_xticks(range(len(names)), [n.replace("blocks.", "b").replace(".mlp.", ".") for n in names],
                  rotation=90, fontsize=6)
    if max(max(abs(r["in_min"]), abs(r["in_max"])) for r in rows.values()) > 30:
        a1.set_yscale("symlog", linthresh=3)  # linear inside the fit range, decades outside it
    a1.set_title("rational input range (p0.1-p99.9 blue, min-max grey)", fontsize=9)
    legend_outside(a1)
    ratios = [kat[n].get("var_ratio", float("nan")) for n in names]
    a2.bar(range(len(names)), ratios)
    a2.axhline(1.0, color="k", lw=0.5)
    if max((v for v in ratios if v == v), default=1.0) > 100:
        a2.set_yscale("log")
    a2.set_xticks(range(len(names)), [n.replace("blocks.", "b").replace(".mlp.", ".") for n in names],
                  rotation=90, fontsize=6)
    a2.set_title("GR-KAN layer Var[out] / Var[in]", fontsize=9)
    if when:
        fig.suptitle(f"KAT{when}", fontsize=10)
    return save_figure(fig, path)


def plot_gates(gates: dict, path: Path) -> Path | None:
    if not gates:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(list(gates), list(gates.values()))
    ax.set_ylabel("fraction |GELU(g)| < 0.01")
    ax.set_title("MambaOut: gates near zero, per stage", fontsize=10)
    return save_figure(fig, path)


def read_paper_probes(path: Path) -> list[dict]:
    """The lines of ``paper_probes.jsonl`` (one per epoch, ``instrument.paper_probes.summary``); [] if absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_probes_over_training(rows: list[dict], path: Path) -> Path | None:
    """KAT: each rational layer's widest input quantile max(|p0.1|, |p99.9|) against the [-3, 3] fit
    range, and each GR-KAN layer's Var[out]/Var[in], per epoch; MambaOut: each stage's near-zero gate
    share per epoch. None when the run has neither. Legends sit outside the axes."""
    kat_rows = [r for r in rows if r.get("kat")]
    gate_rows = [r for r in rows if r.get("mambaout_gates")]
    panels = ([("kat_range", kat_rows), ("kat_var", kat_rows)] if kat_rows else []) + (
        [("gates", gate_rows)] if gate_rows else [])
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.6, 3.4), squeeze=False)
    for ax, (kind, rs) in zip(axes[0], panels):
        epochs = [r["epoch"] + 1 for r in rs]
        key = "mambaout_gates" if kind == "gates" else "kat"
        names = list(rs[-1][key])
        for n in names:
            if kind == "kat_range":
                ys = [max(abs(r["kat"][n].get("in_p001", 0)), abs(r["kat"][n].get("in_p999", 0)))
                      if n in r["kat"] else float("nan") for r in rs]
            elif kind == "kat_var":
                ys = [r["kat"].get(n, {}).get("var_ratio", float("nan")) for r in rs]
            else:
                ys = [r["mambaout_gates"].get(n, float("nan")) for r in rs]
            ax.plot(epochs, ys, marker=".", lw=1, label=n.replace("blocks.", "b").replace(".mlp", ""))
        ax.set_xlabel("epoch")
        if kind == "kat_range":
            ax.axhline(3.0, color="tab:green", ls="--", lw=1, label="fit range edge (3)")
            ax.set_title("rational input: max(|p0.1|, |p99.9|)", fontsize=9)
        elif kind == "kat_var":
            ax.axhline(1.0, color="k", lw=0.5)
            ax.set_title("GR-KAN layer Var[out] / Var[in]", fontsize=9)
        else:
            ax.set_title("MambaOut: share of |GELU(g)| < 0.01", fontsize=9)
        legend_outside(ax)
    fig.suptitle("paper-figure probes over training (first 64 val images, each epoch)", fontsize=10)
    return save_figure(fig, path)


def plot_run(run_dir: str | Path, tb_writer=None, step: int = 0) -> list[Path]:
    run_dir = Path(run_dir)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    probes = load_file(fig_dir / "probes.pt", what="probe dump") if (fig_dir / "probes.pt").is_file() else {}
    made = [plot_norm_curves(probes.get("norm_curves", {}), fig_dir / "dyt_fig2_norm_curves.png"),
            plot_alpha(alpha_vs_inv_std(run_dir / STATS), fig_dir / "dyt_fig8_alpha.png"),
            plot_kat(probes.get("kat", {}), fig_dir / "kat_ranges.png"),
            plot_gates(probes.get("mambaout_gates", {}), fig_dir / "mambaout_gates.png"),
            plot_probes_over_training(read_paper_probes(run_dir / PAPER_PROBES),
                                      fig_dir / "paper_probes_over_training.png")]
    if (fig_dir / "probes_at_divergence.pt").is_file():  # the same probes at the step the run was flagged
        at = load_file(fig_dir / "probes_at_divergence.pt", what="probe dump")
        when = " - at the step the run was flagged as diverging"
        made += [plot_norm_curves(at.get("norm_curves", {}), fig_dir / "dyt_fig2_norm_curves_at_divergence.png", when),
                 plot_kat(at.get("kat", {}), fig_dir / "kat_ranges_at_divergence.png", when)]
    made = [p for p in made if p is not None]
    if tb_writer is not None:
        import numpy as np
        from PIL import Image
        for p in made:
            tb_writer.add_image(f"figures/{p.stem}", np.asarray(Image.open(p).convert("RGB")), step, dataformats="HWC")
    return made
