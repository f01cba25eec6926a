"""``reproscope zoo``: plant each bug of ``checks.zoo`` in its recipe, run ``diagnose all``, tabulate.

The bugs and the verdict rule (``caught``: the expected check fails with the bug's cause code) live
in ``checks/zoo.py``; running them needs ``diagnose``, so the runner lives here, one layer up.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from ..checks.zoo import BUGS, CORRECT_RECIPES, RECIPE_FINDINGS, ZOO_RECIPE_OVERRIDES, Bug, caught
from ..config import apply_overrides
from ..recipes import get_recipe
from .diagnose import run_diagnosis


def run_bug(bug: Bug | None, recipe_name: str | None = None, out_dir=None):
    """diagnose all on ``bug`` planted in its recipe (or on ``recipe_name`` unchanged when bug is None)."""
    recipe = get_recipe(bug.recipe if bug else recipe_name)
    if recipe.data.dataset == "shapes10":
        recipe = apply_overrides(recipe, ZOO_RECIPE_OVERRIDES)
    return run_diagnosis(recipe, "all", mutation=bug.mutation if bug else None, out_dir=out_dir)


def zoo_table(bugs=None, recipes=CORRECT_RECIPES, progress: bool = True) -> tuple[str, bool]:
    """Markdown detection table (bug -> the checks that failed) and whether every row is as expected."""
    rows = ["| bug (planted in) | what | expected check | caught | every failing check | its codes | its first cause |",
            "|---|---|---|---|---|---|---|"]
    all_ok = True
    items = [("bug", b) for b in (bugs if bugs is not None else BUGS)] + [("recipe", r) for r in recipes]
    for kind, item in tqdm(items, desc="zoo", disable=not progress, unit="case"):
        if kind == "bug":
            res = run_bug(item)
            ok = caught(item, res)
            r = next(r for r in res if r.name == item.expect)
            fails = ", ".join(x.name for x in res if x.status == "fail")
            rows.append(f"| `{item.name}` ({item.recipe}) | {item.what} | {item.expect} | {'yes' if ok else '**NO**'} "
                        f"| {fails} | {_codes([r])} | {_cause([r])} |")
        elif item in RECIPE_FINDINGS:
            found = RECIPE_FINDINGS[item]
            res = run_bug(None, item)
            fails = [x for x in res if x.status == "fail"]
            ok = caught(found, res) and all(x.name == found.expect for x in fails)
            rows.append(f"| none (`{item}`, registered) | {found.what} | {found.expect} | "
                        f"{'found as known' if ok else '**NO**'} | {', '.join(x.name for x in fails) or '-'} | "
                        f"{_codes(fails)} | {_cause(fails)} |")
        else:
            res = run_bug(None, item)
            fails = [x for x in res if x.status == "fail"]
            ok = not fails
            rows.append(f"| none (`{item}`, correct) | - | none may fail | {'no false alarm' if ok else '**FALSE ALARM**'} "
                        f"| {', '.join(x.name for x in fails) or '-'} | {_codes(fails)} | {_cause(fails)} |")
        all_ok &= ok
    return "\n".join(rows), all_ok


def _codes(fails) -> str:
    return ", ".join(f"`{c}`" for c in fails[0].codes) if fails and fails[0].codes else "-"


def _cause(fails) -> str:
    c = (fails[0].causes[0] if fails and fails[0].causes else "-").replace("|", "/")
    return c[:140] + ("..." if len(c) > 140 else "")
