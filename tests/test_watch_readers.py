"""A watched loop read by every command that reads runs: one test per case that broke on loops nobody here
wrote (a plain AdamW loop without evaluation, a NaN in a model's own forward code, a non-finite step that
ends the loop, dropout in a replay, deliberate reduced-scale choices, two watched runs compared, a paper
key for ``against=``, the no-decay rule, one vocabulary of run files)."""

from __future__ import annotations

import ast
import json
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import reproscope
from reproscope import runfiles
from reproscope.cli import main
from reproscope.config import ConfigError
from reproscope.instrument.loop_audit import audit, recipe_facts, resolve_against
from reproscope.recipes import get_recipe
from reproscope.report.compare import config_diff
from reproscope.report.report import build_blocks, setup_facts
from reproscope.report.runs import group_runs, load_run
from reproscope.runfiles import NOT_OBSERVED

NET = """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self, num_classes=10, fault="none", p=0.0):
            super().__init__()
            self.fault = fault
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.drop = nn.Dropout(p)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            out = self.fc(self.drop(F.relu(self.conv(x)).mean((2, 3))))
            if self.fault == "after-fc":  # the model's own code after its last submodule
                out = out / torch.zeros_like(out) * 0
            if self.fault == "dropout-draw":  # non-finite exactly when this step's draw says so
                out = out / (torch.rand(()) > 0.5).float()
            return out

    class DrawNet(Net):  # the replay rebuilds the class with its defaults: the fault must be one of them
        def __init__(self, num_classes=10):
            super().__init__(num_classes, fault="dropout-draw", p=0.2)
"""


def _net(tmp_path, cls="Net", **kw):
    p = tmp_path / "usernet.py"
    p.write_text(textwrap.dedent(NET))
    import importlib.util
    spec = importlib.util.spec_from_file_location("usernet", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, cls)(**kw)


def _plain_loop(model, run_dir, steps=6, evaluate=False, stop_on_nan=False, **kw):
    """A user's plain AdamW loop at a constant lr: no scheduler, by default no evaluation."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    done = 0
    with reproscope.watch(model, opt, run_dir=run_dir, tensorboard=False, **kw) as w:
        for _ in range(steps):
            x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            ok = w.step(loss, targets=y)
            done += 1
            if ok:
                opt.step()
            opt.zero_grad()
            if not ok and stop_on_nan:
                break
        if evaluate:
            model.eval()
            w.evaluate(top1=10.0)
    return done


def test_not_observed_is_a_value_that_prints_and_refuses_arithmetic():
    v = NOT_OBSERVED
    assert str(v) == f"{v:.2f}" == repr(v) == "not observed" and v is runfiles.NotObserved()
    for op in (lambda: v / 2.0, lambda: 3 * v, lambda: v < 1, lambda: bool(v), lambda: float(v)):
        with pytest.raises(TypeError, match="not observed"):
            op()
    assert runfiles.read_value("not observed") is v and runfiles.observed(0) and not runfiles.observed(v)


def test_report_of_the_simplest_watched_loop(tmp_path, capsys):
    run = tmp_path / "plain"
    steps = _plain_loop(_net(tmp_path), run, steps=7)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0  # was a TypeError (str / float)
    f = setup_facts(load_run(run))
    assert f["trained_by"] == "watch" and f["steps"] == steps == 7 and f["ending"] == "finished"
    assert f["epochs"] is NOT_OBSERVED and f["normalisation"] is NOT_OBSERVED and f["eval_mode"] is NOT_OBSERVED
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "reproscope's Trainer" not in md and "training set's channel mean" not in md


def test_the_setup_states_each_variants_values_and_names_them_shortly(tmp_path):
    """Three watched runs, two variants: cells per variant, labels of at most three settings, ImageNet's
    mean read from data=, and a runs column in the deviation log."""
    import torchvision.transforms.v2 as T
    tf = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    from watch_matrix import _TensorImages
    ds = _TensorImages(torch.randint(0, 255, (32, 3, 8, 8), dtype=torch.uint8), torch.arange(32) % 10, tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
    runs = []
    for i, (lr, seed) in enumerate(((1e-3, 0), (1e-3, 1), (5e-3, 0))):
        torch.manual_seed(seed)
        model = _net(tmp_path)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        with reproscope.watch(model, opt, run_dir=tmp_path / f"r{i}", against="quickstart", data=loader,
                              config={"lr": lr, "seed": seed, **{f"k{j}": j * (i == 2) for j in range(6)}},
                              tensorboard=False) as w:
            for x, y in loader:
                F.cross_entropy(model(x), y).backward()
                if w.step(F.cross_entropy(model(x), y).detach(), targets=y):
                    opt.step()
                opt.zero_grad()
        runs.append(load_run(tmp_path / f"r{i}"))
    groups = group_runs(runs)
    assert sorted(len(g.runs) for g in groups) == [1, 2]  # the seed is a repeat
    for g in groups:
        shown = g.label.split("[", 1)[1] if "[" in g.label else ""
        assert shown.count("=") <= 3, g.label  # at most three settings named, then "+N more"
    f = setup_facts(runs[0])
    assert [round(v, 3) for v in f["normalisation"]["mean"]] == [0.485, 0.456, 0.406]
    blocks = build_blocks(groups, tmp_path / "rep", "reproscope report")
    setup = next(b for i, b in enumerate(blocks) if b[0] == "table" and blocks[i - 1][1] == "Setup: paper vs ours")
    cells = {r[0]: r[2] for r in setup[2]}
    assert "reproscope.watch" in cells["trained by"] and "0.485" in cells["normalisation"]
    log = next(b for b in blocks if b[0] == "table" and b[1][0] == "field")
    assert log[1][-1] == "runs"  # which variant each deviation belongs to
    lr_row = next(r for r in log[2] if r[0] == "optim.lr" and r[2] == "0.005")
    assert lr_row[-1] == next(g.label for g in groups if len(g.runs) == 1)


def test_a_nan_made_after_the_last_submodule_is_born_in_the_models_forward(tmp_path):
    run = tmp_path / "after-fc"
    _plain_loop(_net(tmp_path, fault="after-fc"), run, steps=2, stop_on_nan=True)
    ev = next(e for e in load_run(run).events if e["type"] == "nonfinite")
    assert ev["phase"] == "forward" and ev["between"] == ["fc", "<output>"] and ev["module_type"] == "Net"


def test_a_nonfinite_step_says_what_was_done_and_the_readers_say_where_the_loop_stopped(tmp_path, caplog, capsys):
    run = tmp_path / "stop"
    with caplog.at_level("WARNING", logger="reproscope"):
        done = _plain_loop(_net(tmp_path, fault="after-fc"), run, steps=5, stop_on_nan=True)
    assert done == 1 and "not applied" in caplog.text
    r = load_run(run)
    assert r.ending == {"how": "stopped-nonfinite", "step": 1, "reason": "stopped at step 1 (non-finite loss)"}
    assert not r.complete and setup_facts(r)["epochs"] is NOT_OBSERVED
    assert main(["audit", str(run), "--against", "quickstart"]) in (0, 1)
    dev = json.loads((run / "deviations.json").read_text())
    assert dev["ending"]["how"] == "stopped-nonfinite"
    assert not any(d["key"] in ("sched.epochs", "sched.min_lr", "sched.decay") for d in dev["deviations"])


def test_replay_of_a_watched_loop_restores_the_steps_random_draws(tmp_path, capsys):
    """The fault happens exactly when this step's random draw says so: only the step's RNG state replays it."""
    run = tmp_path / "draw"
    torch.manual_seed(3)
    _plain_loop(_net(tmp_path, cls="DrawNet"), run, steps=20, stop_on_nan=True)
    ev = next(e for e in load_run(run).events if e["type"] == "nonfinite")
    assert ev["phase"] == "forward" and ev["between"][1] == "<output>"  # the in-loop replay reproduced it
    capsys.readouterr()
    assert main(["diagnose", "replay", str(Path(ev["reproducer"]))]) == 1
    out = capsys.readouterr().out
    assert "not restored" not in out and "finite everywhere" not in out


def test_replay_says_which_random_state_it_could_not_restore(tmp_path, capsys):
    run = tmp_path / "draw"
    torch.manual_seed(3)
    _plain_loop(_net(tmp_path, cls="DrawNet"), run, steps=20, stop_on_nan=True)
    rep = next(run.glob("nonfinite-step*.pt"))
    data = torch.load(rep, weights_only=True)
    data["rng"] = None  # a reproducer that holds no random state
    torch.save(data, rep)
    capsys.readouterr()
    main(["diagnose", "replay", str(rep)])
    assert "not restored: every random state" in capsys.readouterr().out


def test_audit_compares_what_takes_effect():
    r = get_recipe("dyt-vit_base-paper")
    p = recipe_facts(r)
    assert r.aug.randaug_n > 0 and p["aug.color_jitter"] == 0.0  # timm: no colour jitter under RandAugment
    facts = {"aug.randaug_n": r.aug.randaug_n, "aug.randaug_m": r.aug.randaug_m, "aug.randaug_mstd": 0.0,
             "aug.color_jitter": 0.0, "sched.min_lr": r.sched.min_lr, "optim.lr": r.optim.lr / 4}
    rows = {d["key"]: d for d in audit(facts, r)["deviations"]}
    assert "aug.color_jitter" not in rows and "sched.min_lr" not in rows  # same absolute floor: no deviation
    assert rows["aug.randaug_mstd"]["value"] == 0.0 and rows["aug.randaug_mstd"]["parent"] == r.aug.randaug_mstd


def test_declared_choices_carry_their_reason_and_are_not_mistakes(tmp_path, capsys):
    run = tmp_path / "declared"
    reasons = {"sched.warmup_epochs": "no warmup: 6 steps on CPU", "reg.ema_decay": "no EMA at this scale",
               "sched.decay": "constant lr on purpose"}
    _plain_loop(_net(tmp_path), run, steps=6, evaluate=True, against="dyt", deviations=reasons)
    dev = json.loads((run / "deviations.json").read_text())
    declared = {d["code"]: d for d in dev["deviations"] if d["declared"]}
    assert {"no-warmup", "ema-missing", "sched-shape"} <= set(declared)
    assert declared["no-warmup"]["reason"] == reasons["sched.warmup_epochs"] and declared["no-warmup"]["consequence"]
    assert not any(d["mistake"] for d in declared.values())
    assert dev["parent"] == "dyt-vit_base-paper"  # a paper key is that paper's recipe
    # the same from a file, for a loop watched without them: the declared rows leave the exit status
    run2 = tmp_path / "undeclared"
    _plain_loop(_net(tmp_path), run2, steps=6, evaluate=True)
    f = tmp_path / "reasons.json"
    f.write_text(json.dumps(reasons))
    capsys.readouterr()
    before = main(["audit", str(run2), "--against", "dyt"])
    after_rows = None
    main(["audit", str(run2), "--against", "dyt", "--reasons", str(f)])
    after_rows = json.loads((run2 / "deviations.json").read_text())
    assert before == 1 and {d["code"] for d in after_rows["deviations"] if d["declared"]} >= {"no-warmup", "ema-missing"}
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert reasons["reg.ema_decay"] in (tmp_path / "rep" / "report.md").read_text()


def test_a_declared_key_that_is_no_key_is_refused_with_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'sched.warmup_epochs'"):
        reproscope.watch(_net(tmp_path), None, run_dir=tmp_path / "x", deviations={"sched.warmup_epoch": "why"})
    with pytest.raises(ConfigError, match="needs a reason"):
        reproscope.watch(_net(tmp_path), None, run_dir=tmp_path / "x", deviations={"sched.epochs": ""})


def test_against_takes_a_recipe_or_a_paper_key_and_paper_still_works(tmp_path):
    assert resolve_against("kat").name == "kat-kat_tiny-paper" and resolve_against("quickstart").name == "quickstart"
    with pytest.raises(ConfigError, match="neither a registered recipe nor a paper key"):
        resolve_against("dty")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = reproscope.watch(_net(tmp_path), None, run_dir=tmp_path / "old", paper="mambaout", tensorboard=False)
        w.close()
    assert w.against.name == "mambaout-mambaout_femto-paper" and any(c.category is DeprecationWarning for c in caught)


def test_compare_of_two_watched_runs_shows_what_the_audit_saw(tmp_path):
    model_a, model_b = _net(tmp_path), _net(tmp_path)
    _plain_loop(model_a, tmp_path / "a", steps=3, evaluate=True)
    opt_groups = None  # run b: evaluation in train mode
    opt = torch.optim.AdamW([p for p in model_b.parameters() if p.ndim > 1], lr=1e-3, weight_decay=0.05)
    opt.add_param_group({"params": [p for p in model_b.parameters() if p.ndim <= 1], "weight_decay": 0.0})
    with reproscope.watch(model_b, opt, run_dir=tmp_path / "b", tensorboard=False) as w:
        for _ in range(3):
            x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
            loss = F.cross_entropy(model_b(x), y)
            loss.backward()
            w.step(loss, targets=y)
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            model_b(torch.randn(4, 3, 8, 8))  # still in train mode
        w.evaluate(top1=10.0)
    assert opt_groups is None
    diff = {k: (a, b) for k, a, b in config_diff(load_run(tmp_path / "a"), load_run(tmp_path / "b"))}
    assert diff["eval.train_mode"] == (False, True)
    assert diff["optim.decayed_no_decay"][0] and diff["optim.decayed_no_decay"][1] == []


def test_the_no_decay_row_names_the_rule_each_parameter_falls_under(tmp_path):
    class WithPos(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(1, 4, 8))
            self.coef = nn.Parameter(torch.ones(8, 6))  # 2-D coefficients: decayed by the reference's rule
            self.fc = nn.Linear(8, 10)

        def forward(self, x):  # [B, 4, 8] -> [B, 10]
            return self.fc((x + self.pos).mean(1) * self.coef[:, 0])

    model = WithPos()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    with reproscope.watch(model, opt, run_dir=tmp_path / "r", tensorboard=False, against="quickstart") as w:
        loss = F.cross_entropy(model(torch.randn(8, 4, 8)), torch.randint(0, 10, (8,)))
        loss.backward()
        w.step(loss)
        opt.step()
    facts = json.loads((tmp_path / "r" / "loop.json").read_text())["facts"]
    assert facts["optim.decayed_no_decay_rules"] == {"fc.bias": "1-d", "pos": "position-embedding"}
    row = next(d for d in json.loads((tmp_path / "r" / "deviations.json").read_text())["deviations"]
               if d["code"] == "decay-on-1d-params")
    assert "coef" not in row["reason"] and "ndim <= 1" in row["reason"]


def test_run_files_are_named_once():
    """Every run-file name is spelled in ``reproscope.runfiles`` only; the rest import it."""
    names = {getattr(runfiles, n) for n in dir(runfiles) if n.isupper() and isinstance(getattr(runfiles, n), str)
             and getattr(runfiles, n).endswith((".json", ".jsonl"))}
    src = Path(runfiles.__file__).parent
    spelled = []
    for p in src.rglob("*.py"):
        if p.name == "runfiles.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{p.relative_to(src)}:{node.lineno} {node.value}")
    assert not spelled, spelled


# ----------------------------------------------------------------------------- from a new user's first day


def test_replay_of_a_model_built_with_other_arguments_says_to_pass_model_spec(tmp_path, capsys):
    run = tmp_path / "args"
    _plain_loop(_net(tmp_path, fault="after-fc"), run, steps=2, stop_on_nan=True)  # Net(fault=...): not its default
    rep = next(run.glob("nonfinite-step*.pt"))
    assert main(["diagnose", "replay", str(rep)]) == 0  # rebuilt with the defaults: finite, and it says so
    assert "NOT REPRODUCED" in capsys.readouterr().out
    torch.manual_seed(0)
    wide = _net(tmp_path, fault="after-fc")
    wide.conv, wide.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 10)  # a width the defaults do not build
    _plain_loop(wide, tmp_path / "wide", steps=2, stop_on_nan=True)
    rep = next((tmp_path / "wide").glob("nonfinite-step*.pt"))
    assert main(["diagnose", "replay", str(rep)]) == 2
    err = capsys.readouterr().err
    assert "model_spec=" in err and "Traceback" not in err


def test_reasons_given_to_audit_are_kept_by_the_next_audit(tmp_path):
    run = tmp_path / "r"
    _plain_loop(_net(tmp_path), run, steps=6, evaluate=True)
    f = tmp_path / "reasons.json"
    f.write_text(json.dumps({"sched.warmup_epochs": "no warmup at 6 steps"}))
    main(["audit", str(run), "--against", "dyt", "--reasons", str(f)])
    main(["audit", str(run), "--against", "dyt"])  # no --reasons this time
    dev = json.loads((run / "deviations.json").read_text())
    assert any(d["declared"] and d["code"] == "no-warmup" for d in dev["deviations"])


def test_a_declared_setting_the_stopped_loop_never_showed_keeps_its_reason(tmp_path):
    run = tmp_path / "stop"
    _plain_loop(_net(tmp_path, fault="after-fc"), run, steps=4, stop_on_nan=True, against="kat",
                deviations={"sched.epochs": "4 of the paper's 300 epochs"})
    dev = json.loads((run / "deviations.json").read_text())
    row = next(d for d in dev["deviations"] if d["key"] == "sched.epochs")
    assert row["declared"] and row["value"] == "not observed" and not row["mistake"]
    assert dev["declared_unused"] == []


def test_a_cosine_to_the_papers_floor_is_no_min_lr_deviation():
    r = get_recipe("kat-kat_tiny-paper")
    d = 28  # per-step cosine over 28 steps to r's floor: the last observed lr is one step short of it
    last = r.sched.min_lr + (1.8e-3 - r.sched.min_lr) * 0.5 * (1 + __import__("math").cos(__import__("math").pi * 27 / d))
    facts = {"optim.lr": 1.8e-3, "sched.min_lr": last, "sched.total_steps": 28, "sched.warmup_steps": 0,
             "sched.decay": "cosine"}
    assert not any(x["key"] == "sched.min_lr" for x in audit(facts, r)["deviations"])
    facts["sched.min_lr"] = 1.8e-4  # a floor at 10 % of the peak is another floor
    assert any(x["key"] == "sched.min_lr" for x in audit(facts, r)["deviations"])


def test_the_report_tells_a_consequence_from_a_reason_and_which_run_a_row_holds_for(tmp_path):
    runs = []
    for i, reasons in enumerate(({"sched.warmup_epochs": "none at 6 steps"}, None)):
        torch.manual_seed(0)
        _plain_loop(_net(tmp_path), tmp_path / f"s{i}", steps=6, evaluate=True, against="dyt", deviations=reasons,
                    config={"seed": i})
        runs.append(load_run(tmp_path / f"s{i}"))
    blocks = build_blocks(group_runs(runs), tmp_path / "rep", "reproscope report")
    log = next(b for b in blocks if b[0] == "table" and b[1][0] == "field")
    assert log[1][-1] == "runs"
    warm = [r for r in log[2] if r[0] == "sched.warmup_epochs"]
    assert sorted(r[-1] for r in warm) == ["s0", "s1"]
    assert any(r[3].startswith("not declared. Consequence:") for r in warm)
    assert any(r[3].startswith("none at 6 steps") for r in warm)


def test_a_watched_run_logs_its_last_step_and_the_git_commit_of_its_own_code(tmp_path):
    run = tmp_path / "r"
    _plain_loop(_net(tmp_path), run, steps=7)  # log_every 10: only step 1 would be logged
    r = load_run(run)
    assert [x["step"] for x in r.train] == [1, 7]
    assert "reproscope_commit" in r.env  # the user's code is not reproscope's: its commit is its own folder's
