"""The CPU-scale KAT campaign behind docs/reproductions/kat.md.

KAT-T's claim (KAT Table 5): GR-KAN MLPs in place of the ViT's GELU MLP give +2.4 top-1 (KAT-T 74.6 vs
DeiT-T 72.2 on ImageNet-1K). Here: ``kat_quick`` (GR-KAN, the paper's init: F1 = identity, F2 = Swish,
variance-preserving linears) against ``vit_quick`` (the same ViT with its GELU MLP) on the same
recipe (the KAT paper's DeiT recipe at the CPU campaigns' common footing: Imagenette at 32 px, 15
epochs), 3 seeds each, plus one seed of the ablation the public code hinges on: its GPU kernel's
denominator 1 + sum |b_i| |x|^i in place of the paper's 1 + |sum b_i x^i|. Both sides keep the ViT's
trunc_normal(0.02) attention init (no mimetic init on either side).

    python experiments/kat_cpu.py --threads 1 --jobs 2   # runs what is missing, then `reproscope report`
    python experiments/kat_cpu.py --dry-run              # print the commands only

Run from the repository root. A run that finished is skipped; an interrupted one resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cpu_campaign

OUT = Path("runs/kat-cpu")
SEEDS = (0, 1, 2)
RUNS = [(f"{recipe}-s{seed}", recipe, [f"run.seed={seed}"])
        for seed in SEEDS for recipe in ("kat-kat_quick-imagenette-cpu", "kat-vit_quick-imagenette-cpu")]
RUNS.append(("kat-kat_quick-imagenette-cpu-abs_terms-s0", "kat-kat_quick-imagenette-cpu",
             ["run.seed=0", "model.denominator=abs_terms"]))  # the public GPU kernel's denominator
KEEP = Path("docs/reproductions/kat-cpu/runs")

if __name__ == "__main__":
    sys.exit(cpu_campaign.main(RUNS, OUT, KEEP, __doc__))
