"""The honest budget (issue 21): throughput ranges from evidence and a written scaling rule, and
`reproscope plan --fit HOURS --paper P` proposing the most faithful campaign that fits."""

import pytest

from reproscope.cli import main
from reproscope.config import apply_overrides
from reproscope.diagnostics import budget
from reproscope.diagnostics.budget import DATASETS, PAPERS, RANGE, BudgetError, fit
from reproscope.diagnostics.plan import campaign_runs, campaign_script
from reproscope.hardware import KNOWN_GPUS
from reproscope.recipes import DAY, deviation_log, get_recipe


def test_the_scaling_rule_reduces_to_peak_and_bandwidth_ratios():
    src, dst = KNOWN_GPUS["RTX 3090"], KNOWN_GPUS["L4"]
    # a step that is all matmul at the efficiency itself (f = 0): time scales with peak FLOP/s only
    assert budget.time_ratio(0.60 - 0.02, src, dst, "optimistic") == pytest.approx(
        (1 - (1 - 0.58 / 0.60)) * src.bf16 / dst.bf16 + (1 - 0.58 / 0.60) * src.bandwidth / dst.bandwidth)
    # the less of a step is matmul, the more the L4's 300 GB/s costs
    assert budget.time_ratio(0.1, src, dst, "likely") > budget.time_ratio(0.5, src, dst, "likely")


def test_evidence_gives_plausible_mfu_and_ordered_ranges():
    for family in budget.EVIDENCE:
        assert 0.1 < budget.source_mfu(family) < 0.8, family
    for model in budget.FAMILY:
        img_s = budget.train_img_per_s(model, 224)
        assert img_s["optimistic"] >= img_s["likely"] >= img_s["pessimistic"] > 0, model
    # a KAT model costs more than its ViT of the same FLOPs; ViT-B far more than ViT-Ti
    assert budget.train_img_per_s("kat_tiny", 224)["likely"] < budget.train_img_per_s("vit_tiny", 224)["likely"]
    assert budget.train_img_per_s("vit_base", 224)["likely"] * 2 < budget.train_img_per_s("vit_tiny", 224)["likely"]


def test_flops_follow_torchs_counter_at_other_resolutions():
    from reproscope.model import create_model
    from reproscope.model.counting import count_flops
    want = count_flops(create_model("vit_tiny", num_classes=1000, img_size=160, patch_size=16), 160)
    assert budget.forward_flops("vit_tiny", 160) == pytest.approx(want, rel=1e-6)
    want = count_flops(create_model("mambaout_femto", num_classes=1000, patch_size=2), 32)
    assert budget.forward_flops("mambaout_femto", 32) == pytest.approx(want, rel=0.01)  # exact at the fit's 3 grids


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_fit_stays_within_the_budget_and_lists_every_deviation(paper):
    c = fit(paper, 24)
    assert c.hours["optimistic"] <= c.hours["likely"] <= 24 < c.hours["pessimistic"] * 10
    assert all(seeds >= 3 for v, seeds in c.variants if v.role != "ablation")
    roles = [v.role for v, _ in c.variants]
    assert roles[:2] == ["method", "baseline"] and (("ablation" in roles) == (PAPERS[paper].plan.ablation is not None))
    for name, sets, _ in campaign_runs(c):
        rows = deviation_log(apply_overrides(get_recipe(name), sets))
        assert rows and all(r["reason"] for r in rows), (name, [r for r in rows if not r["reason"]])


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_a_larger_budget_never_gives_a_less_faithful_campaign(paper):
    last = None
    for hours in (0.5, 1, 2, 4, 8, 16, 24, 48, 96, 400):
        try:
            c = fit(paper, hours)
        except BudgetError:
            assert last is None  # once something fits, more hours keep fitting
            continue
        if last is not None:
            assert c.faithfulness >= last.faithfulness, (hours, c, last)
        last = c
    assert last is not None


def test_a_budget_too_small_for_three_seeds_says_so(capsys):
    with pytest.raises(BudgetError, match=r"cannot hold 3 seeds each of KAT-T vs DeiT-T.*needs ([\d.]+) h") as e:
        fit("kat", 0.05)
    import re
    need = float(re.search(r"--fit ([\d.]+)", str(e.value)).group(1))
    fit("kat", need)  # the hours it names are enough
    assert main(["plan", "--fit", "0.05", "--paper", "kat"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "rather than fewer seeds" in err


@pytest.mark.parametrize("argv", [["--fit", "nan", "--paper", "dyt"], ["--fit", "inf", "--paper", "dyt"],
                                  ["--fit", "-3", "--paper", "dyt"], ["--paper", "dyt"],
                                  ["--fit", "24", "--paper", "dyt", "--hours", "3"],
                                  ["--fit", "24", "--paper", "dyt", "--recipe", "quickstart"]])
def test_plan_refuses_flags_it_would_ignore(argv, capsys):
    assert main(["plan", *argv]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("key", sorted(DAY))
def test_the_registered_day_recipes_are_what_plan_fit_24_proposes(key):
    paper, subset = key
    c = fit(paper, 24, subset)
    assert (c.variants[0][0].model, c.variants[1][0].model, c.res, c.epochs) == DAY[key]
    for name, sets, _ in campaign_runs(c):  # the registered recipe is used as it is
        assert [s for s in sets if not s.startswith(("run.seed", "model.dyt_squash", "model.denominator"))] == [], name
        assert not name.endswith("-quick")


def test_plan_fit_cli_prints_the_range_and_writes_a_script(tmp_path, capsys):
    script = tmp_path / "campaign.sh"
    assert main(["plan", "--fit", "24", "--paper", "dyt", "--dataset", "imagenette",
                 "--write-script", str(script)]) == 0
    out = capsys.readouterr().out
    assert "optimistic / likely / pessimistic" in out and "what it gives up against the paper" in out
    assert "model.dyt_squash       'tanh' -> 'identity': the ablation" in out
    c = fit("dyt", 24, "imagenette")
    lines = script.read_text().splitlines()
    train = [ln for ln in lines if ln.startswith("reproscope train ")]
    assert len(train) == sum(s for _, s in c.variants) == len(set(train))
    assert lines[-1].startswith("reproscope report ")
    assert campaign_script(c, 24) == script.read_text()
    assert main(["plan", "--fit", "24", "--paper", "kat", "--dataset", "nope"]) == 2


def test_every_dataset_of_the_planner_has_day_recipes():
    subsets = {d.subset for d in DATASETS}
    assert {s for _, s in DAY} == subsets


def test_the_readme_table_is_what_plan_fit_24_prints():
    import re
    from pathlib import Path
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for paper, label in (("dyt", "DyT"), ("kat", "KAT"), ("mambaout", "MambaOut")):
        row = re.search(rf"^\| {label} \| (\w[\w-]*), (\d+), (\d+) \|.*\| ([\d.]+) / ([\d.]+) / ([\d.]+) \|$", readme, re.M)
        assert row, label
        c = fit(paper, 24)
        assert (row.group(1).lower(), int(row.group(2)), int(row.group(3))) == (c.dataset.name, c.res, c.epochs)
        assert [float(x) for x in row.groups()[3:]] == [round(c.hours[k], 1) for k in RANGE]
