"""`reproscope compare RUN_A RUN_B`: how a run differs from a trusted one.

Prints the config diff, a metric table and the parting step (the first logged step where the training
losses differ beyond a tolerance), and writes an overlay plot. Only reads run directories.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runfiles import NOT_OBSERVED
from ..train.events import Event
from .report_figures import plot_curves
from .runs import Group, RunRecord, load_run


def config_diff(a: RunRecord, b: RunRecord) -> list[tuple[str, object, object]]:
    fa, fb = a.flat_config(), b.flat_config()
    """``(key, A's value, B's value)`` for every flat key that differs; a watched loop's keys are what its loop
    showed (``RunRecord.flat_config``: the same facts the audit reads), ``NOT_OBSERVED`` where it did not."""
    miss = NOT_OBSERVED if (a.watched or b.watched) else None
    return [(k, fa.get(k, miss), fb.get(k, miss)) for k in sorted(set(fa) | set(fb))
            if json.dumps(fa.get(k, miss), default=str) != json.dumps(fb.get(k, miss), default=str)]


def parting_step(a: RunRecord, b: RunRecord, rtol: float) -> tuple[int | None, int]:
    """(first logged step where |loss_a - loss_b| > rtol * max(1, |loss_a|), number of shared steps)."""
    lb = {r["step"]: r["loss"] for r in b.train}
    shared = [(r["step"], r["loss"], lb[r["step"]]) for r in a.train if r["step"] in lb]
    for step, x, y in shared:
        if abs(x - y) > rtol * max(1.0, abs(x)) or (x != x) != (y != y):
            return step, len(shared)
    return None, len(shared)


def _metrics(r: RunRecord) -> dict[str, str]:
    f = r.final
    ips = [t["img_per_s"] for t in r.train if "img_per_s" in t]
    return {"val top-1": f"{f['top1']:.2f}" if "top1" in f else "-",
            "val top-5": f"{f['top5']:.2f}" if "top5" in f else "-",
            "val loss": f"{f['loss']:.4f}" if "loss" in f else "-",
            "last logged train loss": f"{r.train[-1]['loss']:.4f} (step {r.train[-1]['step']})" if r.train else "-",
            "steps": str(r.steps), "epochs evaluated": str(len(r.val)), "ended": r.ending.get("how", "?"),
            "trained by": "watch" if r.watched else "Trainer",
            "processes (world size)": str(r.env.get("world_size", 1)),
            "img/s (median)": f"{sorted(ips)[len(ips) // 2]:.0f}" if ips else "-",
            "device-hours (median epoch x epochs)": f"{r.device_hours:.3f}", "device": r.device,
            "non-finite / diverging / spike events": f"{sum(e.get('type') == Event.NONFINITE for e in r.events)} / "
                                                     f"{sum(e.get('type') in (Event.DIVERGING, Event.GRAD_NORM_OVERFLOW) for e in r.events)} / "
                                                     f"{sum(e.get('type') == Event.LOSS_SPIKE for e in r.events)}"}


def compare(run_a: str, run_b: str, rtol: float = 1e-3, out: str | None = None) -> int:
    a, b = load_run(run_a), load_run(run_b)
    diff = config_diff(a, b)
    print(f"A: {a.path}  (model {a.model})\nB: {b.path}  (model {b.model})\n")
    print(f"config: {len(diff)} fields differ" + (":" if diff else ""))
    w = max((len(k) for k, _, _ in diff), default=0)
    for k, x, y in diff:
        print(f"  {k:<{w}}  {x!r} -> {y!r}")
    ma, mb = _metrics(a), _metrics(b)
    w = max(len(k) for k in ma)
    print(f"\n{'metric':<{w}}  {'A':>14}  {'B':>14}")
    for k in ma:
        print(f"{k:<{w}}  {ma[k]:>14}  {mb[k]:>14}")
    step, n = parting_step(a, b, rtol)
    log_every = a.config.get("run", {}).get("log_every", "?")
    if step is None:
        print(f"\ntraining losses agree within rtol {rtol:g} at all {n} shared logged steps (logged every {log_every})")
    else:
        la = next(r["loss"] for r in a.train if r["step"] == step)
        lb = next(r["loss"] for r in b.train if r["step"] == step)
        print(f"\nparting step (first difference beyond rtol {rtol:g}): logged step {step} (A {la:.6g}, B {lb:.6g}; losses are "
              f"logged every {log_every} steps, so it began after the previous logged step)")
    out_dir = Path(out) if out else Path("compare")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = plot_curves([Group([a], f"A: {a.name}"), Group([b], f"B: {b.name}")], out_dir / "compare.png",
                       vline=step)
    print(f"overlay: {path}")
    return 0
