import os

import pytest
import torch

from reproscope.config import apply_overrides
from reproscope.console import install_console
from reproscope.recipes import get_recipe

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N (addopts: -n auto): the cores shared out, no
    # worker's torch threads (nor its subprocesses') competing with another worker's
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))
install_console()  # as the CLI does: the package's messages on stdout, where the tests read them

TINY = {
    "data.train_size": 320, "data.val_size": 100, "data.batch_size": 32, "data.eval_batch_size": 50,
    "sched.epochs": 2, "sched.warmup_epochs": 0.5, "run.progress": False, "run.log_every": 2,
    "model.patch_size": 8,
    # no histograms and no paper-figure probes unless a test asks (they cost more than a tiny run's steps)
    "instrument.histograms": False, "instrument.probes": False,
}


def pytest_collection_modifyitems(config, items):
    """A release test is also slow: ``-m "not slow"`` leaves it out, ``-m slow`` takes it."""
    for item in items:
        if item.get_closest_marker("release") is not None:
            item.add_marker(pytest.mark.slow)


def release_except(values, keep, ids=None):
    """``values`` as parametrize entries where those not in ``keep`` are release tests (``pytest -m release``):
    the full tier runs ``keep``, the representatives of a sweep, and the release tier the whole sweep.
    ``ids(value)`` names a value when it is not a string (``keep`` holds those names)."""
    name = ids or str
    unknown = set(keep) - {name(v) for v in values}
    assert not unknown, f"representatives not in the sweep: {sorted(unknown)}"
    return [pytest.param(v, id=name(v), marks=() if name(v) in keep else pytest.mark.release) for v in values]


@pytest.fixture
def tiny_recipe(tmp_path):
    """The quickstart shrunk to seconds: 320 images, 2 epochs, 10 steps per epoch; per-layer probes on,
    histograms and paper-figure probes off (a test that reads them turns them on)."""
    return apply_overrides(get_recipe("quickstart"), {**TINY, "run.out_dir": str(tmp_path / "runs")})


def zero_true_gradient(name: str, param: torch.Tensor) -> torch.Tensor:
    """Mask of the elements of ``param`` whose true gradient is exactly zero, so that any gradient
    they get is rounding noise: the key slice of an attention ``qkv.bias`` (softmax ignores a constant
    added to every key). AdamW normalises that noise into lr-sized steps of random sign, so two code
    paths that agree on every gradient still disagree there after a few steps, by an amount that
    depends on the torch build. Tests that compare weights after optimizer steps skip these."""
    mask = torch.zeros_like(param, dtype=torch.bool)
    if name.endswith("qkv.bias"):
        c = param.shape[0] // 3
        mask[c:2 * c] = True
    return mask


def assert_weights_match(a: dict, b: dict, rtol: float, atol: float) -> None:
    """Every weight of two state dicts agrees, except elements with a zero true gradient (see above)."""
    assert a.keys() == b.keys()
    for k in a:
        keep = ~zero_true_gradient(k, a[k])
        torch.testing.assert_close(b[k][keep], a[k][keep], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")
