import json

import pytest
import torch

from reproscope.config import apply_overrides
from reproscope.train.run import train
from reproscope.train.rundir import read_metrics


def test_one_epoch_smoke_run(tiny_recipe, tmp_path):
    r = apply_overrides(tiny_recipe, {"sched.epochs": 1})
    trainer, metrics = train(r, run_dir=tmp_path / "run")
    rd = tmp_path / "run"
    assert set(metrics) == {"top1", "top5", "loss"} and 0 <= metrics["top1"] <= 100
    assert json.loads((rd / "config.json").read_text())["name"] == "quickstart"
    env = json.loads((rd / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and "git_commit" in env
    recs = read_metrics(rd)
    assert any(r["kind"] == "val" for r in recs)
    train_recs = [r for r in recs if r["kind"] == "train" and "loss" in r]
    assert train_recs and all(k in train_recs[0] for k in ("loss", "lr", "grad_norm", "img_per_s"))
    assert (rd / "last.pt").is_file() and (rd / "best.pt").is_file()
    assert not list(rd.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_tensorboard_scalars_read_back(tiny_recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train(apply_overrides(tiny_recipe, {"sched.epochs": 1}), run_dir=tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for t in ("train/loss", "train/lr", "train/grad_norm", "train/img_per_s", "train/epoch_time_s",
              "val/top1", "val/top5", "val/loss"):
        assert t in tags, (t, tags)
    assert len(acc.Scalars("train/loss")) >= 2


def test_resume_continues_at_same_step_and_lr(tiny_recipe, tmp_path):
    # uninterrupted: 2 epochs
    full, _ = train(tiny_recipe, run_dir=tmp_path / "full")
    # interrupted: 1 epoch, then resume the same run dir with 2 epochs
    part, _ = train(apply_overrides(tiny_recipe, {"sched.epochs": 1}), run_dir=tmp_path / "part")
    assert part.step == part.steps_per_epoch
    ckpt = torch.load(tmp_path / "part" / "last.pt", weights_only=False)
    assert ckpt["step"] == part.steps_per_epoch
    resumed, _ = train(tiny_recipe, resume="auto", run_dir=tmp_path / "part", overrides=["sched.epochs=2"])
    assert resumed.step == full.step
    # the lr after resuming is the uninterrupted run's lr at that step
    lrs_full = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "full") if "lr" in r}
    lrs_res = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "part") if "lr" in r}
    common = [s for s in lrs_res if s > part.steps_per_epoch]
    assert common and all(lrs_res[s] == pytest.approx(lrs_full[s], rel=1e-12) for s in common)
    for a, b in zip(full.orig_model.parameters(), resumed.orig_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_existing_run_dir_is_refused(tiny_recipe, tmp_path):
    from reproscope.train.rundir import RunDirError
    train(apply_overrides(tiny_recipe, {"sched.epochs": 1}), run_dir=tmp_path / "run")
    with pytest.raises(RunDirError, match="--resume auto"):
        train(tiny_recipe, run_dir=tmp_path / "run")


def test_grad_accumulation_matches_big_batch(tiny_recipe, tmp_path):
    base = {"aug.hflip": 0.0, "aug.crop_pad": 0, "sched.epochs": 1, "run.deterministic": True}
    a, _ = train(apply_overrides(tiny_recipe, {**base, "data.batch_size": 32}), run_dir=tmp_path / "a")
    b, _ = train(apply_overrides(tiny_recipe, {**base, "data.batch_size": 16, "optim.accum_steps": 2}),
                 run_dir=tmp_path / "b")
    assert a.step == b.step
    for p, q in zip(a.orig_model.parameters(), b.orig_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
