"""The CPU-scale DyT campaign on a second dataset (the CIFAR-10 part of docs/reproductions/dyt.md).

The same claim as ``dyt_cpu.py`` (DyT Table 1: DyT matches or beats LayerNorm, ViT-B 82.3 -> 82.5 on
ImageNet-1K) on CIFAR-10 (the shared JPEG q75 copy, the standard 10,000-image test split as
validation): ``vit_quick`` with LayerNorm and with DyT (alpha0 = 0.5, the paper's default), 3 seeds
each, on the Imagenette campaign's footing (32 px, batch 128, lr 4e-4, fp32, no mixing or EMA) with
4 epochs (~1,560 steps) in place of 15, so six runs fit in about an hour on 2 cores:

    python experiments/dyt_cifar_cpu.py --threads 1 --jobs 2   # runs what is missing, then `reproscope report`
    python experiments/dyt_cifar_cpu.py --dry-run              # print the commands only

Run from the repository root. A run that finished is skipped; an interrupted one resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cpu_campaign

OUT = Path("runs/dyt-cifar10-cpu")
SEEDS = (0, 1, 2)
RUNS = [(f"{recipe}-s{seed}", recipe, [f"run.seed={seed}"])
        for seed in SEEDS for recipe in ("dyt-vit_quick_ln-cifar10-cpu", "dyt-vit_quick-cifar10-cpu")]
KEEP = Path("docs/reproductions/dyt-cifar10-cpu/runs")

if __name__ == "__main__":
    sys.exit(cpu_campaign.main(RUNS, OUT, KEEP, __doc__))
