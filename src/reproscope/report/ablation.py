"""What each deviation cost at this scale: the figure and the report section of ``reproscope ablate``'s
``ablation.json`` (written by :mod:`reproscope.ablate`). Only reads."""

from __future__ import annotations

from pathlib import Path

from ..runfiles import ABLATION, ABLATION_DIR, read_json


def read_ablation(run_dir: Path) -> dict | None:
    """``RUN_DIR/ablation/ablation.json``, or None when the run was not ablated."""
    return read_json(Path(run_dir) / ABLATION_DIR / ABLATION, None)


def plot_effects(result: dict, path: Path, metric: str = "final") -> Path | None:
    """One row per reverted key (and the joint arm): the effect on val top-1 (reverted minus base, points)
    with its 95 % Welch interval; a dashed line at 0. None when no effect was measured."""
    rows = [e for e in result.get("effects", []) if e[metric]["effect"] is not None]
    if result.get("joint") and result["joint"][metric]["effect"] is not None:
        rows.append(result["joint"])
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(rows) + 1.2))
    ys = list(range(len(rows)))[::-1]
    for y, e in zip(ys, rows):
        m = e[metric]
        lo = m["lo"] if m["lo"] is not None and m["lo"] == m["lo"] else m["effect"]
        hi = m["hi"] if m["hi"] is not None and m["hi"] == m["hi"] else m["effect"]
        color = "tab:blue" if m["resolved"] else "tab:gray"
        ax.errorbar(m["effect"], y, xerr=[[m["effect"] - lo], [hi - m["effect"]]], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yticks(ys, [("all reverted" if e["arm"] == "all" else ", ".join(e["keys"])) for e in rows])
    ax.set_xlabel(f"effect of reverting on {metric} val top-1 (points)\n95 % Welch CI; grey: not resolved")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ablation_rows(result: dict, metric: str = "final") -> list[list[str]]:
    """The report's table: key, ours -> the parent's value, effect, 95 % CI, n, and what it says."""
    out = []
    for e in result.get("effects", []) + ([result["joint"]] if result.get("joint") else []):
        m = e[metric]
        key = "all reverted" if e["arm"] == "all" else ", ".join(e["keys"])
        change = "; ".join(f"{f!r} -> {t!r}" for f, t in zip(e["from"], e["to"]))
        if m["effect"] is None:
            out.append([key, change, "-", "-", f"{m['n'][0]} + {m['n'][1]}", "not measured"])
            continue
        says = ("resolved" if m["resolved"] else f"not resolved at n = {m['n'][0]} + {m['n'][1]}")
        if e["arm"] == "all" and result["joint"].get("sum_of_singles") is not None:
            says += f"; the single effects sum to {result['joint']['sum_of_singles']:+.2f}"
        out.append([key, change, f"{m['effect']:+.2f}", f"[{m['lo']:+.2f}, {m['hi']:+.2f}]",
                    f"{m['n'][0]} + {m['n'][1]}", says])
    return out


def duration(seconds: float) -> str:
    """A time estimate as a person reads it: minutes under an hour, else hours."""
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def unaffordable_sentence(result: dict) -> str:
    """The scale keys not ablated, with the time each would take."""
    u = result.get("unaffordable") or []
    if not u:
        return ""
    return ("Not ablated, because the cost is the point of the reduced run: " + "; ".join(
        f"{x['key']} {x['from']!r} -> {x['to']!r} (about {duration(x['est_s'])} for the seeds here)"
        for x in u) + ".")
