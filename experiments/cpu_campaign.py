"""The runner behind the CPU-scale campaigns (``dyt_cpu.py``, ``kat_cpu.py``): each run is
``reproscope train --recipe R --set ...`` into ``runs/<campaign>/<name>``; a finished run is skipped,
an interrupted one resumes; ``--jobs 2`` runs two at a time with one thread each (2 cores); then the
small files behind each number are copied into ``docs/reproductions/<campaign>/runs/`` and
``reproscope report`` writes the campaign's report from those copies.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SMALL_FILES = ("config.json", "deviations.json", "environment.json", "metrics.jsonl")
OPTIONAL_FILES = ("paper_probes.jsonl", "summary.json")


def finished(run_dir: Path) -> bool:
    """The last epoch was evaluated, or the NaN tripwire stopped the run (a result, not a crash)."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return False
    epochs = json.loads((run_dir / "config.json").read_text())["sched"]["epochs"]
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(r.get("kind") == "val" and r.get("epoch") == epochs - 1 for r in rows) or any(
        r.get("kind") == "event" and r.get("type") == "nonfinite" for r in rows)


def keep_small_files(out: Path, keep: Path, names: list[str]) -> None:
    """Copy what backs each number (config, deviations, environment, metrics, the paper-probe log, the
    probes as stats.jsonl.gz, paper-figure PNGs) into the repository; checkpoints and TensorBoard
    events stay in runs/."""
    for name in names:
        src, dst = out / name, keep / name
        (dst / "figures").mkdir(parents=True, exist_ok=True)
        for f in SMALL_FILES + tuple(f for f in OPTIONAL_FILES if (src / f).is_file()):
            shutil.copyfile(src / f, dst / f)
        with open(src / "stats.jsonl", "rb") as fi, gzip.GzipFile(dst / "stats.jsonl.gz", "wb", mtime=0) as fo:
            shutil.copyfileobj(fi, fo)
        for png in (src / "figures").glob("*.png"):
            shutil.copyfile(png, dst / "figures" / png.name)


def command(run_dir: Path, recipe: str, sets: list[str], threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "reproscope", "train", "--recipe", recipe, "--run-dir", str(run_dir),
           "--no-progress", "--set", f"run.threads={threads}"]
    for s in sets:
        cmd += ["--set", s]
    return cmd + (["--resume", str(run_dir), "--overwrite"] if (run_dir / "last.pt").exists() else [])


def main(runs: list[tuple[str, str, list[str]]], out: Path, keep: Path, doc: str) -> int:
    """Parse the command line and run ``runs`` ([(name, recipe, [--set values])], in order)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (2 with --threads 1 on 2 cores)")
    args = ap.parse_args()
    todo = []
    for name, recipe, sets in runs:
        if finished(out / name):
            print(f"done already: {out / name}")
        else:
            todo.append(command(out / name, recipe, sets, args.threads))
    running: list[subprocess.Popen] = []
    while todo or running:
        if todo and len(running) < args.jobs:
            cmd = todo.pop(0)
            print("+", " ".join(cmd), flush=True)
            if not args.dry_run:
                run_dir = Path(cmd[cmd.index("--run-dir") + 1])
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                log = open(run_dir.with_suffix(".log"), "a")  # each run's terminal output, beside it
                running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            continue
        time.sleep(2)
        for p in list(running):
            if p.poll() is not None:
                running.remove(p)
                if p.returncode not in (0, 3):  # 3 = stopped by the NaN tripwire: a result, not a crash
                    print(f"failed (rc {p.returncode}): {' '.join(p.args)}", flush=True)
                    return p.returncode
    names = [n for n, _, _ in runs]
    if not args.dry_run:
        keep_small_files(out, keep, names)
    report = [sys.executable, "-m", "reproscope", "report", *(str(keep / n) for n in names), "--out", str(keep.parent)]
    print("+", " ".join(report), flush=True)
    return 0 if args.dry_run else subprocess.call(report)
