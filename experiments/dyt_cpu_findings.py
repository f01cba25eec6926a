"""The instrumentation numbers quoted in docs/reproductions/dyt.md, from the committed run files.

    python experiments/dyt_cpu_findings.py [RUNS_DIR]   # default docs/reproductions/dyt-cpu/runs
    python experiments/dyt_cpu_findings.py docs/reproductions/dyt-cifar10-cpu/runs   # the CIFAR-10 campaign

Per run, from ``stats.jsonl.gz`` (the probes) and ``metrics.jsonl``: every DyT alpha at the last
probe, 1/std of the input of the last block's norms and of the final norm (at the first and last
probe), the std of the residual stream after the last block, the fraction of saturated units
(|alpha x| > 2) in the first block, the last block and the final norm, and the median global
gradient norm over training; then the mean val top-1 of each variant after a few epochs.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from pathlib import Path

from cpu_campaign import print_curves


def probes(run: Path) -> list[dict]:
    gz, plain = run / "stats.jsonl.gz", run / "stats.jsonl"
    text = gzip.open(gz, "rt").read() if gz.is_file() else plain.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def norm_layers(layers: dict) -> list[str]:
    return [n for n in layers if n.split(".")[-1] in ("norm1", "norm2", "norm", "fc_norm")]


def summary(run: Path) -> dict:
    ps = probes(run)
    first, last = ps[0], ps[-1]
    norms = norm_layers(last["layers"])
    blocks = sorted({int(n.split(".")[1]) for n in norms if n.startswith("blocks.")})
    last_block = [n for n in norms if n.startswith(f"blocks.{blocks[-1]}.")]
    first_block = [n for n in norms if n.startswith(f"blocks.{blocks[0]}.")]
    final = [n for n in norms if not n.startswith("blocks.")]
    alphas = [v["weight_norm"] for n, v in last["params"].items() if n.endswith(".alpha")]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    gn = [r["grad_norm"] for r in metrics if r.get("kind") == "train" and "grad_norm" in r]

    def rng(vals):
        return f"{min(vals):.2f}-{max(vals):.2f}" if vals else "-"

    def inv_std(p, names):  # DyT layers record their input std
        return [1 / p["layers"][n]["in_std"] for n in names if p["layers"][n].get("in_std", 0) > 0]

    def sat(p, names):
        return [100 * p["layers"][n]["saturated"] for n in names if "saturated" in p["layers"][n]]
    stream = f"blocks.{blocks[-1]}"
    return {
        "run": run.name, "step": last["step"],
        "alpha": rng(alphas),
        "1/std last block + final (first probe)": rng(inv_std(first, last_block + final)),
        "1/std last block + final (last probe)": rng(inv_std(last, last_block + final)),
        "stream std after last block (first -> last)":
            f"{first['layers'][stream]['std']:.2f} -> {last['layers'][stream]['std']:.2f}",
        "saturated % first block": rng(sat(last, first_block)),
        "saturated % last block": rng(sat(last, last_block)),
        "saturated % final norm": rng(sat(last, final)),
        "median grad norm": f"{statistics.median(gn):.2f}" if gn else "-",
    }


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/reproductions/dyt-cpu/runs")
    rows = [summary(r) for r in sorted(p for p in root.iterdir() if p.is_dir())]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print_curves(root, epochs=(1, 2, 3, 4, 8, 15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
