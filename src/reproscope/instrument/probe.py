"""The trainer-facing instrument: probe steps on a schedule, loss-spike detection.

Attaches through trainer events only. On a probe step it asks the trainer to run the uncompiled
module (``trainer.request_eager_step()``), turns the activation hooks on, records parameter norms after
backward and the update-to-weight ratio after the optimizer step, then moves everything to the host
in one transfer and writes TensorBoard scalars (grouped per layer), optional histograms and one
line of ``stats.jsonl``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from ..config import InstrumentConfig
from ..console import log as console
from ..runfiles import PAPER_PROBES, STATS
from ..runtime import distributed, rng_state, set_rng_state
from ..train.callbacks import Callback
from ..train.guard import SpikeDetector
from .hooks import ActivationStats, parameter_norms
from .paper_probes import collect, probe_findings, summary

__all__ = ["HIST_BINS", "Instrument", "SpikeDetector", "histogram", "probe_schedule"]


def probe_schedule(step: int, every: int, early: bool) -> bool:
    """Probe at multiples of ``every`` and, if ``early``, at powers of two below it."""
    if step % every == 0:
        return True
    return early and step < every and step > 0 and (step & (step - 1)) == 0


HIST_BINS = 64  # uniform buckets between a tensor's min and max; TensorBoard re-bins to 30 for display


def histogram(t: torch.Tensor, bins: int = HIST_BINS) -> dict:
    """The fields of ``SummaryWriter.add_histogram_raw`` for a 1-D tensor ``t`` of finite values ``[N]``,
    ``N >= 1``: ``bins`` equal buckets from ``t.min()`` to ``t.max()`` (a constant tensor gets a bucket
    range of +-0.5 around its value), counted on ``t``'s own device with ``torch.histc``.

    TensorBoard's ``add_histogram`` copies the tensor to the host and sorts it against ~1,500 exponential
    buckets in numpy: a 28 M-parameter model's weights and gradients took seconds per set on a CPU. Here
    the host receives ``bins + 4`` numbers. Counts are integers, exact in any order, so the warning
    ``run.deterministic`` would raise for CUDA's ``histc`` is silenced here. A range wider than ``t``'s
    dtype holds (values near +-3e38 in a diverging run) is counted in float64; sums are float64.
    Raises ``RuntimeError`` on an empty ``t``."""
    vmin, vmax = torch.stack(torch.aminmax(t)).tolist()  # one device-to-host copy
    lo, hi = (vmin - 0.5, vmax + 0.5) if vmin == vmax else (vmin, vmax)
    if hi - lo > torch.finfo(t.dtype).max:  # a range wider than the dtype holds: histc would count nothing
        t = t.double()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*histc.*deterministic")
        counts = torch.histc(t, bins=bins, min=lo, max=hi)
    total, squares = torch.stack([t.sum(dtype=torch.float64),  # float64: a diverging run must not overflow them
                                  torch.linalg.vector_norm(t, dtype=torch.float64).square()]).tolist()
    limits = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)[1:]  # each bucket's right edge
    return {"min": vmin, "max": vmax, "num": t.numel(), "sum": total, "sum_squares": squares,
            "bucket_limits": limits.tolist(), "bucket_counts": counts.tolist()}


def _cross_rank(d):
    """Reduce a flat statistics vector across processes: sums added, maxima maxed, means averaged."""

    def reduce(flat: torch.Tensor, ops: list[str]) -> torch.Tensor:
        is_max = torch.tensor([o == "max" for o in ops], device=flat.device)
        is_mean = torch.tensor([o == "mean" for o in ops], device=flat.device)
        summed = distributed.all_reduce_sum(flat.clone(), d)
        maxed = distributed.all_reduce_max(flat.clone(), d)
        return torch.where(is_max, maxed, torch.where(is_mean, summed / d.world_size, summed))
    return reduce


class Instrument(Callback):
    """Per-layer probes for any model the trainer runs (attach with ``trainer.add_callback``). Its hooks
    go on at ``train_start`` (once) and come off at ``train_end`` (idempotently)."""

    def __init__(self, cfg: InstrumentConfig):
        self.cfg = cfg
        self.acts: ActivationStats | None = None
        self.probing = False
        self._snapshot: list[torch.Tensor] | None = None
        self._norms = None
        self.stats_file = None
        self.n_probes = 0
        self._tb_written_at = -10**9
        self._hist_written_at: int | None = None
        self._hist_now = False
        self._key_steps: set[int] = set()  # the run's middle and last step: probed, with histograms
        self._nonfinite_seen: set[str] = set()  # per-module non-finite tags, written from their first count on
        self._not_measured_said = False  # the paper-figure probes could not run the model: said once

    # ---------------------------------------------------------------- events
    def on_train_start(self, trainer) -> None:
        if self.acts is None:  # registered once, before torch.compile wraps the model
            self.acts = ActivationStats(trainer.orig_model,
                                        samples=self.cfg.stat_samples, elements=self.cfg.stat_elements)
        self.params = [(n, p) for n, p in trainer.orig_model.named_parameters() if p.requires_grad]
        total = getattr(trainer, "total_steps", 0)  # a watched loop does not know its length
        self._key_steps = {max(1, total // 2), total} if total else set()
        self.stats_file = open(trainer.run_dir / STATS, "a", buffering=1) if trainer.dist.is_main else None
        if trainer.step == 0:  # the paper-figure probes at initialisation: epoch -1 in paper_probes.jsonl
            self.on_epoch_end(trainer, -1)

    def probes_at(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is a probe step: the schedule, and the run's first,
        middle and last step (every run shows those states)."""
        return step in self._key_steps or probe_schedule(step, self.cfg.probe_every, self.cfg.probe_early)

    def on_step_start(self, trainer, step: int) -> None:
        key = step in self._key_steps
        self.probing = self.probes_at(step)
        if self.probing:
            self._hist_now = self.cfg.histograms and trainer.log.detail is not None and (
                key or self._hist_written_at is None or step - self._hist_written_at >= self.cfg.hist_every)
            self.acts.keep_outputs = self._hist_now  # activations are held only for a histogram step
            trainer.request_eager_step()
            self.acts.clear()
            self.acts.enabled = True

    def on_after_backward(self, trainer) -> None:
        if not self.probing:
            return
        self.acts.enabled = False
        self._norms = parameter_norms(self.params)
        self._snapshot = [p.detach().clone() for _, p in self.params]
        if self._hist_now:  # grads are gone after the step
            tb = trainer.log.detail
            bad = sum(self._hist(tb, f"grads/{n}", p.grad, trainer.step + 1) for n, p in self.params if p.grad is not None)
            tb.add_scalar("nonfinite/grads", bad, trainer.step + 1)

    def on_step_end(self, trainer, **_) -> None:
        if not self.probing:
            return
        self.probing = False
        w, g = self._norms
        with torch.no_grad():
            upd = torch.stack(torch._foreach_norm(torch._foreach_sub([p.detach() for _, p in self.params],
                                                                     self._snapshot)))
        self._snapshot = None
        reduce = _cross_rank(trainer.dist) if trainer.dist.enabled else None
        layers = self.acts.collect(extra={"weight_norm": w, "grad_norm": g, "update_ratio": upd / w.clamp(min=1e-12)},
                                   reduce=reduce)
        extra = layers.pop("__extra__")
        params = {n: {k: extra[k][i] for k in extra} for i, (n, _) in enumerate(self.params)}
        if trainer.dist.is_main:
            self._write(trainer, layers, params)

    def on_diverging(self, trainer, flagged: dict, findings: dict) -> None:
        """The paper-figure probes at the step the run was flagged, on the first 64 validation images:
        see ``probe_now``."""
        if self.cfg.probes and trainer.dist.is_main:
            findings.update(self.probe_now(trainer.orig_model, self._val_batch(trainer), trainer.run_dir,
                                           "probes_at_divergence.pt"))

    def on_epoch_end(self, trainer, epoch: int) -> None:
        """The paper-figure probes' numbers on the first 64 validation images, one line per epoch in
        ``paper_probes.jsonl`` (KAT ranges, MambaOut gates, DyT saturation over training); epoch -1 is
        the model at initialisation."""
        if not (self.cfg.probes and trainer.dist.is_main) or trainer.val_loader is None:
            return  # (a watched loop has no validation data)
        line = summary(collect(trainer.orig_model, self._val_batch(trainer)))
        if line.get("not_measured") and not self._not_measured_said:
            self._not_measured_said = True
            console.warning(f"warning: paper-figure probes not measured: {line['not_measured']}")
        if line:
            with open(trainer.run_dir / PAPER_PROBES, "a") as f:
                f.write(json.dumps({"epoch": epoch, "step": trainer.step, **line}) + "\n")

    def on_train_end(self, trainer) -> None:
        self.close()
        if self.cfg.probes and trainer.dist.is_main:
            self.probe_now(trainer.orig_model, self._val_batch(trainer), trainer.run_dir, "probes.pt")

    @staticmethod
    def _val_batch(trainer) -> torch.Tensor:
        saved = rng_state()  # a mid-run read leaves the run's random streams as they were
        try:
            x, _ = next(iter(trainer.val_loader.epoch(0)))
        finally:
            set_rng_state(saved)
        return x[:64]

    @staticmethod
    def probe_now(model, x: torch.Tensor, run_dir, name: str) -> dict:
        """Collect the paper-figure probes of ``model`` on ``x`` ([B, C, H, W]), save them as
        ``run_dir/figures/<name>`` (``reproscope.report.figures.plot_run`` draws them) and return
        what they measure (``paper_probes.probe_findings``)."""
        data = collect(model, x)
        (Path(run_dir) / "figures").mkdir(exist_ok=True)
        torch.save(data, Path(run_dir) / "figures" / name)
        return probe_findings(data)

    def close(self) -> None:
        """Remove the hooks and close ``stats.jsonl`` (idempotent; ``train_start`` registers them again)."""
        if self.acts is not None:
            self.acts.remove()
            self.acts = None
        if self.stats_file is not None:
            self.stats_file.close()
            self.stats_file = None

    # ---------------------------------------------------------------- output
    def _write(self, trainer, layers: dict, params: dict) -> None:
        step = trainer.step
        self.n_probes += 1
        self.stats_file.write(json.dumps({"step": step, "layers": layers, "params": params}) + "\n")
        tb = trainer.log.detail
        if self._hist_now:
            self._hist_now, self._hist_written_at = False, step
            self._histograms(tb, step)
            self.acts.outputs = {}
        # TensorBoard gets per-layer scalars at most once per run.log_every steps (serialising
        # hundreds of scalars costs more than a small step); stats.jsonl keeps every probe
        if tb is None or step - self._tb_written_at < trainer.log_every:
            return
        self._tb_written_at = step
        totals = {"nonfinite": 0.0, "grad_nonfinite": 0.0}
        for name, st in layers.items():
            for k, v in st.items():
                if k in totals:  # counts: one summary scalar per phase; a module's own from its first one
                    totals[k] += v
                    if not (v or f"{name}/{k}" in self._nonfinite_seen):
                        continue
                    self._nonfinite_seen.add(f"{name}/{k}")
                tb.add_scalar(f"layers/{name}/{k}", v, step)
        tb.add_scalar("nonfinite/activations", totals["nonfinite"], step)
        tb.add_scalar("nonfinite/gradients", totals["grad_nonfinite"], step)
        for name, st in params.items():
            for k, v in st.items():
                if math.isfinite(v):
                    tb.add_scalar(f"params/{name}/{k}", v, step)

    @staticmethod
    def _hist(tb, tag: str, t: torch.Tensor, step: int) -> int:
        """A histogram of ``t``'s finite values; returns how many were not finite (counted, never hidden:
        the tensor's own ``nonfinite/<tag>`` scalar appears only when there are some). See ``histogram``."""
        t = t.detach().flatten().float()
        finite = torch.isfinite(t)
        bad = t.numel() - int(finite.sum())
        if bad:  # only then a masked copy
            tb.add_scalar(f"nonfinite/{tag}", bad, step)
            t = t[finite]
        if t.numel():
            tb.add_histogram_raw(tag, **histogram(t), global_step=step)
        return bad

    def _histograms(self, tb, step: int) -> None:
        """Weights and module outputs (``weights/``, ``outputs/``), with one non-finite count per kind."""
        tb.add_scalar("nonfinite/weights", sum(self._hist(tb, f"weights/{n}", p, step) for n, p in self.params), step)
        tb.add_scalar("nonfinite/outputs", sum(self._hist(tb, f"outputs/{n}", out, step)
                                               for n, out in self.acts.outputs.items()), step)
