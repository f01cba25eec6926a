"""`reproscope profile`: a torch.profiler trace of real training steps, and a printed summary.

Writes into ``<run_dir>/profile/``:
- the trace for TensorBoard's PyTorch Profiler plugin (torch-tb-profiler): ``tensorboard --logdir <run_dir>/profile``;
- one gzipped Chrome trace with call stacks (``with_stack``), read by the plugin and also reachable as
  ``trace.json.gz`` (a hard link, not a copy) to open in https://ui.perfetto.dev, because the plugin is
  deprecated upstream and its web page fetches its chart library from the internet; our batch
  loading is recorded under the name the plugin counts as DataLoader time;
- ``summary.json``, the numbers printed: top ops by self time on CPU and GPU, the step split into
  data wait / forward / backward / optimizer (from the trainer's ``record_function`` ranges), img/s,
  peak memory, model FLOPs per step (torch's FLOP counter) and MFU against the known-GPU table.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from ..config import Recipe
from ..hardware import mfu
from ..instrument import standard_callbacks
from ..train.trainer import Trainer
from .models_table import count_flops_of_copy

RANGES = ("data", "forward", "backward", "optimizer")
# the name torch-tb-profiler counts as data loading ("enumerate(DataLoader)#...__next__"), so its overview
# shows our batch loading as DataLoader time (our loaders are not torch DataLoaders)
DATA_RANGE = "enumerate(DataLoader)#reproscope.batches.__next__"


def run_profile(recipe: Recipe, run_dir: Path, steps: int = 5, warmup: int = 2, model_factory=None) -> dict:
    out = run_dir / "profile"
    out.mkdir(parents=True, exist_ok=True)
    tr = Trainer(recipe, run_dir, tensorboard=False, model_factory=model_factory, callbacks=standard_callbacks(recipe))
    tr.start()
    cuda = tr.device.type == "cuda"
    if not cuda:  # kineto's "gpuGetDeviceCount failed" and profiler_start/stop lines mean nothing on a CPU
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # as many batches as warm-up + profiled steps need, across epochs if the training set is small
    batches = itertools.chain.from_iterable(tr.train_loader.epoch(e) for e in itertools.count())
    if cuda:
        torch.cuda.reset_peak_memory_stats(tr.device)
    wall = []
    for old in [*out.glob("*.pt.trace.json*"), out / "trace.json.gz"]:  # one trace per profile folder
        old.unlink(missing_ok=True)

    with profile(activities=acts, schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1),
                 on_trace_ready=lambda p: write_trace(p, out), record_shapes=True, profile_memory=True, with_stack=True) as prof:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            with torch.profiler.record_function(DATA_RANGE):
                micro = [next(batches) for _ in range(tr.accum)]
            tr.train_step(micro)
            if cuda:
                torch.cuda.synchronize(tr.device)
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
            prof.step()
    return summarise(prof, tr, wall, out, cuda)


def write_trace(prof, out: Path) -> Path:
    """The trace, once, gzipped, as ``<host>_<pid>.<ns>.pt.trace.json.gz`` (the name the TensorBoard
    plugin looks for) plus ``trace.json.gz``, a hard link to it for Perfetto. The ``DATA_RANGE`` events
    get category ``cpu_op``: current torch files ``record_function`` ranges as ``user_annotation``,
    which the plugin skips, so its overview would show DataLoader 0 without this."""
    import gzip
    import socket
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(f"{d}/t.json")
        trace = json.loads(Path(f"{d}/t.json").read_text())
    for e in trace.get("traceEvents", []):
        if e.get("name") == DATA_RANGE:
            e["cat"] = "cpu_op"
    path = out / f"{socket.gethostname()}_{os.getpid()}.{time.time_ns()}.pt.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(trace, f)
    os.link(path, out / "trace.json.gz")
    return path


def summarise(prof, tr, wall: list[float], out: Path, cuda: bool) -> dict:
    events = prof.key_averages()
    n = max(1, len(wall))

    def top(attr: str, k: int = 10):
        rows = [e for e in events if getattr(e, attr, 0) > 0 and not e.key.startswith("ProfilerStep")
                and e.key not in RANGES and e.key != DATA_RANGE]
        rows.sort(key=lambda e: getattr(e, attr), reverse=True)
        return [{"op": e.key, "self_ms_per_step": getattr(e, attr) / 1000 / n, "calls": e.count} for e in rows[:k]]

    split = {}
    for e in events:
        key = "data" if e.key == DATA_RANGE else e.key
        if key in RANGES:
            split[key] = (e.device_time_total if cuda and key != "data" else e.cpu_time_total) / 1000 / n
    step_s = sum(wall) / n
    batch = tr.recipe.data.batch_size * tr.accum
    fwd = count_flops_of_copy(tr.orig_model, tr.recipe.data.img_size)
    flops_step = 3 * fwd * batch
    summary = {
        "device": torch.cuda.get_device_name(tr.device) if cuda else f"CPU ({torch.get_num_threads()} threads)",
        "steps": n, "step_ms": step_s * 1000, "img_per_s": batch / step_s,
        "split_ms_per_step": split, "top_cpu_ops": top("self_cpu_time_total"),
        "top_gpu_ops": top("self_device_time_total") if cuda else [],
        "peak_memory_gib": (torch.cuda.max_memory_allocated(tr.device) if cuda
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
        "peak_memory_kind": "CUDA allocated" if cuda else "process max RSS",
        "model_flops_per_step": flops_step, "mfu": None,
    }
    if cuda:
        summary["mfu"], summary["peak_flops"] = mfu(summary["device"], flops_step, step_s, tr.recipe.precision.amp,
                                                    tr.recipe.precision.tf32)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_summary(s: dict, out: Path) -> None:
    print(f"device: {s['device']}   {s['steps']} profiled steps   {s['step_ms']:.1f} ms/step   {s['img_per_s']:.1f} img/s")
    sp = s["split_ms_per_step"]
    print("step split (ms/step): " + "  ".join(f"{k} {sp.get(k, 0):.1f}" for k in RANGES))
    print(f"peak memory: {s['peak_memory_gib']:.2f} GiB ({s['peak_memory_kind']})")
    print(f"model FLOPs per step: {s['model_flops_per_step'] / 1e9:.1f} GFLOP (3 x forward x batch)"
          + (f"   MFU {s['mfu']:.1%} of {s['peak_flops'] / 1e12:.0f} TFLOP/s" if s.get("mfu") else
             "   MFU: n/a (no known GPU)"))
    for label, key in (("CPU", "top_cpu_ops"), ("GPU", "top_gpu_ops")):
        if s[key]:
            print(f"top ops by self {label} time:")
            for r in s[key]:
                print(f"  {r['self_ms_per_step']:8.2f} ms/step  {r['calls']:6d} calls  {r['op']}")
    print(f"trace: {out / 'trace.json.gz'}  (TensorBoard's profiler plugin: tensorboard --logdir {out}; "
          f"or open the file in https://ui.perfetto.dev)")
