import json

import pytest
import torch
from conftest import TINY, assert_weights_match

from reproscope.config import apply_overrides
from reproscope.launch import train
from reproscope.model import create_model
from reproscope.recipes import get_recipe
from reproscope.train.rundir import read_metrics
from reproscope.train.trainer import Trainer


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


def test_tensorboard_opens_on_train_and_val_with_the_probes_detail_in_its_own_run(tiny_recipe, tmp_path):
    """#49: TensorBoard's Time Series page sorts tag groups by name and opens the first two. The run's
    ``tb/`` holds the headline (train loss, lr, grad norm; the val metrics) as the only groups not under
    "~", which sorts after every letter; the probes' per-layer scalars and histograms are in ``tb/detail``
    (a run of its own), all under "~" (their histograms too: test_instrument)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train(apply_overrides(tiny_recipe, {"sched.epochs": 1}), run_dir=tmp_path / "run")
    tb = tmp_path / "run" / "tb"
    main = EventAccumulator(str(tb), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    main.Reload()
    kinds = main.Tags()
    scalars = set(kinds["scalars"])
    assert {t for t in scalars if not t.startswith("~")} == {"train/loss", "train/lr", "train/grad_norm",
                                                            "val/loss", "val/top1", "val/top5"}
    assert {t.split("/", 1)[0] for t in scalars if t.startswith("~")} == {"~train", "~val", "~hparam"}
    assert {"~train/img_per_s", "~train/epoch_time_s", "~hparam/final_top1"} <= scalars
    assert len(main.Scalars("train/loss")) >= 2
    assert not kinds["histograms"] and not kinds["images"]
    assert max("~", "train", "val", "z") == "~"  # what TensorBoard compares: character codes
    detail = EventAccumulator(str(tb / "detail"), size_guidance={"scalars": 0, "histograms": 0})
    detail.Reload()
    groups = {t.split("/", 1)[0] for kind in ("scalars", "histograms") for t in detail.Tags()[kind]}
    assert groups == {"~layers", "~params", "~nonfinite"}, groups  # histograms: test_instrument
    assert "~layers/blocks.0.mlp.fc1/std" in detail.Tags()["scalars"]


def test_detail_writer_puts_every_tag_under_the_aside_and_makes_its_folder_at_the_first(tmp_path):
    """The per-layer detail's writer (probes, paper-figure images): no folder for a run that writes no
    detail; scalars, histograms and images all read back under "~"."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from reproscope.instrument.probe import histogram
    from reproscope.train.rundir import DetailWriter

    with DetailWriter(tmp_path / "detail") as w:
        assert not (tmp_path / "detail").exists()
        w.add_scalar("layers/fc/std", 1.5, 3)
        w.add_histogram_raw("grads/fc.weight", global_step=3, **histogram(torch.randn(100)))
        w.add_image("figures/curves", np.zeros((4, 4, 3), dtype=np.uint8), 3, dataformats="HWC")
    acc = EventAccumulator(str(tmp_path / "detail"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert (tags["scalars"], tags["histograms"], tags["images"]) == (
        ["~layers/fc/std"], ["~grads/fc.weight"], ["~figures/curves"])
    assert [(e.step, e.value) for e in acc.Scalars("~layers/fc/std")] == [(3, 1.5)]


class StopAt:
    """Callback: ask the trainer to stop once it reaches ``step`` (a clean interruption)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, **_):
        if trainer.step == self.step:
            trainer.request_stop(f"test stop at {self.step}")


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_resume_continues_at_same_step_and_lr(tiny_recipe, tmp_path):
    full, _ = train(tiny_recipe, run_dir=tmp_path / "full")
    part, _ = train(tiny_recipe, run_dir=tmp_path / "part", callbacks=[StopAt(13)])  # mid-epoch 2
    assert part.step == 13
    ckpt = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert ckpt["step"] == 13
    resumed, _ = train(tiny_recipe, resume="auto", run_dir=tmp_path / "part")
    assert resumed.step == full.step == 20
    # the lr after resuming is the uninterrupted run's lr at that step
    lrs_full = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "full") if "lr" in r}
    lrs_res = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "part") if "lr" in r}
    common = [s for s in lrs_res if s > 13]
    assert common and all(lrs_res[s] == lrs_full[s] for s in common)
    # same data order, augmentation and lr: the final weights are identical on CPU
    for a, b in zip(full.orig_model.parameters(), resumed.orig_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_a_resumed_epoch_says_its_time_covers_part_of_it(tiny_recipe, tmp_path, capsys):
    """#18: after a resume mid-epoch, the epoch line and metrics say how many steps the time covers,
    and the report's device-hours count time per step, not a part-epoch as a whole one."""
    from reproscope.report.runs import load_run
    train(tiny_recipe, run_dir=tmp_path / "part", callbacks=[StopAt(13)])  # mid-epoch 2 (10 steps an epoch)
    capsys.readouterr()
    train(tiny_recipe, resume="auto", run_dir=tmp_path / "part")
    assert "for 7 of its 10 steps)" in capsys.readouterr().out
    rows = [r for r in read_metrics(tmp_path / "part") if "epoch_time_s" in r]
    assert [r["epoch_steps"] for r in rows] == [10, 7]
    run = load_run(tmp_path / "part")
    per_step = sorted(t / n for t, n in zip(run.epoch_times, run.epoch_steps))
    assert run.device_hours == pytest.approx(sum(per_step) / 2 * 17 / 3600)


def test_existing_run_dir_is_refused(tiny_recipe, tmp_path):
    from reproscope.train.rundir import RunDirError
    train(apply_overrides(tiny_recipe, {"sched.epochs": 1}), run_dir=tmp_path / "run")
    with pytest.raises(RunDirError, match="--resume auto"):
        train(tiny_recipe, run_dir=tmp_path / "run")


class _Float64(torch.nn.Module):
    """The model in float64, fed float64 inputs, so comparisons test arithmetic, not rounding."""

    def __init__(self, model):
        super().__init__()
        self.model = model.double()

    def forward(self, x):
        return self.model(x.double())


class _GradsOfStep1:
    def __init__(self):
        self.grads = None

    def on_after_backward(self, trainer):
        if trainer.step == 0:
            self.grads = {n: p.grad.detach().clone() for n, p in trainer.orig_model.named_parameters()}


def test_grad_accumulation_matches_big_batch(tiny_recipe, tmp_path):
    """Batch 32 vs batch 16 x 2 accumulation: the same images, the same summed gradient before the
    optimizer step (float64, to 1e-10), the same loss trajectory (logged in float32), and the same weights after one
    epoch except where the true gradient is zero (conftest.zero_true_gradient)."""
    base = {"aug.hflip": 0.0, "aug.crop_pad": 0, "sched.epochs": 1, "run.deterministic": True,
            "run.log_every": 1, "instrument.enabled": False}
    runs = {}
    for name, over in {"big": {"data.batch_size": 32}, "accum": {"data.batch_size": 16, "optim.accum_steps": 2}}.items():
        torch.manual_seed(0)
        model = _Float64(create_model("vit_quick", num_classes=10, patch_size=8))
        grab = _GradsOfStep1()
        t = Trainer(apply_overrides(tiny_recipe, {**base, **over}), tmp_path / name, model=model,
                    callbacks=[grab], tensorboard=False)
        batches = torch.cat([x for x, _ in t.step_batches(0)])
        t.fit()
        runs[name] = (t, grab.grads, batches)
    (a, ga, xa), (b, gb, xb) = runs["big"], runs["accum"]
    assert a.step == b.step == 10 and torch.equal(xa, xb)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
    la = [r["loss"] for r in read_metrics(tmp_path / "big") if r["kind"] == "train" and "loss" in r]
    lb = [r["loss"] for r in read_metrics(tmp_path / "accum") if r["kind"] == "train" and "loss" in r]
    assert len(la) == len(lb) == 10 and la == pytest.approx(lb, rel=1e-6)  # logged as float32
    assert_weights_match(a.orig_model.state_dict(), b.orig_model.state_dict(), rtol=1e-6, atol=1e-8)


def test_end_of_run_summary_is_printed_and_written(tiny_recipe, tmp_path, capsys):
    """#18: best and final top-1 with their epochs, steps, images, time, events, where things are."""
    from reproscope.cli import main
    args = ["train", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    for k, v in {**TINY, "instrument.enabled": False}.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    vals = [r for r in read_metrics(tmp_path / "run") if r.get("kind") == "val"]
    assert s["final_top1"] == vals[-1]["top1"] and s["best_top1"] == max(v["top1"] for v in vals)
    assert s["final_epoch"] == 2 and s["steps"] == 20 and s["images_seen"] == 20 * 32 and s["img_per_s"] > 0
    assert s["events"] == {} and s["run_dir"] == str(tmp_path / "run")
    out = capsys.readouterr().out
    assert f"best {s['best_top1']:.2f}% (epoch {s['best_epoch']})" in out and "events: none" in out
    assert f"tensorboard --logdir {tmp_path / 'run'} " in out  # the run itself, not all of its parent folder


def test_max_steps_is_a_smoke_run_with_one_eval_and_one_checkpoint(tiny_recipe, tmp_path):
    from reproscope.train.checkpoint import load_checkpoint
    r = apply_overrides(tiny_recipe, {"sched.max_steps": 3, "instrument.enabled": False})
    trainer, metrics = train(r, run_dir=tmp_path / "run")
    assert trainer.step == 3 and "top1" in metrics
    assert [m["step"] for m in read_metrics(tmp_path / "run") if m.get("kind") == "val"] == [3]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
    full = Trainer(apply_overrides(r, {"sched.max_steps": 0}), tmp_path / "full", tensorboard=False)
    assert trainer.schedule(2) == full.schedule(2)  # the lr follows the whole schedule's curve


def test_progress_is_plain_lines_when_not_a_terminal(tiny_recipe, tmp_path, capsys):
    """#18: a redirected log gets a few readable lines, not carriage-return frames."""
    r = apply_overrides(tiny_recipe, {"run.progress": True, "instrument.enabled": False})
    train(r, run_dir=tmp_path / "run")
    cap = capsys.readouterr()
    assert "\r" not in cap.out + cap.err
    lines = [ln for ln in cap.out.splitlines() if ": step " in ln]
    assert 1 <= len(lines) <= 12 and lines[-1].startswith("epoch 2/2: step 20/20 (100 %)"), lines


def test_line_progress_cadence(capsys):
    """A line per 10 % when lines are at least min_seconds apart, and always the last one, once."""
    from reproscope.runtime.progress import LineProgress
    bar = LineProgress(100, desc="x", unit="img", min_seconds=0)
    for _ in range(100):
        bar.update()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("x: img 100/100 (100 %)")
    bar = LineProgress(100, desc="fast")  # done well within 5 s: only the last line
    for _ in range(100):
        bar.update()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fast: step 100/100 (100 %)"), lines


def test_max_steps_runs_say_so_instead_of_the_full_epoch_count(tiny_recipe, tmp_path, capsys):
    r = apply_overrides(tiny_recipe, {"sched.max_steps": 3, "instrument.enabled": False})
    train(r, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "epoch 1/2, stopping at step 3 (sched.max_steps)  val top-1" in out


def test_tensorboard_gets_the_config_deviations_and_hparams(tiny_recipe, tmp_path):
    """#18: the resolved config and deviation log in the TEXT tab, final metrics in the HPARAMS tab."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    r = apply_overrides(tiny_recipe, {"instrument.enabled": False, "sched.epochs": 1})
    train(r, run_dir=tmp_path / "run")
    tags = set()
    for f in (tmp_path / "run" / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={"tensors": 0})
        acc.Reload()
        tags |= set(acc.Tags().get("tensors", [])) | set(acc.Tags().get("scalars", []))
    assert {"config/text_summary", "deviations/text_summary", "~hparam/final_top1"} <= tags, tags


def test_hparams_columns_are_the_compared_knobs_and_the_deviations(tmp_path):
    """The HPARAMS tab gets the recipe, the usual knobs (model.norm among them) and the deviation keys,
    not all ~70 keys (which pushed the one that differed off-screen)."""
    import json

    from reproscope.launch import HPARAM_KEYS, tensorboard_summary

    class TB:
        def add_text(self, *a, **k):
            pass

        def add_hparams(self, hparams, metrics, **k):
            self.hparams, self.metrics = hparams, metrics

    r = get_recipe("dyt-vit_quick-imagenette-cpu")
    (tmp_path / "deviations.json").write_text(json.dumps({"deviations": [{"key": "optim.lr"}, {"key": "aug.mix_prob"}]}))
    tb = TB()
    tensorboard_summary(tb, r, tmp_path, {"final_top1": 40.0, "best_top1": 41.0}, 10)
    assert tb.hparams["model.norm"] == "dyt" and tb.hparams["recipe"] == r.name and "aug.mix_prob" in tb.hparams
    assert len(tb.hparams) <= len(HPARAM_KEYS) + 3 and "instrument.hist_every" not in tb.hparams
