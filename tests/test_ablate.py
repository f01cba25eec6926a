"""``reproscope ablate``: what each deviation cost, with intervals, from runs it trains and resumes.

Fast tier: the plan, the budget, the statistics and the resume on runs written by a stand-in trainer whose
top-1 is a known function of the arm and seed (so each effect and interval is known); one real base run.
Slow tier: a real campaign on shapes10 (an lr 100x below the recipe's ranked first and resolved, an EMA
that is never evaluated not resolved, the joint arm beside the sum), killed in a run and resumed to the
same ``ablation.json``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from reproscope import ablate as ab
from reproscope.cli import main
from reproscope.config import ConfigError, apply_overrides
from reproscope.recipes import deviation_log, get_recipe
from reproscope.runfiles import ABLATION, ABLATION_DIR, write_json

TINY = {"data.train_size": 1024, "data.val_size": 256, "sched.epochs": 6, "instrument.enabled": False,
        "run.progress": False}  # the scale (train size, epochs) and operational keys: never arms; 48 steps
DEV = {"optim.lr": 2e-5, "reg.ema_decay": 0.99}  # a deviation that costs, one that cannot (EMA never evaluated)


def _recipe(**extra):
    return apply_overrides(get_recipe("quickstart"), {**TINY, **DEV, **extra})


def _fake_run(recipe, rd: Path, top1: float, wall_s: float = 30.0) -> None:
    """A finished run directory as the Trainer writes it, with ``top1`` at its last evaluation."""
    rd.mkdir(parents=True, exist_ok=True)
    write_json(rd / "config.json", recipe.to_dict())
    write_json(rd / "deviations.json", {"recipe": recipe.name, "parent": recipe.parent,
                                        "deviations": deviation_log(recipe)})
    write_json(rd / "summary.json", {"wall_s": wall_s, "steps": 8, "final_top1": top1})
    n = recipe.sched.epochs
    rows = [{"kind": "train", "step": 4 * (e + 1), "loss": 2.0, "epoch_time_s": wall_s / n} for e in range(n)]
    rows += [{"kind": "val", "step": 4 * (e + 1), "epoch": e, "top1": top1 - (n - 1 - e)} for e in range(n)]
    (rd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _model_of_accuracy(recipe) -> float:
    """The stand-in's top-1: +20 points at the recipe's lr, an EMA that changes nothing, seed noise of +-0.5."""
    return 30.0 + (20.0 if recipe.optim.lr > 1e-3 else 0.0) + 0.5 * ((recipe.run.seed % 3) - 1)


def _stand_in(calls: list, interrupt_at: int | None = None):
    def train(recipe, rd, spec):
        calls.append(rd)
        if interrupt_at is not None and len(calls) == interrupt_at:
            return False  # as a Ctrl-C in that run: nothing finished there
        _fake_run(recipe, rd, _model_of_accuracy(recipe))
        return True
    return train


@pytest.fixture()
def base(tmp_path):
    rd = tmp_path / "base"
    _fake_run(_recipe(), rd, _model_of_accuracy(_recipe()))
    return rd


def test_the_plan_reverts_each_deviation_and_lists_the_scale_as_unaffordable(base):
    p = ab.plan(base, "auto", seeds=3)
    assert [a.name for a in p.arms] == ["base", "optim-lr", "reg-ema-decay"]
    assert p.arms[1].reverts == {"optim.lr": 2e-3} and p.arms[2].reverts == {"reg.ema_decay": 0.0}
    assert {u["key"] for u in p.unaffordable} == {"sched.epochs", "data.train_size"}
    assert len(p.est_s) == 2 + 3 + 3  # the base run is the base arm's first seed
    assert all(v > 0 for v in p.est_s.values())


def test_a_plan_over_the_budget_is_refused_with_its_estimate(base, capsys):
    with pytest.raises(ConfigError, match=r"needs about [\d.]+ min .* --budget is 0.5 min"):
        ab.plan(base, "optim.lr", seeds=3, budget_min=0.5)
    assert main(["ablate", str(base), "--keys", "optim.lr", "--budget", "0.5"]) == 2
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        ab.plan(base, "optim.l")


def test_effects_are_ranked_with_intervals_and_an_unresolved_one_says_so(base):
    calls = []
    p = ab.plan(base, "auto", seeds=3, joint=True)
    result = ab.run_campaign(p, trainer=_stand_in(calls), progress=False)
    assert len(calls) == 2 + 3 + 3 + 3
    first, second = result["effects"]
    assert first["keys"] == ["optim.lr"] and first["final"]["effect"] == pytest.approx(20.0)
    assert first["final"]["resolved"] and first["final"]["lo"] > 0
    assert second["keys"] == ["reg.ema_decay"] and not second["final"]["resolved"]
    assert "not resolved at n = 3 + 3" in ab.sentence(second)
    assert result["joint"]["final"]["effect"] == pytest.approx(20.0)
    assert result["joint"]["sum_of_singles"] == pytest.approx(20.0)
    on_disk = json.loads((base / ABLATION_DIR / ABLATION).read_text())
    assert on_disk["effects"][0]["arm"] == "optim-lr" and (base / ABLATION_DIR / "effects.png").is_file()


def test_an_interrupted_campaign_continues_where_it_stopped_to_the_same_result(base, tmp_path):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(base, other)
    whole = ab.run_campaign(ab.plan(other, "auto", seeds=3), trainer=_stand_in([]), progress=False)
    calls = []
    assert ab.run_campaign(ab.plan(base, "auto", seeds=3), trainer=_stand_in(calls, interrupt_at=4),
                           progress=False) is None
    again = []
    p = ab.plan(base, "auto", seeds=3)
    assert len(p.est_s) == 8 - 3  # three finished before the interruption are read, not trained again
    resumed = ab.run_campaign(p, trainer=_stand_in(again), progress=False)
    assert again[0] == calls[-1]  # the interrupted run first
    strip = lambda r: json.dumps({k: v for k, v in r.items() if k != "base_run"}, sort_keys=True)  # noqa: E731
    assert strip(resumed) == strip(whole)


def test_the_report_says_what_each_deviation_cost(base, tmp_path):
    ab.run_campaign(ab.plan(base, "auto", seeds=3), trainer=_stand_in([]), progress=False)
    assert main(["report", str(base), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## What each deviation cost at this scale" in md and "| optim.lr | 2e-05 -> 0.002 | +20.00 |" in md


def test_a_watched_loop_is_pointed_to_train_model(tmp_path):
    rd = tmp_path / "w"
    rd.mkdir()
    write_json(rd / "config.json", {"name": "watch"})
    write_json(rd / "loop.json", {"facts": {}})
    with pytest.raises(ConfigError, match="train --model"):
        ab.plan(rd)


@pytest.mark.slow
def test_a_real_campaign_on_shapes10_ranks_the_costly_deviation_and_resumes_a_killed_run(tmp_path, capsys):
    """The Trainer, really: 3 seeds per arm; the lr 100x below the recipe's costs top-1 beyond seed noise, the
    EMA that is never evaluated changes nothing; a run killed by SIGINT in the middle is resumed from its
    checkpoint and the campaign ends with the same numbers as one never killed."""
    from reproscope.launch import train
    from reproscope.train.callbacks import Callback
    rd = tmp_path / "base"
    train(_recipe(**{"run.ckpt_every": 2}), run_dir=rd)

    class KillAt(Callback):
        def __init__(self, step):
            self.step = step

        def on_step_start(self, trainer, step):
            if step == self.step:
                os.kill(os.getpid(), signal.SIGINT)

    calls = []

    def killing(recipe, run_dir, spec):
        calls.append(run_dir)
        cb = [KillAt(3)] if len(calls) == 2 else []
        t, _ = train(recipe, run_dir=run_dir, resume="auto", callbacks=cb)
        return t.signal is None

    p = ab.plan(rd, "auto", seeds=3, joint=True)
    assert ab.run_campaign(p, trainer=killing, progress=False) is None
    assert main(["ablate", str(rd), "--all"]) == 0
    result = json.loads((rd / ABLATION_DIR / ABLATION).read_text())
    lr = next(e for e in result["effects"] if e["keys"] == ["optim.lr"])
    ema = next(e for e in result["effects"] if e["keys"] == ["reg.ema_decay"])
    assert result["effects"][0] is not None and result["effects"][0]["keys"] == ["optim.lr"]
    assert lr["final"]["resolved"] and lr["final"]["lo"] > 0
    assert ema["final"]["effect"] == pytest.approx(0.0) and not ema["final"]["resolved"]
    assert result["joint"]["sum_of_singles"] == pytest.approx(lr["final"]["effect"] + ema["final"]["effect"])
    # the run killed at step 3 and resumed ends where the same seed ends uninterrupted
    killed = Path(calls[1])
    twin = tmp_path / "twin"
    seed = json.loads((killed / "config.json").read_text())["run"]["seed"]
    train(apply_overrides(_recipe(**{"run.ckpt_every": 2}), {"run.seed": seed}), run_dir=twin)
    a = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (twin / "metrics.jsonl").read_text().splitlines()]
    assert [r["top1"] for r in a if r.get("kind") == "val"] == [r["top1"] for r in b if r.get("kind") == "val"]
