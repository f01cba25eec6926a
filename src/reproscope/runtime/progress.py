"""Progress for anything long: a tqdm bar on a terminal, plain lines when output is redirected.

Used by the trainer (training steps, evaluation), the image cache builder and the checks, so that a
log file holds a few readable lines instead of hundreds of carriage-return frames.
"""

from __future__ import annotations

import sys
import time


class LineProgress:
    """Progress as plain lines, for output that is not a terminal (a log file, a pipe): a line per
    ``every`` (10 %) of the total when at least ``min_seconds`` (5 s) passed since the last one, a line
    per ``seconds`` (60 s) in any case, and the last one; instead of tqdm's carriage-return frames.
    A task done in seconds gets one line. Offers the part of tqdm's interface reproscope uses."""

    def __init__(self, total: int, initial: int = 0, every: float = 0.1, seconds: float = 60.0,
                 desc: str = "train", unit: str = "step", min_seconds: float = 5.0):
        self.total, self.n, self.postfix, self.desc, self.unit = total, initial, {}, desc, unit
        self.step_every, self.seconds, self.min_seconds = max(1, round(every * total)), seconds, min_seconds
        self._t0 = self._last_t = time.perf_counter()
        self._last_n, self._n0 = initial, initial

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        since = now - self._last_t
        if (self.n - self._last_n >= self.step_every and since >= self.min_seconds) or since >= self.seconds \
                or (self.n == self.total and self._last_n != self.n):
            rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            post = "  ".join(f"{k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.unit} {self.n:,}/{self.total:,} ({100 * self.n / max(self.total, 1):.0f} %)  "
                  f"{rate:.2f} {self.unit}/s  eta {eta:.0f} s  {post}".rstrip(), flush=True)
            self._last_n, self._last_t = self.n, now

    def set_postfix(self, refresh: bool = False, **kw) -> None:
        self.postfix = kw

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        print(text, flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, *, desc: str, unit: str = "step", enabled: bool = True, initial: int = 0,
             leave: bool = True, lines: bool = True):
    """A progress bar for ``total`` units: tqdm on a terminal; when stderr is redirected, plain lines
    (``LineProgress``) if ``lines``, else nothing (for short inner loops such as evaluation, whose
    result is printed anyway). ``enabled=False`` gives a silent bar with the same interface."""
    from tqdm.auto import tqdm
    if enabled and not sys.stderr.isatty():
        if lines:
            return LineProgress(total, initial, desc=desc, unit=unit)
        enabled = False
    return tqdm(total=total, initial=initial, disable=not enabled, unit=unit, dynamic_ncols=True,
                desc=desc, smoothing=0.05, leave=leave)
