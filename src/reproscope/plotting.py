"""The plotting helpers every layer that draws shares (checks' figures, run figures, report figures).

Matplotlib is imported on first use with the non-interactive Agg backend, so nothing opens a window
and a headless machine draws the same PNGs. This module sits at the bottom of the package: it
imports nothing of reproscope.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend selected."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG by its suffix; the folder is created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")  # legends placed outside the axes stay in
    pyplot().close(fig)
    return path


def legend_outside(ax, fontsize: float = 7) -> None:
    """The legend of ``ax`` to the right of its axes, so it never covers a curve (``save_figure`` keeps
    it in the image); 7 pt stays readable when the figure is printed at ~0.8 of an A4 text width."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

