"""One command that measures, on a CUDA machine, the GPU numbers docs/measurements.md lacks, in priority order (docs/gpu.md).

    python benchmarks/gpu_session.py --out DIR [--budget-s 540] [--data-root DIR]
    python benchmarks/gpu_session.py --out DIR --cpu-smoke      # the same code on CPU, tiny sizes, < 5 min

Stages, each in its own process with its own time limit, so that a crash or a hang in one is
recorded and the next still runs; a stage whose share no longer fits in what is left of
``--budget-s`` is skipped:

1. ``smoke``: every model family (ViT LN, ViT DyT, ConvNeXt DyT, KAT, MambaOut) for a few bf16
   steps with the standard instruments, compile off and on (channels_last where the trainer applies
   it), then one checkpoint + resume and one planted NaN that the tripwire must name -> ``smoke.json``;
2. ``speed``: ``benchmarks/vs_timm.py`` (ours vs timm, compile off/on, MFU) -> ``vs_timm.json``;
3. ``overhead``: ``benchmarks/instrument_overhead.py`` with compile on (printed to the log);
4. ``data``: ``benchmarks/data_throughput.py`` on Imagenette at 128 px (printed to the log), and
   ``e2e``: ``benchmarks/vs_timm.py --end-to-end``, our cached device path against timm's own loader
   -> ``vs_timm_e2e.json`` (skipped when ``--data-root`` does not exist);
5. ``campaign``: ``dyt-vit_tiny_ln-imagenette-quick`` vs ``dyt-vit_tiny-imagenette-quick`` at ``--epochs``,
   seeds alternating until the budget runs out, then ``reproscope report`` ->
   ``campaign.tar.gz`` (the run folders' small files and the report).

Writes at most 7 files into ``--out``: ``session.json`` (rewritten after every stage: status,
seconds, the tail of the output), ``session.log`` (everything printed), ``smoke.json``,
``vs_timm.json``, ``vs_timm_e2e.json``, ``campaign.tar.gz`` and ``environment.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, share of the budget in seconds on a GPU; on --cpu-smoke)
STAGES = (("smoke", 60, 150), ("speed", 180, 60), ("overhead", 45, 60), ("data", 45, 40), ("e2e", 60, 90),
          ("campaign", None, 90))
CPU_SMOKE_HANG_S = 1200  # --cpu-smoke: a stage still running after 20 min is hung, not slow
FAMILIES = ("quickstart", "quickstart-dyt", "dyt-convnext_tiny", "kat-kat_tiny", "mambaout-mambaout_femto")


# ----------------------------------------------------------------------------- stage 1: smoke

class _PlantNaN:
    """A callback that makes ``blocks.1`` (or the first block found) return NaN from step ``at`` on."""

    def __init__(self, at: int):
        self.at, self.now = at, 0

    def on_train_start(self, trainer):
        from reproscope.checks.core import block_modules
        blocks = block_modules(trainer.orig_model)
        target = blocks[min(1, len(blocks) - 1)][1]
        target.register_forward_hook(lambda m, i, o: o * float("nan") if self.now >= self.at else None)

    def on_step_start(self, trainer, step):
        self.now = step


def smoke(out: Path, cpu: bool) -> int:
    """Stage 1; returns the number of failed cases (each case's error is recorded, the rest still runs)."""
    import traceback

    import torch

    from reproscope.config import apply_overrides
    from reproscope.launch import train
    from reproscope.recipes import get_recipe
    batch, steps = (8, 2) if cpu else (64, 20)
    cases = []

    def case(name, fn):
        t0 = time.perf_counter()
        try:
            info = fn() or {}
            cases.append({"case": name, "ok": True, "s": round(time.perf_counter() - t0, 1), **info})
        except Exception as e:  # recorded, and the next case runs
            cases.append({"case": name, "ok": False, "s": round(time.perf_counter() - t0, 1),
                          "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]})
        print(json.dumps(cases[-1])[:400], flush=True)
        (out / "smoke.json").write_text(json.dumps({"device": _device_name(), "cases": cases}, indent=1))

    base = {"sched.epochs": 1, "sched.warmup_epochs": 0, "data.batch_size": batch, "data.eval_batch_size": batch,
            "data.train_size": batch * steps, "data.val_size": batch, "run.progress": False,
            "precision.amp": "bf16", "data.img_size": 32}
    with tempfile.TemporaryDirectory() as d:
        compiles = (False, True)
        for rname in FAMILIES:
            for comp in compiles:
                if cpu and comp and rname != "quickstart":
                    continue  # a CPU compile costs ~45 s: one family compiles in the CPU smoke run

                def run(rname=rname, comp=comp):
                    r = apply_overrides(get_recipe(rname), {**base, "precision.compile": comp})
                    t0 = time.perf_counter()
                    trainer, metrics = train(r, run_dir=Path(d) / f"{rname}-{int(comp)}")
                    assert all(torch.isfinite(p).all() for p in trainer.orig_model.parameters()), "non-finite weights"
                    return {"img_per_s": round(r.data.train_size / (time.perf_counter() - t0), 1),
                            "channels_last": trainer.channels_last, "top1": metrics.get("top1")}
                case(f"{rname} bf16 compile={'on' if comp else 'off'}", run)

        def resume():
            r = apply_overrides(get_recipe("quickstart"), {**base, "sched.epochs": 2})
            rd = Path(d) / "resume"
            train(apply_overrides(r, {"sched.epochs": 1}), run_dir=rd)  # a finished run, extended by one epoch
            trainer, _ = train(r, run_dir=rd, resume="auto", overrides=["sched.epochs=2"])
            assert trainer.step == 2 * steps, (trainer.step, 2 * steps)
            return {"steps": trainer.step}
        case("checkpoint + resume", resume)

        def tripwire():
            r = apply_overrides(get_recipe("quickstart"), base)
            trainer, _ = train(r, run_dir=Path(d) / "nan", callbacks=[_PlantNaN(2)])
            assert trainer.tripped is not None and trainer.tripped.code == "nonfinite", trainer.tripped
            reps = sorted((Path(d) / "nan").glob("nonfinite-step*.pt"))
            assert reps, "no reproducer written"
            return {"stopped_at": trainer.tripped.step, "reproducer": reps[0].name}
        case("tripwire names a planted NaN", tripwire)
    return sum(not c["ok"] for c in cases)


# ----------------------------------------------------------------------------- stage 5: campaign

def campaign(out: Path, cpu: bool, data_root: str, epochs: int, budget_s: float) -> int:
    """Stage 5: LN vs DyT, seeds alternating while the next run still fits; report; pack small files."""
    from reproscope.config import apply_overrides
    from reproscope.report.report import report
    from reproscope.launch import train
    from reproscope.recipes import get_recipe
    t_end = time.perf_counter() + budget_s
    if cpu:
        variants = ("quickstart", "quickstart-dyt")
        over = {"sched.epochs": 1, "data.train_size": 64, "data.val_size": 32, "data.batch_size": 16,
                "data.eval_batch_size": 32, "run.progress": False}
    else:
        variants = ("dyt-vit_tiny_ln-imagenette-quick", "dyt-vit_tiny-imagenette-quick")
        over = {"sched.epochs": epochs, "data.root": data_root, "run.progress": False}
    runs_dir = Path(tempfile.mkdtemp(prefix="campaign-"))  # only the small files travel back, packed
    run_dirs: list[str] = []
    longest = 0.0
    for seed in range(1 if cpu else 3):
        for v in variants:
            if time.perf_counter() + 1.2 * longest > t_end:
                print(f"campaign: stopping, the next run (~{longest:.0f} s) does not fit", flush=True)
                break
            t0 = time.perf_counter()
            rd = runs_dir / f"{v}-s{seed}"
            train(apply_overrides(get_recipe(v), {**over, "run.seed": seed}), run_dir=rd, overwrite=True)
            longest = max(longest, time.perf_counter() - t0)
            run_dirs.append(str(rd))
    if run_dirs:
        report(run_dirs, str(runs_dir / "report"))
    keep = ("config.json", "deviations.json", "environment.json", "metrics.jsonl", "data.json", "stats.jsonl",
            "model_source.json")
    with tarfile.open(out / "campaign.tar.gz", "w:gz") as tar:
        for p in sorted(runs_dir.rglob("*")):
            if p.is_file() and (p.name in keep or p.suffix in (".png", ".md", ".pdf")):
                tar.add(p, arcname=str(p.relative_to(runs_dir)))
    return 0 if run_dirs else 1


# ----------------------------------------------------------------------------- the session

def _device_name() -> str:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def stage_command(name: str, args, out: Path) -> list[str]:
    """The subprocess that runs stage ``name``."""
    py, me = sys.executable, str(Path(__file__).resolve())
    bench = ROOT / "benchmarks"
    if name in ("smoke", "campaign"):
        return [py, me, "--stage", name, "--out", str(out), "--data-root", args.data_root,
                "--epochs", str(args.epochs), "--stage-budget-s", str(args.stage_budget_s)] + \
               (["--cpu-smoke"] if args.cpu_smoke else [])
    if name == "speed":
        extra = ["--tiny"] if args.cpu_smoke else ["--models", args.speed_models, "--steps", "20", "--rounds", "3"]
        return [py, str(bench / "vs_timm.py"), *extra, "--json", str(out / "vs_timm.json")]
    if name == "overhead":
        extra = (["--steps", "4", "--chunk", "2", "--set", "data.train_size=256", "--set", "data.batch_size=32"]
                 if args.cpu_smoke else ["--steps", "200", "--set", "precision.compile=true"])
        return [py, str(bench / "instrument_overhead.py"), *extra]
    if name == "e2e":  # our cached device path against timm's own loader, end to end
        if not Path(args.data_root).is_dir():
            return None
        extra = (["--tiny", "--workers", "0", "--e2e-img", "32"] if args.cpu_smoke else
                 ["--models", "vit_tiny_p8_64", "--e2e-img", "128", "--steps", "20", "--rounds", "1", "--compile", "on"])
        return [py, str(bench / "vs_timm.py"), *extra, "--end-to-end", "--data-root", args.data_root,
                "--json", str(out / "vs_timm_e2e.json")]
    if name == "data":
        extra = (["--recipe", "quickstart", "--set", "data.train_size=256", "--set", "data.batch_size=32",
                  "--steps", "2"] if args.cpu_smoke else
                 ["--set", f"data.root={args.data_root}", "--set", "data.img_size=128", "--steps", "20"])
        return [py, str(bench / "data_throughput.py"), *extra]
    raise ValueError(name)


def run_session(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_end = time.perf_counter() + args.budget_s
    results = []
    log = open(out / "session.log", "a", buffering=1)
    env = {"PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    import os
    for name, gpu_s, cpu_s in STAGES:
        left = t_end - time.perf_counter()
        share = cpu_s if args.cpu_smoke else gpu_s
        share = left - 5 if share is None else share
        if not args.cpu_smoke and (left < min(share, 30) or share <= 0):
            results.append({"stage": name, "status": "skipped", "reason": f"{left:.0f} s left"})
            continue
        limit = share if args.cpu_smoke else min(share, left - 5)
        # the stage limits ration a GPU machine's minutes; on --cpu-smoke the sizes are tiny and machine load
        # must not turn into a failure: a stage there is stopped only as a hang (CPU_SMOKE_HANG_S)
        timeout = CPU_SMOKE_HANG_S if args.cpu_smoke else limit
        cmd = stage_command(name, argparse.Namespace(**{**vars(args), "stage_budget_s": limit - 10}), out)
        if cmd is None:
            results.append({"stage": name, "status": "skipped", "reason": f"no data at {args.data_root}"})
            continue
        log.write(f"\n===== {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, timeout=timeout,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            status, text = ("ok" if p.returncode == 0 else f"failed (exit {p.returncode})"), p.stdout
        except subprocess.TimeoutExpired as e:
            status = "timeout"
            text = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
        log.write(text)
        results.append({"stage": name, "status": status, "s": round(time.perf_counter() - t0, 1),
                        "tail": text[-1500:]})
        (out / "session.json").write_text(json.dumps({"device": _device_name(), "cpu_smoke": args.cpu_smoke,
                                                      "budget_s": args.budget_s, "stages": results}, indent=1))
        print(f"{name}: {status} ({results[-1]['s']} s)", flush=True)
    (out / "session.json").write_text(json.dumps({"device": _device_name(), "cpu_smoke": args.cpu_smoke,
                                                  "budget_s": args.budget_s, "stages": results}, indent=1))
    from reproscope.train.rundir import environment
    (out / "environment.json").write_text(json.dumps(environment(), indent=1, default=str))
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


def absolute_dir(path: str) -> str:
    """``path`` made absolute against the current directory: the stages run in the repository root,
    so a relative ``--out`` must be resolved once, where the session was started."""
    return str(Path(path).expanduser().resolve())


def parse_args(argv=None) -> argparse.Namespace:
    """The session's arguments, ``--out`` already absolute."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=absolute_dir,
                    help="the output folder ($OUT on the device machine; relative to the current directory)")
    ap.add_argument("--budget-s", type=float, default=540, help="wall-clock budget of the whole session")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: checks the script itself")
    ap.add_argument("--data-root", default=".travel/imagenette", help="Imagenette folder (see docs/gpu.md)")
    ap.add_argument("--epochs", type=int, default=30, help="campaign epochs per run")
    ap.add_argument("--speed-models", default="vit_small,vit_base,convnext_tiny,mambaout_femto,vit_tiny_p8_64")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stage-budget-s", type=float, default=0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage == "smoke":
        return 1 if smoke(Path(args.out), args.cpu_smoke) else 0
    if args.stage == "campaign":
        return campaign(Path(args.out), args.cpu_smoke, args.data_root, args.epochs, args.stage_budget_s)
    return run_session(args)


if __name__ == "__main__":
    sys.exit(main())
