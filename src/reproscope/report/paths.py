"""Paths as a published note shows them: relative to the repository, never the author's machine.

A report is meant to be shared, so a run folder, a data root or a model file given as an absolute
path (``/home/me/runs/x``) is shown relative to the report's base folder (the repository root that
holds the report, else the current directory) when it lies under it, else by its last components
only (``.../runs/x``). A relative path is shown as given: it names nothing outside the project.
"""

from __future__ import annotations

import os
from pathlib import Path

TAIL = 2  # components kept of a path outside the base


def repo_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds ``.git`` (a folder, or a worktree's file)."""
    p = Path(start).resolve()
    for d in (p, *p.parents):
        if (d / ".git").exists():
            return d
    return None


def report_base(out: Path) -> Path:
    """What a report's paths are shown relative to: the repository holding the output folder ``out``,
    else the current directory."""
    return repo_root(out) or Path.cwd().resolve()


def _tail(path: Path) -> str:
    """The last ``TAIL`` components of an absolute path, after the home folder where it lies under it,
    as ``.../a/b``."""
    home = Path.home()
    parts = path.relative_to(home).parts if path.is_relative_to(home) else path.parts[1:]
    return ".../" + "/".join(parts[-TAIL:]) if parts else "~"


def display_path(p: str | Path, base: Path) -> str:
    """``p`` as a note shows it: relative to ``base`` when under it (``.`` for ``base`` itself), else
    its last components; a relative or empty path as given."""
    s = str(p)
    if not s or not os.path.isabs(s):
        return s
    path = Path(os.path.normpath(s))
    for candidate, root in ((path, base), (path.resolve(), Path(base).resolve())):
        if candidate.is_relative_to(root):
            return candidate.relative_to(root).as_posix() or "."
    return _tail(path)


def display_arg(arg: str, base: Path) -> str:
    """One command-line word as a note shows it: a path, the value of ``key=path``, or the file of a
    ``file.py:factory`` model spec go through ``display_path``; any other word is kept."""
    if "=" in arg and not os.path.isabs(arg):
        key, value = arg.split("=", 1)
        return f"{key}={display_arg(value, base)}"
    file, sep, factory = arg.rpartition(":")
    if sep and file.endswith(".py"):
        return f"{display_path(file, base)}:{factory}"
    return display_path(arg, base)


def display_command(argv: list[str], base: Path) -> str:
    """A command line (its words) joined as a note shows it, each word through ``display_arg``."""
    return " ".join(display_arg(a, base) for a in argv)
