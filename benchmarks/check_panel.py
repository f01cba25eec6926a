"""The checks on the panel of correct models (``reproscope.checks.panel``): every check's verdicts per
half, the table the README's false-alarm section quotes.

    python benchmarks/check_panel.py [--half tuning|held-back|all] [--jsonl rows.jsonl] [--only NAME,...]

Each model runs every model check in the quick tier (``CheckData.quick``) at 32 px on the zoo's data
(quickstart recipe, ``ZOO_RECIPE_OVERRIDES``), through the recipe's own Trainer, as `tests/test_panel.py`
does. One line per model and check as it lands (status, seconds, codes, what was measured); then a
table per half: how many models each check passed, warned, failed, could not measure (skip) or raised
on. ``--jsonl`` appends every row to a file and skips rows already there (a long run survives a stop):
``--jsonl benchmarks/check_panel.jsonl`` reprints the committed table without running a check.
``benchmarks/check_panel_first_run.jsonl`` holds the first run of both halves (the held-back half's
only untouched run; docs/checks.md says what changed after it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import time
import warnings
from pathlib import Path

import torch

from reproscope.checks import CHECKS, recipe_subject, run_checks
from reproscope.checks.core import MODEL_FREE
from reproscope.checks.panel import HALVES, build_at
from reproscope.checks.zoo import ZOO_RECIPE_OVERRIDES
from reproscope.config import apply_overrides
from reproscope.recipes import get_recipe

STATUSES = ("pass", "warn", "fail", "skip", "raised")


def run_half(half: str, entries, data, done: dict, jsonl: Path | None) -> list[dict]:
    rows = []
    for family, lib, name, kw in entries:
        for check in [n for n in CHECKS if n not in MODEL_FREE]:
            if (name, check) in done:
                rows.append(done[(name, check)])
                continue
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                (r,) = run_checks(build_at((family, lib, name, kw)), data, [check])
            status = "raised" if "check-crashed" in r.codes else r.status
            row = {"half": half, "model": name, "family": family, "check": check, "status": status,
                   "codes": r.codes, "seconds": round(time.perf_counter() - t0, 1), "measured": r.measured}
            rows.append(row)
            if jsonl:
                with jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"{half:9} {name:24} {check:19} {status.upper():6} {row['seconds']:6.1f} s  "
                  f"{','.join(r.codes)[:40]:40} {r.measured[:90]}", flush=True)
    return rows


def table(half: str, rows: list[dict]) -> str:
    n_models = len({r["model"] for r in rows})
    count = collections.Counter((r["check"], r["status"]) for r in rows)
    lines = [f"{half} half: {n_models} models", "",
             "| check | " + " | ".join(STATUSES) + " |", "|---|" + "---|" * len(STATUSES)]
    order = {n: i for i, n in enumerate(CHECKS)}
    for check in sorted({r["check"] for r in rows}, key=lambda c: order.get(c, len(order))):
        lines.append(f"| {check} | " + " | ".join(str(count[(check, s)]) for s in STATUSES) + " |")
    lines.append("| **all** | " + " | ".join(str(sum(1 for r in rows if r["status"] == s)) for s in STATUSES) + " |")
    seconds = sum(r["seconds"] for r in rows)
    lines += ["", f"{seconds / 60:.1f} min of checks ({seconds / max(n_models, 1):.0f} s per model)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", choices=["tuning", "held-back", "all"], default="all")
    ap.add_argument("--jsonl", type=Path, default=None, help="append rows here; rows already there are reused")
    ap.add_argument("--only", default=None, help="comma-separated model names (a subset of the half)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    done = {}
    if args.jsonl and args.jsonl.exists():
        done = {(r["model"], r["check"]): r for r in map(json.loads, args.jsonl.read_text().splitlines())}
    only = set(args.only.split(",")) if args.only else None
    known = {e[2] for entries in HALVES.values() for e in entries}
    if only and only - known:
        ap.error(f"--only: not in the panel: {', '.join(sorted(only - known))}; the panel's models: "
                 f"{', '.join(sorted(known))}")
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    _, data, _ = recipe_subject(apply_overrides(get_recipe("quickstart"), ZOO_RECIPE_OVERRIDES))
    data.quick = True
    out = {}
    for half, entries in HALVES.items():
        if args.half in (half, "all"):
            entries = [e for e in entries if only is None or e[2] in only]
            out[half] = run_half(half, entries, data, done, args.jsonl)
    print(f"\ncorrect-model panel, quick tier, 32 px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    for half, rows in out.items():
        print(table(half, rows) + "\n")


if __name__ == "__main__":
    main()
