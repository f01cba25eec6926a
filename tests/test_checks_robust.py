"""Issue 34: the checks on correct models they were never tuned on, and on planted bugs in such models.

Small hand-written models of the kinds the issue names (a non-residual CNN, a metaformer-like pooling
net whose last stage is 1x1 at 32 px, a slow learner, a model that ignores its input, a 100x head, a
0.01-std classifier, a DyT ViT), each with the check it used to fail wrongly or to miss.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reproscope.checks import CHECKS, CheckData, run_checks
from reproscope.checks.core import NOT_MEASURED

# ----------------------------------------------------------------------------- models

class ConvBNReLU(nn.Sequential):
    def __init__(self, i, o, stride=1):
        super().__init__(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class PlainBlock(nn.Module):
    """conv-BN-ReLU twice, no skip connection (VGG / SqueezeNet style)."""

    def __init__(self, c):
        super().__init__()
        self.a, self.b = ConvBNReLU(c, c), ConvBNReLU(c, c)

    def forward(self, x):
        return self.b(self.a(x))


class PlainCNN(nn.Module):
    """A correct CNN without residual connections: [B, 3, 32, 32] -> [B, K]."""

    def __init__(self, num_classes=10, width=32, dead_branch=False):
        super().__init__()
        self.stem = ConvBNReLU(3, width, 2)  # 16x16
        self.blocks = nn.Sequential(PlainBlock(width), PlainBlock(width), nn.MaxPool2d(2), PlainBlock(width),
                                    PlainBlock(width))  # 8x8
        self.extra = nn.Conv2d(width, width, 1)  # a side branch; multiplied by 0 when dead_branch
        self.dead_branch = dead_branch
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.blocks(self.stem(x))  # [B, C, 8, 8]
        h = h + (0.0 if self.dead_branch else 1.0) * self.extra(h)
        return self.head(h.mean((2, 3)))


class Pooling(nn.Module):
    """PoolFormer's token mixer: pool(x) - x (exactly 0 on a 1x1 map)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class PoolBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1, self.mixer = nn.GroupNorm(1, c), Pooling()
        self.norm2 = nn.GroupNorm(1, c)
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1))

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PoolMetaFormer(nn.Module):
    """A correct metaformer (PoolFormer-like), strides 4, 2, 2, 2: its last stage is 1x1 at 32 px."""

    def __init__(self, num_classes=10, dims=(16, 32, 48, 64), **_):
        super().__init__()
        self.stem = nn.Conv2d(3, dims[0], 4, 4)
        self.downs = nn.ModuleList([nn.Identity()] + [nn.Conv2d(a, b, 2, 2) for a, b in zip(dims, dims[1:])])
        self.stages = nn.ModuleList([nn.Sequential(PoolBlock(d), PoolBlock(d)) for d in dims])
        self.norm = nn.GroupNorm(1, dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.stem(x)  # [B, C0, H/4, W/4]
        for down, stage in zip(self.downs, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x).mean((2, 3)))


class SlowLinear(nn.Module):
    """A correct but slow learner: a linear classifier on the pixels whose logits are scaled by ``gain``,
    so an AdamW step moves them ``gain`` times as far."""

    def __init__(self, num_classes=10, gain=0.03, size=32):
        super().__init__()
        self.fc = nn.Linear(3 * size * size, num_classes)
        self.gain = gain

    def forward(self, x):
        return self.gain * self.fc(x.flatten(1))  # [B, 3, H, W] -> [B, K]


class IgnoresInput(nn.Module):
    """A planted bug: the output is a learned constant, whatever the input."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.const = nn.Parameter(torch.randn(1, 8))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.const).expand(x.shape[0], -1)  # the image never reaches the head


class SmallCNN(nn.Module):
    """A correct residual CNN; ``head_std`` re-initialises the classifier (normal, that std), and
    ``head_scale`` multiplies its init (a planted 100x head)."""

    def __init__(self, num_classes=10, width=32, head_std=None, head_scale=1.0):
        super().__init__()
        self.stem = ConvBNReLU(3, width, 2)
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(3)])
        self.head = nn.Linear(width, num_classes)
        with torch.no_grad():
            if head_std is not None:
                nn.init.normal_(self.head.weight, 0, head_std)
                nn.init.zeros_(self.head.bias)
            self.head.weight.mul_(head_scale)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = ConvBNReLU(c, c), nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)))


def dyt_vit(**kw):
    """A correct DyT ViT at 32 px, patch 4 (64 tokens), ViT-quick width and depth."""
    from reproscope.model import create_model
    return create_model("vit_quick", num_classes=10, img_size=32, patch_size=4, norm="dyt", **kw)


class FixedSizePoolMetaFormer(PoolMetaFormer):
    """The metaformer, refusing any input but 32 px (a model built for one size, with no way to rebuild it)."""

    def forward(self, x):
        if x.shape[-1] != 32:
            raise ValueError(f"built for 32 px, got {x.shape[-1]}")
        return super().forward(x)


class ConcatBlock(nn.Module):
    """A hybrid-style block that fuses its input by concatenation, not x + f(x) (MobileViT's fusion)."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.local = ConvBNReLU(c, c)
        self.fuse = nn.Conv2d(2 * c, c, 1)

    def forward(self, x):  # [B, C, H, W]
        return self.fuse(torch.cat([x, self.local(x)], 1))


class ConcatHybrid(nn.Module):
    def __init__(self, num_classes=10, c=32):
        super().__init__()
        self.stem = ConvBNReLU(3, c, 2)
        self.blocks = nn.Sequential(*[ConcatBlock(c) for _ in range(3)])
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class DenseLayer(nn.Module):
    """DenseNet-style: BN-ReLU-conv new features under a 1e-6 layer scale, returned alone (the caller
    concatenates them onto the stream), or concatenated onto its input by the layer itself (``own_cat``)."""

    def __init__(self, c_in, k=8, own_cat=False):
        super().__init__()
        self.norm, self.conv = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, k, 3, padding=1)
        self.ls = nn.Parameter(torch.full((k, 1, 1), 1e-6))
        self.own_cat = own_cat

    def forward(self, x):
        new = self.ls * self.conv(F.relu(self.norm(x)))
        return torch.cat([x, new], 1) if self.own_cat else new


class DenseNetLS(nn.Module):
    """A dense-concatenation net: the stream grows by 8 layer-scaled channels per layer, 16 -> 48."""

    def __init__(self, num_classes=10, c=16, k=8, n=4, own_cat=False):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.layers = nn.ModuleList([DenseLayer(c + i * k, k, own_cat) for i in range(n)])
        self.head = nn.Linear(c + n * k, num_classes)
        self.own_cat = own_cat

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x) if self.own_cat else torch.cat([x, layer(x)], 1)
        return self.head(x.mean((2, 3)))


class BiasedAttention(nn.Module):
    """Attention over the positions of a [B, C, H, W] map, each head's logits biased by a learned scalar
    times minus the distance between positions: on a map of one position the bias gets no gradient."""

    def __init__(self, c, heads=2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)
        self.dist_bias = nn.Parameter(torch.full((heads,), 0.1))

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)  # [B, h, C/h, N]
        yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        pos = torch.stack([yy.flatten(), xx.flatten()], -1).float()  # [N, 2]
        logits = q.transpose(-2, -1) @ k * (C // self.heads) ** -0.5 - self.dist_bias[:, None, None] * torch.cdist(pos, pos)
        out = v @ logits.softmax(-1).transpose(-2, -1)  # [B, h, C/h, N]
        return x + self.proj(out.reshape(B, C, H, W))


class TinyHybrid(nn.Module):
    """Six stride-2 convs (k3, p1), then two attention blocks: the last stage keeps one position at 32 and at
    64 px (ceil(64 / 64) = 1), four at 128 px."""

    def __init__(self, num_classes=10, c=16):
        super().__init__()
        chans = [3, 8, 8, 16, 16, c, c]
        self.convs = nn.Sequential(*[nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1), nn.GELU())
                                     for i in range(6)])
        self.attn = nn.Sequential(BiasedAttention(c), BiasedAttention(c))
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.attn(self.convs(x)).mean((2, 3)))


class ConstantOutput(nn.Module):
    """Logits that never move: zeros plus a parameter times 0 (the loss is ln K at every lr)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.k = num_classes

    def forward(self, x):
        return x.new_zeros(x.shape[0], self.k) + 0 * self.w


# ----------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def shapes():
    """256 shapes10 images at 32 px, normalised (the first half trains, the second is held out)."""
    from reproscope.data.shapes import generate_shapes
    x, y = generate_shapes(256, 32, seed=0)
    return CheckData((x.float() / 255 - 0.5) / 0.25, y, num_classes=10, lr=2e-3)


def one(check, make, data, **kw):
    (r,) = run_checks(make, data, [check]) if not kw else [CHECKS[check](make, data, **kw)]
    return r


# ----------------------------------------------------------------------------- init-scale

def test_init_scale_does_not_measure_a_skip_path_that_is_not_there(shapes):
    """A correct CNN without residual connections, and a hybrid that fuses its input by concatenation:
    no block adds its input back, so the skip correlation is "not measured", not a dropped residual."""
    for make in (PlainCNN, ConcatHybrid):
        r = one("init-scale", make, shapes)
        assert r.status != "fail" and "residual-dropped" not in r.codes, (r.measured, r.causes)
        assert "no skip path: not measured" in r.measured
        assert r.details["skip_paths"] == [] and r.details["no_skip_path"]


def test_init_scale_traces_identity_paths_through_scales_and_views(shapes):
    """x + f(x) with x scaled (MetaFormer's res_scale) or viewed is an identity path; the zoo's dropped
    residual (pre-norm ViT blocks that never add their input) still fails."""
    from reproscope.checks.model import SkipTracer
    from reproscope.checks.zoo import get_bug
    from reproscope.model import create_model

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.fc, self.s = nn.LayerNorm(8), nn.Linear(8, 8), nn.Parameter(torch.ones(8))

        def forward(self, x):  # [B, N, 8]
            return x.permute(1, 0, 2).permute(1, 0, 2) * self.s + self.fc(self.norm(x))

    class Concat(nn.Module):
        def forward(self, x):
            return torch.cat([x[..., :4], x[..., :4] * 2], -1)

    model = nn.Sequential(Scaled(), Scaled(), Concat(), Concat())
    blocks = list(model.named_children())
    with torch.no_grad(), SkipTracer(model, blocks) as t:
        model(torch.randn(2, 5, 8))
    assert t.skip == {"0", "1"} and t.prenorm == {"0", "1"}
    dropped = get_bug("residual-dropped").mutation.model
    r = one("init-scale", lambda: dropped(create_model("vit_quick", num_classes=10)), shapes)
    assert r.status == "fail" and "residual-dropped" in r.codes, r.causes
    r = one("init-scale", lambda: create_model("vit_quick", num_classes=10), shapes)
    assert r.status == "pass" and "4 of 4" in r.measured, r.measured


def test_init_scale_judges_a_dense_net_on_its_concatenated_stream(shapes):
    """Issue 45, item 2a: a DenseNet-like net whose new features are a branch under a 1e-6 layer scale,
    concatenated onto the stream by the caller, failed as "activations decay ... residual connection
    dropped": the block output measured (std ~1e-7) was the branch, not the stream, which does not decay.
    The stream after each layer (the concatenation holding its input and its output) is measured now;
    a layer that concatenates its input itself was already measured on its whole output."""
    r = one("init-scale", DenseNetLS, shapes)
    assert r.status == "pass" and "activations-decay" not in r.codes, (r.measured, r.causes)
    assert r.details["std_of_concatenated_stream"] == [f"layers.{i}" for i in range(4)]
    assert all(v > 0.1 for v in r.details["block_std"].values()), r.details["block_std"]
    r = one("init-scale", lambda: DenseNetLS(own_cat=True), shapes)
    assert r.status == "pass" and r.details["std_of_concatenated_stream"] == [], (r.measured, r.causes)


# ----------------------------------------------------------------------------- grad-flow

def test_grad_flow_measures_at_a_size_where_no_stage_is_1x1(shapes):
    """The metaformer's last stage is 1x1 at 32 px: pool(x) - x is exactly 0 there, so its norm1 gets
    no gradient. At 64 px every stage keeps 4+ positions and every parameter moves: not dead."""
    r = one("grad-flow", PoolMetaFormer, shapes)
    assert r.status == "pass" and r.details["dead"] == [], (r.measured, r.causes)
    assert r.details["measured_at"] == 64 and r.details["collapsed"]
    assert any(n.startswith("stages.3.") and "norm1" in n for n in r.details["zero_at_init_only"])


def test_grad_flow_says_not_measured_when_the_model_cannot_run_larger(shapes):
    r = one("grad-flow", FixedSizePoolMetaFormer, shapes)
    assert r.status == NOT_MEASURED and "not-measured-at-this-size" in r.codes, (r.measured, r.causes)
    assert r.measured.startswith("not measured at 32 px")
    make = FixedSizePoolMetaFormer
    at = lambda px: PoolMetaFormer  # noqa: E731  (a factory that can rebuild it for px, as diagnose --model gives)

    def sized():
        return make()
    sized.at_size = at
    r = one("grad-flow", sized, shapes)
    assert r.status == "pass" and r.details["measured_at"] == 64, (r.measured, r.causes)


def test_grad_flow_goes_up_to_a_size_where_the_last_stage_keeps_several_positions(shapes):
    """Issue 45, item 2b: a conv/attention hybrid whose attention biases get a zero gradient at 32 and 64 px,
    where its last stage has one position (1x1 at both sizes, so comparing 32 with 64 px did not show it
    as spatial): the fallback stopped at 64 px and called them dead. At 128 px every parameter moves.
    A model that cannot run that large is not measured, with its code."""
    r = one("grad-flow", TinyHybrid, shapes)
    assert r.status == "pass" and r.details["dead"] == [], (r.measured, r.causes)
    assert r.details["measured_at"] == 128 and r.details["collapsed_up_to"][0] == 64
    assert set(r.details["zero_at_init_only"]) == {"attn.0.dist_bias", "attn.1.dist_bias"}
    assert {"convs.5", "attn.1"} <= set(r.details["collapsed"])

    class UpTo64(TinyHybrid):  # refuses anything larger than 64 px
        def forward(self, x):
            if x.shape[-1] > 64:
                raise ValueError("built for up to 64 px")
            return super().forward(x)
    r = one("grad-flow", UpTo64, shapes)
    assert r.status == NOT_MEASURED and r.codes == ["not-measured-at-this-size"], (r.measured, r.causes)
    assert r.details["dead"] == [] and set(r.details["unmeasured"]) == {"attn.0.dist_bias", "attn.1.dist_bias"}


def test_grad_flow_still_catches_a_dead_branch(shapes):
    """A branch multiplied by 0 stays at zero gradient at every size and after steps: dead."""
    r = one("grad-flow", lambda: PlainCNN(dead_branch=True), shapes)
    assert r.status == "fail" and "zero-grad-params" in r.codes and set(r.details["dead"]) == {"extra.weight", "extra.bias"}


# ----------------------------------------------------------------------------- loss-at-init

def test_loss_at_init_fails_a_100x_head_and_warns_on_a_large_trainable_one(shapes):
    r = one("loss-at-init", lambda: SmallCNN(head_scale=100), shapes)
    assert r.status == "fail" and r.codes[0] == "logits-too-large" and "head-init-too-large" in r.codes, r.causes
    assert r.details["ratio"] > 10 and r.details["saturated"] > 0.5
    tv = pytest.importorskip("torchvision")
    r = one("loss-at-init", lambda: tv.models.efficientnet_b0(num_classes=10), shapes)  # head sized for K = 1000
    assert r.status == "warn" and r.codes == ["large-head-init"], (r.measured, r.causes)
    assert "not broken" not in r.causes[0] and "trainable" in r.causes[0]


# ----------------------------------------------------------------------------- overfit-batch

def test_overfit_batch_warns_on_a_slow_learner_and_fails_bounded_outputs(shapes):
    r = one("overfit-batch", lambda: SlowLinear(gain=0.005), shapes, steps=60)
    assert r.status == "warn" and r.codes[0] == "slow-fit", (r.measured, r.causes)
    assert "loss curve's slope" in r.causes[0] and "higher lr" in r.causes[0]

    class Softmaxed(SlowLinear):
        def forward(self, x):
            return super().forward(x).softmax(-1)
    r = one("overfit-batch", lambda: Softmaxed(gain=1.0), shapes, steps=40)
    assert r.status == "fail" and r.codes[0] == "outputs-bounded", (r.measured, r.causes)


def test_scale_changes_judge_growth_against_the_layers_init_scale():
    """A classifier initialised at std 0.01 grows to the network's scale by design; a real explosion is
    still named."""
    from reproscope.checks.training import scale_changes
    first = {"body": {"rms": 1.0, "grad_rms": 1e-3}, "mid": {"rms": 0.8, "grad_rms": 1e-3},
             "head": {"rms": 0.01, "grad_rms": 0.1}}
    assert "scale-exploded" not in scale_changes(first, {"body": {"rms": 2.0}, "mid": {"rms": 1.0},
                                                         "head": {"rms": 6.0}})
    assert "scale-exploded" in scale_changes(first, {"body": {"rms": 500.0}, "mid": {"rms": 1.0},
                                                     "head": {"rms": 6.0}})
    # a layer that is small at init with a large output gradient is not starved
    assert "grads-vanish" not in scale_changes(first, first)


def test_overfit_batch_on_a_small_init_classifier_and_a_dyt_vit_blames_nothing(shapes):
    r = one("overfit-batch", lambda: SmallCNN(head_std=0.01), shapes, steps=60)
    assert r.status != "fail" and "scale-exploded" not in r.codes, (r.measured, r.causes)
    r = one("overfit-batch", dyt_vit, shapes, steps=25)  # stopped early: slow, still falling
    assert r.status == "warn" and r.codes[0] == "slow-fit", (r.measured, r.causes)
    assert not {"scale-exploded", "grads-vanish"} & set(r.codes)


# ----------------------------------------------------------------------------- input-independent

def test_input_independent_fails_an_input_ignoring_model_without_raising(shapes):
    r = one("input-independent", IgnoresInput, shapes, max_steps=50)
    assert r.status == "fail" and r.codes == ["ignores-input"], (r.measured, r.causes)


def test_input_independent_never_fails_a_slow_learner(shapes):
    r = one("input-independent", lambda: SlowLinear(gain=0.01), shapes, max_steps=100)
    assert r.status in ("warn", NOT_MEASURED), (r.measured, r.causes)
    assert set(r.codes) <= {"slow-start", "not-learned", "eval-mode-differs"}
    assert "higher lr" in r.causes[0]


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_input_independent_catches_shuffled_labels_by_the_gradient_signal():
    """Training labels permuted, held-out labels intact: the held-out labels steer the ViT's gradient at
    init, the training labels (on 1024 images) do not; a slow learner cannot produce that."""
    from reproscope.data.shapes import generate_shapes
    from reproscope.model import create_model
    x, y = generate_shapes(1024 + 384, 32, seed=1)
    x = (x.float() / 255 - 0.5) / 0.25
    g = torch.Generator().manual_seed(0)
    train_y = y[:1024][torch.randperm(1024, generator=g)]
    data = CheckData(x[:1024], train_y, 10, lr=2e-3, val_x=x[1024:], val_y=y[1024:])
    r = one("input-independent", lambda: create_model("vit_quick", num_classes=10), data, max_steps=50)
    assert r.status == "fail" and r.codes == ["targets-uninformative"], (r.measured, r.causes, r.details["controls"])
    assert "gradient signal-to-noise control" in r.causes[0]


def test_paired_z_with_zero_standard_error_is_evidence_not_an_error():
    from reproscope.checks.training import paired_gain, z_of
    same = torch.full((16,), 2.3)
    assert z_of(*paired_gain(same, same)) == 0.0
    assert z_of(*paired_gain(same, same + 0.1)) == math.inf
    assert z_of(*paired_gain(same + 0.1, same)) == -math.inf


# ----------------------------------------------------------------------------- lr-range

def test_lr_range_does_not_measure_a_flat_curve(shapes):
    r = one("lr-range", ConstantOutput, shapes, steps=40)
    assert r.status == NOT_MEASURED and r.details["suggested_lr"] is None, (r.measured, r.causes)
    assert "the loss did not move over the sweep" in r.measured


def test_lr_range_suggests_nothing_below_where_the_loss_falls(shapes):
    r = one("lr-range", SmallCNN, shapes, steps=50)
    d = r.details
    assert r.status in ("pass", "warn") and d["fall_lr"] is not None, (r.measured, r.causes)
    assert d["suggested_lr"] >= d["fall_lr"] >= d["lrs"][0]
    assert "lr-past-minimum" not in r.codes or d["smoothed"][-1] > min(d["smoothed"])


# ----------------------------------------------------------------------------- no check raises

@pytest.mark.parametrize("make", [IgnoresInput, ConstantOutput], ids=["ignores-input", "constant-output"])
def test_no_check_raises_on_a_model_whose_output_ignores_its_input(shapes, make):
    data = CheckData(shapes.x[:96], shapes.y[:96], 10, lr=2e-3)
    data.quick = True
    results = run_checks(make, data)
    assert [r.name for r in results] == list(CHECKS)
    assert not [r.summary() for r in results if "check-crashed" in r.codes]
    by = {r.name: r for r in results}
    assert by["batch-independence"].status == NOT_MEASURED
    if make is IgnoresInput:
        assert by["input-independent"].codes == ["ignores-input"]


# ----------------------------------------------------------------------------- statuses, progress, CLI

def test_not_measured_is_neither_a_pass_nor_a_fail(monkeypatch, capsys):
    from reproscope.checks.core import CheckResult, not_measured, tally
    from reproscope.diagnostics import diagnose as dg
    from reproscope.recipes import get_recipe
    skip = not_measured("grad-flow", "too small", "x")
    assert skip.status == NOT_MEASURED and not skip.measured_ok and skip.summary().startswith("SKIP")
    results = [skip, CheckResult("data", "pass", "m", "e")]
    assert tally(results) == "1 passed, 0 warned, 0 failed, 1 not measured"
    monkeypatch.setattr(dg, "run_diagnosis", lambda *a, **k: results)
    assert dg.diagnose(get_recipe("quickstart"), "all") == 0
    assert "1 passed, 0 warned, 0 failed, 1 not measured" in capsys.readouterr().out
    results.append(CheckResult("lr-range", "fail", "m", "e"))
    assert dg.diagnose(get_recipe("quickstart"), "all") == 1


def test_run_checks_prints_a_line_per_check_and_progress_inside_long_ones(shapes, capsys, monkeypatch):
    import reproscope.runtime.progress as progress
    monkeypatch.setattr(progress.time, "perf_counter", _fast_clock())  # every step "takes" 6 s
    run_checks(SmallCNN, CheckData(shapes.x[:64], shapes.y[:64], 10, lr=2e-3), ["loss-at-init", "overfit-batch"],
               progress=True)
    out = capsys.readouterr().out.splitlines()
    verdicts = [line for line in out if line.lstrip().startswith("[")]
    assert len(verdicts) == 2 and verdicts[0].split()[2] == "loss-at-init" and " s " in verdicts[0]
    assert any("overfit-batch: memorising 16 images: step" in line and "loss" in line for line in out), out


def _fast_clock():
    t = [0.0]

    def clock():
        t[0] += 6.0
        return t[0]
    return clock


def test_diagnose_help_lists_the_checks_and_the_quick_tier(capsys):
    from reproscope.cli import main
    with pytest.raises(SystemExit):
        main(["diagnose", "--help"])
    out = capsys.readouterr().out
    assert "--quick" in out
    for name in list(CHECKS) + ["recipe-audit"]:
        assert f"  {name}" in out
    assert "input-independent " in out and "input-independent*" not in out


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_diagnose_all_quick_runs_the_quick_tier_with_a_line_per_check_and_a_tally(capsys, tmp_path):
    from reproscope.checks.core import in_quick_tier
    from reproscope.checks.zoo import ZOO_RECIPE_OVERRIDES
    from reproscope.cli import main
    sets = [x for k, v in ZOO_RECIPE_OVERRIDES.items() for x in ("--set", f"{k}={v}")]
    rc = main(["diagnose", "all", "--quick", *sets, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.lstrip().startswith("[")]
    ran = [ln[2] for ln in lines]
    assert ran == [n for n in CHECKS if in_quick_tier(n)] + ["recipe-audit"], out
    assert all(ln[1] in ("PASS", "WARN", "FAIL", "SKIP") and ln[4] == "s" for ln in lines)
    tail = out.strip().splitlines()[-1]
    n = {s: int(tail.split(f" {s}")[0].split()[-1]) for s in ("passed", "warned", "failed")}
    assert sum(n.values()) + int(tail.split(" not measured")[0].split()[-1]) == len(ran)
    assert rc == (1 if n["failed"] else 0) and n["failed"] == 0, out


# ----------------------------------------------------------------------------- other people's layers

class MultiBranchBlock(nn.Module):
    """MobileOne / RepVGG at training time: a BatchNorm of the input (the identity branch) plus conv
    branches, summed. Its input goes into a norm and into convs: not a pre-norm block."""

    def __init__(self, c):
        super().__init__()
        self.skip = nn.BatchNorm2d(c)
        self.conv3 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.conv1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(self.skip(x) + self.conv3(x) + self.conv1(x))


class MultiBranchNet(nn.Module):
    def __init__(self, num_classes=10, c=16):
        super().__init__()
        self.stem = ConvBNReLU(3, c, 2)
        self.blocks = nn.Sequential(*[MultiBranchBlock(c) for _ in range(3)])
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_a_norm_identity_branch_beside_convs_is_not_a_dropped_pre_norm_residual(shapes):
    r = one("init-scale", MultiBranchNet, shapes)
    assert r.status != "fail" and "residual-dropped" not in r.codes, (r.measured, r.causes)
    assert r.details["prenorm_without_skip"] == []


class ConvHeadNet(nn.Module):
    """A CNN whose classifier is a 1x1 Conv after global pooling (timm's DLA ``fc``), ``scale`` x its init."""

    def __init__(self, num_classes=10, c=32, scale=1.0):
        super().__init__()
        self.stem = ConvBNReLU(3, c, 2)
        self.blocks = nn.Sequential(*[ResBlock(c) for _ in range(2)])
        self.proj = nn.Linear(c, c)  # a Linear layer that is not the classifier
        self.fc = nn.Conv2d(c, num_classes, 1)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        h = self.proj(self.blocks(self.stem(x)).mean((2, 3)))  # [B, C]
        return self.fc(h[:, :, None, None]).flatten(1)  # [B, C, 1, 1] -> [B, K]


def test_a_conv_classifier_is_found_by_what_it_outputs(shapes):
    from reproscope.checks.model import _head_gain
    head, gain, _ = _head_gain(ConvHeadNet(), shapes.x, 10)
    assert head == "fc"
    warn = one("loss-at-init", lambda: ConvHeadNet(scale=8.0), shapes)
    big = one("loss-at-init", lambda: ConvHeadNet(scale=100.0), shapes)
    assert 1.6 < warn.details["ratio"] <= 4 and warn.status == "warn" and warn.codes == ["large-head-init"], warn.measured
    assert big.status == "fail" and "logits-too-large" in big.codes


class Affine(nn.Module):
    """ResMLP's Affine norm: alpha * x + beta, both per channel, no squash."""

    def __init__(self, dim):
        super().__init__()
        self.alpha, self.beta = nn.Parameter(torch.ones(1, 1, dim)), nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):
        return self.alpha * x + self.beta


class PerChannelDyT(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), 0.5))
        self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias


def test_a_per_channel_affine_is_not_dyt_and_a_per_channel_dyt_is_probed(tmp_path):
    from reproscope.instrument.hooks import ActivationStats
    from reproscope.model.layers import dyt_like
    assert not dyt_like(Affine(8)) and dyt_like(PerChannelDyT(8))
    model = nn.Sequential(nn.Linear(4, 8), PerChannelDyT(8), Affine(8), nn.Linear(8, 3))
    stats = ActivationStats(model, list(model.named_children()), samples=1, elements=16)
    stats.enabled = True
    model(torch.randn(2, 5, 4))  # [B, N, C]: the per-channel alpha broadcasts over C
    assert set(stats.saturation) == {"1"}


class AddThenConvBlock(nn.Module):
    """TinyViT's block: x + mixer(x), then a depthwise conv + BN on the sum (no skip around it), then x + mlp(x)."""

    def __init__(self, c):
        super().__init__()
        self.mixer = nn.Conv2d(c, c, 1)
        self.local = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c))
        self.mlp = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU(), nn.Conv2d(c, c, 1))

    def forward(self, x):
        x = x + self.mixer(x)
        x = self.local(x)
        return x + self.mlp(x)


class AddThenConvNet(MultiBranchNet):
    def __init__(self, num_classes=10, c=16):
        super().__init__(num_classes, c)
        self.blocks = nn.Sequential(*[AddThenConvBlock(c) for _ in range(3)])


def test_a_skip_that_does_not_reach_the_block_output_is_not_measured(shapes):
    r = one("init-scale", AddThenConvNet, shapes)
    assert r.status == "pass" and "residual-dropped" not in r.codes, (r.measured, r.causes)
    assert sorted(r.details["skip_not_at_output"]) == ["blocks.0", "blocks.1", "blocks.2"]
    assert "does not reach the output" in r.measured
    ok = one("init-scale", SmallCNN, shapes)  # relu(x + f(x)) carries the skip to the output: measured
    assert ok.details["skip_corr"] and not ok.details["skip_not_at_output"]


class FunctionalDropoutNet(SmallCNN):
    """timm's legacy SENet head: dropout applied functionally (``F.dropout(x, p, self.training)``), which no
    module walk can switch off."""

    def forward(self, x):
        h = self.blocks(self.stem(x)).mean((2, 3))
        return self.head(F.dropout(h, 0.2, self.training))


def test_a_functional_dropout_is_not_a_gradient_leak(shapes):
    r = one("overfit-batch", FunctionalDropoutNet, shapes)
    assert "grad-leak" not in r.codes and r.details["grad_leak"] < 1e-4, (r.measured, r.causes)


class DeadReLUHead(SmallCNN):
    """SqueezeNet's ending (classifier -> ReLU) with every unit dead: each output exactly 0."""

    def __init__(self, **kw):
        super().__init__(**kw)
        with torch.no_grad():
            self.head.bias.fill_(-100.0)

    def forward(self, x):
        return F.relu(super().forward(x))


def test_dead_outputs_are_a_warning_that_names_them_not_softmax_or_an_ignored_input(shapes):
    r = one("overfit-batch", DeadReLUHead, shapes)
    assert r.status == "warn" and r.codes[0] == "outputs-dead", (r.measured, r.causes)
    r = one("input-independent", DeadReLUHead, shapes, max_steps=20)
    assert r.status == "warn" and "outputs-dead" in r.codes and "ignores-input" not in r.codes, (r.measured, r.causes)


def test_result_lines_fit_the_terminal_without_splitting_words():
    from reproscope.checks.core import CheckResult, verdict_line
    from reproscope.diagnostics.diagnose import format_results
    long = " ".join(f"word{i}" for i in range(60))
    r = CheckResult("overfit-batch", "fail", long, "loss < 0.1 " * 8, "why " * 40, ["cause " * 50], {}, ["plateau"])
    text = format_results([r, CheckResult("data", "pass", "ok", "ok")], width=90)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 90 and lines[-1].strip().startswith("cause")
    words = text.split()
    assert all(f"word{i}" in words for i in range(60))  # every word whole, none split across lines
    line = verdict_line(3, 12, r, 1.5, width=90)
    assert len(line) <= 90 and line.endswith(" ...") and line.split()[-2].startswith("word")
