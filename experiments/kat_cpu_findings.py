"""Reprint the instrumentation numbers that docs/reproductions/kat.md quotes, from the committed runs
of the KAT CPU campaign (docs/reproductions/kat-cpu/runs/, written by experiments/kat_cpu.py):

    python experiments/kat_cpu_findings.py

- final val top-1 per run;
- the rationals' input range: per layer max(|p0.1|, |p99.9|) of the first 64 validation images at
  initialisation and after the last epoch (paper_probes.jsonl), against the [-3, 3] fit range;
- the GR-KAN layers' Var[out] / Var[in] at initialisation and at the end;
- the mean val top-1 of each variant after epochs 1, 2, 4, 8 and 15;
- the training throughput of KAT against its ViT (summary.json, img/s over the whole run, both on
  one thread): the cost of the rationals on this CPU, which budget.KAT_EXTRA quotes.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RUNS = Path("docs/reproductions/kat-cpu/runs")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def main() -> None:
    speed: dict[str, list[float]] = {}
    for run in sorted(p for p in RUNS.iterdir() if p.is_dir()):
        val = [r for r in rows(run / "metrics.jsonl") if r.get("kind") == "val"]
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        kind = "kat" if "kat_quick" in run.name and "abs_terms" not in run.name else (
            "vit" if "vit_quick" in run.name else "kat-abs")
        if summary.get("img_per_s"):
            speed.setdefault(kind, []).append(summary["img_per_s"])
        print(f"{run.name}: final val top-1 {val[-1]['top1']:.2f}" if val else f"{run.name}: no evaluation")
        probes = rows(run / "paper_probes.jsonl")
        if not probes or "kat" not in probes[0]:
            continue
        for label, rec in (("init", probes[0]), (f"after epoch {probes[-1]['epoch'] + 1}", probes[-1])):
            widest = {n: max(abs(v["in_p001"]), abs(v["in_p999"])) for n, v in rec["kat"].items()}
            outside = sum(1 for w in widest.values() if w > 3)
            ratios = [v["var_ratio"] for v in rec["kat"].values() if "var_ratio" in v]
            peak = max(max(abs(v["in_min"]), abs(v["in_max"])) for v in rec["kat"].values())
            print(f"  {label}: widest p0.1/p99.9 {min(widest.values()):.2f}-{max(widest.values()):.2f} "
                  f"({outside}/{len(widest)} layers past 3), largest |input| {peak:.2f}; "
                  f"Var[out]/Var[in] {min(ratios):.2f}-{max(ratios):.2f}")
    curves: dict[str, list[list[float]]] = {}
    for run in sorted(p for p in RUNS.iterdir() if p.is_dir()):
        val = [r["top1"] for r in rows(run / "metrics.jsonl") if r.get("kind") == "val"]
        curves.setdefault(run.name.rsplit("-s", 1)[0], []).append(val)
    for variant, cs in curves.items():
        mean = [statistics.fmean(x) for x in zip(*cs)]
        print(f"{variant} (n = {len(cs)}): mean val top-1 after epoch " +
              ", ".join(f"{e}: {mean[e - 1]:.1f}" for e in (1, 2, 4, 8, 15) if e <= len(mean)))
    if speed.get("kat") and speed.get("vit"):
        k, v = statistics.fmean(speed["kat"]), statistics.fmean(speed["vit"])
        print(f"throughput, whole run incl. evaluation (1 thread): KAT {k:.0f} img/s, ViT {v:.0f} img/s: "
              f"the ViT is {v / k:.2f}x faster")


if __name__ == "__main__":
    main()
