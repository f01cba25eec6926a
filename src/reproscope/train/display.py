"""What a training run shows a person: the bar, its epoch label, the evaluation lines, the stop line and
the end-of-run summary; and the window of steps a ``train`` row of ``metrics.jsonl`` averages over.

The Trainer decides; this module only words and draws what it decided. The bar is
``runtime.progress`` (tqdm on a terminal, plain lines when output is redirected); messages that are
not progress go through the package's logger (``reproscope.console``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..console import log as console
from ..runtime.progress import progress


class TrainDisplay:
    """The training bar of one ``fit()`` and the lines written beside it.

    Args:
        recipe: the run's recipe (``sched.epochs``, ``sched.max_steps`` for the epoch label).
        steps_per_epoch: optimizer steps per epoch.
        total: the step the run ends at; ``initial``: the step it starts from (a resume).
        enabled: draw the bar (``run.progress``), when ``speak`` too.
        speak: write anything (rank 0: under torchrun the other processes say nothing, neither the bar
            nor the epoch and stop lines).
    """

    def __init__(self, recipe, steps_per_epoch: int, total: int, initial: int, enabled: bool, speak: bool = True):
        self.recipe, self.steps_per_epoch, self.speak = recipe, steps_per_epoch, speak
        self.bar = progress(total, desc="train", enabled=enabled and speak, initial=initial)

    def label(self, epoch: int) -> str:
        """"epoch 3/15", or with ``sched.max_steps`` cutting the schedule short "epoch 1/15, stopping at
        step 40 (sched.max_steps)"."""
        s = self.recipe.sched
        if s.max_steps and s.max_steps < self.steps_per_epoch * s.epochs:
            return f"epoch {epoch + 1}/{s.epochs}, stopping at step {s.max_steps} (sched.max_steps)"
        return f"epoch {epoch + 1}/{s.epochs}"

    def epoch_start(self, epoch: int) -> None:
        self.bar.set_description(self.label(epoch))

    def stepped(self) -> None:
        self.bar.update(1)

    def logged(self, step: int, vals: dict) -> None:
        """A ``train`` row was logged: its loss and lr beside the bar."""
        self.bar.set_postfix(loss=f"{vals['loss']:.3f}", lr=f"{vals['lr']:.2e}", at=f"step {step}", refresh=False)

    def moved_to(self, step: int) -> None:
        """A rollback restored ``step``: the bar goes back with it."""
        self.bar.n = step
        self.bar.refresh()

    def evaluated(self, epoch: int, metrics: dict, both: dict, seconds: float, steps: int, eval_ema: bool) -> None:
        """The epoch's line: val top-1/top-5/loss, how long its ``steps`` took (``seconds``; said as a part
        when fewer than an epoch's, after a resume mid-epoch or at ``sched.max_steps``), and with an EMA
        both weights' top-1 and which one is reported."""
        if not self.speak:
            return
        timed = f"{seconds:.1f}s" if steps == self.steps_per_epoch else (
            f"{seconds:.1f}s for {steps} of its {self.steps_per_epoch} steps")
        extra = (f"  (raw {both['raw_top1']:.2f}, EMA {both['ema_top1']:.2f}; reported: "
                 f"{'EMA' if eval_ema else 'raw'})" if both else "")
        self.bar.write(f"{self.label(epoch)}  val top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  "
                       f"loss {metrics['loss']:.4f}  ({timed}){extra}")

    def stopped(self, step: int, reason: str, path: Path, run_dir: Path, resumable: bool) -> None:
        """The stop line: the step, why, the checkpoint written, and the command that resumes the run when
        there is something to resume: ``resumable`` and a step taken (a checkpoint of step 0 holds only
        the initial state, so resuming it is starting again)."""
        if not self.speak:
            return
        self.bar.write(f"stopped at step {step} ({reason}); checkpoint {path}"
                       + (f"\nresume with: reproscope train --resume {run_dir}" if resumable and step > 0 else ""))

    def close(self) -> None:
        self.bar.close()


def say_run_end(flagged: dict | None, metrics_path: Path, scaler_skips: int, scale: float) -> None:
    """At the end of ``fit()``: the divergence flag with its findings (``flagged``: the ``diverging``
    event, or None), and how many steps fp16's GradScaler skipped."""
    if flagged is not None:
        console.warning("this run diverged at step %d: %s; see the diverging event in %s%s", flagged["step"],
                        flagged["reason"], metrics_path, "".join(
                            f"\n  at step {flagged['step']}: {f.get('sentence', f)}"
                            for f in (flagged.get("findings") or {}).values()))
    if scaler_skips:
        console.info("fp16: the GradScaler skipped %d overflowing steps (scale now %g)", scaler_skips, scale)


class LogWindow:
    """The steps one ``train`` row averages over: the running loss sum on the device (no sync per step)
    and the wall time since the last row, for ``img_per_s``."""

    def __init__(self, step: int, device: torch.device):
        self.at, self.loss, self.t = step, torch.zeros((), device=device), time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss

    def close(self, step: int, images_per_step: int) -> tuple[float, float]:
        """``(mean loss, images per second)`` since the last row (one sync); the window starts again."""
        n, now = max(1, step - self.at), time.perf_counter()
        out = (self.loss / n).item(), n * images_per_step / max(now - self.t, 1e-9)
        self.at, self.t = step, now
        self.loss.zero_()
        return out


def oom_advice(step: int, batch_size: int, accum: int, device) -> str:
    """The one-line error for an out-of-memory at optimizer step ``step`` (1-based): halve the batch, double
    ``optim.accum_steps`` to keep the effective batch."""
    return (f"out of memory at step {step} with data.batch_size={batch_size} on {device}: try --set "
            f"data.batch_size={max(1, batch_size // 2)} (and --set optim.accum_steps={2 * accum} to keep the "
            f"effective batch)")
