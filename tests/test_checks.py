"""The checks pass on correct models and fail, naming the cause, on classic bugs."""

import pytest
import torch
import torch.nn as nn

from reproscope.checks import CHECKS, run_checks
from reproscope.cli import main
from reproscope.model import create_model


@pytest.fixture(scope="module")
def data():
    from reproscope.config import apply_overrides
    from reproscope.diagnostics.diagnose import check_data
    from reproscope.recipes import get_recipe
    return check_data(apply_overrides(get_recipe("quickstart"), {"data.train_size": 64, "data.val_size": 10}))


def vit():
    return create_model("vit_quick", num_classes=10)


@pytest.mark.parametrize("name", ["vit_quick", "convnext_tiny", "mambaout_femto", "kat_tiny"])
def test_correct_models_pass(data, name):
    kw = {"patch_size": 2} if name.startswith(("convnext", "mambaout")) else {"patch_size": 8}
    make = (lambda: create_model(name, num_classes=10, img_size=32, **kw))
    checks = [c for c in CHECKS if c != "overfit-batch" or name == "vit_quick"]
    results = run_checks(make, data, checks)
    assert all(r.status != "fail" for r in results), [r.summary() for r in results]


class MixSamples(nn.Module):
    """Bug: a reshape that mixes samples (transposes batch and tokens)."""

    def __init__(self):
        super().__init__()
        self.inner = vit()

    def forward(self, x):
        z = self.inner.patch_embed(x)  # [B, N, C]
        z = z.transpose(0, 1).reshape(z.shape)  # wrong: mixes samples
        cls = self.inner.cls_token.expand(z.shape[0], -1, -1)
        z = self.inner.blocks(torch.cat([cls, z], 1) + self.inner.pos_embed)
        return self.inner.forward_head(self.inner.norm(z))


def big_init():
    m = vit()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim > 1:
                p.mul_(30)
    return m


def frozen_block():
    m = vit()
    for p in m.blocks[1].parameters():
        p.requires_grad_(False)
    return m


class SoftmaxFirst(nn.Module):
    """Bug: softmax applied before cross-entropy."""

    def __init__(self):
        super().__init__()
        self.inner = vit()

    def forward(self, x):
        return self.inner(x).softmax(-1)


@pytest.mark.parametrize("make, check", [
    (MixSamples, "batch-independence"),
    (big_init, "loss-at-init"),
    (big_init, "init-scale"),
    (SoftmaxFirst, "overfit-batch"),
])
def test_bugs_are_caught_by_the_right_check(data, make, check):
    res = run_checks(make, data, [check])[0]
    assert res.status == "fail", res.summary()
    assert res.causes


def test_frozen_block_is_reported(data):
    res = run_checks(frozen_block, data, ["grad-flow"])[0]
    assert res.status == "warn" and "blocks.1.attn.qkv.weight" in res.details["frozen"]


def test_diagnose_cli(capsys):
    rc = main(["diagnose", "all", "--set", "data.train_size=64", "--set", "data.val_size=10",
               "--set", "model.patch_size=8"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name in ("loss-at-init", "init-scale", "grad-flow", "batch-independence", "overfit-batch", "recipe-audit"):
        assert name in out
    rc = main(["diagnose", "all", "--set", "data.train_size=64", "--set", "data.val_size=10",
               "--set", "reg.label_smoothing=1.0", "--set", "model.patch_size=8", "--json"])
    assert rc == 1 and '"status": "fail"' in capsys.readouterr().out
