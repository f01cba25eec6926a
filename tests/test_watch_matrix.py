"""Every command that reads runs, on a generated matrix of user-written loops (``tests/watch_matrix.py``):
watch -> audit -> report -> note -> compare (neighbours) -> runs, and replay where a NaN was planted.
Each stated fact of the report's setup section (``report.setup_facts``: who trained it, steps, epochs or
the ending, batch, normalisation, evaluation mode, EMA, precision) is held to what the loop did; no
command raises; ``audit``'s exit status says whether it printed a likely mistake. The fast tier runs 8
loops, the slow tier 48 (another seed)."""

from __future__ import annotations

import json

import pytest
from watch_matrix import BATCH, DIMS, MEAN, matrix, run_loop

from reproscope.cli import main
from reproscope.report.compare import config_diff
from reproscope.report.report import setup_facts
from reproscope.report.runs import load_run
from reproscope.runfiles import NOT_OBSERVED


def _expected(spec: dict, t) -> dict:
    finished = t.ending == "finished"
    epochs = (t.evaluations if spec["evaluation"] != "none" else
              round(t.steps / t.steps_per_epoch, 2) if spec["data"] == "loader" else NOT_OBSERVED)
    evaluated = t.evaluations > 0
    return {"trained_by": "watch", "steps": t.steps, "ending": t.ending, "ending_step": t.ending_step,
            "epochs": epochs if finished else NOT_OBSERVED,
            "batch": BATCH // spec["accum"], "precision": spec["precision"],
            "normalisation": {"mean": list(MEAN)} if spec["data"] == "loader" else NOT_OBSERVED,
            "eval_mode": ({"eval-mode": "eval", "train-mode": "train"}[spec["evaluation"]] if evaluated
                          else NOT_OBSERVED),
            "eval_ema": (spec["ema"] == "averaged") if evaluated else NOT_OBSERVED}


def _check_facts(run, spec, truth):
    r = load_run(run)
    got, want = setup_facts(r), _expected(spec, truth)
    norm = got["normalisation"]
    got["normalisation"] = {"mean": [round(v, 6) for v in norm["mean"]]} if norm is not NOT_OBSERVED else norm
    assert {k: got[k] for k in want} == want, spec
    assert r.images_seen == truth.steps * BATCH  # batch x accumulation per step
    assert r.complete == (truth.ending == "finished")


def _through_every_reader(tmp_path, specs, capsys):
    runs = []
    for spec in specs:
        run = tmp_path / "runs" / f"loop{spec['index']:02d}"
        truth = run_loop(spec, run)
        runs.append(run)
        _check_facts(run, spec, truth)
        capsys.readouterr()
        rc = main(["audit", str(run)])
        out = capsys.readouterr().out
        mistakes = json.loads((run / "deviations.json").read_text())["mistakes"]
        assert rc == (1 if mistakes else 0) and ("(likely mistake)" in out) == bool(mistakes), spec
        assert f"{mistakes} likely mistake" in out
        assert json.loads((run / "deviations.json").read_text())["ending"]["how"] == truth.ending
        assert main(["report", str(run), "--out", str(tmp_path / "rep" / run.name)]) == 0
        md = (tmp_path / "rep" / run.name / "report.md").read_text()
        assert "the user's own loop (reproscope.watch)" in md and "reproscope's Trainer" not in md
        if truth.ending == "stopped-nonfinite":
            assert f"stopped at step {truth.ending_step} (non-finite loss)" in md
        if truth.ending == "interrupted":
            assert f"interrupted at step {truth.ending_step} (KeyboardInterrupt)" in md
        assert main(["note", str(tmp_path / "rep" / run.name / "report.md")]) == 0
        if spec["ending"] in ("nan-skipped", "nan-stop") and spec["accum"] == 1:  # the batch holds the NaN
            assert main(["diagnose", "replay", str(run / "nonfinite-step3.pt")]) == 1
            assert "not restored" not in capsys.readouterr().out  # every random state came back
    for (a, sa), (b, sb) in zip(zip(runs, specs), zip(runs[1:], specs[1:])):
        capsys.readouterr()
        assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
        diff = {k for k, _, _ in config_diff(load_run(a), load_run(b))}
        if sa["evaluation"] != sb["evaluation"] and "none" not in (sa["evaluation"], sb["evaluation"]) and \
                load_run(a).val and load_run(b).val:
            assert "eval.train_mode" in diff
        if (sa["optimizer"] in ("adamw", "sgd")) != (sb["optimizer"] in ("adamw", "sgd")):
            assert "optim.decayed_no_decay" in diff  # one decays 1-D parameters, the other does not
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    listed = capsys.readouterr().out
    assert all(r.name in listed for r in runs) and f"{len(runs)} runs" in listed


def test_the_matrix_covers_every_value_of_every_dimension():
    specs = matrix(8)
    for d, values in DIMS.items():
        assert {s[d] for s in specs} == set(values), d


def test_every_reader_reads_8_generated_loops_truthfully(tmp_path, capsys):
    _through_every_reader(tmp_path, matrix(8, seed=0), capsys)


@pytest.mark.slow
def test_every_reader_reads_48_generated_loops_truthfully(tmp_path, capsys):
    _through_every_reader(tmp_path, matrix(48, seed=1), capsys)
