"""The GPU benchmark scripts run (slowly) on CPU with tiny settings, so a broken script is caught here."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "datasets" / "imagenette"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vs_timm_tiny_step_benchmark(tmp_path):
    out = tmp_path / "vs_timm.json"
    assert _load("vs_timm").main(["--tiny", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["steps"]
    assert {r["side"] for r in rows} == {"timm", "ours"} and all(r["img_per_s"] > 0 for r in rows)
    assert "ratio_vs_timm_same_compile" in next(r for r in rows if r["side"] == "ours")


@pytest.mark.slow
@pytest.mark.skipif(not IMAGENETTE.exists(), reason="needs ../shared/datasets/imagenette")
def test_vs_timm_tiny_end_to_end(tmp_path):
    out = tmp_path / "vs_timm.json"
    assert _load("vs_timm").main(["--tiny", "--end-to-end", "--workers", "0", "--e2e-img", "32",
                                  "--data-root", str(IMAGENETTE), "--json", str(out)]) == 0
    e2e = json.loads(out.read_text())["end_to_end"]
    assert [r["pipeline"] for r in e2e] == ["timm pipeline", "reproscope cached device path"]


@pytest.mark.slow
def test_gpu_session_cpu_smoke(tmp_path):
    """benchmarks/gpu_session.py --cpu-smoke: every stage runs through the same code on CPU, and the
    files a GPU session brings back are there (issue 19; docs/gpu.md)."""
    out = tmp_path / "out"
    rc = _load("gpu_session").main(["--out", str(out), "--cpu-smoke", "--budget-s", "900"])
    session = json.loads((out / "session.json").read_text())
    assert {s["stage"]: s["status"] for s in session["stages"]} == {  # e2e: no --data-root given here
        "smoke": "ok", "speed": "ok", "overhead": "ok", "data": "ok", "e2e": "skipped", "campaign": "ok"}, session
    assert rc == 0
    smoke = json.loads((out / "smoke.json").read_text())["cases"]
    assert all(c["ok"] for c in smoke), [c for c in smoke if not c["ok"]]
    assert any(c["case"] == "tripwire names a planted NaN" for c in smoke)
    assert {p.name for p in out.iterdir()} <= {"session.json", "session.log", "smoke.json", "vs_timm.json",
                                              "vs_timm_e2e.json", "campaign.tar.gz", "environment.json"}
    import tarfile
    with tarfile.open(out / "campaign.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("report/report.md") for n in names) and any(n.endswith("metrics.jsonl") for n in names)


def test_gpu_session_relative_out_reaches_every_stage(tmp_path, monkeypatch):
    """#33: ``--out DIR`` relative to where the session starts names the same folder for every stage,
    though the stages run in the repository root (it failed with FileNotFoundError 'smoke/smoke.json').
    The stages are stood in for: each checks that the folders its --out/--json name exist from its cwd."""
    import subprocess
    gs = _load("gpu_session")
    seen, real = [], subprocess.run

    def stage(cmd, *a, cwd=None, **kw):
        if cwd != gs.ROOT:  # not a stage (environment() asks git)
            return real(cmd, *a, cwd=cwd, **kw)
        targets = [Path(cwd, cmd[i + 1]) if cmd[i] == "--out" else Path(cwd, cmd[i + 1]).parent
                   for i in range(len(cmd) - 1) if cmd[i] in ("--out", "--json")]
        seen.extend(targets)
        return subprocess.CompletedProcess(cmd, 0 if all(t.is_dir() for t in targets) else 1, stdout="")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gs.subprocess, "run", stage)
    assert gs.main(["--out", "rel/out", "--cpu-smoke", "--budget-s", "900"]) == 0
    assert seen and all(t == tmp_path / "rel" / "out" for t in seen)
    stages = json.loads((tmp_path / "rel" / "out" / "session.json").read_text())["stages"]
    assert {s["stage"]: s["status"] for s in stages}["smoke"] == "ok"
