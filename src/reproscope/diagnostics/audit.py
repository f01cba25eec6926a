"""`reproscope audit RUN_DIR [--against RECIPE]`: a run's training loop held against a paper recipe.

A run watched with ``reproscope.watch`` carries what its loop showed in ``loop.json`` (the facts of
:class:`reproscope.instrument.loop.LoopObserver`); a ``reproscope train`` run carries its recipe in
``config.json``. Either is audited by :func:`reproscope.instrument.loop_audit.audit` (the code
``watch(paper=...)`` and the ``recipe-audit`` check use) against ``--against`` (default: the run's
parent recipe). Prints the recipe's value / yours / consequence per deviation, writes ``deviations.json`` for a
watched run (``audit.json`` for a recipe run, whose ``deviations.json`` is its recipe's log), and
returns 1 when a likely mistake is found.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from ..config import ConfigError, recipe_from_dict
from ..instrument.loop_audit import audit, recipe_facts
from ..recipes import get_recipe
from ..train.rundir import write_json


def run_facts(run_dir: Path) -> tuple[dict, str, bool]:
    """(facts, parent recipe name or "", watched) of a run directory.

    Raises:
        ConfigError: not a run directory, or a config that names no recipe.
    """
    loop, cfg = run_dir / "loop.json", run_dir / "config.json"
    if loop.is_file():
        config = json.loads(cfg.read_text()) if cfg.is_file() else {}
        return json.loads(loop.read_text())["facts"], config.get("parent", ""), True
    if not cfg.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.json or loop.json); give the folder "
                          f"`reproscope train` or `reproscope.watch` wrote")
    recipe = recipe_from_dict(json.loads(cfg.read_text()))
    return recipe_facts(recipe), recipe.parent or recipe.name, False


def format_table(result: dict, width: int = 0) -> str:
    """The audit as a table a terminal shows: key, the value of the recipe audited against (the column
    headed with its name, ``result["parent"]``; "recipe" without one), yours, code, then the consequence
    indented."""
    width = width or min(shutil.get_terminal_size((110, 24)).columns, 140)
    rows = result["deviations"]
    against = result.get("parent") or "recipe"
    w = max(24, len(against))
    head = f"{'key':<26} {against:<{w}} {'yours':<24} code"
    lines = [head, "-" * min(width, len(head) + 20)]
    last_source = ""
    for r in sorted(rows, key=lambda r: (not r["mistake"], r["key"])):
        lines.append(f"{r['key']:<26} {_cut(r['parent'], w):<{w}} {_cut(r['value'], 24):<24} "
                     f"{r['code']}{' (likely mistake)' if r['mistake'] else ''}")
        source = r.get("source") or ""
        why = r["reason"] + (f" (source: {source})" if source and source != last_source else "")
        last_source = source or last_source
        lines += textwrap.wrap(why, width - 4, initial_indent="    ", subsequent_indent="    ")
    if result["not_observed"]:
        lines += textwrap.wrap("not observed (not compared): " + ", ".join(result["not_observed"]), width,
                               subsequent_indent="  ")
    return "\n".join(lines)


def _cut(v, n: int) -> str:
    s = f"{v:.4g}" if isinstance(v, float) else str(v)
    return s if len(s) <= n else s[:n - 1] + "…"


def run_audit(run_dir: str | Path, against: str | None = None) -> int:
    """Print and write the audit of ``run_dir`` against ``against`` (default: its parent recipe);
    1 if a likely mistake was found, else 0.

    Raises:
        ConfigError: no run directory, an unknown recipe, or no recipe to audit against.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    facts, parent, watched = run_facts(run_dir)
    name = against or parent
    if not name:
        raise ConfigError(f"{run_dir} was watched without paper=: give the recipe to audit against, e.g. "
                          f"reproscope audit {run_dir} --against dyt-vit_base-paper (`reproscope recipes` lists them)")
    recipe = get_recipe(name)
    result = audit(facts, recipe)
    out = run_dir / ("deviations.json" if watched else "audit.json")
    write_json(out, result)
    n, m = len(result["deviations"]), result["mistakes"]
    print(f"audit of {run_dir} against {recipe.name}: {n} deviation{'s' * (n != 1)}, {m} likely mistake{'s' * (m != 1)}")
    if n or result["not_observed"]:
        print(format_table(result))
    print(f"written: {out}")
    return 1 if m else 0
