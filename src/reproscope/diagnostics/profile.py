"""`reproscope profile`: a torch.profiler trace of real training steps, and a printed summary.

Writes into ``<run_dir>/profile/``:
- the trace for TensorBoard's PyTorch Profiler plugin (torch-tb-profiler): ``tensorboard --logdir <run_dir>/profile``;
- one gzipped Chrome trace with call stacks (``with_stack``), read by the plugin and also reachable as
  ``trace.json.gz`` (a hard link, not a copy) to open in https://ui.perfetto.dev, because the plugin is
  deprecated upstream and its web page fetches its chart library from the internet; our batch
  loading is recorded under the name the plugin counts as DataLoader time;
- ``summary.json``, the numbers printed: top ops by self time on CPU and GPU, the same grouped by their
  five innermost Python frames (``key_averages(group_by_stack_n=5)``), the ops that allocate the most
  memory, the step split into data wait / forward / backward / optimizer (from the trainer's
  ``record_function`` ranges), img/s, peak memory, model FLOPs per step (torch's FLOP counter) and
  MFU against the known-GPU table;
- ``summary.html``, those numbers as one self-contained page (inline SVG and CSS, no script, nothing
  fetched): what to open where the plugin's page stays blank (offline), with what the plugin shows
  and what it cannot.
"""

from __future__ import annotations

import contextlib
import html
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
from ..model.counting import count_flops_of_copy
from ..runfiles import SUMMARY
from ..train.trainer import Trainer

RANGES = ("data", "forward", "backward", "optimizer")
STACK_FRAMES = 5  # Python frames per group in the by-stack table (torch prints at most 5)
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

    with quiet_cpu_allocator(), profile(
            activities=acts, schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1),
            on_trace_ready=lambda p: write_trace(p, out), record_shapes=True, profile_memory=True, with_stack=True,
            experimental_config=_stack_config()) as prof:
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


C10_ERROR = 2  # c10's log levels: 0 INFO, 1 WARNING, 2 ERROR


@contextlib.contextmanager
def quiet_cpu_allocator():
    """torch's C++ log threshold raised from WARNING to ERROR for the block. With ``profile_memory``,
    freeing a tensor allocated before the profiler started makes c10's CPU allocator log "Memory block
    of unknown size was allocated before the profiling started, profiler results will not include the
    deallocation event" (once per 1000 such frees) ahead of every profile's output: a note on the
    profiler's own bookkeeping, not on the run. It is a C++ log line written to stderr, not a Python
    warning, so ``warnings.filterwarnings`` cannot catch it; this sets libc10's
    ``FLAGS_caffe2_log_level`` (other C++ warnings of these few steps go with it) and restores it after.
    Where libc10 or that symbol cannot be found, nothing changes."""
    level = _c10_log_level()
    was = level.value if level is not None else None
    if level is not None:
        level.value = max(was, C10_ERROR)
    try:
        yield
    finally:
        if level is not None:
            level.value = was


def _c10_log_level():
    """libc10's ``FLAGS_caffe2_log_level`` as a ctypes int (None where it is not exported)."""
    import ctypes
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libc10.so", "libc10.dylib", "c10.dll"):
        if (lib_dir / name).is_file():
            try:
                return ctypes.c_int.in_dll(ctypes.CDLL(str(lib_dir / name)), "FLAGS_caffe2_log_level")
            except (OSError, ValueError):
                return None
    return None


def _stack_config():
    """The profiler option without which current torch records no Python stacks for ``key_averages``
    (``group_by_stack_n`` then groups nothing; pytorch/pytorch#100253); None where torch lacks it."""
    try:
        from torch.profiler import _ExperimentalConfig
        return _ExperimentalConfig(verbose=True)
    except (ImportError, TypeError):
        return None


def write_trace(prof, out: Path) -> Path:
    """The trace, once, gzipped, as ``<host>_<pid>.<ns>.pt.trace.json.gz`` (the name the TensorBoard
    plugin looks for) plus ``trace.json.gz``, a hard link to it for Perfetto. It is written under that
    name plus ``.tmp`` (which the plugin does not pick up) and renamed when complete, so a TensorBoard
    already watching the folder never reads half a trace. The ``DATA_RANGE`` events get category
    ``cpu_op``: current torch files ``record_function`` ranges as ``user_annotation``, which the plugin
    skips, so its overview would show DataLoader 0 without this."""
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
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump(trace, f)
    os.replace(tmp, path)
    os.link(path, out / "trace.json.gz")
    return path


def summarise(prof, tr, wall: list[float], out: Path, cuda: bool) -> dict:
    """The numbers of the profiled steps (see the module docstring), written as ``summary.json`` and
    ``summary.html``."""
    events = prof.key_averages()
    n = max(1, len(wall))
    split = {}
    for e in events:
        key = "data" if e.key == DATA_RANGE else e.key
        if key in RANGES:
            split[key] = (e.device_time_total if cuda and key != "data" else e.cpu_time_total) / 1000 / n
    step_s = sum(wall) / n
    batch = tr.recipe.data.batch_size * tr.accum
    fwd = count_flops_of_copy(tr.orig_model, tr.recipe.data.img_size)
    flops_step = 3 * fwd * batch
    time_attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    summary = {
        "device": torch.cuda.get_device_name(tr.device) if cuda else f"CPU ({torch.get_num_threads()} threads)",
        "steps": n, "step_ms": step_s * 1000, "img_per_s": batch / step_s,
        "split_ms_per_step": split, "top_cpu_ops": top_ops(events, "self_cpu_time_total", n),
        "top_gpu_ops": top_ops(events, "self_device_time_total", n) if cuda else [],
        "top_by_stack": top_ops(prof.key_averages(group_by_stack_n=STACK_FRAMES), time_attr, n),
        "stack_time": "GPU" if cuda else "CPU",
        "top_memory_ops": top_memory_ops(events, "self_device_memory_usage" if cuda else "self_cpu_memory_usage", n),
        "peak_memory_gib": (torch.cuda.max_memory_allocated(tr.device) if cuda
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
        "peak_memory_kind": "CUDA allocated" if cuda else "process max RSS",
        "model_flops_per_step": flops_step, "mfu": None,
    }
    if cuda:
        summary["mfu"], summary["peak_flops"] = mfu(summary["device"], flops_step, step_s, tr.recipe.precision.amp,
                                                    tr.recipe.precision.tf32)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    write_html(summary, out)
    return summary


def _is_op(e) -> bool:
    """An operator, not one of our step ranges or the profiler's own step marker."""
    return not e.key.startswith("ProfilerStep") and e.key not in RANGES and e.key != DATA_RANGE


def top_ops(events, attr: str, steps: int, k: int = 10) -> list[dict]:
    """The ``k`` events with the most ``attr`` (microseconds), per step; each with its Python stack
    (innermost frame first) where the events were grouped by stack."""
    rows = sorted((e for e in events if getattr(e, attr, 0) > 0 and _is_op(e)), key=lambda e: getattr(e, attr),
                  reverse=True)
    return [{"op": e.key, "self_ms_per_step": getattr(e, attr) / 1000 / steps, "calls": e.count,
             **({"stack": [_frame(f) for f in e.stack]} if getattr(e, "stack", None) else {})} for e in rows[:k]]


def top_memory_ops(events, attr: str, steps: int, k: int = 10) -> list[dict]:
    """The ``k`` operators that allocate the most memory themselves (``attr``, bytes; frees not netted
    against other ops), in MiB per step."""
    rows = sorted((e for e in events if getattr(e, attr, 0) > 0 and _is_op(e)), key=lambda e: getattr(e, attr),
                  reverse=True)
    return [{"op": e.key, "self_mib_per_step": getattr(e, attr) / 2**20 / steps, "calls": e.count} for e in rows[:k]]


def _frame(f: str) -> str:
    """A stack frame as torch records it (``path(line): function``), its path shown relative to the
    working directory or by its last components (``paths.display_arg``), never as this machine's."""
    from ..report.paths import display_arg
    path, sep, rest = f.partition("(")
    return display_arg(path, Path.cwd()) + sep + rest if sep and os.path.isabs(path) else f


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
    by_stack = s.get("top_by_stack") or []
    print(f"top ops by self {s.get('stack_time', 'CPU')} time, grouped by their {STACK_FRAMES} innermost Python "
          f"frames (key_averages(group_by_stack_n={STACK_FRAMES})):" if by_stack else
          "grouped by stack: no Python stacks were recorded (this torch's profiler gives none)")
    for r in by_stack[:5]:
        print(f"  {r['self_ms_per_step']:8.2f} ms/step  {r['calls']:6d} calls  {r['op']}")
        for f in r.get("stack") or ["(no Python frame: called from C++, e.g. autograd's backward)"]:
            print(f"  {'':33}{f}")
    print(f"summary page (offline, no script): {out / 'summary.html'}")
    print(f"trace: {out / 'trace.json.gz'}  (TensorBoard's profiler plugin: tensorboard --logdir {out}, needs the "
          f"internet for its charts; or open the file in https://ui.perfetto.dev)")


# ----------------------------------------------------------------------------- the offline page

PHASE_COLOURS = {"data": "#8c8c8c", "forward": "#1f77b4", "backward": "#ff7f0e", "optimizer": "#2ca02c",
                 "other": "#d9d9d9"}
PLUGIN_NOTE = (
    "TensorBoard's PyTorch Profiler plugin (torch-tb-profiler, deprecated upstream) reads the same trace "
    "(tensorboard --logdir {out}). It can show: an overview (step time split into DataLoader, CPU execution, "
    "kernels and other), the operator view (ops by self and total time, with input shapes and call stacks), "
    "the kernel view (GPU kernels, tensor-core use; GPU runs only), the trace view (the timeline), the memory "
    "view (allocation over time) and the module view. It cannot show anything offline: its page loads its "
    "chart library from www.gstatic.com, so without the internet it stays blank. It does not know our "
    "data / forward / backward / optimizer split, img/s, model FLOPs or MFU; this page does. This page cannot "
    "show the timeline: open trace.json.gz in https://ui.perfetto.dev (read in the browser, not uploaded) "
    "or chrome://tracing for that.")


def write_html(s: dict, out: Path) -> Path:
    """``summary.html``: the summary as one self-contained page (sections: step, ops, stacks, memory,
    viewers), inline CSS and SVG only, no script and no link to fetch."""
    e = html.escape
    head = (f"{e(s['device'])}, {s['steps']} profiled steps: {s['step_ms']:.1f} ms/step, {s['img_per_s']:.1f} img/s, "
            f"{s['model_flops_per_step'] / 1e9:.1f} GFLOP per step (3 x forward x batch)"
            + (f", MFU {s['mfu']:.1%}" if s.get("mfu") else ", MFU n/a (no known GPU)"))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>reproscope profile: {e(s['device'])}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #999;padding:2px 6px;"
        "text-align:left;vertical-align:top}td.n{text-align:right}pre{margin:0;font-size:85%}</style>",
        "</head><body>", "<h1>reproscope profile</h1>", f"<p>{head}</p>",
        '<h2 id="step">Step breakdown</h2>', _step_svg(s), _step_table(s),
        '<h2 id="ops">Top ops by self time</h2>']
    for label, key in (("CPU", "top_cpu_ops"), ("GPU", "top_gpu_ops")):
        if s.get(key):
            parts += [f"<h3>self {label} time</h3>", _ops_table(s[key], "ms/step", "self_ms_per_step")]
    parts += ['<h2 id="stacks">Top ops by call stack</h2>',
              f"<p>Self {e(s.get('stack_time', 'CPU'))} time grouped by op and its {STACK_FRAMES} innermost Python "
              f"frames (torch's <code>key_averages(group_by_stack_n={STACK_FRAMES})</code>); an op without a frame "
              f"was called from C++ (autograd's backward).</p>",
              _ops_table(s.get("top_by_stack") or [], "ms/step", "self_ms_per_step", stacks=True),
              '<h2 id="memory">Memory</h2>',
              f"<p>Peak: {s['peak_memory_gib']:.2f} GiB ({e(s['peak_memory_kind'])}). The ops that allocate the most "
              f"themselves:</p>", _ops_table(s.get("top_memory_ops") or [], "MiB/step", "self_mib_per_step"),
              '<h2 id="viewers">What the TensorBoard plugin shows, and what it cannot</h2>',
              f"<p>{e(PLUGIN_NOTE.format(out=out))}</p>", "</body></html>"]
    path = out / "summary.html"
    path.write_text("\n".join(parts))
    return path


def _phases(s: dict) -> list[tuple[str, float]]:
    """(phase, ms per step): the four ranges, and the rest of the wall-clock step as "other"."""
    sp = s["split_ms_per_step"]
    rows = [(k, sp.get(k, 0.0)) for k in RANGES]
    return rows + [("other", max(0.0, s["step_ms"] - sum(v for _, v in rows)))]


def _step_svg(s: dict, width: int = 600) -> str:
    """The step as one stacked horizontal bar (inline SVG), each phase's share of the total."""
    rows = _phases(s)
    total = sum(v for _, v in rows) or 1.0
    x, rects = 0.0, []
    for k, v in rows:
        w = width * v / total
        rects.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="24" fill="{PHASE_COLOURS[k]}">'
                     f"<title>{k}: {v:.1f} ms</title></rect>")
        x += w
    legend = "".join(f'<rect x="{i * 110}" y="32" width="10" height="10" fill="{PHASE_COLOURS[k]}"/>'
                     f'<text x="{i * 110 + 14}" y="41" font-size="11">{k}</text>' for i, (k, _) in enumerate(rows))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="48" role="img" '
            f'aria-label="step breakdown">{"".join(rects)}{legend}</svg>')


def _step_table(s: dict) -> str:
    rows = _phases(s)
    total = s["step_ms"] or 1.0
    body = "".join(f'<tr><td>{k}</td><td class="n">{v:.2f}</td><td class="n">{v / total:.0%}</td></tr>'
                   for k, v in rows)
    return ("<table><tr><th>phase</th><th>ms/step</th><th>share of the step</th></tr>" + body +
            f'<tr><th>step (wall clock)</th><th class="n">{s["step_ms"]:.2f}</th><th></th></tr></table>')


def _ops_table(rows: list[dict], unit: str, key: str, stacks: bool = False) -> str:
    e = html.escape
    if not rows:
        return "<p>(none recorded)</p>"
    head = f"<tr><th>{unit}</th><th>calls</th><th>op</th>{'<th>Python stack, innermost first</th>' if stacks else ''}</tr>"
    body = "".join(f'<tr><td class="n">{r[key]:.2f}</td><td class="n">{r["calls"]}</td><td>{e(r["op"])}</td>'
                   + (f"<td><pre>{e(chr(10).join(r.get('stack') or ['(no Python frame)']))}</pre></td>" if stacks else "")
                   + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"
