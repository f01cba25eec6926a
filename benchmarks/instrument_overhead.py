"""Instrumentation overhead: the same training steps with probes off, at the default sampling
(histograms included, every 1,000 steps), with histograms on every probe step (5x as often), and
probing every step (histograms off), and with probes off but the loop observer that
``reproscope.watch`` attaches to a user's loop (optimizer step hooks, forward hook, gradient-norm
hooks; ``instrument.loop.LoopObserver``), alternating in one process.

    python benchmarks/instrument_overhead.py [--recipe quickstart] [--steps 400] [--chunk 10] [--set ...]

The configurations train from the same initial weights, interleaved in chunks of `--chunk`
steps (off, default, ..., every-step, off, ...) so that machine drift hits all three alike; after a
warm-up of one chunk each, the table reports total time / steps for each configuration (probe steps
included, so the default's schedule is accounted at its real rate) and the ratio to "off". The
per-step NaN/spike guard (one device-to-host copy of two scalars) is part of every configuration.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from reproscope.config import apply_overrides
from reproscope.recipes import get_recipe
from reproscope.instrument import standard_callbacks
from reproscope.instrument.loop import LoopObserver
from reproscope.train.trainer import Trainer
from reproscope.runtime import synchronize as sync

CONFIGS = {
    "off": {"instrument.enabled": False},
    "default sampling": {"instrument.enabled": True},
    # the default's histograms come every 1,000 steps; on every probe step (200) shows what a set costs
    "default, histograms every 200 steps": {"instrument.enabled": True, "instrument.hist_every": 200},
    "every-step probing": {"instrument.enabled": True, "instrument.probe_every": 1, "instrument.probe_early": False,
                           "instrument.histograms": False},
    "off + loop observer (watch)": {"instrument.enabled": False},
}
LOOP = "off + loop observer (watch)"  # attaches instrument.loop.LoopObserver to the Trainer's model and optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=400, help="measured steps per configuration")
    ap.add_argument("--chunk", type=int, default=10)
    args = ap.parse_args()
    base = apply_overrides(get_recipe(args.recipe), ["run.progress=false", "instrument.probes=false"] + args.overrides)
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        for name, kv in CONFIGS.items():
            torch.manual_seed(0)
            r = apply_overrides(base, kv)
            tr = Trainer(r, f"{d}/{len(runs)}", tensorboard=True, callbacks=standard_callbacks(r))
            tr.start()
            if name == LOOP:
                LoopObserver(tr.orig_model, tr.optimizer).attach()
            runs[name] = {"tr": tr, "epoch": 0, "it": tr.train_loader.epoch(0), "time": 0.0, "steps": 0}

        def next_batch(run):
            try:
                return next(run["it"])
            except StopIteration:
                run["epoch"] += 1
                run["it"] = run["tr"].train_loader.epoch(run["epoch"])
                return next(run["it"])

        n_chunks = 1 + -(-args.steps // args.chunk)
        for c in range(n_chunks):  # chunk 0 warms up (and compiles)
            for run in runs.values():
                tr = run["tr"]
                batches = [next_batch(run) for _ in range(args.chunk)]
                sync(tr.device)
                t0 = time.perf_counter()
                for b in batches:
                    tr.fire("step_end", **tr.train_step([b]))
                sync(tr.device)
                if c > 0:
                    run["time"] += time.perf_counter() - t0
                    run["steps"] += len(batches)
        for run in runs.values():
            tr = run["tr"]
            run["probes"] = tr.callbacks[0].n_probes if tr.recipe.instrument.enabled else 0
    dev = next(iter(runs.values()))["tr"].device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    off = runs["off"]["time"] / runs["off"]["steps"]
    print(f"\n{base.name} on {name}, compile={base.precision.compile}, {runs['off']['steps']} measured steps "
          f"per configuration in chunks of {args.chunk}\n")
    print("| configuration | ms/step | ratio to off | probes taken (incl. warm-up) |")
    print("|---|---|---|---|")
    for k, run in runs.items():
        per = run["time"] / run["steps"]
        print(f"| {k} | {per * 1000:.2f} | {per / off:.3f}x | {run['probes']} |")


if __name__ == "__main__":
    main()
