"""`reproscope runs [DIR ...]`: every run directory under the given folders, one line each.

A run trained by the Trainer and a loop watched with ``reproscope.watch`` are listed alike (the same
:class:`~reproscope.report.runs.RunRecord`): name, who trained it, model, steps, evaluations, final
val top-1, how it ended, and its event counts. Only reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import ConfigError
from ..runfiles import CONFIG
from ..train.events import Event
from .runs import RunRecord, load_run


def find_runs(folders: list[str | Path]) -> list[Path]:
    """Every run directory (a folder holding ``config.json``) at or under ``folders``, sorted by path, so an
    ablation's runs (``RUN/ablation/<arm>-seed<S>``) come right under their base run.

    Raises:
        ConfigError: a folder that does not exist (the message names it).
    """
    out: set[Path] = set()
    for f in folders:
        p = Path(f)
        if not p.is_dir():
            raise ConfigError(f"{p}: no such folder; give a folder of run directories (default: runs)")
        if (p / CONFIG).is_file():
            out.add(p)
        out.update(c.parent for c in p.rglob(CONFIG))
    return sorted(out)


def run_row(r: RunRecord, name: str | None = None) -> list[str]:
    """One run's cells: name (``name``, e.g. its path under the listed folder), trained by, model, steps,
    evaluations, final top-1, ended, events."""
    kinds = {t: sum(e.get("type") == t for e in r.events) for t in (Event.NONFINITE, Event.DIVERGING, Event.LOSS_SPIKE)}
    events = ", ".join(f"{n} {t.value}" for t, n in kinds.items() if n) or "-"
    top1 = r.final.get("top1")
    return [name or r.name, "watch" if r.watched else "train", r.model_label(), f"{r.steps:,}", str(len(r.val)),
            f"{top1:.2f}" if isinstance(top1, (int, float)) else "-", r.ending.get("reason", "?"), events]


HEADER = ["run", "by", "model", "steps", "evals", "top-1", "ended", "events"]


def list_runs(folders: list[str]) -> int:
    """Print the table of every run under ``folders``; 0, or 1 when there is none. A folder whose files
    cannot be read is listed with the reason, never a traceback.

    Raises:
        ConfigError: a folder that does not exist.
    """
    paths = find_runs(folders)
    if not paths:
        print(f"no run directories under {', '.join(map(str, folders))} (a run directory holds config.json)")
        return 1
    rows = []
    for p in paths:
        root = next((Path(f) for f in folders if p == Path(f) or Path(f) in p.parents), p.parent)
        name = str(p.relative_to(root)) if p != root else p.name
        try:
            rows.append(run_row(load_run(p), name))
        except (ConfigError, ValueError, KeyError, TypeError) as e:
            rows.append([p.name, "?", "?", "?", "?", "?", f"unreadable: {e}", "-"])
    width = shutil.get_terminal_size((120, 24)).columns
    cols = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    cols[2] = min(cols[2], max(12, width // 4))  # the model spec is the longest cell: cut it first
    for row in [HEADER] + rows:
        cells = [c if len(c) <= w else "…" + c[-(w - 1):] for c, w in zip(row, cols)]
        print("  ".join(f"{c:<{w}}" for c, w in zip(cells, cols)).rstrip())
    print(f"{len(rows)} run{'s' * (len(rows) != 1)}; `reproscope report RUN_DIR...` or `reproscope compare A B` reads them")
    return 0
