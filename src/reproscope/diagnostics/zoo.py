"""``reproscope zoo``: plant each bug of ``checks.zoo`` in its recipe, run ``diagnose all``, tabulate.

The bugs and the verdict rule (``caught``: the expected check fails with the bug's cause code) live
in ``checks/zoo.py``; running them needs ``diagnose``, so the runner lives here, one layer up.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from ..checks.zoo import BUGS, CORRECT_RECIPES, RECIPE_FINDINGS, ZOO_RECIPE_OVERRIDES, Bug, NotPlantable, caught
from ..config import apply_overrides
from ..recipes import get_recipe
from .diagnose import run_diagnosis


def run_bug(bug: Bug | None, recipe_name: str | None = None, out_dir=None, *, model_spec: str | None = None,
            overrides=()):
    """diagnose all on ``bug`` planted in its recipe (or on ``recipe_name`` unchanged when bug is None),
    on the recipe's model or on the user's ``model_spec``; ``overrides``: ``--set`` values on top."""
    recipe = get_recipe(bug.recipe if bug else recipe_name)
    if recipe.data.dataset == "shapes10":
        recipe = apply_overrides(recipe, ZOO_RECIPE_OVERRIDES)
    recipe = apply_overrides(recipe, list(overrides))
    return run_diagnosis(recipe, "all", mutation=bug.mutation if bug else None, out_dir=out_dir,
                         model_spec=model_spec)


HEADER = ["| bug (planted in) | what | expected check | caught | every failing check | its codes | its first cause |",
          "|---|---|---|---|---|---|---|"]


def zoo_table(bugs=None, recipes=CORRECT_RECIPES, progress: bool = True, *, model_spec: str | None = None,
              overrides=()) -> tuple[str, bool]:
    """Markdown detection table (bug -> the checks that failed) and whether every row is as expected.

    With ``model_spec`` the bugs are planted in the user's model (those that rewrite our ViT's code are
    listed as not plantable) and the first row is that model with nothing planted: a bug counts as
    caught only when its code is new, i.e. the unplanted model does not already fail with it.
    """
    if model_spec is not None:
        return _user_zoo(bugs if bugs is not None else BUGS, model_spec, overrides, progress)
    rows = list(HEADER)
    all_ok = True
    items = [("bug", b) for b in (bugs if bugs is not None else BUGS)] + [("recipe", r) for r in recipes]
    for kind, item in tqdm(items, desc="zoo", disable=not progress, unit="case"):
        if kind == "bug":
            res = run_bug(item, overrides=overrides)
            ok = caught(item, res)
            r = next(r for r in res if r.name == item.expect)
            fails = ", ".join(x.name for x in res if x.status == "fail")
            rows.append(f"| `{item.name}` ({item.recipe}) | {item.what} | {item.expect} | {'yes' if ok else '**NO**'} "
                        f"| {fails} | {_codes([r])} | {_cause([r])} |")
        elif item in RECIPE_FINDINGS:
            found = RECIPE_FINDINGS[item]
            res = run_bug(None, item, overrides=overrides)
            fails = [x for x in res if x.status == "fail"]
            ok = caught(found, res) and all(x.name == found.expect for x in fails)
            rows.append(f"| none (`{item}`, registered) | {found.what} | {found.expect} | "
                        f"{'found as known' if ok else '**NO**'} | {', '.join(x.name for x in fails) or '-'} | "
                        f"{_codes(fails)} | {_cause(fails)} |")
        else:
            res = run_bug(None, item, overrides=overrides)
            fails = [x for x in res if x.status == "fail"]
            ok = not fails
            rows.append(f"| none (`{item}`, correct) | - | none may fail | {'no false alarm' if ok else '**FALSE ALARM**'} "
                        f"| {', '.join(x.name for x in fails) or '-'} | {_codes(fails)} | {_cause(fails)} |")
        all_ok &= ok
    return "\n".join(rows), all_ok


def _user_zoo(bugs, spec: str, overrides, progress: bool) -> tuple[str, bool]:
    rows = list(HEADER)
    base = run_bug(None, "quickstart", model_spec=spec, overrides=overrides)  # fails fast on a model that does not fit
    already = {(r.name, c) for r in base if r.status == "fail" for c in r.codes}
    fails = [x for x in base if x.status == "fail"]
    rows.append(f"| none (your model `{spec}`) | nothing planted: the baseline | - | - | "
                f"{', '.join(x.name for x in fails) or '-'} | {_codes(fails)} | {_cause(fails)} |")
    all_ok = True
    for bug in tqdm(bugs, desc="zoo", disable=not progress, unit="case"):
        if not bug.any_model:
            rows.append(f"| `{bug.name}` | {bug.what} | {bug.expect} | not plantable in your model | - | - | "
                        f"it rewrites our {bug.recipe} model's code |")
            continue
        try:
            res = run_bug(bug, model_spec=spec, overrides=overrides)
        except NotPlantable as e:
            rows.append(f"| `{bug.name}` | {bug.what} | {bug.expect} | not plantable in your model | - | - | {e} |")
            continue
        r = next(r for r in res if r.name == bug.expect)
        new = caught(bug, res) and (bug.expect, bug.code) not in already
        verdict = "yes" if new else ("already failing unplanted" if (bug.expect, bug.code) in already else "**NO**")
        all_ok &= new
        rows.append(f"| `{bug.name}` | {bug.what} | {bug.expect} | {verdict} | "
                    f"{', '.join(x.name for x in res if x.status == 'fail')} | {_codes([r])} | {_cause([r])} |")
    return "\n".join(rows), all_ok


def _codes(fails) -> str:
    return ", ".join(f"`{c}`" for c in fails[0].codes) if fails and fails[0].codes else "-"


def _cause(fails) -> str:
    c = (fails[0].causes[0] if fails and fails[0].causes else "-").replace("|", "/")
    return c[:140] + ("..." if len(c) > 140 else "")
