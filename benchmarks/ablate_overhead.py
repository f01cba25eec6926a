"""What a `reproscope ablate` campaign spends outside training steps.

A campaign is many short runs in one process; imports, the data, the model build, evaluation, checkpoints
and the run files are its overhead. This trains a shapes10 base run (quickstart with an lr 100x below the
recipe's, sized so one run takes about --arm-s seconds here), then a campaign of one arm (the lr reverted)
over 2 seeds, and prints the campaign's wall time beside the sum of its runs' training-step time (the
``epoch_time_s`` the Trainer logs: the optimizer steps of each epoch, nothing else), side by side in one run.

    python benchmarks/ablate_overhead.py [--arm-s 60] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from reproscope import ablate as ab
from reproscope.config import apply_overrides
from reproscope.launch import train
from reproscope.recipes import get_recipe


def _step_seconds(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return sum(r["epoch_time_s"] for r in rows if r.get("kind") == "train" and "epoch_time_s" in r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm-s", type=float, default=60.0, help="target seconds per run (sets the train size)")
    ap.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="ablate-bench-"))
    # about 2.5 ms per 32 px image-epoch for vit_quick on 2 cores: size the run to --arm-s
    n = max(512, int(args.arm_s / 0.0025 / 5) // 128 * 128)
    recipe = apply_overrides(get_recipe("quickstart"), {"optim.lr": 2e-5, "data.train_size": n, "data.val_size": 1000,
                                                        "sched.epochs": 5, "run.progress": False})
    base = out / "base"
    train(recipe, run_dir=base)
    p = ab.plan(base, "optim.lr", seeds=2)
    t0 = time.perf_counter()
    ab.run_campaign(p, progress=False)
    wall = time.perf_counter() - t0
    runs = [ab.run_dir_of(base, a, s, recipe.run.seed) for a in p.arms for s in p.seeds if (a.name, s) in p.est_s]
    steps = sum(_step_seconds(r) for r in runs)
    print(f"\n| campaign | runs | train size | wall (s) | training steps (s) | rest (s) | rest share |")
    print("|---|---|---|---|---|---|---|")
    print(f"| 1 arm x 2 seeds + 1 base seed | {len(runs)} | {n} | {wall:.1f} | {steps:.1f} | {wall - steps:.1f} | "
          f"{(wall - steps) / wall:.1%} |")


if __name__ == "__main__":
    main()
