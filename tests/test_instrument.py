"""Instrumentation: probes, the NaN tripwire (names the producing module), policies, spikes."""

import json
import math

import pytest
import torch
from conftest import TINY

from reproscope.config import apply_overrides
from reproscope.instrument import Tripwire
from reproscope.instrument.hooks import ActivationStats, HookHandles
from reproscope.instrument.probe import SpikeDetector, probe_schedule
from reproscope.launch import train
from reproscope.model import create_model
from reproscope.recipes import get_recipe
from reproscope.train.rundir import read_metrics

SMALL = {**TINY, "data.train_size": 64, "data.val_size": 20, "data.batch_size": 16, "data.eval_batch_size": 20,
         "sched.epochs": 2, "instrument.probe_every": 4}


def _recipe(tiny_recipe, **kw):
    return apply_overrides(tiny_recipe, {**SMALL, **kw})


def test_probe_schedule():
    steps = [s for s in range(1, 50) if probe_schedule(s, 20, True)]
    assert steps == [1, 2, 4, 8, 16, 20, 40]
    assert [s for s in range(1, 50) if probe_schedule(s, 20, False)] == [20, 40]


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_probes_write_stats_and_tensorboard(tiny_recipe, tmp_path):
    trainer, _ = train(_recipe(tiny_recipe, **{"instrument.histograms": True, "model.norm": "dyt"}),
                       run_dir=tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 4, 8]
    layers, params = lines[-1]["layers"], lines[-1]["params"]
    assert {"mean", "std", "rms", "absmax", "nonfinite", "near_zero", "grad_rms", "grad_nonfinite"} <= set(
        layers["blocks.0.mlp.fc1"])
    assert 0 <= layers["blocks.0.norm1"]["saturated"] <= 1  # DyT saturation fraction
    assert {"weight_norm", "grad_norm", "update_ratio"} == set(params["head.weight"])
    assert 0 < params["head.weight"]["update_ratio"] < 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "run" / "tb" / "detail"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    assert "~layers/blocks.0.mlp.fc1/std" in acc.Tags()["scalars"]
    tags = acc.Tags()["scalars"]
    assert {"~nonfinite/weights", "~nonfinite/grads", "~nonfinite/activations", "~nonfinite/gradients"} <= set(tags)
    # no flat-zero tag per module and phase (a clean run has no non-finite value anywhere)
    assert not [t for t in tags if t.endswith(("/nonfinite", "/grad_nonfinite")) or t.startswith("~nonfinite/weights/")]
    assert any(t.startswith("~grads/") for t in acc.Tags()["histograms"])


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_histograms_are_on_by_default_at_a_sparse_schedule(tiny_recipe, tmp_path):
    """#18: gradient/weight/activation histograms without asking, on the first probe step and then at the
    first probe step hist_every steps later, and always at the run's middle and last step (6 and 12);
    activations are held only for those steps."""
    assert get_recipe("quickstart").instrument.histograms is True  # on by default (tiny_recipe turns them off)
    r = apply_overrides(tiny_recipe, {**SMALL, "sched.epochs": 3, "instrument.probe_every": 2, "instrument.histograms": True,
                                      "instrument.hist_every": 4})  # 12 steps; probes at 1, 2, 4, 6, 8, 10, 12
    trainer, _ = train(r, run_dir=tmp_path / "run")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "run" / "tb" / "detail"), size_guidance={"histograms": 0})
    acc.Reload()
    tags = acc.Tags()["histograms"]
    assert {"~grads/head.weight", "~weights/head.weight"} <= set(tags) and any(t.startswith("~outputs/") for t in tags)
    for tag in ("~grads/head.weight", "~weights/head.weight"):
        assert [e.step for e in acc.Histograms(tag)] == [1, 6, 10, 12]


def test_histogram_counts_every_value_once_with_numpys_sum_and_sum_of_squares(tmp_path):
    """The histogram is counted on the tensor's device (``torch.histc``): its buckets add up to the
    tensor's length, its moments are numpy's, a constant tensor gets one non-empty bucket, and
    TensorBoard reads what ``add_histogram_raw`` wrote."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from reproscope.instrument.probe import histogram
    t = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    h = histogram(t, bins=16)
    a = t.double().numpy()
    assert sum(h["bucket_counts"]) == t.numel() == h["num"] and len(h["bucket_limits"]) == 16
    assert (h["min"], h["max"]) == (float(t.min()), float(t.max())) and h["bucket_limits"][-1] == h["max"]
    assert h["sum"] == pytest.approx(a.sum(), rel=1e-4) and h["sum_squares"] == pytest.approx(a @ a, rel=1e-4)
    counts, _ = np.histogram(a, bins=16, range=(h["min"], h["max"]))
    assert np.abs(np.array(h["bucket_counts"]) - counts).sum() <= 4  # float32 vs float64 edges
    c = histogram(torch.full((5,), 2.0), bins=4)
    assert (c["min"], c["max"], sorted(c["bucket_counts"])) == (2.0, 2.0, [0, 0, 0, 5])
    wide = histogram(torch.tensor([-3e38, 0.0, 3e38]), bins=4)  # a diverging run: max - min overflows float32
    assert wide["bucket_counts"] == [1, 0, 1, 1] and wide["sum"] == 0.0 and wide["sum_squares"] == pytest.approx(1.8e77)
    with SummaryWriter(tmp_path) as tb:
        tb.add_histogram_raw("x", **h, global_step=3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    (ev,) = acc.Histograms("x")
    assert ev.step == 3 and ev.histogram_value.num == 10_000 and sum(ev.histogram_value.bucket) == 10_000


def test_hooks_toggle_and_handles_are_idempotent():
    m = create_model("vit_quick", num_classes=3)
    acts = ActivationStats(m)
    m(torch.randn(2, 3, 32, 32))
    assert acts.forward == {}  # disabled: nothing recorded
    acts.enabled = True
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    got = acts.collect()
    assert "blocks.1.attn.qkv" in got and "grad_rms" in got["blocks.1.attn.qkv"]
    acts.remove()
    acts.remove()
    with HookHandles([m.register_forward_hook(lambda *a: None)]) as h:
        pass
    h.remove()
    assert not m._forward_hooks


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_compiled_model_keeps_working_with_hooks_and_checkpoints_the_uncompiled_module(tiny_recipe, tmp_path):
    """Inductor with the probes' hooks on the original module; the checkpoint holds that module's keys."""
    pytest.importorskip("torch._dynamo")
    trainer, metrics = train(_recipe(tiny_recipe, **{"precision.compile": True, "sched.epochs": 1}),
                             run_dir=tmp_path / "run")
    assert trainer.model is not trainer.orig_model and math.isfinite(metrics["loss"])
    assert (tmp_path / "run" / "stats.jsonl").read_text().count("\n") == 3  # probes at 1, 2, 4
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])
    assert set(ckpt["model"]) == set(trainer.orig_model.state_dict())
    assert 0 <= metrics["top1"] <= 100


STEP = {"now": 0, "done": False}  # module-global: a deep-copied model's hooks still read it


class Inject:
    """Put NaN (or Inf) into the forward output or the backward gradient of one module at one
    trainer step; the fault recurs when that step is replayed (unless ``one_shot`` and reported)."""

    def __init__(self, model, name, phase, at_step, value=float("nan"), one_shot=False):
        self.at, self.value, self.one_shot = at_step, value, one_shot
        STEP.update(now=0, done=False)
        module = dict(model.named_modules())[name]
        if phase == "forward":
            module.register_forward_hook(self.forward)
        else:
            module.register_full_backward_hook(self.backward)

    def active(self):
        return STEP["now"] == self.at and not STEP["done"]

    def forward(self, module, inputs, output):
        return output * self.value if self.active() else None

    def backward(self, module, grad_input, grad_output):
        if self.active():
            return tuple(None if g is None else g * self.value for g in grad_input)
        return None

    # trainer events
    def on_step_start(self, trainer, step):
        STEP["now"] = step

    def on_nonfinite(self, trainer, **_):
        STEP["done"] = self.one_shot


CASES = [  # (model, module, phase)
    ("vit_quick", "patch_embed", "forward"),
    ("vit_quick", "blocks.0.attn", "forward"),
    ("vit_quick", "blocks.1.mlp.fc1", "forward"),
    ("vit_quick", "blocks.2.norm2", "forward"),
    ("vit_quick", "head", "forward"),
    ("vit_quick", "blocks.3.mlp.act", "backward"),
    ("vit_quick", "blocks.1.attn.proj", "backward"),
    ("convnext_tiny", "stem", "forward"),
    ("convnext_tiny", "stages.2.blocks.4.mlp", "forward"),
    ("convnext_tiny", "stages.3.downsample", "backward"),
    ("convnext_tiny", "head.norm", "forward"),
    ("mambaout_femto", "stages.1.1.conv", "forward"),
    ("mambaout_femto", "stages.3.2.fc2", "backward"),
    ("kat_tiny", "blocks.5.mlp.layer2.rational", "forward"),
]


@pytest.mark.parametrize("model_name, module, phase", CASES)
def test_tripwire_names_the_injected_module(tiny_recipe, tmp_path, model_name, module, phase):
    torch.manual_seed(0)
    kw = {"patch_size": 2} if model_name.startswith(("convnext", "mambaout")) else {"patch_size": 8}
    if model_name == "vit_quick":
        kw["norm"] = "dyt"
    if model_name == "convnext_tiny":  # ConvNeXt-T's stages, blocks and names at 1/6 of its width
        from reproscope.model.convnext import ConvNeXt, ConvNeXtConfig
        model = ConvNeXt(ConvNeXtConfig(depths=(3, 3, 9, 3), dims=(16, 32, 64, 128), num_classes=10, patch_size=2))
    else:
        model = create_model(model_name, num_classes=10, img_size=32, **kw)
    inject = Inject(model, module, phase, at_step=3, value=float("inf") if module == "head" else float("nan"))
    from reproscope.train.trainer import Trainer
    r = _recipe(tiny_recipe, **{"instrument.enabled": False})
    tripwire = Tripwire()
    trainer = Trainer(r, tmp_path / "run", model=model, tensorboard=False, callbacks=[inject, tripwire])
    trainer.fit()
    rep = tripwire.report
    assert rep is not None, "tripwire did not trip"
    assert (rep.module, rep.phase) == (module, phase), rep
    assert rep.step == 3 and trainer.step == 2
    d = trainer.tripped  # the guard's decision carries the tripwire's findings
    assert (d.action, d.code, d.step) == ("stop", "nonfinite", 3) and d.findings["module"] == module
    ev = [e for e in read_metrics(tmp_path / "run") if e.get("type") == "nonfinite"][0]
    assert ev["module"] == module and ev["policy"] == "stop"


def test_policies_skip_and_rollback(tiny_recipe, tmp_path):
    from reproscope.train.trainer import Trainer
    for policy in ("skip", "rollback"):
        model = create_model("vit_quick", num_classes=10)
        inject = Inject(model, "blocks.1.mlp.fc2", "forward", at_step=6, one_shot=True)
        r = _recipe(tiny_recipe, **{"instrument.nan_policy": policy, "instrument.enabled": False})
        trainer = Trainer(r, tmp_path / policy, model=model, tensorboard=False, callbacks=[inject])
        metrics = trainer.fit()
        assert trainer.step == trainer.total_steps and math.isfinite(metrics["loss"])
        assert all(torch.isfinite(p).all() for p in trainer.orig_model.parameters())
        events = [e for e in read_metrics(tmp_path / policy) if e["kind"] == "event"]
        if policy == "skip":
            assert trainer.skipped_steps == 1 and events[0]["policy"] == "skip"
        else:
            rb = [e for e in events if e["type"] == "rollback"][0]
            assert trainer.rollbacks == 1 and rb["restored_step"] == 4 and rb["lr_scale"] == 0.5
            assert trainer.schedule.scale == 0.5


def test_replay_cli_prints_the_same_report(tiny_recipe, tmp_path, capsys):
    from reproscope.cli import main
    from reproscope.train.trainer import Trainer
    model = create_model("vit_quick", num_classes=10)
    with torch.no_grad():
        model.blocks[2].mlp.fc1.weight[0, 0] = float("inf")  # a real, persistent fault
    tripwire = Tripwire()
    trainer = Trainer(_recipe(tiny_recipe, **{"instrument.enabled": False}), tmp_path / "run", model=model,
                      tensorboard=False, callbacks=[tripwire])
    trainer.fit()
    assert tripwire.report.module == "blocks.2.mlp.fc1" and tripwire.report.phase == "forward"
    assert "blocks.2.mlp.fc1.weight" in tripwire.report.nonfinite_params
    path = next((tmp_path / "run").glob("nonfinite-step*.pt"))
    capsys.readouterr()
    assert main(["diagnose", "replay", str(path)]) == 1
    out = capsys.readouterr().out
    assert "phase forward, module 'blocks.2.mlp.fc1'" in out


def test_a_stop_before_any_step_offers_no_resume(tiny_recipe, tmp_path, capsys):
    """#49: a NaN stop at step 0 names the stop but no `resume with:` (its checkpoint is the initial
    state: resuming it is starting again); a stop after a step still offers it."""
    from reproscope.train.display import TrainDisplay
    from reproscope.train.trainer import Trainer
    model = create_model("vit_quick", num_classes=10)
    with torch.no_grad():
        model.blocks[2].mlp.fc1.weight[0, 0] = float("inf")  # the first step is refused
    r = _recipe(tiny_recipe, **{"instrument.enabled": False, "run.progress": True})
    trainer = Trainer(r, tmp_path / "run", model=model, tensorboard=False, callbacks=[Tripwire()])
    trainer.fit()
    assert trainer.step == 0 and trainer.tripped is not None and trainer.tripped.code == "nonfinite"
    out = capsys.readouterr().out
    assert "stopped at step 0" in out and "resume with:" not in out
    bar = TrainDisplay(r, 4, 8, 0, True)
    for step in (0, 3):
        bar.stopped(step, "a reason", tmp_path / "ckpt.pt", tmp_path / "run", resumable=True)
        assert ("resume with:" in capsys.readouterr().out) == (step > 0)
    bar.close()


def test_spike_detector_flags_outliers_only():
    det = SpikeDetector(window=50, threshold=8.0)
    torch.manual_seed(0)
    flagged = [i for i, v in enumerate((2.0 + 0.05 * torch.randn(200)).tolist()) if det.check(v)]
    assert flagged == []
    assert det.check(5.0) is not None and det.check(2.01) is None


def test_a_flat_runs_wiggles_are_not_spikes():
    """A loss flat at ln 10 with +-0.001 wiggles: the MAD is ~0 and 2.3050 scores ~13, but it is no jump."""
    det = SpikeDetector(window=100, threshold=8.0)
    torch.manual_seed(0)
    flat = (2.3025 + 0.0005 * torch.randn(300)).tolist() + [2.3050, 2.306]
    assert [i for i, v in enumerate(flat) if det.check(v)] == []
    assert det.check(3.5) is not None  # a real jump still is


@pytest.mark.parametrize("recipe_name, png", [pytest.param("kat-kat_tiny", "kat_ranges.png", marks=pytest.mark.slow),
                                              pytest.param("mambaout-mambaout_femto", "mambaout_gates.png",
                                                           marks=pytest.mark.slow),  # over 5 s on 2 cores
                                              ("quickstart", "dyt_fig2_norm_curves.png")])
def test_paper_figure_probes_write_pngs(tmp_path, recipe_name, png):
    from reproscope.recipes import get_recipe
    small = {k: v for k, v in SMALL.items() if k != "model.patch_size"}  # keep each recipe's own
    r = apply_overrides(get_recipe(recipe_name), {**small, "sched.epochs": 1, "run.out_dir": str(tmp_path),
                                                  "instrument.probes": True})
    if recipe_name == "quickstart":
        r = apply_overrides(r, {"model.patch_size": 8})
    train(r, run_dir=tmp_path / "run")
    fig = tmp_path / "run" / "figures" / png
    assert fig.is_file() and fig.stat().st_size > 5000
    probes = torch.load(tmp_path / "run" / "figures" / "probes.pt", weights_only=True)
    if recipe_name.startswith("kat"):
        rec = probes["kat"]["blocks.0.mlp.layer1"]
        assert rec["fit_range"] == (-3.0, 3.0) and rec["in_min"] < rec["in_max"] and rec["var_ratio"] > 0
    if recipe_name.startswith("mambaout"):
        assert set(probes["mambaout_gates"]) == {"stages.0", "stages.1", "stages.2", "stages.3"}
    if recipe_name == "quickstart":
        assert len(probes["norm_curves"]) == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "paper_probes.jsonl").read_text().splitlines()] \
        if recipe_name != "quickstart" else []  # LayerNorm only: nothing to follow over training
    if rows:  # at initialisation (epoch -1) and after each epoch
        assert [r["epoch"] for r in rows] == [-1, 0]
        assert (tmp_path / "run" / "figures" / "paper_probes_over_training.png").stat().st_size > 5000
    if recipe_name.startswith("kat"):
        init = rows[0]["kat"]["blocks.0.mlp.layer1"]
        assert init["in_p001"] < 0 < init["in_p999"] and 0.5 < init["var_ratio"] < 2  # variance-preserving init
    if recipe_name.startswith("mambaout"):
        assert set(rows[-1]["mambaout_gates"]) == {"stages.0", "stages.1", "stages.2", "stages.3"}


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_profile_writes_traces_and_summary_and_no_cuda_lines_on_a_cpu(tmp_path):
    """``reproscope profile`` as a user runs it: the step split and top ops printed, summary.json, one
    gzipped trace the TensorBoard plugin reads (batch loading as DataLoader time), and (#18) none of
    kineto's "gpuGetDeviceCount failed" or profiler_start/stop lines on a CPU."""
    import gzip
    import subprocess
    import sys
    rd = tmp_path / "prof"
    r = subprocess.run([sys.executable, "-m", "reproscope", "profile", "--steps", "2", "--run-dir", str(rd),
                        "--set", "data.train_size=128", "--set", "data.val_size=20", "--set", "data.batch_size=32"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "gpuGetDeviceCount" not in r.stderr and "USDT" not in r.stderr and "profiler_start" not in r.stderr
    assert "step split (ms/step): data" in r.stdout and "top ops by self CPU time" in r.stdout
    summ = json.loads((rd / "profile" / "summary.json").read_text())
    assert set(summ["split_ms_per_step"]) == {"data", "forward", "backward", "optimizer"}
    assert summ["img_per_s"] > 0 and summ["model_flops_per_step"] > 0
    traces = list((rd / "profile").glob("*.pt.trace.json.gz"))  # the TensorBoard plugin's name, gzipped
    assert len(traces) == 1 and (rd / "profile" / "trace.json.gz").stat().st_ino == traces[0].stat().st_ino
    assert not list((rd / "profile").glob("*trace.json"))  # written once, compressed
    trace = json.loads(gzip.open(traces[0]).read())
    assert any(e.get("cat") == "python_function" for e in trace["traceEvents"])  # with_stack: call stacks
    # the plugin's own parser sees our batch loading as DataLoader time (not "DataLoader 0")
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.event_parser import ProfileRole
    data = RunProfileData.from_json("worker", None, trace)
    data.process()
    assert data.avg_costs.costs[ProfileRole.DataLoader] > 0


def test_loss_spike_is_logged_with_step_and_batch_indices(tiny_recipe, tmp_path):
    from reproscope.train.trainer import Trainer

    class Spike:
        def __init__(self, model, at):
            self.at, self.now = at, 0
            model.head.register_forward_hook(lambda m, i, o: o * 40 if self.now == self.at else None)

        def on_step_start(self, trainer, step):
            self.now = step

    model = create_model("vit_quick", num_classes=10)
    r = apply_overrides(tiny_recipe, {"sched.epochs": 3, "instrument.enabled": False, "instrument.spike_window": 20,
                                      "optim.lr": 1e-4})
    trainer = Trainer(r, tmp_path / "run", model=model, tensorboard=False, callbacks=[Spike(model, 25)])
    trainer.fit()
    spikes = [e for e in read_metrics(tmp_path / "run") if e.get("type") == "loss-spike"]
    assert [e["step"] for e in spikes] == [25]
    assert len(spikes[0]["batch_indices"]) == 32 and spikes[0]["score"] > 8


def test_sample_elements_strides_over_every_channel():
    from reproscope.instrument.hooks import sample_elements
    x = torch.arange(16 * 10 * 96, dtype=torch.float32).reshape(16, 10, 96)
    flat = sample_elements(x, samples=8, elements=1000)
    assert flat.numel() <= 1000 and flat.max() < 8 * 10 * 96  # only the first 8 samples
    channels = (flat.long() % 96).unique()
    assert len(channels) == 96  # the stride (coprime with 96) visits every channel
    assert torch.equal(sample_elements(x, 0, 0), x.reshape(-1))
    big = torch.randn(64, 50, 192)
    s = sample_elements(big, 16, 8192)
    assert abs(s.std().item() - big[:16].std().item()) < 0.03


class _GradInf:
    """Callback + hook: on the given steps every gradient reaching ``module``'s input becomes inf (the loss stays finite)."""

    def __init__(self, module, steps):
        self.steps, self.now = set(steps), 0
        module.register_full_backward_hook(
            lambda m, gi, go: tuple(None if g is None else g * float("inf") for g in gi) if self.now in self.steps else None)

    def on_step_start(self, trainer, step):
        self.now = step


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_fp16_scaler_overflow_steps_are_skipped_and_counted_not_a_nan(tiny_recipe, tmp_path):
    from reproscope.train.trainer import Trainer
    model = create_model("vit_quick", num_classes=10)
    r = apply_overrides(tiny_recipe, {"precision.amp": "fp16", "instrument.enabled": False})
    trainer = Trainer(r, tmp_path / "run", model=model, tensorboard=False,
                      callbacks=[_GradInf(model.blocks[1].mlp.fc2, {3, 4}), Tripwire()])
    trainer.fit()
    assert trainer.tripped is None and trainer.step == trainer.total_steps and trainer.scaler_skips == 2
    events = [e for e in read_metrics(tmp_path / "run") if e["kind"] == "event"]
    assert [e["type"] for e in events] == ["scaler-overflow", "scaler-overflow"] and events[1]["in_a_row"] == 2


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_fp16_scaler_that_cannot_recover_is_a_nan_stop(tiny_recipe, tmp_path):
    from reproscope.train.guard import MAX_SCALER_OVERFLOWS
    from reproscope.train.trainer import Trainer
    model = create_model("vit_quick", num_classes=10)
    r = apply_overrides(tiny_recipe, {"precision.amp": "fp16", "instrument.enabled": False, "sched.epochs": 4})
    trainer = Trainer(r, tmp_path / "run", model=model, tensorboard=False,
                      callbacks=[_GradInf(model.blocks[1].mlp.fc2, range(2, 100))])
    trainer.fit()
    assert trainer.tripped is not None and trainer.tripped.code == "nonfinite"
    assert trainer.tripped.step == 2 + MAX_SCALER_OVERFLOWS and trainer.scaler_skips == MAX_SCALER_OVERFLOWS


def test_a_grad_norm_that_overflows_with_finite_gradients_is_divergence(tiny_recipe, tmp_path, capsys):
    """Logits scaled by 1e20: the loss and every gradient are finite, their global norm overflows float32."""
    from reproscope.train.trainer import Trainer
    model = create_model("vit_quick", num_classes=10)
    model.head.register_forward_hook(lambda m, i, o: o * 1e20)
    trainer = Trainer(_recipe(tiny_recipe, **{"instrument.enabled": False}), tmp_path / "run", model=model,
                      tensorboard=False, callbacks=[Tripwire()])
    trainer.fit()
    d = trainer.tripped
    assert (d.action, d.code, d.step) == ("stop", "grad-norm-overflow", 1)
    assert d.findings["grad_norm_fp64"] ** 2 > 3.4e38 and d.findings["largest_grads"][0][0] == "head.weight"
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "resume with" not in out and "not reproducible" not in out
    ev = [e for e in read_metrics(tmp_path / "run") if e.get("type") == "grad-norm-overflow"]
    assert ev and ev[0]["largest_grads"][0][0] == "head.weight"


@pytest.mark.parametrize("at", [2, 15])
def test_divergence_without_nan_is_an_event_and_said_at_the_end(at, tiny_recipe, tmp_path, capsys):
    """From step ``at`` on the logits are scaled up 1000x: the loss climbs far above ln K, all finite.
    Step 2 is the earliest a blow-up can show (step 1 is the start it is measured against)."""
    from reproscope.train.trainer import Trainer

    class Blowup:
        def __init__(self, model):
            self.now = 0
            model.head.register_forward_hook(lambda m, i, o: o * 1000 if self.now >= at else None)

        def on_step_start(self, trainer, step):
            self.now = step

    model = create_model("vit_quick", num_classes=10)
    r = apply_overrides(tiny_recipe, {"instrument.enabled": False, "optim.grad_clip": 1.0})
    trainer = Trainer(r, tmp_path / "run", model=model, tensorboard=False, callbacks=[Blowup(model)])
    trainer.fit()
    assert trainer.tripped is None and trainer.step == trainer.total_steps
    ev = [e for e in read_metrics(tmp_path / "run") if e.get("type") == "diverging"]
    assert len(ev) == 1 and ev[0]["step"] == at and ev[0]["loss"] > 4 * math.log(10)
    out = capsys.readouterr().out
    assert f"DIVERGING at step {at}" in out and f"this run diverged at step {at}" in out


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_a_kat_run_diverging_at_step_2_shows_the_rational_range_then(tiny_recipe, tmp_path, capsys):
    """Issue 16 item 5: KAT-T at lr 1.0 without warmup blows up within its first steps, all finite. The
    divergence is flagged at once, the paper-figure probes taken then say how far the rationals' inputs
    left their [-3, 3] fit range, the end of the run repeats it, and the report shows the figure."""
    from reproscope.report.report import report
    r = apply_overrides(tiny_recipe, {"model.name": "kat_tiny", "optim.lr": 1.0, "sched.warmup_epochs": 0,
                                      "optim.grad_clip": 0.0, "run.progress": False, "instrument.probes": True,
                                      "sched.max_steps": 6})  # flagged within 3 steps; 6 reach the run's end
    train(r, run_dir=tmp_path / "run")
    ev = [e for e in read_metrics(tmp_path / "run") if e.get("type") == "diverging"]
    assert len(ev) == 1 and ev[0]["step"] <= 3, ev
    kat = ev[0]["findings"]["kat-range"]
    assert kat["code"] == "kat-range" and kat["max_abs_input"] > 30 and kat["layers_outside"] >= 1
    assert (tmp_path / "run" / "figures" / "kat_ranges_at_divergence.png").is_file()
    out = capsys.readouterr().out
    assert f"at step {ev[0]['step']}: rational activations see inputs of magnitude up to" in out
    assert report([str(tmp_path / "run")], str(tmp_path / "report")) == 0
    assert "kat_ranges_at_divergence.png" in (tmp_path / "report" / "report.md").read_text()


class _Between(torch.nn.Module):
    """b1 -> b2 -> (functional code in Net.forward) -> head: the NaN is born between b2 and head."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.b1, self.b2, self.head = torch.nn.Linear(12, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 10)

    def forward(self, x):
        h = self.b2(torch.relu(self.b1(x.flatten(1))))  # [B, 3, 2, 2] -> [B, 12] -> [B, 16]
        if self.mode == "forward":
            h = torch.sqrt(h)  # negative entries -> NaN, in the parent's own code
        else:  # forward finite; the untaken sqrt branch's gradient is NaN
            h = torch.where(h > 0, torch.sqrt(h), torch.zeros_like(h))
        return self.head(h)


@pytest.mark.parametrize("mode, phase, between", [("forward", "forward", ["b2", "head"]),
                                                  ("backward", "backward", ["head", "b2"])])
def test_a_nan_born_between_modules_is_named_as_the_gap(mode, phase, between):
    from reproscope.instrument.tripwire import format_report, locate_nonfinite
    torch.manual_seed(0)
    model = _Between(mode)
    x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 10, (8,))
    rep = locate_nonfinite(model, [(x, y)], torch.nn.functional.cross_entropy, step=1)
    assert (rep.phase, rep.between, rep.module, rep.module_type) == (phase, between, "", "_Between")
    text = format_report(rep)
    assert f"born between '{between[0]}'" in text and "_Between.forward ('<model>')" in text


def test_paper_figure_probes_are_duck_typed_for_your_own_layers():
    """A user's DyT (any module with a tensor alpha) and rational (class name with "Rational") are probed."""
    from reproscope.instrument.paper_probes import collect

    class MyDyT(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.alpha, self.g = torch.nn.Parameter(torch.tensor(0.7)), torch.nn.Parameter(torch.ones(d))

        def forward(self, x):
            return torch.tanh(self.alpha * x) * self.g

    class MyRational(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p, self.q = torch.nn.Parameter(torch.tensor([0.0, 1.0])), torch.nn.Parameter(torch.tensor([0.5]))

        def forward(self, x):
            return (self.p[0] + self.p[1] * x) / (1 + (self.q * x).abs())

    class KANish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.act, self.fc = MyRational(), torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.act(x))

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), MyDyT(8), KANish(), torch.nn.Linear(8, 3))
    out = collect(model, torch.randn(32, 4) * 5)
    assert list(out["norm_curves"]) == ["1"] and out["norm_curves"]["1"]["kind"] == "DyT (alpha 0.7)"
    rec = out["kat"]["2"]
    assert rec["fit_range"] == (-3.0, 3.0) and -1 <= rec["in_min"] < rec["in_max"] <= 1 and rec["var_ratio"] > 0


def test_event_vocabulary_reads_older_spellings():
    """One word per meaning; runs written before it (loss_spike, scaler_skip, divergence for two things) read the same."""
    from reproscope.train.events import Event, event_type
    assert event_type({"type": "loss_spike"}) == Event.LOSS_SPIKE == "loss-spike"
    assert event_type({"type": "scaler_skip"}) == "scaler-overflow"
    assert event_type({"type": "divergence", "reason": "grad norm overflow"}) == "grad-norm-overflow"
    assert event_type({"type": "divergence", "reason": "the loss 40 is 17x its start"}) == "diverging"
    from reproscope.train.guard import CODES
    assert set(CODES) - {"ok"} <= {e.value for e in Event}
