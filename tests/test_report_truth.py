"""#35: the report says only what its numbers support. Each sentence the verdict, the checklist and
the results table generate is checked here for the numbers and codes it states."""

import math

import pytest
from report_fakes import fake_run

from reproscope.papers import PAPERS, Claim
from reproscope.report.report import _checklist, _mean_std, _statistics, verdict_sentences
from reproscope.report.runs import Interval, group_runs, load_run, seeds_for_half_width, t_critical_95, welch_interval

DYT, KAT = PAPERS["dyt"].claim, PAPERS["kat"].claim


def iv(lo: float, hi: float, n=(3, 3), std=(1.0, 1.0), df=3.9) -> Interval:
    return Interval((lo + hi) / 2, lo, hi, df, n[0], n[1], std[0], std[1])


def text(claim: Claim, interval: Interval, **kw) -> str:
    return " ".join(verdict_sentences(claim, "M", "B", interval, **kw))


def test_t_quantile_is_exact_at_fractional_df():
    """The hand-written table gave 7.10 at df 1.5; the exact quantile is 6.02."""
    assert t_critical_95(1.5) == pytest.approx(6.0167, abs=1e-4)
    assert t_critical_95(2) == pytest.approx(4.3027, abs=1e-4) and t_critical_95(30) == pytest.approx(2.0423, abs=1e-4)
    i = welch_interval([7.0, 10.0], [9.0, 11.0])
    se = math.sqrt(4.5 / 2 + 2.0 / 2)
    assert i.df == pytest.approx((4.5 / 2 + 1.0) ** 2 / ((4.5 / 2) ** 2 + 1.0 ** 2)) and 1 < i.df < 2
    assert i.hi - i.d == pytest.approx(t_critical_95(i.df) * se) and i.d == pytest.approx(-1.5)


def test_the_issues_wide_interval_supports_no_claim():
    """-16.1 points, [-32.5, +0.3], n = 2 + 2: not 'consistent with matches', and no '3 seeds'."""
    t = text(DYT, Interval(-16.1, -32.5, 0.3, 1.5, 2, 2, 2.0, 1.0))
    assert "95% CI [-32.50, +0.30] (Welch t, df 1.5, n = 2 + 2)" in t
    assert "[claim-inconclusive]" in t and "includes both 0 and gaps of -0.50 points or beyond" in t
    assert "consistent with" not in t and "3 seeds" not in t and "[claim-holds]" not in t


def test_head_and_sign_sentences_state_their_numbers():
    s = verdict_sentences(DYT, "vit (dyt)", "vit (ln)", Interval(-9.76, -11.81, -7.70, 3.9, 3, 3, 0.74, 0.99))
    assert s[0] == ("Measured difference, vit (dyt) minus vit (ln): -9.76 points top-1, 95% CI [-11.81, -7.70] "
                    "(Welch t, df 3.9, n = 3 + 3).")
    assert s[1] == "The interval excludes 0: the method is worse beyond seed noise."
    assert verdict_sentences(DYT, "M", "B", iv(0.2, 1.0))[1] == "The interval excludes 0: the method is better beyond seed noise."
    assert verdict_sentences(DYT, "M", "B", iv(-3.0, 2.0, n=(2, 4)))[1] == (
        "The interval contains 0: no difference is resolved; with n = 2 + 4 seeds only differences larger than its "
        "half-width, 2.50 points, are detectable.")


@pytest.mark.parametrize("lo, hi, code, phrase", [
    (0.2, 1.0, "claim-holds", "The lower end, +0.20, is above 0: 'matches or beats' holds at this scale"),
    (-0.4, 0.9, "claim-holds", "The lower end, -0.40, is not below -0.50: 'matches' holds at this scale, 'beats' is not shown"),
    (-11.81, -7.70, "claim-fails", "The upper end, -7.70, is below -0.50: the method is behind by more than the tolerance"),
    (-2.0, 0.3, "claim-inconclusive", "includes both 0 and gaps of -0.50 points or beyond"),
    (-2.0, -0.3, "claim-inconclusive", "includes both -0.30 (within the tolerance) and gaps of -0.50 points or beyond"),
])
def test_matches_or_beats_verdicts(lo, hi, code, phrase):
    t = text(DYT, iv(lo, hi))
    assert f"[{code}]" in t and phrase in t, t
    assert "tolerance ±0.50 points: the paper's own LN-to-DyT gaps, +0.2 and +0.5" in t or code == "claim-holds" and lo > 0


@pytest.mark.parametrize("lo, hi, code, phrase", [
    (0.3, 2.0, "claim-holds", "The lower end, +0.30, is above 0: 'beats' holds at this scale"),
    (-4.90, -2.06, "claim-fails", "The upper end, -2.06, is below 0: 'beats' does not hold at this scale"),
    (-0.8, 0.9, "claim-fails", "The whole interval lies within ±1.00 points: the two match at this scale and 'beats' does not show"),
    (-1.35, 0.5, "claim-inconclusive", "includes both 0 and gaps of -1.00 points or beyond"),
    (-1.35, 1.03, "claim-inconclusive", "includes both 0 and gaps of +1.00 points or beyond"),
    (-0.5, 3.0, "claim-inconclusive", "includes both 0 and gaps of +1.00 points or beyond"),
])
def test_beats_verdicts_and_the_papers_gap(lo, hi, code, phrase):
    t = text(KAT, iv(lo, hi))
    assert f"[{code}]" in t and phrase in t, t
    where = "above" if 2.4 > hi else "inside"
    assert f"The paper's gap, +2.40 points, lies {where} the interval." in t


def test_an_inconclusive_verdict_says_how_many_seeds_would_resolve_the_tolerance():
    t = text(DYT, iv(-2.0, 0.3, std=(2.12, 1.41)))
    n = seeds_for_half_width(2.12, 1.41, 0.5)
    assert f"At the observed seed spread (std 2.12 and 1.41), an interval of ±0.50 points needs about {n} seeds per variant." in t
    half = lambda k: t_critical_95((2.12**2 + 1.41**2) ** 2 * (k - 1) / (2.12**4 + 1.41**4)) * ((2.12**2 + 1.41**2) / k) ** 0.5  # noqa: E731
    assert half(n) <= 0.5 < half(n - 1)


def test_one_seed_gives_no_interval_and_no_verdict():
    t = text(DYT, Interval(-1.0, math.nan, math.nan, math.nan, 1, 3, math.nan, 1.0))
    assert "Measured difference, M minus B: -1.00 points top-1 (n = 1 + 3)." in t
    assert "[claim-untested]" in t and "CI" not in t and "[claim-holds]" not in t


def test_a_failed_claim_names_the_deviations_behind_it():
    t = text(DYT, iv(-11.81, -7.70), n_dev=15, against="dyt-vit_base-paper")
    assert "The method's and the baseline's runs differ from dyt-vit_base-paper in 15 settings (deviation log)" in t
    assert "differ from" not in text(DYT, iv(-11.81, -7.70))  # no deviations: no such sentence


def test_results_cell_of_one_seed_shows_no_std():
    assert _mean_std(38.83, 0.0, 1) == "38.83 (one seed: no std)"
    assert _mean_std(37.23, 0.74, 3) == "37.23 ± 0.74" and _mean_std(math.nan, math.nan, 0) == "no eval"


@pytest.fixture
def groups(tmp_path):
    runs = [fake_run(tmp_path, "quickstart", 0, 9.0), fake_run(tmp_path, "quickstart", 1, 11.0),
            fake_run(tmp_path, "quickstart-dyt", 0, 7.0)]
    loaded = [load_run(r) for r in runs]
    return group_runs(loaded), loaded


def test_checklist_says_there_is_no_paper_recipe_where_there_is_none(groups):
    """'the paper recipe's, 1 changed' was printed for recipes that have no paper."""
    g, runs = groups
    rows = dict(_checklist(g, runs, DYT))
    assert rows["hyperparameters"].startswith("no paper recipe (quickstart, quickstart-dyt: no parent recipe): "
                                              "7 changed from the recipe (deviation log)")
    assert "paper recipe's" not in rows["hyperparameters"]


def test_checklist_names_the_paper_recipe_where_there_is_one(tmp_path):
    runs = [load_run(fake_run(tmp_path, "dyt-vit_quick-imagenette-cpu", 0, 30.0))]
    parent = runs[0].config["parent"]
    assert parent
    hyper = dict(_checklist(group_runs(runs), runs, DYT))["hyperparameters"]
    assert hyper.startswith(f"the paper recipe {parent}'s, 7 changed (deviation log; 7 with a stated reason)")


def test_statistics_row_states_the_seed_counts_and_whether_an_interval_exists(groups):
    g, _ = groups
    assert _statistics(g, DYT) == ("mean ± standard deviation over seeds (n = 1, 2); one seed: its value, no std; "
                                   "no interval for the difference (a side has fewer than 2 seeds)")
    assert _statistics(g, None).endswith("no difference computed (no method and baseline pair among these runs)")


def test_a_run_made_by_a_script_shows_that_script_as_its_command(tmp_path):
    """A run trained through the Python API recorded the script's argv: its command is that script, not
    'reproscope' with nothing after it."""
    r = load_run(fake_run(tmp_path, "quickstart", 0, 9.0, argv=["train_mine.py", "--fast"]))
    assert r.command_line(tmp_path) == "python train_mine.py --fast"
    r = load_run(fake_run(tmp_path, "quickstart", 1, 9.0, argv=["/x/src/reproscope/__main__.py", "train"]))
    assert r.command_line(tmp_path) == "reproscope train"


def test_a_campaign_of_two_paper_recipes_names_both(tmp_path):
    """DyT's LN baseline derives from dyt-vit_base_ln-paper, the method from dyt-vit_base-paper."""
    from reproscope.report.report import _verdict
    runs = [load_run(fake_run(tmp_path, "dyt-vit_quick-imagenette-cpu", s, 30.0 + s)) for s in (0, 1, 2)] + \
        [load_run(fake_run(tmp_path, "dyt-vit_quick_ln-imagenette-cpu", s, 40.0 + s)) for s in (0, 1, 2)]
    groups = group_runs(runs)
    hyper = dict(_checklist(groups, runs, DYT))["hyperparameters"]
    assert hyper.startswith("the paper recipes dyt-vit_base-paper, dyt-vit_base_ln-paper: 7 changed")
    v = _verdict(groups, DYT)
    assert "-10.00 points top-1" in v and "[claim-fails]" in v
    assert "differ from dyt-vit_base-paper and dyt-vit_base_ln-paper in 7 settings" in v


def test_the_data_sentence_is_what_this_runs_data_path_did(tmp_path):
    """#49: shapes10 is generated at its size, never resized or cached; a folder dataset is resized once into
    the uint8 cache (its cache_res) and centre-cropped for evaluation."""
    from reproscope.report.report import _data_sentence
    shapes = load_run(fake_run(tmp_path, "quickstart", 0, 9.0))
    said = _data_sentence(shapes)
    assert "generated at 32 px" in said and "cache" in said and "uint8 cache" not in said
    folder = load_run(fake_run(tmp_path, "dyt-vit_quick-imagenette-cpu", 0, 30.0))
    res = folder.value("data.cache_res") or round(32 / folder.value("data.eval_crop_pct"))
    assert f"resized to {res} px once (uint8 cache)" in _data_sentence(folder)
