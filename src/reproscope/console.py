"""The package's messages: one logger, ``logging.getLogger("reproscope")``, and the console the CLI installs.

The trainer, the run opener, the checkpoint reader, the tripwire, the data layer (cache builds, skipped
files) and ``reproscope.watch`` (its events and the loop audit) write their messages (a divergence, a
rollback, a resume that changed settings, a non-finite step's report) through :data:`log`. The CLI
installs :func:`install_console`, and so does ``reproscope.watch()`` when a script configured no
logging: each message a plain line on standard output, as ``print`` would write it. In Python, without
it, warnings reach standard error through ``logging``'s last-resort handler and info messages are
dropped unless you configure logging yourself
(``logging.basicConfig(level=logging.INFO, format="%(message)s")``). Code that runs a trainer only to
measure something (the checks) silences it with :func:`quiet`, instead of capturing standard output.
"""

from __future__ import annotations

import contextlib
import logging
import sys

log = logging.getLogger("reproscope")


class _Stdout(logging.Handler):
    """Each record as a plain line on whatever ``sys.stdout`` is when it is written (pytest's capture,
    a redirect, or the terminal), flushed at once so it interleaves with progress lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 (logging's contract: a handler reports, never raises)
            self.handleError(record)


def install_console(level: int = logging.INFO) -> None:
    """Show every ``reproscope`` message at ``level`` or above as a plain line on standard output
    (what the CLI does). Calling it again changes the level only; no second handler is added."""
    if not any(isinstance(h, _Stdout) for h in log.handlers):
        log.addHandler(_Stdout())
    log.setLevel(level)


@contextlib.contextmanager
def quiet(level: int = logging.ERROR):
    """Within the block, drop ``reproscope`` messages below ``level`` (errors still show)."""
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)
