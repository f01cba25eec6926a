"""reproscope.watch: the instruments in a plain, user-written training loop."""

import json
import os
import textwrap

import pytest
import torch
import torch.nn.functional as F

import reproscope
from reproscope.cli import main
from reproscope.config import InstrumentConfig

NET = """
    import torch
    import torch.nn as nn

    class SqrtAct(nn.Module):
        def forward(self, x):
            return torch.sqrt(x * 0.0) + x  # a finite forward; its backward is (0.5 / sqrt(0)) * 0 = nan

    class Net(nn.Module):
        def __init__(self, num_classes=10, fault="none"):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, 2, 1)
            self.act = SqrtAct() if fault == "backward" else nn.ReLU()
            self.head = nn.Linear(8, num_classes)
            if fault == "forward":
                with torch.no_grad():
                    self.head.weight[0, 0] = float("inf")

        def forward(self, x):
            return self.head(self.act(self.conv(x)).mean((2, 3)))
"""


def _load(tmp_path):
    p = tmp_path / "usernet.py"
    p.write_text(textwrap.dedent(NET))
    import importlib.util
    spec = importlib.util.spec_from_file_location("usernet", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _loop(model, run_dir, steps=6, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    results = []
    with reproscope.watch(model, opt, run_dir=run_dir, config={"lr": 1e-3}, **kw) as w:
        for _ in range(steps):
            x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            ok = w.step(loss, targets=y)
            results.append(ok)
            if ok:
                opt.step()
            opt.zero_grad()
        w.evaluate(top1=12.5, loss=2.3)
    return w, results


def test_a_clean_loop_gets_probes_and_metrics_and_leaves_no_hooks(tmp_path):
    mod = _load(tmp_path)
    model = mod.Net()
    w, ok = _loop(model, tmp_path / "run")
    assert all(ok) and w.step_count == 6
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 4]  # the Trainer's early probe schedule
    assert "conv" in stats[0]["layers"] and stats[-1]["params"]["conv.weight"]["update_ratio"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "val" and r["top1"] == 12.5 for r in rows)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    w.close()  # idempotent



def test_a_watched_run_is_a_run_directory_report_and_compare_read(tmp_path, capsys):
    mod = _load(tmp_path)
    _loop(mod.Net(), tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["batch_size"] == 8 and cfg["data"]["img_size"] == 16 and cfg["optim"]["lr"] == 1e-3
    assert cfg["sched"]["epochs"] == 1 and cfg["user_config"] == {"lr": 1e-3}
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "usernet.py:Net" in md and "12.50" in md
    assert main(["compare", str(tmp_path / "run"), str(tmp_path / "run"), "--out", str(tmp_path / "cmp")]) == 0


def test_forward_nan_is_located_and_replayed(tmp_path, capsys):
    mod = _load(tmp_path)
    w, ok = _loop(mod.Net(fault="forward"), tmp_path / "run", steps=2)
    assert ok == [False, False]
    out = capsys.readouterr().out
    assert "phase forward, module 'head'" in out
    rep = tmp_path / "run" / "nonfinite-step1.pt"
    torch.load(rep, weights_only=True)
    assert main(["diagnose", "replay", str(rep)]) == 1
    assert "phase forward, module 'head'" in capsys.readouterr().out


def test_backward_only_nan_is_located(tmp_path, capsys):
    mod = _load(tmp_path)
    w, ok = _loop(mod.Net(fault="backward"), tmp_path / "run", steps=1)
    assert ok == [False]
    assert "phase backward, module 'act'" in capsys.readouterr().out
    ev = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
          if '"nonfinite"' in line]
    assert ev and ev[0]["phase"] == "backward" and ev[0]["module"] == "act"


def test_a_grad_scaler_overflow_is_counted_not_reported(tmp_path, capsys):
    mod = _load(tmp_path)
    model = mod.Net()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with reproscope.watch(model, opt, run_dir=tmp_path / "run", scaler=scaler) as w:
        x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss * 1e35).backward()  # finite loss, gradients that overflow once scaled
        assert w.step(loss, targets=y)
        scaler.step(opt)
        scaler.update()
    assert w.scaler_skips == 1 and w.nonfinite_steps == []
    assert "NON-FINITE" not in capsys.readouterr().out


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_the_example_loop_runs_and_learns(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parents[1] / "examples" / "own_loop.py"
    out = subprocess.run([sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = [line for line in out.stdout.splitlines() if line.startswith("epoch 3")][0]
    assert float(last.split("top-1 ")[1].rstrip("%")) > 50
    assert (tmp_path / "runs" / "own-loop" / "stats.jsonl").is_file()
    dev = json.loads((tmp_path / "runs" / "own-loop" / "deviations.json").read_text())
    assert dev["mistakes"] == 0 and [d["key"] for d in dev["deviations"] if d["declared"]] == ["sched.epochs"]


@pytest.mark.parametrize("enabled", [True, False])  # watch probes whatever instrument.enabled says
def test_watch_on_a_compiled_model_keeps_the_instruments_out_of_its_graphs(tmp_path, enabled):
    """Hooks on the original module; probes and metrics as in eager; no hook left on exit. Dynamo
    traces a compiled module's hooks with it: the instruments' hooks must run eagerly, so no graph holds
    their code and their changing counters recompile nothing, and probe steps run uncompiled (traced, 12
    steps compiled 40 graphs and hit dynamo's recompile limit). A recording backend keeps dynamo's graphs
    without inductor's C++ compile; inductor with the instruments is test_instrument's compiled Trainer
    run and the GPU smoke."""
    mod = _load(tmp_path)
    model = mod.Net()
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=record)
    w, ok = _loop(compiled, tmp_path / "run", steps=12, instrument=InstrumentConfig(enabled=enabled))
    assert all(ok) and w.orig_model is model
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 4, 8] and "conv" in stats[0]["layers"]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    traced = [n.meta.get("stack_trace") or "" for g in graphs for n in g.graph.nodes]
    assert not [t for t in traced if "reproscope" in t], "instrument code traced into the model's graph"
    # probe steps (1, 2, 4, 8) run uncompiled, as in the Trainer; the others run one graph (two where a
    # torch version splits off the eager pre-hook)
    assert 1 <= len(graphs) <= 2, len(graphs)


DDP_LOOP = """
import os, sys, json
import torch, torch.nn.functional as F, torch.distributed as dist
sys.path.insert(0, {here!r})
import reproscope, usernet
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = usernet.Net()
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(rank)
with reproscope.watch(ddp, opt, run_dir={run!r}, config={{"world": 2}}) as w:
    assert w.orig_model is model
    for _ in range(6):
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        assert w.step(loss, targets=y)
        opt.step()
        opt.zero_grad()
    w.evaluate(top1=10.0)
assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_watch_under_ddp_two_processes(tmp_path):
    import subprocess
    import sys
    _load(tmp_path)  # writes usernet.py
    script = tmp_path / "ddp_loop.py"
    script.write_text(DDP_LOOP.format(here=str(tmp_path), run=str(tmp_path / "run")))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
                          str(script)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 4]  # rank 0 alone writes, statistics reduced over ranks
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["world_size"] == 2


def test_an_exception_inside_the_block_leaves_valid_files_and_no_hooks(tmp_path):
    mod = _load(tmp_path)
    model = mod.Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(RuntimeError, match="user bug"):
        with reproscope.watch(model, opt, run_dir=tmp_path / "run") as w:
            for i in range(3):
                x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
                F.cross_entropy(model(x), y).backward()
                w.step(F.cross_entropy(model(x), y).detach(), targets=y)
                opt.step()
                opt.zero_grad()
                if i == 2:
                    raise RuntimeError("user bug")
    for f in ("metrics.jsonl", "stats.jsonl"):
        lines = (tmp_path / "run" / f).read_text().splitlines()
        assert lines and all(json.loads(line) for line in lines)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["batch_size"] == 8
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_grad_norm_overflow_gets_the_trainers_code_in_a_watched_loop(tiny_recipe, tmp_path, capsys):
    """Logits x 1e20: every gradient finite, their norm overflows float32. The Trainer stops with code
    ``grad-norm-overflow`` and the largest gradients named; the watched loop gets the same decision (one guard)."""
    from reproscope.config import apply_overrides
    from reproscope.model import create_model
    from reproscope.train.trainer import Trainer
    codes = {}
    for loop in ("trainer", "watch"):
        torch.manual_seed(0)
        model = create_model("vit_quick", num_classes=10)
        model.head.register_forward_hook(lambda m, i, o: o * 1e20)
        if loop == "trainer":
            t = Trainer(apply_overrides(tiny_recipe, {"instrument.enabled": False}), tmp_path / loop, model=model,
                        tensorboard=False)
            t.fit()
            d = t.tripped
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            with reproscope.watch(model, opt, run_dir=tmp_path / loop, tensorboard=False) as w:
                x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                assert w.step(loss, targets=y) is False and w.stop_requested
            d = w.last_decision
        codes[loop] = (d.action, d.code, "head.weight" in [n for n, _ in d.findings["largest_grads"]])
    assert codes["trainer"] == codes["watch"] == ("stop", "grad-norm-overflow", True)
    out = capsys.readouterr().out
    assert "not reproducible" not in out and out.count("DIVERGED") == 2


def test_a_nan_report_records_an_input_of_any_shape(tmp_path, capsys):
    """Tabular input [B, 4]: the reproducer records it as it is (no image size is made up from it)."""
    class Tab(torch.nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.fc = torch.nn.Linear(4, num_classes)
            with torch.no_grad():
                self.fc.weight[0, 0] = float("nan")

        def forward(self, x):
            return self.fc(x)

    model = Tab()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with reproscope.watch(model, opt, run_dir=tmp_path / "run", tensorboard=False, model_spec=None) as w:
        x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert w.step(loss, targets=y) is False
    assert w.last_decision.code == "nonfinite"
    rep = torch.load(tmp_path / "run" / "nonfinite-step1.pt", weights_only=True)
    assert tuple(rep["batches"][0][0].shape) == (6, 4)
    assert "phase forward, module 'fc'" in capsys.readouterr().out
