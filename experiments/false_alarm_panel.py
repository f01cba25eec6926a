"""`diagnose all` on correct, widely used models (checks.zoo.CORRECT_MODELS), on the zoo's data.

    python experiments/false_alarm_panel.py     # ~4 min on 2 CPU cores; needs timm and torchvision

Prints one row per model: every FAIL (there must be none; tests/test_user_models.py asserts it) and
every WARN with its code or first cause. The README's table is this output.
"""

from __future__ import annotations

import contextlib
import io

from reproscope.checks.zoo import CORRECT_MODELS, ZOO_RECIPE_OVERRIDES
from reproscope.config import apply_overrides
from reproscope.diagnostics.diagnose import run_diagnosis
from reproscope.recipes import get_recipe


def main() -> None:
    recipe = apply_overrides(get_recipe("quickstart"), ZOO_RECIPE_OVERRIDES)
    print("| model | FAIL | WARN (check: why) |")
    print("|---|---|---|")
    for spec in CORRECT_MODELS:
        with contextlib.redirect_stdout(io.StringIO()):
            results = run_diagnosis(recipe, "all", model_spec=spec)
        fails = [r.name for r in results if r.status == "fail"]
        warns = [f"{r.name}: {', '.join(r.codes) or (r.causes[0] if r.causes else r.measured)[:90]}"
                 for r in results if r.status == "warn"]
        print(f"| `{spec}` | {', '.join(fails) or 'none'} | {'; '.join(warns) or 'none'} |", flush=True)


if __name__ == "__main__":
    main()
