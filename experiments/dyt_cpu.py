"""The CPU-scale DyT campaign behind docs/reproductions/dyt.md.

Trains ViT-quick with LayerNorm and with DyT on the shared Imagenette copy at 32 px, 3 seeds each,
plus one seed of the squashing ablation (DyT with identity in place of tanh, the paper's Tab. 7
control) and one of alpha0 = 1.0 (the paper's tuned ViT-B value, Tab. 12), copies the small files behind each number into docs/reproductions/dyt-cpu/runs/, and
writes the report from those copies (``experiments/dyt_cpu_findings.py`` prints the instrumentation
numbers the note quotes, from the same copies):

    python experiments/dyt_cpu.py            # runs what is missing, then `reproscope report`
    python experiments/dyt_cpu.py --dry-run  # print the commands only

Run from the repository root. A run that finished is skipped; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OUT = Path("runs/dyt-cpu")
SEEDS = (0, 1, 2)
RUNS = [(f"{recipe}-s{seed}", recipe, [f"run.seed={seed}"])
        for recipe in ("dyt-vit_quick_ln-imagenette-cpu", "dyt-vit_quick-imagenette-cpu") for seed in SEEDS]
RUNS.append(("dyt-vit_quick-imagenette-cpu-identity-s0", "dyt-vit_quick-imagenette-cpu",
             ["run.seed=0", "model.dyt_squash=identity"]))
RUNS.append(("dyt-vit_quick-imagenette-cpu-alpha1-s0", "dyt-vit_quick-imagenette-cpu",
             ["run.seed=0", "model.dyt_alpha0=1.0"]))  # the paper's tuned ViT-B alpha0 (Table 12)


KEEP = Path("docs/reproductions/dyt-cpu/runs")
SMALL_FILES = ("config.json", "deviations.json", "environment.json", "metrics.jsonl")


def keep_small_files() -> None:
    """Copy what backs each number (config, deviations, environment, metrics, the probes as
    stats.jsonl.gz, paper-figure PNGs) into the repository; checkpoints and TensorBoard events stay
    in runs/."""
    import gzip
    import shutil
    for name, _, _ in RUNS:
        src, dst = OUT / name, KEEP / name
        (dst / "figures").mkdir(parents=True, exist_ok=True)
        for f in SMALL_FILES:
            shutil.copyfile(src / f, dst / f)
        with open(src / "stats.jsonl", "rb") as fi, gzip.GzipFile(dst / "stats.jsonl.gz", "wb", mtime=0) as fo:
            shutil.copyfileobj(fi, fo)
        for png in (src / "figures").glob("*.png"):
            shutil.copyfile(png, dst / "figures" / png.name)


def finished(run_dir: Path) -> bool:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return False
    cfg = json.loads((run_dir / "config.json").read_text())
    epochs = cfg["sched"]["epochs"]
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(r.get("kind") == "val" and r.get("epoch") == epochs - 1 for r in rows) or any(
        r.get("kind") == "event" and r.get("type") == "nonfinite" for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for name, recipe, sets in RUNS:
        run_dir = OUT / name
        if finished(run_dir):
            print(f"done already: {run_dir}")
            continue
        cmd = [sys.executable, "-m", "reproscope", "train", "--recipe", recipe, "--run-dir", str(run_dir),
               "--no-progress", "--set", f"run.threads={args.threads}"]
        for s in sets:
            cmd += ["--set", s]
        cmd += ["--resume", str(run_dir), "--overwrite"] if (run_dir / "last.pt").exists() else []
        print("+", " ".join(cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd)
            if rc not in (0, 3):  # 3 = stopped by the NaN tripwire: a result, not a crash
                return rc
    if not args.dry_run:
        keep_small_files()
    report = [sys.executable, "-m", "reproscope", "report", *(str(KEEP / n) for n, _, _ in RUNS),
              "--out", "docs/reproductions/dyt-cpu"]
    print("+", " ".join(report), flush=True)
    return 0 if args.dry_run else subprocess.call(report)


if __name__ == "__main__":
    sys.exit(main())
