"""The CPU-scale MambaOut campaign behind docs/reproductions/mambaout.md.

MambaOut's claim (MambaOut Table 1): Gated CNN blocks without an SSM suffice for ImageNet
classification; MambaOut-Femto 78.9 vs DeiT-T 72.2 top-1. Here: ``mambaout_quick`` (the Gated CNN
block, 0.49M parameters) against ``vit_quick`` (a ViT with LayerNorm, the DeiT-T stand-in, 0.46M) on
the MambaOut paper's recipe at the CPU campaigns' common footing (Imagenette at 32 px, 15 epochs),
3 seeds each. The gate-sparsity probe (share of |GELU(g)| < 0.01 per stage) is logged every epoch in
each run's paper_probes.jsonl. One ablation, 3 seeds: the token mixer's kernel 3x3 in place of the
paper's 7x7 (``model.kernel_size=3``), since at 32 px the 7x7 kernel is larger than the last two
stages' 4x4 and 2x2 maps.

    python experiments/mambaout_cpu.py --threads 1 --jobs 2   # runs what is missing, then `reproscope report`
    python experiments/mambaout_cpu.py --dry-run              # print the commands only

Run from the repository root. A run that finished is skipped; an interrupted one resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cpu_campaign

OUT = Path("runs/mambaout-cpu")
SEEDS = (0, 1, 2)
RUNS = [(f"{recipe}-s{seed}", recipe, [f"run.seed={seed}"])
        for seed in SEEDS for recipe in ("mambaout-mambaout_quick-imagenette-cpu", "mambaout-vit_quick-imagenette-cpu")]
RUNS += [(f"mambaout-mambaout_quick-imagenette-cpu-k3-s{seed}", "mambaout-mambaout_quick-imagenette-cpu",
          [f"run.seed={seed}", "model.kernel_size=3"]) for seed in SEEDS]
KEEP = Path("docs/reproductions/mambaout-cpu/runs")

if __name__ == "__main__":
    sys.exit(cpu_campaign.main(RUNS, OUT, KEEP, __doc__))
