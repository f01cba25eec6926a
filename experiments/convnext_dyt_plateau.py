"""Does the `dyt-convnext_tiny` smoke recipe learn? Training loss of ConvNeXt-T variants on its pipeline.

`reproscope diagnose input-independent --recipe dyt-convnext_tiny` (zoo scale: shapes10 shrunk to 2,000
images, batch 64, so the 10-epoch schedule is 310 steps) fails: the training loss stays at ln 10 for
300 steps. This script asks whether that is the recipe or the check. It runs the recipe's own Trainer
step (as the checks do) for each variant and prints the mean training loss of every 25 steps, stopping
a variant once that mean is below 1.9 (clearly learning).

    python experiments/convnext_dyt_plateau.py                 # the four variants below, ~18 min on 2 cores
    python experiments/convnext_dyt_plateau.py "model.norm=ln"  # one variant ("" = the recipe as is)

Variants: the recipe as is (DyT, alpha0 0.5, lr 2e-3); its LayerNorm twin; alpha0 1.2 (the top of the
paper's working range); lr 4e-3 (the paper's absolute lr).
"""

import sys
import time

from reproscope.checks import recipe_subject
from reproscope.checks.core import fresh
from reproscope.checks.zoo import ZOO_RECIPE_OVERRIDES
from reproscope.config import ConfigError, apply_overrides
from reproscope.recipes import get_recipe

VARIANTS = ["", "model.norm=ln", "model.dyt_alpha0=1.2", "optim.lr=4e-3"]


def main(specs: list[str], recipe: str = "dyt-convnext_tiny", steps: int = 200) -> None:
    for spec in specs:
        recipe_at_zoo_scale = apply_overrides(get_recipe(recipe), ZOO_RECIPE_OVERRIDES)
        # spec: comma-separated KEY=VALUE, parsed and validated as `--set` is
        make_model, data, _ = recipe_subject(apply_overrides(recipe_at_zoo_scale, [kv for kv in spec.split(",") if kv]))
        run = data.run(fresh(make_model))
        t, losses = time.time(), []
        for i in range(steps):
            losses.append(run.step().loss)
            if (i + 1) % 25 == 0:
                mean = sum(losses[-25:]) / 25
                print(f"{spec or 'as is':24s} step {i + 1:4d} loss(25) {mean:.3f}  {time.time() - t:.0f}s", flush=True)
                if mean < 1.9:
                    break


if __name__ == "__main__":
    try:
        main(sys.argv[1:] or VARIANTS)
    except ConfigError as e:
        sys.exit(f"convnext_dyt_plateau.py: {e}")
