"""Crash and resume, signals, checkpoint failures, and bad input that ends in a message."""

import errno
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reproscope.cli import main
from reproscope.config import ConfigError, apply_overrides
from reproscope.launch import train
from reproscope.train import checkpoint as ckpt_mod
from reproscope.train.checkpoint import CheckpointError, load_checkpoint

RUN = ["--set", "data.train_size=320", "--set", "data.val_size=50", "--set", "data.batch_size=32",
       "--set", "data.eval_batch_size=50", "--set", "sched.epochs=3", "--set", "model.patch_size=8",
       "--set", "run.ckpt_every=1", "--set", "run.keep_last=2", "--set", "run.deterministic=true",
       "--set", "run.threads=1", "--set", "instrument.probes=false", "--no-progress"]


def _cli(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reproscope", "train", "--run-dir", str(run_dir), *RUN, *extra]


def _final_params(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pt")["model"]


def _wait_for_step(run_dir: Path, step: int, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(int(p.stem[9:]) >= step for p in run_dir.glob("ckpt-step*.pt")):
            return
        if proc.poll() is not None:
            return
        time.sleep(0.005)
    raise TimeoutError(step)


@pytest.mark.slow
def test_sigkill_three_times_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_cli(ref), check=True, capture_output=True)
    run = tmp_path / "run"
    killed_at = []
    for step in (4, 15, 23):  # mid-epoch 1, mid-epoch 2, late epoch 3 (10 steps per epoch)
        args = _cli(run, "--resume", "auto") if run.exists() else _cli(run)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_step(run, step, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        killed_at.append(load_checkpoint(run / "last.pt")["step"])
    assert len(set(killed_at)) == 3
    done = subprocess.run(_cli(run, "--resume", "auto"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = _final_params(ref), _final_params(run)
    assert load_checkpoint(run / "last.pt")["step"] == 30
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_sigterm_sigint_checkpoint_and_exit_status(tmp_path, sig, code):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(run, "--set", "sched.epochs=50"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_step(run, 3, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert out.count("resume with:") == 1 and f"reproscope train --resume {run}" in out  # said once
    ck = load_checkpoint(run / "last.pt")
    assert 3 <= ck["step"] < 500


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    good = {"model": {"w": torch.ones(3)}, "step": 1}
    path = tmp_path / "last.pt"
    ckpt_mod.atomic_save(good, path)

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint .* is untouched"):
        ckpt_mod.atomic_save({"model": {}, "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_corrupt_checkpoint_refused_and_auto_falls_back(tiny_recipe, tmp_path, capsys):
    r = apply_overrides(tiny_recipe, {"run.ckpt_every": 3, "run.keep_last": 5})
    train(r, run_dir=tmp_path / "run")
    newest = sorted((tmp_path / "run").glob("ckpt-step*.pt"))[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # truncated
    (tmp_path / "run" / "last.pt").unlink()
    assert main(["train", "--resume", str(newest), "--set", "run.progress=false"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    trainer, _ = train(r, run_dir=tmp_path / "run", resume="auto")
    out = capsys.readouterr().out
    assert f"skipping {newest}" in out and "resuming" in out
    assert trainer.step == trainer.total_steps


@pytest.mark.parametrize("args, needle", [
    (["--set", "model.name=vit_tinny"], "did you mean 'vit_tiny'"),
    (["--recipe", "quickstrat"], "did you mean 'quickstart'"),
    (["--set", "precision.device=cuda"], "no usable CUDA device"),
    (["--set", "data.batch_size=abc"], "data.batch_size='abc': expected an integer"),
])
def test_bad_input_is_a_message(tmp_path, capsys, args, needle):
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = main(["train", "--run-dir", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err


def test_oom_at_first_step_suggests_a_batch_size(tiny_recipe, tmp_path, monkeypatch):
    from reproscope.train.trainer import Trainer
    tr = Trainer(tiny_recipe, tmp_path / "run", tensorboard=False)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tr.orig_model, "forward", oom)
    with pytest.raises(ConfigError, match=r"out of memory at step 1 with data.batch_size=32 .* try --set data.batch_size=16"):
        tr.fit()


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_extending_a_finished_run_warns_records_and_keeps_the_original_config(tmp_path, capsys):
    """The issue's input: a finished 3-epoch run resumed with sched.epochs=5."""
    import json

    from reproscope.cli import main
    from reproscope.train.rundir import read_metrics
    rd = tmp_path / "run"
    base = ["--no-progress", "--set", "data.train_size=256", "--set", "data.val_size=32", "--set", "data.batch_size=32",
            "--set", "run.threads=1", "--set", "run.log_every=1", "--set", "sched.warmup_epochs=1"]
    assert main(["train", "--run-dir", str(rd), "--set", "sched.epochs=3", *base]) == 0
    with open(rd / "metrics.jsonl", "a") as f:  # a row logged after the last checkpoint, as after a crash
        f.write(json.dumps({"kind": "train", "step": 99, "loss": 1.0}) + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(rd), "--set", "sched.epochs=5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "warning: resuming with changed settings (sched.epochs 3 -> 5); the lr at step 24 jumps" in out
    assert "dropped 1 metrics.jsonl rows logged after step 24" in out
    assert json.loads((rd / "config.json").read_text())["sched"]["epochs"] == 3
    devs = json.loads((rd / "deviations.json").read_text())["deviations"]
    assert any(d["key"] == "sched.epochs" and d["value"] == 5 and "from step 24" in d["reason"] for d in devs)
    steps = [r["step"] for r in read_metrics(rd) if r["kind"] == "train" and "loss" in r]
    assert len(steps) == len(set(steps)) == 40 and max(steps) == 40


def test_a_resume_keeps_skip_corrupt_and_no_progress(tmp_path, monkeypatch):
    """#33: ``--skip-corrupt`` and ``--no-progress`` given to a resume reach the resumed trainer's recipe
    (they were folded into the new recipe only, which a resume replaces with the saved one)."""
    import reproscope.launch as launch
    rd = tmp_path / "run"
    tiny = ["--set", "data.train_size=64", "--set", "data.val_size=32", "--set", "data.batch_size=32",
            "--set", "data.eval_batch_size=32", "--set", "sched.epochs=1", "--set", "model.patch_size=8",
            "--set", "run.threads=1", "--set", "instrument.probes=false"]
    assert main(["train", "--run-dir", str(rd), *tiny, "--set", "run.progress=true"]) == 0
    seen = []
    real = launch.train

    def spy(*a, **k):
        trainer, metrics = real(*a, **k)
        seen.append(trainer)
        return trainer, metrics

    monkeypatch.setattr(launch, "train", spy)
    assert main(["train", "--resume", str(rd), "--skip-corrupt", "--no-progress"]) == 0
    assert seen[0].recipe.data.skip_corrupt is True and seen[0].recipe.run.progress is False
