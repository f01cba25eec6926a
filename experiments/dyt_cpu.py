"""The CPU-scale DyT campaign behind docs/reproductions/dyt.md.

Trains ViT-quick with LayerNorm and with DyT on the shared Imagenette copy at 32 px, 3 seeds each,
plus one seed of the squashing ablation (DyT with identity in place of tanh, the paper's Tab. 7
control) and one of alpha0 = 1.0 (the paper's tuned ViT-B value, Tab. 12), copies the small files behind each number into docs/reproductions/dyt-cpu/runs/, and
writes the report from those copies (``experiments/dyt_cpu_findings.py`` prints the instrumentation
numbers the note quotes, from the same copies):

    python experiments/dyt_cpu.py            # runs what is missing, then `reproscope report`
    python experiments/dyt_cpu.py --dry-run  # print the commands only
    python experiments/dyt_cpu.py --threads 1 --jobs 2  # two runs at a time on 2 cores

Run from the repository root. A run that finished is skipped; an interrupted one resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cpu_campaign

OUT = Path("runs/dyt-cpu")
SEEDS = (0, 1, 2)
RUNS = [(f"{recipe}-s{seed}", recipe, [f"run.seed={seed}"])
        for recipe in ("dyt-vit_quick_ln-imagenette-cpu", "dyt-vit_quick-imagenette-cpu") for seed in SEEDS]
RUNS.append(("dyt-vit_quick-imagenette-cpu-identity-s0", "dyt-vit_quick-imagenette-cpu",
             ["run.seed=0", "model.dyt_squash=identity"]))
RUNS.append(("dyt-vit_quick-imagenette-cpu-alpha1-s0", "dyt-vit_quick-imagenette-cpu",
             ["run.seed=0", "model.dyt_alpha0=1.0"]))  # the paper's tuned ViT-B alpha0 (Table 12)


KEEP = Path("docs/reproductions/dyt-cpu/runs")

if __name__ == "__main__":
    sys.exit(cpu_campaign.main(RUNS, OUT, KEEP, __doc__))
