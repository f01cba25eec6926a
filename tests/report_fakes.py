"""Run directories written without training, for report tests that need only what a report reads:
config.json (a real recipe with overrides), environment.json, deviations.json, metrics.jsonl and,
optionally, the paper-figure PNGs a run's figures/ folder holds (blank, at their real pixel sizes)."""

import json
from pathlib import Path

from conftest import TINY

from reproscope.config import apply_overrides, flat_items
from reproscope.recipes import get_recipe

FIGURE_SIZES = {"dyt_fig8_alpha.png": (979, 393), "dyt_fig2_norm_curves.png": (1308, 393)}


def fake_run(root: Path, recipe: str, seed: int, top1: float, overrides: dict | None = None,
             figures: tuple[str, ...] = (), name: str | None = None, argv: list[str] | None = None) -> Path:
    """A finished 2-epoch run of ``recipe`` (``TINY`` settings) whose final val top-1 is ``top1``."""
    r = apply_overrides(get_recipe(recipe), {**TINY, "run.seed": seed, **(overrides or {})})
    d = root / (name or f"{recipe}-s{seed}")
    (d / "figures").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(r.to_dict()))
    env = {"python": "3.11.7", "torch": "2.14.1", "torchvision": "0.29.1", "gpus": [], "cpu_threads": 1,
           "cuda": None, "platform": "Linux", "git_commit": "0123456789abcdef",
           "argv": argv or ["/venv/bin/reproscope", "train", "--recipe", recipe, "--set", f"run.seed={seed}"]}
    (d / "environment.json").write_text(json.dumps(env))
    before = flat_items(get_recipe(recipe))
    devs = [{"key": k, "parent": before[k], "value": v, "reason": f"command-line override (recipe had {before[k]})"}
            for k, v in TINY.items() if not k.startswith("run.")]
    (d / "deviations.json").write_text(json.dumps({"recipe": recipe, "parent": r.parent, "deviations": devs}))
    rows = [{"kind": "train", "step": s, "epoch": (s - 1) // 10, "loss": 2.3 - 0.01 * s + 0.01 * seed,
             "grad_norm": 1.0 + 0.1 * seed} for s in range(2, 21, 2)]
    for epoch in (0, 1):
        rows.append({"kind": "train", "step": 10 * (epoch + 1), "epoch_time_s": 2.0, "epoch_steps": 10})
        rows.append({"kind": "val", "step": 10 * (epoch + 1), "epoch": epoch, "top1": top1 - 1 + epoch, "top5": 50.0})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    from PIL import Image
    for fig in figures:
        Image.new("RGB", FIGURE_SIZES[fig], (90, 140, 200)).save(d / "figures" / fig)
    return d


def four_runs(root: Path) -> list[Path]:
    """The issue's input: the quickstart LN and DyT variants, 2 seeds each, with the DyT figures."""
    return [fake_run(root, "quickstart", 0, 9.0, figures=("dyt_fig2_norm_curves.png",)),
            fake_run(root, "quickstart", 1, 11.0, figures=("dyt_fig2_norm_curves.png",)),
            fake_run(root, "quickstart-dyt", 0, 7.0, figures=("dyt_fig8_alpha.png",)),
            fake_run(root, "quickstart-dyt", 1, 10.0, figures=("dyt_fig8_alpha.png",))]
