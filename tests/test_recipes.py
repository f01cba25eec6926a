import pytest
from conftest import TINY, release_except

from reproscope.config import apply_overrides
from reproscope.launch import train
from reproscope.recipes import list_recipes

PAPER_RECIPES = [r.name for r in list_recipes()
                 if r.name.split("-")[0] in ("dyt", "kat", "mambaout") and r.data.dataset == "shapes10"]


def test_each_paper_has_model_and_baseline_recipes():
    for paper in ("dyt", "kat", "mambaout"):
        assert sum(n.startswith(paper + "-") for n in PAPER_RECIPES) >= 2, paper


@pytest.mark.parametrize("name", release_except(PAPER_RECIPES, [n for n in PAPER_RECIPES if n != "dyt-convnext_tiny"]))
@pytest.mark.slow  # over 5 s on 2 cores: the full tier; ConvNeXt-T's (37 s) is a release test
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


def test_unexplained_deviation_fails_registration():
    import dataclasses

    from reproscope.recipes import RecipeError, get_recipe, register_recipe
    parent = get_recipe("dyt-vit_base-paper")
    child = dataclasses.replace(apply_overrides(parent, {"optim.lr": 1e-3, "sched.epochs": 10}),
                                name="test-child", parent=parent.name, sources={},
                                deviations={"optim.lr": "smaller batch"})
    with pytest.raises(RecipeError, match="sched.epochs differ from parent .* without a stated reason"):
        register_recipe(child)
    stale = dataclasses.replace(child, deviations={"optim.lr": "x", "sched.epochs": "y", "aug.hflip": "z"})
    with pytest.raises(RecipeError, match="aug.hflip, which do not differ"):
        register_recipe(stale)


def test_paper_recipes_cite_a_source_for_every_value():
    from reproscope.recipes import PAPER_KEYS
    papers = [r for r in list_recipes() if r.name.endswith("-paper")]
    assert len(papers) >= 3
    for r in papers:
        assert all(r.sources.get(k) for k in PAPER_KEYS), r.name
    vit = next(r for r in papers if r.name == "dyt-vit_base-paper")
    assert (vit.sched.epochs, vit.data.batch_size, vit.optim.lr, vit.sched.warmup_epochs) == (300, 4096, 4e-3, 20)
    assert (vit.aug.mixup_alpha, vit.aug.cutmix_alpha, vit.reg.label_smoothing, vit.reg.ema_decay) == (0.8, 1.0, 0.1, 0.9999)


def test_every_reduced_recipe_has_a_parent_and_reasons():
    from reproscope.recipes import deviation_log
    reduced = [r for r in list_recipes() if r.parent]
    subsets = {"imagenette", "tinyimagenet", "cifar10", "cifar100"}
    for paper in ("dyt", "kat", "mambaout"):  # the day tier (and ImageNet-100), and the quick tier
        names = [r.name for r in reduced if r.name.startswith(paper) and not r.name.endswith("-cpu")]
        assert {n.removesuffix("-quick").rsplit("-", 1)[1] for n in names if not n.endswith("-quick")} == \
            subsets | {"imagenet100"}
        assert {n.removesuffix("-quick").rsplit("-", 1)[1] for n in names if n.endswith("-quick")} == subsets
    for r in reduced:
        rows = deviation_log(r)
        assert rows and all(x["reason"] for x in rows), r.name


def test_another_seed_is_a_repeat_not_a_deviation(tmp_path):
    """#49: run.seed is no row of the deviation log (deviations.json, TensorBoard's text), for a recipe
    with a parent and for one without; the other overrides still are."""
    import json

    from reproscope.recipes import deviation_log, get_recipe
    from reproscope.train.rundir import write_run_record
    child = get_recipe("dyt-vit_tiny-cifar10-quick")
    assert deviation_log(apply_overrides(child, {"run.seed": 3})) == deviation_log(child)
    r = apply_overrides(get_recipe("quickstart"), {"run.seed": 3, "sched.epochs": 1})
    assert [x["key"] for x in deviation_log(r)] == ["sched.epochs"]
    write_run_record(tmp_path, r, None, world_size=1, splits={})
    log = json.loads((tmp_path / "deviations.json").read_text())
    assert [x["key"] for x in log["deviations"]] == ["sched.epochs"]


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_recipes_diff_cli_and_run_dir_deviation_log(tmp_path, capsys):
    import json

    from reproscope.cli import main
    assert main(["recipes", "diff", "dyt-vit_tiny-cifar10-quick"]) == 0
    out = capsys.readouterr().out
    assert "vs its parent dyt-vit_base-paper" in out and "model.name" in out and "linear scaling rule" in out
    # overrides show up as deviations too, in the CLI and in the run directory
    assert main(["recipes", "diff", "dyt-vit_tiny-cifar10-quick", "--set", "sched.epochs=50"]) == 0
    assert "command-line override" in capsys.readouterr().out
    from reproscope.recipes import get_recipe
    r = apply_overrides(get_recipe("quickstart"), {**TINY, "sched.epochs": 1})
    train(r, run_dir=tmp_path / "run")
    log = json.loads((tmp_path / "run" / "deviations.json").read_text())
    assert {x["key"] for x in log["deviations"]} >= {"sched.epochs", "data.train_size"}


def test_plan_times_real_steps_and_labels_the_l4_estimate(capsys):
    from reproscope.cli import main
    assert main(["plan", "--steps", "1", "--hours", "2", "--set", "data.train_size=64", "--set", "data.val_size=10",
                 "--set", "data.batch_size=16"]) == 0
    out = capsys.readouterr().out
    assert "measured here (cpu)" in out and "img/s" in out and "epochs of 64 images" in out
    assert "L4 ESTIMATE (not measured)" in out
