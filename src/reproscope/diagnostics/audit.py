"""`reproscope audit RUN_DIR [--against RECIPE]`: a run's training loop held against a paper recipe.

A run watched with ``reproscope.watch`` carries what its loop showed in ``loop.json`` (the facts of
:class:`reproscope.instrument.loop.LoopObserver`); a ``reproscope train`` run carries its recipe in
``config.json``. Either is audited by :func:`reproscope.instrument.loop_audit.audit` (the code
``watch(against=...)`` and the ``recipe-audit`` check use) against ``--against`` (default: the run's
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
from ..instrument.loop_audit import audit, read_declared, recipe_facts, resolve_against
from ..runfiles import AUDIT, CONFIG, DEVIATIONS, LOOP, read_json, write_json


def run_facts(run_dir: Path) -> tuple[dict, str, bool]:
    """(facts, parent recipe name or "", watched) of a run directory.

    Raises:
        ConfigError: not a run directory, or a config that names no recipe.
    """
    loop, cfg = run_dir / LOOP, run_dir / CONFIG
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
        why = (f"declared: {r['reason']} -- consequence: {r.get('consequence', '')}" if r.get("declared") else
               r["reason"]) + (f" (source: {source})" if source and source != last_source else "")
        last_source = source or last_source
        lines += textwrap.wrap(why, width - 4, initial_indent="    ", subsequent_indent="    ")
    if result["not_observed"]:
        lines += textwrap.wrap("not observed (not compared): " + ", ".join(result["not_observed"]), width,
                               subsequent_indent="  ")
    ending = result.get("ending") or {}
    if ending.get("how") not in (None, "finished", "running"):
        lines += textwrap.wrap(f"the loop {ending['reason']}: its epochs, the end of its schedule and its EMA horizon "
                               f"are not observed, so the planned schedule is not compared", width, subsequent_indent="  ")
    for key in result.get("declared_unused", []):
        lines.append(f"declared {key!r} is no deviation of this loop: nothing to declare")
    return "\n".join(lines)


def _cut(v, n: int) -> str:
    s = f"{v:.4g}" if isinstance(v, float) else str(v)
    return s if len(s) <= n else s[:n - 1] + "…"


def run_audit(run_dir: str | Path, against: str | None = None, reasons: str | None = None) -> int:
    """Print and write the audit of ``run_dir`` against ``against`` (a recipe or a paper key; default: its
    parent recipe), with the deviations declared in ``watch(deviations=)`` and in the file ``reasons``
    (JSON / YAML ``key: reason``; the file wins on a key both name); 1 if a likely mistake was found, else 0.

    Raises:
        ConfigError: no run directory, an unknown recipe, a bad reasons file, or no recipe to audit against.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    facts, parent, watched = run_facts(run_dir)
    name = against or parent
    if not name:
        raise ConfigError(f"{run_dir} was watched without against=: give the recipe to audit against, e.g. "
                          f"reproscope audit {run_dir} --against dyt (a paper key, or a recipe: `reproscope recipes`)")
    recipe = resolve_against(name)
    loop = read_json(run_dir / LOOP, {}) if watched else {}
    prior = (read_json(run_dir / DEVIATIONS, {}) or {}).get("declared") or {} if watched else {}
    declared = {**(loop.get("declared") or {}), **prior, **read_declared(reasons)}  # reasons given before are kept
    result = audit(facts, recipe, declared=declared, ending=loop.get("ending"))
    out = run_dir / (DEVIATIONS if watched else AUDIT)
    write_json(out, result)
    n, m = len(result["deviations"]), result["mistakes"]
    print(f"audit of {run_dir} against {recipe.name}: {n} deviation{'s' * (n != 1)}, {m} likely mistake{'s' * (m != 1)}")
    if n or result["not_observed"]:
        print(format_table(result))
    print(f"written: {out}")
    return 1 if m else 0
