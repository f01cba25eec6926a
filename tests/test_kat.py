import math

import pytest
import torch

from reproscope.model import create_model
from reproscope.model.kat import (
    GRKAN,
    GroupRational,
    KANLinear,
    fit_coefficients,
    rational,
    rational_reference,
    variance_gain,
)


def _coeffs(g=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(g, 6, generator=gen, dtype=torch.float64) * 0.5,
            torch.randn(g, 4, generator=gen, dtype=torch.float64) * 0.5)


def test_rational_matches_direct_float64_formula():
    a, b = _coeffs()
    x = torch.randn(3, 7, 64, dtype=torch.float64) * 2
    torch.testing.assert_close(rational(x, a, b), rational_reference(x, a, b), rtol=1e-12, atol=1e-12)


def test_groups_use_their_own_coefficients():
    a, b = _coeffs()
    x = torch.randn(5, 64, dtype=torch.float64)
    y = rational(x, a, b)
    # channel block k (8 channels each) must equal the scalar formula with group k's coefficients
    for k in range(8):
        sl = slice(8 * k, 8 * k + 8)
        torch.testing.assert_close(y[:, sl], rational_reference(x[:, sl], a[k:k + 1], b[k:k + 1]))


@pytest.mark.parametrize("denominator", ["paper", "abs_terms", "signed_terms"])
def test_gradcheck_float64(denominator):
    a, b = _coeffs(g=2)
    x = torch.randn(3, 4, dtype=torch.float64) + 0.3  # away from the |.| kink at q = 0
    args = (x.requires_grad_(), a.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, a, b: rational(x, a, b, denominator), args)


def test_denominator_variants_differ_as_documented():
    a = torch.tensor([[0.0, 1.0, 0, 0, 0, 0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)
    x = torch.tensor([[-0.5]], dtype=torch.float64)
    assert rational(x, a, b, "paper").item() == pytest.approx(-0.5 / 1.5)
    assert rational(x, a, b, "abs_terms").item() == pytest.approx(-0.5 / 1.5)
    assert rational(x, a, b, "signed_terms").item() == pytest.approx(-0.5 / 0.5)  # 1 + |b1| x shrinks


def test_identity_init_is_identity_on_minus3_3():
    m = GroupRational(16, init="identity").double()
    x = torch.linspace(-3, 3, 16 * 50, dtype=torch.float64).reshape(50, 16)
    torch.testing.assert_close(m(x), x, rtol=0, atol=4e-6)  # fit error: b = 1e-8, see fit_coefficients


def test_identity_init_denominator_still_trains():
    m = GroupRational(16, init="identity")
    m(torch.randn(8, 16)).pow(2).sum().backward()
    assert (m.b.grad.abs() > 0).all()


@pytest.mark.parametrize("denominator", ["paper", "abs_terms", "signed_terms"])
def test_swish_fit_error_bounds(denominator):
    """As good as the public code's fit (1.2e-6 on [-3, 3], 0.049 on [-8, 8]) for every form."""
    a, b = (torch.tensor([c], dtype=torch.float64) for c in fit_coefficients("swish", denominator))

    def err(r):
        x = torch.linspace(-r, r, 20001, dtype=torch.float64)[:, None]
        return (rational(x, a, b, denominator) - x * torch.sigmoid(x)).abs().max().item()
    assert err(3) < 1e-5, err(3)
    assert err(8) < 0.06, err(8)
    assert err(12) > 0.1  # outside the fit interval nothing holds the fit (documented in fit_coefficients)


def test_only_the_papers_targets_are_fitted():
    with pytest.raises(ValueError, match="only 'identity' and 'swish'"):
        fit_coefficients("gelu")


def test_swish_init_module_matches_its_fit():
    m = GroupRational(8, init="swish").double()
    x = torch.linspace(-3, 3, 8 * 250, dtype=torch.float64).reshape(250, 8)
    assert (m(x) - x * torch.sigmoid(x)).abs().max().item() < 1e-5


def test_variance_gain_reproduces_paper_table3():
    assert variance_gain("swish") == pytest.approx(2.8178, abs=0.02)
    assert variance_gain("gelu") == pytest.approx(2.3568, abs=0.02)
    assert variance_gain("identity") == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("init", ["identity", "swish"])
def test_grkan_layer_preserves_variance_at_init(init):
    torch.manual_seed(0)
    layer = KANLinear(384, 384, init, groups=8, denominator="paper", share_numerator=False, linear_init="variance")
    layer.reset_linear()
    x = torch.randn(4096, 384)
    ratio = layer(x).var().item() / x.var().item()
    assert 0.85 < ratio < 1.15, ratio


def test_trunc_normal_alternative_does_not_preserve_variance():
    torch.manual_seed(0)
    layer = KANLinear(384, 384, "swish", 8, "paper", False, linear_init="trunc_normal")
    layer.reset_linear()
    x = torch.randn(4096, 384)
    assert layer(x).var().item() / x.var().item() < 0.5


def test_kat_model_uses_paper_init_and_shared_numerator_option():
    m = create_model("kat_tiny", num_classes=10, img_size=32, patch_size=8)
    w = m.blocks[0].mlp.layer2.fc.weight
    assert w.std().item() == pytest.approx(math.sqrt(variance_gain("swish") / 768), rel=0.05)
    shared = create_model("kat_tiny", num_classes=10, img_size=32, patch_size=8, share_numerator=True)
    assert shared.blocks[0].mlp.layer1.rational.a.shape == (1, 6)
    assert m.blocks[0].mlp.layer1.rational.a.shape == (8, 6)
    assert isinstance(m.blocks[0].mlp, GRKAN)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["kat_tiny", "kat_tiny_public"])
def test_identity_then_swish_in_every_block(name):
    """As the public code: the rational before fc1 starts as the identity, the one before fc2 as Swish."""
    m = create_model(name, num_classes=10, img_size=32, patch_size=8)
    x = torch.linspace(-3, 3, 192 * 4).reshape(4, 192)
    for blk in m.blocks:
        assert (blk.mlp.layer1.rational.init, blk.mlp.layer2.rational.init) == ("identity", "swish")
        torch.testing.assert_close(blk.mlp.layer1.rational(x), x, rtol=0, atol=1e-5)
        assert (blk.mlp.layer1.rational.b == 1e-8).all()  # not 0: see fit_coefficients


def _public_formula(x, a, b):
    """The public code's GPU kernel, re-derived from its description (not copied): one numerator for
    every group, per-group denominators 1 + sum_i |b_i| |x|^i."""
    g = b.shape[0]
    xg = x.reshape(*x.shape[:-1], g, x.shape[-1] // g)
    num = sum(a[0, k] * xg ** k for k in range(6))
    den = 1 + sum(b[:, k - 1:k].abs() * xg.abs() ** k for k in range(1, 5))
    return (num / den).reshape(x.shape)


def test_public_variant_is_the_public_formula_with_all_flags():
    torch.manual_seed(0)
    m = create_model("kat_tiny_public", num_classes=10, img_size=32, patch_size=8).double()
    mlp = m.blocks[3].mlp
    for layer, init in ((mlp.layer1, "identity"), (mlp.layer2, "swish")):
        r = layer.rational
        assert (r.denominator, r.a.shape[0], r.init) == ("abs_terms", 1, init)
        with torch.no_grad():
            r.b.add_(torch.randn_like(r.b) * 0.3)  # away from init: every coefficient matters
            r.a.add_(torch.randn_like(r.a) * 0.3)
        x = torch.randn(4, 5, r.b.shape[0] * 24, dtype=torch.float64) * 3
        torch.testing.assert_close(r(x), _public_formula(x, r.a, r.b), rtol=1e-12, atol=1e-12)
    assert 0.015 < mlp.layer1.fc.weight.std().item() < 0.025  # trunc_normal(0.02), not the variance init


@pytest.mark.parametrize("name", ["vit_tiny", "kat_tiny"])
def test_mimetic_attention_init(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, img_size=32, patch_size=8, attn_init="mimetic")
    c, h = 192, 3
    for blk in m.blocks:
        w = blk.attn.qkv.weight.double()
        wq, wk, wv = w[:c], w[c:2 * c], w[2 * c:]
        vo = blk.attn.proj.weight.double() @ wv  # W_proj W_v ~ 0.4 Z - 0.4 I
        assert vo.diagonal().mean().item() == pytest.approx(-0.4, abs=0.02)
        off = vo - torch.diag(vo.diagonal())
        assert off.std().item() == pytest.approx(0.4 / c ** 0.5, rel=0.1)
        d = c // h
        for i in range(h):  # each head's W_q^T W_k: a positive diagonal
            qk = wq[i * d:(i + 1) * d].T @ wk[i * d:(i + 1) * d]
            assert qk.diagonal().mean().item() > 0.2
    base = create_model(name, num_classes=10, img_size=32, patch_size=8)
    vo0 = base.blocks[0].attn.proj.weight @ base.blocks[0].attn.qkv.weight[2 * c:]
    assert abs(vo0.diagonal().mean().item()) < 0.01  # the default init has no such structure
