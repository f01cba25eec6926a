import pytest

from reproscope.config import apply_overrides
from reproscope.recipes import list_recipes
from reproscope.train.run import train

from conftest import TINY

PAPER_RECIPES = [r.name for r in list_recipes() if r.name.split("-")[0] in ("dyt", "kat", "mambaout")]


def test_each_paper_has_model_and_baseline_recipes():
    for paper in ("dyt", "kat", "mambaout"):
        assert sum(n.startswith(paper + "-") for n in PAPER_RECIPES) >= 2, paper


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipe_trains_offline(name, tmp_path):
    base = next(r for r in list_recipes() if r.name == name)
    tiny = {k: v for k, v in TINY.items() if k != "model.patch_size"}
    r = apply_overrides(base, {**tiny, "sched.epochs": 1, "data.train_size": 64, "data.val_size": 20,
                               "data.batch_size": 16, "data.eval_batch_size": 20})
    trainer, metrics = train(r, run_dir=tmp_path / "run")
    assert trainer.step == 4 and 0 <= metrics["top1"] <= 100
    from reproscope.model import DyT
    has_dyt = any(isinstance(m, DyT) for m in trainer.orig_model.modules())
    assert has_dyt == (base.model.norm == "dyt"), "the recipe's norm choice must reach the model"
