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
    # in name order, as the notes' `reproscope report <campaign>/runs/* --out <campaign>` (a shell glob) gives them
    report = [sys.executable, "-m", "reproscope", "report", *(str(keep / n) for n in sorted(names)), "--out",
              str(keep.parent)]
    print("+", " ".join(report), flush=True)
    return 0 if args.dry_run else subprocess.call(report)


# ----------------------------------------------------------------------------- findings (read committed runs)

def jsonl(path: Path) -> list[dict]:
    """The lines of a JSON-lines file ([] if absent)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_dirs(keep: Path) -> list[Path]:
    return sorted(p for p in keep.iterdir() if p.is_dir())


def val_top1(run: Path) -> list[float]:
    """The run's val top-1 after each evaluated epoch, in order (metrics.jsonl)."""
    return [r["top1"] for r in jsonl(run / "metrics.jsonl") if r.get("kind") == "val"]


def print_final_top1(keep: Path) -> None:
    for run in run_dirs(keep):
        val = val_top1(run)
        print(f"{run.name}: final val top-1 {val[-1]:.2f}" if val else f"{run.name}: no evaluation")


def print_curves(keep: Path, epochs=(1, 2, 4, 8, 15)) -> None:
    """Mean val top-1 of each variant (run name without its -sN) after the given epochs."""
    import statistics
    curves: dict[str, list[list[float]]] = {}
    for run in run_dirs(keep):
        curves.setdefault(run.name.rsplit("-s", 1)[0], []).append(val_top1(run))
    for variant, cs in curves.items():
        mean = [statistics.fmean(x) for x in zip(*cs)]
        print(f"{variant} (n = {len(cs)}): mean val top-1 after epoch " +
              ", ".join(f"{e}: {mean[e - 1]:.1f}" for e in epochs if e <= len(mean)))


def print_throughput(keep: Path, method: str, baseline: str) -> None:
    """Mean img/s over whole runs (summary.json) of runs whose name holds ``method`` vs ``baseline``."""
    import statistics
    speed: dict[str, list[float]] = {}
    for run in run_dirs(keep):
        s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        kind = method if method in run.name else baseline if baseline in run.name else None
        if kind and s.get("img_per_s") and run.name.rsplit("-s", 1)[0].endswith("-cpu"):
            speed.setdefault(kind, []).append(s["img_per_s"])
    if speed.get(method) and speed.get(baseline):
        m, b = statistics.fmean(speed[method]), statistics.fmean(speed[baseline])
        print(f"throughput, whole run incl. evaluation (1 thread): {method} {m:.0f} img/s, {baseline} {b:.0f} img/s "
              f"({b / m:.2f}x)")
