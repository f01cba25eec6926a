"""reproscope align on public-style re-implementations (issue 36): layers written the ways real code
writes them, each dropped into a small ViT (or ConvNeXt) and held against reproscope's own models.

REF is ``vit_quick`` with DyT (width 96, 4 blocks, patch 8 at 32 px), ``kat_quick`` (GR-KAN MLPs,
LayerNorm) or a one-block-per-stage ConvNeXt with DyT. MINE is written here, in other styles: its own
names and nesting, parameters declared in other orders, split or fused qkv, einops or reshape. Faithful
variants must AGREE; each deviation must be reported with its code and module names (tests assert codes
and names, not wording).
"""

import textwrap

import pytest
import torch

from reproscope.diagnostics.align import AlignInputError, align

REF = """
from reproscope.model import create_model
from reproscope.model.convnext import _convnext

def vit_dyt(num_classes=10, img_size=32):
    return create_model("vit_quick", num_classes=num_classes, img_size=img_size, norm="dyt")

def kat(num_classes=10, img_size=32):
    return create_model("kat_quick", num_classes=num_classes, img_size=img_size)

def convnext_dyt(num_classes=10, img_size=32):
    return _convnext((1, 1, 1, 1), (16, 32, 48, 64), num_classes=num_classes, norm="dyt", patch_size=2)
"""

VIT = """
import torch, torch.nn as nn, torch.nn.functional as F
from einops import rearrange
NORM, ATTN, MLP, HEAD, TOKEN = "{norm}", "{attn}", "{mlp}", {head}, {token}


# ---- DyT, y = weight * tanh(alpha * x) + bias, as re-implementations write it
class DyT(nn.Module):  # the paper's order and names
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1) * alpha0)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias

class DyTReordered(nn.Module):  # shift declared first, alpha last
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.weight = nn.Parameter(torch.ones(dim))
        self.alpha = nn.Parameter(torch.full((1,), alpha0))
    def forward(self, x):
        return torch.tanh(self.alpha * x) * self.weight + self.bias

class DyTScaleShift(nn.Module):  # other names, shift declared first
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(dim))
        self.alpha = nn.Parameter(torch.full((1,), alpha0))
    def forward(self, x):
        return self.scale * torch.tanh(self.alpha * x) + self.shift

class DyTSwapped(nn.Module):  # beta is the scale, gamma the shift
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([alpha0]))
        self.beta = nn.Parameter(torch.ones(dim))
        self.gamma = nn.Parameter(torch.zeros(dim))
    def forward(self, x):
        return self.beta * torch.tanh(self.a * x) + self.gamma

class DyTPlain(nn.Module):  # plain tensor attributes: never trained, not saved, not moved
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.alpha = torch.ones(1) * alpha0
        self.weight = torch.ones(dim)
        self.bias = torch.zeros(dim)
    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias

class DyTPerChannel(nn.Module):  # alpha per channel where the paper has a scalar
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), alpha0))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias

class DyTNoBias(nn.Module):
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1) * alpha0)
        self.weight = nn.Parameter(torch.ones(dim))
    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x)

class DyTInplace(nn.Module):  # saves memory, and squashes the caller's tensor (the residual stream)
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1) * alpha0)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
    def forward(self, x):
        x.mul_(self.alpha).tanh_()
        return x * self.weight + self.bias

class DyTBetaOnes(nn.Module):  # planted bug: the shift beta starts at ones
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(dim))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.alpha = nn.Parameter(torch.ones(1) * alpha0)
    def forward(self, x):
        return self.gamma * torch.tanh(self.alpha * x) + self.beta

class DyTSwappedBetaOnes(nn.Module):  # beta the scale, gamma the shift starting at ones (bug)
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([alpha0]))
        self.beta = nn.Parameter(torch.ones(dim))
        self.gamma = nn.Parameter(torch.ones(dim))
    def forward(self, x):
        return self.beta * torch.tanh(self.a * x) + self.gamma

class DyTSoftsign(nn.Module):  # both bugs of DyTSwappedBetaOnes, and softsign for tanh: pairing undecidable
    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([alpha0]))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.ones(dim))
    def forward(self, x):
        return self.beta * F.softsign(self.a * x) + self.gamma

def LN(dim):
    return nn.LayerNorm(dim, eps=1e-6)

def LN5(dim):  # planted: torch's default eps, where REF's is 1e-6
    return nn.LayerNorm(dim)


# ---- attention
class AttnReshape(nn.Module):  # fused qkv, reshape/permute, explicit softmax
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # [B, h, N, N]
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))

class AttnSplit(nn.Module):  # separate q, k, v projections
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
    def forward(self, x):
        q, k, v = (rearrange(f(x), "b n (h d) -> b h n d", h=self.heads) for f in (self.to_q, self.to_k, self.to_v))
        w = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
        out = torch.einsum("bhij,bhjd->bhid", w.softmax(-1), v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

class AttnEinops(nn.Module):  # fused qkv, einops, F.scaled_dot_product_attention
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.out = nn.Linear(dim, dim)
    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (k h d) -> k b h n d", k=3, h=self.heads)
        return self.out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))


# ---- MLPs: GELU, and GR-KAN (group-wise rational, KAT)
class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1, self.w2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
    def forward(self, x):
        return self.w2(F.gelu(self.w1(x)))

SWISH = ([3.262758e-07, 0.5, 0.2499974, 0.05326513, 0.005802545, 0.0002751339],
         [7.735368e-09, 0.1065303, 7.501964e-10, 0.0005502678])  # the paper's F2 init: a fit of x * sigmoid(x)

class Rational(nn.Module):
    # P(x) / Q(x) per group of channels; P degree 5, Q = 1 + |b1 x + ... + b4 x^4| (the paper's)
    def __init__(self, dim, groups=8, pole_prone=False, init="identity"):
        super().__init__()
        self.groups, self.pole_prone = groups, pole_prone
        a, b = ([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1e-8] * 4) if init == "identity" else SWISH
        self.numerator = nn.Parameter(torch.tensor([a] * groups))  # [g, 6]
        self.denominator = nn.Parameter(torch.tensor([b] * groups))  # [g, 4]
    def forward(self, x):
        xg = x.view(*x.shape[:-1], self.groups, x.shape[-1] // self.groups)  # [..., g, C/g]
        p = sum(self.numerator[:, i:i + 1] * xg ** i for i in range(6))
        q = sum(self.denominator[:, i - 1:i] * xg ** i for i in range(1, 5))
        q = q if self.pole_prone else 1 + q.abs()  # pole-prone: Q = sum b_i x^i, no 1 +, no abs
        return (p / q).reshape(x.shape)

class KANMlp(nn.Module):  # fc2(F2(fc1(F1(x)))), the paper's GR-KAN
    # paper_init: F1 identity, F2 Swish, linears N(0, gain / d_in) (gain 1 and 2.8108); else the identity
    # for both and the ViT's trunc_normal(0.02) linears, as many re-implementations start it
    def __init__(self, dim, hidden, pole_prone=False, groups=8, paper_init=True):
        super().__init__()
        self.paper_init = paper_init
        self.f1, self.fc1 = Rational(dim, groups, pole_prone), nn.Linear(dim, hidden)
        self.f2 = Rational(hidden, groups, pole_prone, "swish" if paper_init else "identity")
        self.fc2 = nn.Linear(hidden, dim)
    def reset_linears(self):  # called by the model after its own init
        if self.paper_init:
            for fc, gain in ((self.fc1, 1.0), (self.fc2, 2.8108)):
                nn.init.normal_(fc.weight, std=(gain / fc.in_features) ** 0.5)
                nn.init.zeros_(fc.bias)
    def forward(self, x):
        return self.fc2(self.f2(self.fc1(self.f1(x))))

class KANMlpOneLinear(nn.Module):  # another structure: F2(fc(F1(x))), no hidden expansion
    def __init__(self, dim, hidden):
        super().__init__()
        self.f1, self.fc, self.f2 = Rational(dim), nn.Linear(dim, dim), Rational(dim)
    def forward(self, x):
        return self.f2(self.fc(self.f1(x)))


# ---- the model
NORMS = dict(dyt=DyT, reordered=DyTReordered, scale_shift=DyTScaleShift, swapped=DyTSwapped, plain=DyTPlain,
             per_channel=DyTPerChannel, no_bias=DyTNoBias, inplace=DyTInplace, beta_ones=DyTBetaOnes,
             swapped_beta_ones=DyTSwappedBetaOnes, softsign=DyTSoftsign, ln=LN, ln_eps5=LN5,
             alpha_one=lambda d: DyT(d, alpha0=1.0))  # planted: alpha starts at 1.0, REF's at 0.5
ATTNS = dict(reshape=AttnReshape, split=AttnSplit, einops=AttnEinops)
MLPS = dict(gelu=Mlp, kan=KANMlp, kan_pole=lambda d, h: KANMlp(d, h, pole_prone=True), kan_one=KANMlpOneLinear,
            kan_identity=lambda d, h: KANMlp(d, h, paper_init=False), kan_g4=lambda d, h: KANMlp(d, h, groups=4))

class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.mlp = MLPS[MLP](dim, 4 * dim)  # declared before the attention, run after it
        self.ln1, self.attention, self.ln2 = NORMS[NORM](dim), ATTNS[ATTN](dim, heads), NORMS[NORM](dim)
    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))

class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, dim=96, depth=4, heads=4, patch=8):
        super().__init__()
        self.to_patches = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if TOKEN:  # one more learned token added to the class token (REF has none)
            self.extra_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (img_size // patch) ** 2 + 1, dim) * 0.02)
        self.layers = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.final = NORMS[NORM](dim)
        self.fc = nn.Linear(dim, HEAD or num_classes)
        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, KANMlp):
                m.reset_linears()
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.trunc_normal_(self.pos, std=0.02)
    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    def forward(self, x):
        x = self.to_patches(x).flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, N, C]
        cls = self.cls_token + self.extra_token if TOKEN else self.cls_token
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.fc(self.final(x)[:, 0])

def make(num_classes=10, img_size=32):
    return ViT(num_classes, img_size)
"""

CONVNEXT = """
import torch, torch.nn as nn, torch.nn.functional as F
NORM2D = "{norm}"

class DyT(nn.Module):  # channels-last: [..., C]
    def __init__(self, c):
        super().__init__()
        self.alpha, self.weight, self.bias = (nn.Parameter(torch.tensor([0.5])), nn.Parameter(torch.ones(c)),
                                              nn.Parameter(torch.zeros(c)))
    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias

class DyT2d(nn.Module):  # channels-first [B, C, H, W]: parameters stored [C, 1, 1], shift declared first, 0-dim alpha
    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(c, 1, 1))
        self.weight = nn.Parameter(torch.ones(c, 1, 1))
        self.alpha = nn.Parameter(torch.tensor(0.5))
    def forward(self, x):
        return torch.tanh(self.alpha * x) * self.weight + self.bias

class DyT2dScrambled(DyT):  # to channels-last and never back: reshaped, not permuted
    def forward(self, x):
        B, C, H, W = x.shape
        return super().forward(x.permute(0, 2, 3, 1)).reshape(B, C, H, W)

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = DyT(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))
    def forward(self, x):
        y = self.pw2(F.gelu(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))  # [B, H, W, C]
        return x + (y * self.gamma).permute(0, 3, 1, 2)

class Student(nn.Module):
    def __init__(self, num_classes=10, dims=(16, 32, 48, 64)):
        super().__init__()
        N2 = dict(dyt2d=DyT2d, scrambled=DyT2dScrambled)[NORM2D]
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 2, 2), N2(dims[0]))
        self.stages = nn.ModuleList()
        for i, c in enumerate(dims):
            down = nn.Identity() if i == 0 else nn.Sequential(DyT2d(dims[i - 1]), nn.Conv2d(dims[i - 1], c, 2, 2))
            self.stages.append(nn.Sequential(down, Block(c)))
        self.head_norm, self.fc = DyT(dims[-1]), nn.Linear(dims[-1], num_classes)
        for m in self.modules():  # REF's init: trunc_normal(0.02) convs and linears, zero biases
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
    def forward(self, x):
        x = self.stem(x)
        for s in self.stages:
            x = s(x)
        return self.fc(self.head_norm(x.mean((2, 3))))

def make(num_classes=10, img_size=32):
    return Student(num_classes)
"""


def case_specs(tmp_path, family: str, norm: str = "dyt", attn: str = "reshape", mlp: str = "gelu", head=None,
               token=False):
    """(MINE spec, REF spec): MINE written to ``tmp_path`` from ``VIT`` (family "vit" against vit_quick with
    DyT, "kat" against kat_quick) or ``CONVNEXT`` ("convnext")."""
    (tmp_path / "ref.py").write_text(textwrap.dedent(REF))
    src = CONVNEXT if family == "convnext" else VIT
    src = src.replace("{norm}", norm).replace("{attn}", attn).replace("{mlp}", mlp).replace("{head}", repr(head))
    src = src.replace("{token}", repr(token))
    mine = tmp_path / f"mine_{family}_{norm}_{attn}_{mlp}_{head}_{token}.py"
    mine.write_text(textwrap.dedent(src))
    ref = {"vit": "vit_dyt", "kat": "kat", "convnext": "convnext_dyt"}[family]
    return f"{mine}:make", f"{tmp_path / 'ref.py'}:{ref}"


def run(tmp_path, family="vit", **kw):
    mine, ref = case_specs(tmp_path, family, **kw)
    return align(mine, ref, img_size=32, num_classes=10)


# ----------------------------------------------------------------------------- faithful controls: AGREE

@pytest.mark.parametrize("norm, attn", [("dyt", "reshape"), ("reordered", "reshape"), ("scale_shift", "reshape"),
                                        ("swapped", "split"), ("reordered", "einops"), ("dyt", "split")])
def test_faithful_re_implementations_in_other_styles_agree(tmp_path, norm, attn):
    r = run(tmp_path, norm=norm, attn=attn)
    assert r.agree, (r.codes, r.findings, r.forward)
    assert not r.init, r.init  # the same init, paired by role
    assert not any(f.code == "pairing-ambiguous" for f in r.findings)


def test_swapped_names_pair_by_role(tmp_path):
    r = run(tmp_path, norm="swapped")
    assert r.mapping["layers.0.ln1.beta"] == "blocks.0.norm1.weight"  # beta is the scale here
    assert r.mapping["layers.0.ln1.gamma"] == "blocks.0.norm1.bias"
    assert r.mapping["final.a"] == "norm.alpha"


def test_reordered_declarations_pair_by_role(tmp_path):
    r = run(tmp_path, norm="reordered")
    assert r.mapping["layers.2.ln2.bias"] == "blocks.2.norm2.bias"
    assert r.mapping["layers.2.ln2.weight"] == "blocks.2.norm2.weight"
    r = run(tmp_path, norm="scale_shift")  # names that look like the other role: "shift" is nearer "weight"
    assert r.mapping["layers.2.ln2.shift"] == "blocks.2.norm2.bias"
    assert r.mapping["final.scale"] == "norm.weight"
    assert "paired-by-role" in r.codes and r.agree


def test_a_faithful_gr_kan_written_another_way_agrees(tmp_path):
    r = run(tmp_path, "kat", norm="ln", mlp="kan")
    assert r.forward is None and r.backward is None and r.agree, (r.codes, r.forward, r.backward)
    assert r.verdict == "agree" and not r.init, r.init  # the paper's init too: F2 Swish, N(0, gain / d_in) linears
    assert r.mapping["layers.0.mlp.f2.denominator"] == "blocks.0.mlp.layer2.rational.b"


def test_a_faithful_channels_first_dyt_agrees(tmp_path):
    r = run(tmp_path, "convnext", norm="dyt2d")
    assert r.agree and not r.init, (r.codes, r.findings, r.forward, r.init)
    assert r.mapping["stem.1.weight"] == "stem.1.weight" and r.mapping["stem.1.bias"] == "stem.1.bias"


# ----------------------------------------------------------------------------- deviations

def test_plain_tensor_attributes_are_named(tmp_path):
    r = run(tmp_path, norm="plain")
    f = r.finding("plain-tensor-attribute")
    assert f is not None and f.deviation and not r.agree and r.verdict == "diverge"
    assert {"layers.0.ln1.alpha", "layers.0.ln1.weight", "layers.0.ln1.bias", "final.bias"} <= set(f.mine)
    assert len(f.mine) == 27 and r.mapping["layers.0.ln1.alpha"] == "blocks.0.norm1.alpha"
    assert r.forward is None and not r.unmatched_ref  # the same function once REF's values are copied in


def test_plain_tensor_attributes_function(tmp_path):
    from reproscope.model.observe_tensors import plain_tensor_attributes
    from reproscope.model.spec import user_model
    mine, _ = case_specs(tmp_path, "vit", norm="plain")
    model = user_model(mine, 10, img_size=32)()
    model.unused = torch.zeros(3)  # kept, never used: not listed
    found = plain_tensor_attributes(model, torch.randn(2, 3, 32, 32))
    assert ("layers.0.ln1", "alpha", (1,)) in found and ("final", "weight", (96,)) in found
    assert len(found) == 27 and not any(a == "unused" for _, a, _ in found)
    assert plain_tensor_attributes(user_model(case_specs(tmp_path, "vit")[0], 10, img_size=32)(),
                                   torch.randn(2, 3, 32, 32)) == []


def test_per_channel_alpha_is_a_shape_deviation(tmp_path):
    r = run(tmp_path, norm="per_channel")
    f = r.finding("shape-deviation")
    assert f is not None and not r.agree and r.verdicts == ["structure-differs"]  # the outputs agree
    assert "layers.0.ln1.alpha" in f.mine and "blocks.0.norm1.alpha" in f.ref and len(f.mine) == 9
    assert r.deviations["final.alpha"] == "norm.alpha"
    assert not r.unmatched_mine and not r.unmatched_ref  # not two unmatched lists
    assert r.forward is None  # REF's scalar broadcast: otherwise the same function


def test_norms_without_a_bias(tmp_path):
    r = run(tmp_path, norm="no_bias")
    f = r.finding("structure-differs")
    assert f is not None and not r.agree and r.verdicts == ["structure-differs", "diverge"]
    assert "blocks.0.norm1" in f.ref and "norm" in f.ref and "layers.3.ln2" in f.mine and len(f.ref) == 9
    assert r.codes.index("structure-differs") == 0  # said first
    assert r.mapping["layers.0.ln1.weight"] == "blocks.0.norm1.weight"  # the scale, by init, not the shift
    assert r.forward is not None and r.forward.module.startswith("layers.0.ln1")
    assert r.backward is None and "backward-moot" in r.codes


def test_an_extra_model_level_token_is_not_taken_for_a_missing_bias(tmp_path):
    r = run(tmp_path, norm="no_bias", token=True)
    assert "extra_token" in r.unmatched_mine and len(r.unmatched_ref) == 9  # [1, 1, C] is no norm's bias [C]
    model_level, norms = [f for f in r.findings if f.code == "structure-differs"]
    assert model_level.mine == [""] and "extra_token" in model_level.sentence
    assert "blocks.0.norm1" in norms.ref


def test_inplace_norm_on_the_residual_stream(tmp_path):
    r = run(tmp_path, norm="inplace")
    f = r.finding("inplace-input")
    assert f is not None and f.mine[0] == "layers.0.ln1" and f.deviation and r.verdict == "diverge"
    assert "layers.0" not in f.mine  # the innermost module, not the block around it
    d = r.forward
    assert d.kind == "between" and d.cause == "layers.0.ln1" and d.before == "layers.0.ln2"
    assert r.backward is None and "backward-moot" in r.codes


def test_a_gr_kan_mlp_of_another_structure(tmp_path):
    r = run(tmp_path, "kat", norm="ln", mlp="kan_one")
    f = r.finding("structure-differs")
    assert f is not None and r.verdict == "structure-differs"
    assert f.mine == [f"layers.{i}.mlp" for i in range(4)] and f.ref == [f"blocks.{i}.mlp" for i in range(4)]
    assert "1 Linear" in f.sentence and "2 Linear" in f.sentence
    assert r.codes[0] == "structure-differs"


def test_a_gr_kan_of_4_groups_where_ref_has_8_is_compared_below_the_difference(tmp_path):
    """Issue 45, item 4: the rationals of 4 groups have no counterpart in REF's of 8, so the forward
    comparison stops at the first MLP; every other module pair is still compared, each run alone on the
    input its REF counterpart received, and what could not be compared is named."""
    r = run(tmp_path, "kat", norm="ln", mlp="kan_g4")
    assert r.verdicts == ["structure-differs", "diverge"] and r.codes[0] == "structure-differs"
    assert r.forward.kind == "between" and r.forward.unpaired == ["layers.0.mlp.f1"]
    a = r.alone
    assert len(a["agree"]) == r.pairs and not a["differ"] and not a["not_run"]
    assert {"layers.3.mlp.fc2", "layers.0.attention"} <= set(a["agree"])
    assert a["no_counterpart_mine"][:2] == ["layers.0.mlp.f1", "layers.0.mlp.f2"]
    assert a["no_counterpart_ref"][:2] == ["blocks.0.mlp.layer1.rational", "blocks.0.mlp.layer2.rational"]
    f = r.finding("compared-alone")
    assert f is not None and not f.deviation
    r = run(tmp_path, "kat", norm="ln_eps5", mlp="kan_g4")  # and a LayerNorm eps that differs besides
    f = r.finding("compared-alone")
    assert f.deviation and {"layers.0.ln1", "layers.3.ln2", "final"} <= set(f.mine) and len(f.mine) == 9
    assert "layers.0.mlp.fc1" in r.alone["agree"]


def test_a_pole_prone_rational_denominator(tmp_path):
    r = run(tmp_path, "kat", norm="ln", mlp="kan_pole")
    d = r.forward
    assert (d.kind, d.module, d.ref_module) == ("module", "layers.0.mlp.f1", "blocks.0.mlp.layer1.rational")
    assert r.verdicts == ["diverge"] and not r.unmatched_mine and "backward-moot" in r.codes


def test_channels_first_dyt_scrambled_by_reshape(tmp_path):
    r = run(tmp_path, "convnext", norm="scrambled")
    d = r.forward
    assert (d.kind, d.module, d.ref_module) == ("module", "stem.1", "stem.1") and r.verdicts == ["diverge"]


@pytest.mark.parametrize("norm, bad", [("beta_ones", "beta"), ("swapped_beta_ones", "gamma")])
def test_shift_initialised_to_ones_is_blamed_on_the_shift(tmp_path, norm, bad):
    r = run(tmp_path, norm=norm)
    assert r.same_function, (r.codes, r.forward)  # the same computation once REF's weights are copied ...
    assert r.verdicts == ["init-differs"] and not r.agree  # ... but not the same start: not AGREE (issue 45)
    assert r.init and all(line.split()[0].endswith("." + bad) for line in r.init)  # ... not the same init
    assert r.init[0].startswith(f"layers.0.ln1.{bad} mean 1") and "vs REF blocks.0.norm1.bias mean 0" in r.init[0]
    assert "init-differs" in r.codes


@pytest.mark.parametrize("norm, mlp, bad", [("alpha_one", "gelu", "blocks.0.norm1.alpha"),
                                            ("ln", "kan_identity", "blocks.0.mlp.layer1.fc.weight")])
def test_an_init_difference_is_a_verdict_with_exit_1(tmp_path, capsys, norm, mlp, bad):
    """Issue 45, item 4: a DyT alpha that starts at 1.0 where REF's starts at 0.5 (and a GR-KAN started as
    the identity with trunc_normal linears, where KAT starts F2 at Swish and the linears at N(0, gain /
    d_in)) printed its init differences and still ended AGREE with exit 0, so a script gate passed it."""
    import json

    from reproscope.cli import main
    family = "kat" if mlp.startswith("kan") else "vit"
    mine, ref = case_specs(tmp_path, family, norm=norm, mlp=mlp)
    r = align(mine, ref, img_size=32, num_classes=10)
    assert r.same_function and r.verdicts == ["init-differs"] and not r.agree, (r.verdicts, r.codes)
    assert any(f"vs REF {bad} " in line for line in r.init), r.init
    args = ["align", mine, ref, "--img-size", "32", "--num-classes", "10", "--out", str(tmp_path / "o")]
    assert main(args + ["--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert (d["verdict"], d["verdicts"], d["agree"]) == ("init-differs", ["init-differs"], False)
    assert main(args) == 1
    assert "verdict: INIT DIFFERS" in capsys.readouterr().out


def test_an_undecidable_pairing_is_said_and_its_init_not_reported(tmp_path):
    r = run(tmp_path, norm="softsign")
    f = r.finding("pairing-ambiguous")
    assert f is not None and "layers.0.ln1" in f.mine and "blocks.0.norm1" in f.ref
    assert not any(".ln" in line or "final." in line for line in r.init), r.init  # no init "facts" about them
    assert r.forward is not None and r.forward.module == "layers.0.ln1" and not r.agree


def test_a_head_of_the_wrong_width_is_one_line_and_exit_2(tmp_path, capsys):
    mine, ref = case_specs(tmp_path, "vit", head=4)
    with pytest.raises(AlignInputError) as e:
        align(mine, ref, img_size=32, num_classes=10)
    assert e.value.code == "output-width" and "[2, 4]" in str(e.value) and "[2, 10]" in str(e.value)
    from reproscope.cli import main
    assert main(["align", mine, ref, "--img-size", "32", "--num-classes", "10", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "expected logits [2, 10]" in err and "Traceback" not in err


def test_cli_json_carries_codes(tmp_path, capsys):
    import json

    from reproscope.cli import main
    mine, ref = case_specs(tmp_path, "vit", norm="no_bias")
    assert main(["align", mine, ref, "--img-size", "32", "--num-classes", "10", "--json",
                 "--out", str(tmp_path / "o")]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["codes"][0] == "structure-differs" and d["findings"][0]["code"] == "structure-differs"
    assert d["verdict"] == "structure-differs" and d["verdicts"] == ["structure-differs", "diverge"]
    assert d["forward"]["code"] in ("module-differs", "gap-differs")
