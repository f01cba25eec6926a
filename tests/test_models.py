import math

import pytest
import torch
import torch.nn as nn

from reproscope.model import DyT, create_model, list_models
from reproscope.model.vit import VisionTransformer, ViTConfig


def test_dyt_formula():
    torch.manual_seed(0)
    m = DyT(8, alpha0=0.7)
    with torch.no_grad():
        m.weight.copy_(torch.randn(8))
        m.bias.copy_(torch.randn(8))
    x = torch.randn(2, 5, 8) * 3
    expect = m.weight * torch.tanh(0.7 * x) + m.bias
    torch.testing.assert_close(m(x), expect)


def test_dyt_init_and_shapes():
    m = DyT(16)
    assert m.alpha.shape == (1,) and m.alpha.item() == 0.5
    assert m.weight.shape == (16,) and torch.all(m.weight == 1)
    assert m.bias.shape == (16,) and torch.all(m.bias == 0)
    x = torch.randn(3, 16, 4, 4)
    y = DyT(16, channels_last=False)(x)
    torch.testing.assert_close(y, torch.tanh(0.5 * x))


@pytest.mark.parametrize("squash, fn", [("tanh", torch.tanh), ("hardtanh", nn.functional.hardtanh),
                                        ("sigmoid", torch.sigmoid), ("identity", lambda v: v)])
def test_dyt_squash_variants(squash, fn):
    x = torch.linspace(-4, 4, 33)
    torch.testing.assert_close(DyT(33, alpha0=1.0, squash=squash)(x), fn(x))


def test_dyt_without_alpha_is_frozen():
    m = DyT(4, alpha0=1.0, learn_alpha=False)
    assert not m.alpha.requires_grad


def _n_norms(model):
    return sum(isinstance(m, (nn.LayerNorm, DyT)) for m in model.modules())


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_ln_and_dyt_vit_param_counts_differ_only_by_alphas(pool):
    kw = dict(img_size=32, patch_size=8, num_classes=10, dim=64, depth=3, num_heads=4, global_pool=pool)
    ln = VisionTransformer(ViTConfig(norm="ln", **kw))
    dyt = VisionTransformer(ViTConfig(norm="dyt", **kw))
    n_ln = sum(p.numel() for p in ln.parameters())
    n_dyt = sum(p.numel() for p in dyt.parameters())
    assert not any(isinstance(m, nn.LayerNorm) for m in dyt.modules())  # every norm replaced
    n_dyt_layers = sum(isinstance(m, DyT) for m in dyt.modules())
    assert n_dyt_layers == _n_norms(ln) == 2 * 3 + 1  # two per block and the final one
    assert n_dyt - n_ln == n_dyt_layers  # one alpha scalar per DyT layer


def test_vit_forward_shapes_and_patch_sizes():
    for ps in (4, 8):
        m = create_model("vit_quick", num_classes=7, patch_size=ps)
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    m = create_model("vit_quick", num_classes=5, img_size=64, patch_size=8)
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_vit_base_param_count_matches_paper():
    with torch.device("meta"):
        m = create_model("vit_base")
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert abs(n - 86.6) / 86.6 < 0.01


def test_registry_lists_and_rejects_unknown():
    assert {"vit_tiny", "vit_small", "vit_base", "vit_large", "vit_quick"} <= set(list_models())
    from reproscope.config import ConfigError
    with pytest.raises(ConfigError, match="did you mean 'vit_base'"):
        create_model("vit_bsae")


def test_no_weight_decay_on_1d_pos_cls():
    from reproscope.train.optim import no_decay_names
    m = create_model("vit_quick", num_classes=10, norm="dyt")
    nd = no_decay_names(m)
    assert {"pos_embed", "cls_token", "norm.alpha", "blocks.0.norm1.weight", "head.bias"} <= nd
    assert "blocks.0.attn.qkv.weight" not in nd and "head.weight" not in nd
    assert not math.isnan(m(torch.randn(1, 3, 32, 32)).sum().item())


def test_flop_count_includes_attention_on_cpu():
    """torch's counter has no formula for the CPU attention kernel; ours adds its two matmuls."""
    import torch.nn.functional as F

    from reproscope.model.counting import count_flops

    class OnlyAttention(torch.nn.Module):
        def forward(self, x):  # [1, 3, 16, 16] -> q = k = v: [1, 3 heads, 16 tokens, 16 dims]
            q = x.reshape(1, 3, 16, 16)
            return F.scaled_dot_product_attention(q, q, q)
    assert count_flops(OnlyAttention(), 16) == 2 * (2 * 3 * 16 * 16 * 16)
    vit_b = count_flops(create_model("vit_base"), 224)
    assert vit_b == pytest.approx(35.13e9, rel=1e-3)  # 33.70e9 without the attention products
