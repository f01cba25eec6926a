"""Reprint the instrumentation numbers that docs/reproductions/kat.md quotes, from the committed runs
of the KAT CPU campaign (docs/reproductions/kat-cpu/runs/, written by experiments/kat_cpu.py):

    python experiments/kat_cpu_findings.py

- final val top-1 per run, and the mean val top-1 of each variant after epochs 1, 2, 4, 8 and 15;
- the rationals' input range: per layer max(|p0.1|, |p99.9|) of the first 64 validation images at
  initialisation and after the last epoch (paper_probes.jsonl), against the [-3, 3] fit range;
- the GR-KAN layers' Var[out] / Var[in] at initialisation and at the end;
- the training throughput of KAT against its ViT (summary.json, img/s over the whole run, both on
  one thread): the cost of the rationals on this CPU, which budget.KAT_EXTRA quotes.
"""

from __future__ import annotations

from pathlib import Path

from cpu_campaign import jsonl, print_curves, print_final_top1, print_throughput, run_dirs

RUNS = Path("docs/reproductions/kat-cpu/runs")


def main() -> None:
    print_final_top1(RUNS)
    for run in run_dirs(RUNS):
        probes = jsonl(run / "paper_probes.jsonl")
        if not probes or "kat" not in probes[0]:
            continue
        print(run.name)
        for label, rec in (("init", probes[0]), (f"after epoch {probes[-1]['epoch'] + 1}", probes[-1])):
            widest = {n: max(abs(v["in_p001"]), abs(v["in_p999"])) for n, v in rec["kat"].items()}
            outside = sum(1 for w in widest.values() if w > 3)
            ratios = [v["var_ratio"] for v in rec["kat"].values() if "var_ratio" in v]
            peak = max(max(abs(v["in_min"]), abs(v["in_max"])) for v in rec["kat"].values())
            print(f"  {label}: widest p0.1/p99.9 {min(widest.values()):.2f}-{max(widest.values()):.2f} "
                  f"({outside}/{len(widest)} layers past 3), largest |input| {peak:.2f}; "
                  f"Var[out]/Var[in] {min(ratios):.2f}-{max(ratios):.2f}")
    print_curves(RUNS)
    print_throughput(RUNS, "kat_quick", "vit_quick")


if __name__ == "__main__":
    main()
