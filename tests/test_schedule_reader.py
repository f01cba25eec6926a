"""reproscope.instrument.schedule: read a schedule back from the lr curve of real torch/timm schedulers."""

import json
import math
import warnings

import pytest
import torch

from reproscope.instrument.schedule import read_schedule

PEAK = 0.1


def curve(make, steps, every=1, step=None):
    """The lr of each optimizer step, with ``make(opt)``'s scheduler stepped every ``every`` steps
    (``step(sched, s)`` instead, when given)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    sched = make(opt) if make else None
    lrs = []
    for s in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if step is not None:
            step(sched, s)
        elif sched is not None and (s + 1) % every == 0:
            sched.step()
    return lrs


def cos01(u):
    return 0.5 * (1 + math.cos(math.pi * u))


def lambda_warmup_cosine(w, n):
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / w if s < w else cos01((s - w) / (n - w)))


def test_lambda_linear_warmup_cosine():
    r = read_schedule(curve(lambda_warmup_cosine(100, 1000), 1000))
    assert (r.warmup_steps, r.warmup_shape, r.decay, r.lr_changes_every) == (100, "linear", "cosine", 1)
    assert r.peak_step == 100 and r.peak_lr == pytest.approx(PEAK) and r.warmup_share == pytest.approx(0.1)
    assert r.final_ratio < 1e-4
    assert r.fit_error["cosine"] < 0.2 * min(r.fit_error["linear"], r.fit_error["exponential"])


def test_onecycle():
    r = read_schedule(curve(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, PEAK, total_steps=1000), 1000))
    assert r.warmup_share == pytest.approx(0.3, abs=0.01)
    assert r.warmup_shape == "other"  # OneCycle anneals up along a cosine too
    assert r.decay == "cosine" and r.final_ratio < 1e-4


def test_cosine_without_warmup():
    r = read_schedule(curve(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=500), 500))
    assert (r.warmup_steps, r.warmup_shape, r.peak_step, r.decay) == (0, "none", 1, "cosine")


def test_cosine_with_eta_min_and_truncated_run():
    """eta_min > 0, and a run stopped at 60% of its cosine: still a cosine."""
    make = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000, eta_min=1e-3)  # noqa: E731
    r = read_schedule(curve(make, 600))
    assert r.decay == "cosine" and r.final_ratio > 0.3


@pytest.mark.parametrize("w", [20, 50, 100])
def test_sequential_linear_warmup_then_cosine(w):
    n = 600

    def make(opt):
        lin = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=w)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n - w)
        return torch.optim.lr_scheduler.SequentialLR(opt, [lin, cos], milestones=[w])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some torch versions warn on SequentialLR's internal step(0)
        r = read_schedule(curve(make, n))
    assert abs(r.warmup_steps - w) <= 1
    assert (r.warmup_shape, r.decay) == ("linear", "cosine")


def test_steplr_per_epoch():
    spe = 10
    make = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)  # noqa: E731
    r = read_schedule(curve(make, 90 * spe, every=spe), steps_per_epoch=spe)
    assert (r.decay, r.warmup_steps, r.lr_changes_every) == ("step", 0, 30 * spe)
    assert r.final_ratio == pytest.approx(0.01)


def test_multistep_after_warmup():
    """Goyal et al.'s recipe in steps: linear warmup, then x0.1 at three milestones."""
    spe, w, miles = 20, 100, (600, 1200, 1600)
    make = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda s: min(1.0, (s + 1) / w) * 0.1 ** sum(s >= m for m in miles))
    r = read_schedule(curve(make, 90 * spe))
    assert (r.warmup_steps, r.decay) == (w, "step")
    assert r.fit_error["step"] < 1e-9


@pytest.mark.parametrize("gamma", [0.99, 0.999])
def test_exponential(gamma):
    r = read_schedule(curve(lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma), 500))
    assert (r.decay, r.warmup_steps, r.lr_changes_every) == ("exponential", 0, 1)


def test_linear_decay():
    r = read_schedule(curve(lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=400), 400))
    assert r.decay == "linear"


def test_constant():
    r = read_schedule(curve(None, 300))
    assert (r.decay, r.warmup_steps, r.warmup_shape) == ("constant", 0, "none")
    assert (r.lr_changes_every, r.final_ratio) == (0, 1.0)


@pytest.mark.parametrize("form", ["piecewise", "product"])
def test_hand_written_loop(form):
    n, w = 500, 50
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    lrs = []
    for s in range(n):
        for g in opt.param_groups:
            if form == "product":
                g["lr"] = PEAK * min(1, (s + 1) / w) * cos01(s / n)
            else:
                g["lr"] = PEAK * ((s + 1) / w if s < w else cos01((s - w) / (n - w)))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
    r = read_schedule(lrs)
    assert (r.warmup_steps, r.warmup_shape, r.decay) == (w, "linear", "cosine")


def test_warmup_written_in_epochs_ran_in_steps():
    spe, epochs = 100, 10
    n = spe * epochs
    meant = read_schedule(curve(lambda_warmup_cosine(5 * spe, n), n), steps_per_epoch=spe)
    slip = read_schedule(curve(lambda_warmup_cosine(5, n), n), steps_per_epoch=spe)
    assert (meant.warmup_steps, meant.warmup_epochs) == (500, 5.0)
    assert (slip.warmup_steps, slip.warmup_epochs) == (5, 0.05)
    assert slip.warmup_share == pytest.approx(0.005) and slip.decay == "cosine"


@pytest.mark.parametrize("epochs", [6, 10, 30])
def test_per_epoch_cosine_staircase(epochs):
    spe = 50
    make = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)  # noqa: E731
    r = read_schedule(curve(make, epochs * spe, every=spe), steps_per_epoch=spe)
    assert (r.decay, r.lr_changes_every, r.warmup_steps) == ("cosine", spe, 0)


def test_per_epoch_warmup_staircase():
    """LambdaLR stepped per epoch: 5 warmup epochs (0.2, 0.4, ... 1.0 x peak), then cosine."""
    spe, epochs, w = 40, 30, 5
    make = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda e: (e + 1) / w if e < w else cos01((e - w) / (epochs - w)))
    r = read_schedule(curve(make, epochs * spe, every=spe), steps_per_epoch=spe)
    assert (r.warmup_steps, r.warmup_epochs, r.warmup_shape) == (w * spe, w, "linear")
    assert (r.decay, r.lr_changes_every) == ("cosine", spe)


@pytest.mark.parametrize("prefix", [False, True])
def test_timm_cosine_with_warmup(prefix):
    timm_scheduler = pytest.importorskip("timm.scheduler")
    n, w = 600, 60

    def make(opt):
        return timm_scheduler.CosineLRScheduler(opt, t_initial=n, warmup_t=w, warmup_lr_init=0.0,
                                                warmup_prefix=prefix, t_in_epochs=False)

    r = read_schedule(curve(make, n, step=lambda sched, s: sched.step_update(num_updates=s + 1)))
    assert abs(r.warmup_steps - w) <= 1
    assert (r.warmup_shape, r.decay) == ("linear", "cosine")


@pytest.mark.parametrize("lrs", [
    [], [0.1], [0.1, 0.1], [0.1, 0.1, 0.1], [0.1, 0.05, 0.0], [0.0, 0.1], [0.0, 0.0, 1e-3], [1e-3, 0.0],
    [0.0] * 3, [0.0, 0.1, 0.1],
])
def test_short_curves_do_not_raise(lrs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's divide-by-zero warnings included
        r = read_schedule(lrs)
    assert r.decay == "unknown" and r.steps == len(lrs)
    json.dumps(r.to_dict())


@pytest.mark.parametrize("lrs, decay", [
    ([0.0] * 10, "constant"), ([0.1] * 10, "constant"), ([0.0] * 9 + [1e-3], "unknown"),
    ([0.1, 0.05, 0.1, 0.05, 0.1], "unknown"), ([1e-3, 0.0, 0.0, 0.0], "step"), ([1e-300] * 5, "constant"),
])
def test_degenerate_curves(lrs, decay):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = read_schedule(lrs, steps_per_epoch=0)
    assert r.decay == decay and r.warmup_epochs is None
    assert math.isfinite(r.final_ratio) and math.isfinite(r.warmup_share)
    json.dumps(r.to_dict())


@pytest.mark.parametrize("bad", [[0.1, float("nan")], [0.1, float("inf")], [0.1, -0.1]])
def test_invalid_lrs_raise(bad):
    with pytest.raises(ValueError):
        read_schedule(bad)
