"""Every registered model: output shape, finite grads everywhere, no NaN at init, compile parity.

Small inputs keep this fast on CPU; the big sizes get shape-only and parameter-count checks.
"""

import pytest
import torch
import torch.nn as nn

from reproscope.model import DyT, convert_norm_to_dyt, create_model, list_models, model_info

SMALL = [n for n in list_models() if not any(s in n for s in ("large", "base", "small", "_kobe"))]
SMALL_KW = {"num_classes": 5, "img_size": 32}


def _small(name):
    kw = dict(SMALL_KW)
    if name.startswith(("convnext", "mambaout")):
        kw["patch_size"] = 2
    elif name != "vit_quick":
        kw["patch_size"] = 8
    return create_model(name, **kw)


@pytest.mark.parametrize("name", SMALL)
def test_shape_finite_grads_no_nan(name):
    torch.manual_seed(0)
    m = _small(name)
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, f"{name}: {n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {n} has a non-finite gradient"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("kat") else n
                                  for n in SMALL])  # KAT's rationals compile for ~10 s on 2 cores
def test_compile_fullgraph_matches_eager(name):
    torch.manual_seed(0)
    m = _small(name).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.parametrize("name", list_models())
def test_param_count_within_1pct_of_paper(name):
    info = model_info(name)
    if info.paper_params_m is None:
        pytest.skip("no paper count for this size")
    with torch.device("meta"):
        m = create_model(name)
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert abs(n - info.paper_params_m) / info.paper_params_m < 0.01, (n, info.paper_params_m)


def test_accepts_drop_path_and_small_resolutions():
    for name in SMALL:
        m = create_model(name, num_classes=3, img_size=64, drop_path_rate=0.1,
                         **({"patch_size": 8} if name.startswith("vit") else {}))
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_mambaout_kernel_size_reaches_every_token_mixer_and_even_sizes_are_refused():
    """model.kernel_size (the MambaOut kernel ablation): every Gated CNN block's depthwise conv takes it,
    the map size is kept, the default stays the paper's 7; an even size or a model without it is refused."""
    from reproscope.config import ConfigError, ModelConfig
    from reproscope.model.build import build_model
    from reproscope.model.mambaout import GatedCNNBlock

    def mixers(model):
        return [b.conv.kernel_size for b in model.modules() if isinstance(b, GatedCNNBlock)]
    m = build_model(ModelConfig(name="mambaout_quick", kernel_size=3), 10, 32)
    assert mixers(m) == [(3, 3)] * 9  # depths (2, 2, 3, 2)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert set(mixers(create_model("mambaout_femto"))) == {(7, 7)}
    with pytest.raises(ConfigError, match="model.kernel_size must be odd"):
        build_model(ModelConfig(name="mambaout_quick", kernel_size=4), 10, 32)
    with pytest.raises(ConfigError, match="model.kernel_size=3 is not an option of model.name='vit_quick'"):
        build_model(ModelConfig(name="vit_quick", kernel_size=3), 10, 32)


def test_convert_norm_to_dyt_swaps_only_layernorms():
    m = create_model("convnext_tiny", num_classes=4, patch_size=2)
    n_ln = sum(isinstance(x, nn.LayerNorm) for x in m.modules())
    extra = nn.Sequential(m, nn.BatchNorm1d(4))
    swapped = convert_norm_to_dyt(extra)
    assert len(swapped) == n_ln == 1 + 3 + 18 + 1  # stem, 3 downsamples, 18 blocks, head
    assert not any(isinstance(x, nn.LayerNorm) for x in extra.modules())
    assert isinstance(extra[1], nn.BatchNorm1d)
    # same function as building with norm="dyt" directly
    ref = create_model("convnext_tiny", num_classes=4, patch_size=2, norm="dyt")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), ref(x))


def test_convert_handles_timm_layernorm2d():
    timm = pytest.importorskip("timm")
    m = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    swapped = convert_norm_to_dyt(m)
    assert any(t == "LayerNorm2d" for _, t in swapped)
    assert sum(isinstance(x, DyT) for x in m.modules()) == len(swapped)
    assert torch.isfinite(m(torch.randn(1, 3, 64, 64))).all()


BIG = [n for n in list_models() if n not in SMALL]


@pytest.mark.slow
@pytest.mark.parametrize("name", BIG)
def test_big_model_output_shape(name):
    m = create_model(name, num_classes=3, img_size=32).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


class _RefLayerNorm(nn.Module):
    """The ConvNeXt reference's LayerNorm: not an nn.LayerNorm, channels given by data_format."""

    def __init__(self, c, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.eps, self.data_format, self.normalized_shape = eps, data_format, (c,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class _ChannelsFirstLN(nn.LayerNorm):
    """A channels-first LayerNorm whose class name does not end in 2d."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [B, C, H, W] <-> [B, H, W, C]


def test_convert_norm_to_dyt_finds_the_axis_and_says_what_it_left():
    """The issue's inputs: GroupNorm(1, C) (MetaFormer), the ConvNeXt reference's channels-first LayerNorm,
    a channels-first subclass not named *2d; BatchNorm and GroupNorm(4, C) left alone with reasons."""
    m = nn.Sequential(nn.GroupNorm(1, 8), _RefLayerNorm(8, data_format="channels_first"), _ChannelsFirstLN(8),
                      nn.BatchNorm2d(8), nn.GroupNorm(4, 8), nn.Flatten(2), nn.LayerNorm((8, 8)))
    out = convert_norm_to_dyt(m)
    assert [n for n, _ in out] == ["0", "1", "2"]
    assert all(isinstance(m[i], DyT) and not m[i].channels_last for i in range(3))
    left = {n: why for n, _, why in out.left_alone}
    assert set(left) == {"3", "4", "6"} and "BatchNorm" in left["3"] and "4 groups" in left["4"]
    x = torch.randn(2, 8, 5, 7)
    assert m[2](x).shape == x.shape  # a channels-first DyT on [B, C, H, W] (8 is neither 5 nor 7)
    last = nn.Sequential(_RefLayerNorm(8), _ChannelsFirstLN(6))
    convert_norm_to_dyt(last)
    assert last[0].channels_last and not last[1].channels_last


def test_models_table_without_flops_counts_every_model_kat_included(capsys):
    """`reproscope models --no-flops` builds on the meta device; KAT's init reads values there
    (RuntimeError: Tensor.item() on meta tensors) and is built on the CPU instead of crashing."""
    from reproscope.cli import main
    assert main(["models", "--no-flops"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert set(list_models()) <= set(rows) and "5.72M" in rows["kat_tiny"]
