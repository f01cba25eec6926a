"""The ablation in the README: what each deviation of a student's reduced quickstart run cost, measured.

A student shrinks the `quickstart` recipe to fit (2,000 of its 12,000 shapes10 images, 6 of its 20 epochs:
the scale, which `ablate` does not revert) and, on the way, changes four settings of the recipe: a 3x
higher lr, no warmup, label smoothing 0.1 and weight decay 0.3. `reproscope ablate --keys auto --all`
reverts each of the four over 3 seeds (and all four at once) and says what each cost.

    python experiments/ablate_quickstart.py            # trains what is missing (about 10 min on 2 cores)

Run from the repository root. Writes runs/ablate-quickstart/student (the run and its ablation/); then
copies what the README's table is read from (each run's config, deviations, metrics, summary and
environment; ablation.json and effects.png; no checkpoints, no TensorBoard files) to
docs/ablation-example/student.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from reproscope.ablate import ablate
from reproscope.config import apply_overrides
from reproscope.console import install_console
from reproscope.launch import train
from reproscope.recipes import get_recipe
from reproscope.runfiles import CONFIG, DEVIATIONS, ENVIRONMENT, METRICS, SUMMARY

RUN = Path("runs/ablate-quickstart/student")
KEEP = Path("docs/ablation-example/student")
SCALE = {"data.train_size": 2000, "data.val_size": 1000, "sched.epochs": 6}
CHANGES = {"optim.lr": 6e-3, "sched.warmup_epochs": 0.0, "reg.label_smoothing": 0.1, "optim.weight_decay": 0.3}
FILES = (CONFIG, DEVIATIONS, METRICS, SUMMARY, ENVIRONMENT)


def keep(src: Path, dst: Path) -> None:
    """The small files of the run and its ablation runs, and the ablation's results, under ``dst``."""
    for run in [src, *sorted((src / "ablation").glob("*-seed*"))]:
        to = dst / run.relative_to(src)
        to.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (run / name).is_file():
                shutil.copyfile(run / name, to / name)
    for name in ("ablation.json", "effects.png"):
        shutil.copyfile(src / "ablation" / name, dst / "ablation" / name)


def main() -> int:
    install_console()  # the campaign's progress lines and the trainer's messages, as the CLI shows them
    if not (RUN / SUMMARY).is_file():
        recipe = apply_overrides(get_recipe("quickstart"), {**SCALE, **CHANGES, "run.progress": False})
        train(recipe, run_dir=RUN, resume="auto")
    rc = ablate(str(RUN), "auto", seeds=3, budget=60, joint=True)
    if rc == 0:
        keep(RUN, KEEP)
        print(f"kept: {KEEP}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
