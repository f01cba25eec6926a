"""reproscope align: student re-implementations with one planted deviation each, localised.

REF is timm's VisionTransformer / ConvNeXt at a small size (the "authors' code"); the students are
written here, named and nested differently (split q/k/v, a Sequential of blocks, other names), so
each test also shows that the weights still match.
"""

import textwrap

import pytest
import torch

from reproscope.diagnostics.align import align

timm = pytest.importorskip("timm")

REF = """
from functools import partial
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer
from timm.models.convnext import ConvNeXt

def vit(num_classes=10, img_size=32):
    return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                             num_classes=num_classes, norm_layer=partial(nn.LayerNorm, eps=1e-6))

def convnext(num_classes=10, img_size=32):
    return ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=num_classes)
"""

VIT = """
import torch, torch.nn as nn, torch.nn.functional as F
DEV = "{dev}"

class DyT(nn.Module):
    def __init__(s, d):
        super().__init__()
        s.alpha = nn.Parameter(torch.full((1,), 0.5))
        s.gamma = nn.Parameter(torch.ones(d))
        s.beta = nn.Parameter(torch.ones(d) if DEV == "dyt_beta_ones" else torch.zeros(d))
    def forward(s, x):
        return torch.tanh(s.alpha * x) * s.gamma + s.beta

def norm(d):
    if DEV.startswith("dyt"):
        return DyT(d)
    return nn.LayerNorm(d, eps=1e-5 if DEV == "eps" else 1e-6)

class Attention(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.h = h
        s.q, s.k, s.v = (nn.Linear(d, d, bias=DEV != "no_qkv_bias") for _ in range(3))
        s.out = nn.Linear(d, d)
    def forward(s, x):
        B, N, C = x.shape
        q, k, v = (f(x).reshape(B, N, s.h, C // s.h).transpose(1, 2) for f in (s.q, s.k, s.v))  # [B, h, N, C/h]
        scale = C ** -0.5 if DEV == "scale_full_width" else (C // s.h) ** -0.5
        a = (q @ k.transpose(-2, -1) * scale).softmax(-1)
        return s.out((a @ v).transpose(1, 2).reshape(B, N, C))  # [B, h, N, C/h] -> [B, N, C]

class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.ln_a, s.attention, s.ln_b = norm(d), Attention(d, h), norm(d)
        s.fc_in, s.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        s.act = nn.GELU(approximate="tanh" if DEV == "tanh_gelu" else "none")
    def forward(s, x):
        x = x + s.attention(s.ln_a(x))
        return x + s.fc_out(s.act(s.fc_in(s.ln_b(x))))

class Student(nn.Module):
    def __init__(s, num_classes=10, img_size=32, d=64, depth=2, h=4, p=8):
        super().__init__()
        s.embed = nn.Conv2d(3, d, p, p)
        s.cls = nn.Parameter(torch.randn(1, 1, d) * 1e-6)
        s.pos = nn.Parameter(torch.randn(1, (img_size // p) ** 2 + 1, d) * 0.02)
        if DEV == "pos_float64":  # a fixed embedding kept as numpy made it: float64
            del s.pos
            s.register_buffer("pos", torch.randn(1, (img_size // p) ** 2 + 1, d, dtype=torch.float64) * 0.02)
        s.layers = nn.Sequential(*[Block(d, h) for _ in range(depth)])
        s.final_norm = norm(d)
        s.classifier = nn.Linear(d, num_classes)
        for m in s.modules():  # timm's init: trunc_normal(0.02) linears, zero biases (the patch conv as torch's)
            if isinstance(m, nn.Linear) and DEV != "default_init":
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    def forward(s, x):
        x = s.embed(x).flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, N, C]
        cls = s.cls.expand(len(x), -1, -1)
        if DEV == "pos_not_on_cls":
            x = torch.cat([cls, x + s.pos[:, 1:]], 1)
        else:
            x = torch.cat([cls, x], 1) + s.pos
        return s.classifier(s.final_norm(s.layers(x))[:, 0])

def make(num_classes=10, img_size=32):
    return Student(num_classes, img_size)
"""

CONVNEXT = """
import torch, torch.nn as nn, torch.nn.functional as F
DEV = "{dev}"

class LN2d(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.weight, s.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
    def forward(s, x):  # [B, C, H, W], normalised over C
        dim = -1 if DEV == "ln_wrong_axis" else 1
        u = x.mean(dim, keepdim=True)
        v = (x - u).pow(2).mean(dim, keepdim=True)
        return (x - u) / torch.sqrt(v + 1e-6) * s.weight[:, None, None] + s.bias[:, None, None]

class Block(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        s.norm = nn.LayerNorm(c, eps=1e-6)
        s.pw1, s.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        if DEV != "no_layer_scale":
            s.scale = nn.Parameter(torch.full((c,), 1e-6))
        s.drop = 0.5 if DEV == "drop_path_in_eval" else 0.0
    def forward(s, x):
        y = s.dw(x).permute(0, 2, 3, 1)  # [B, C, H, W] -> [B, H, W, C]
        y = s.pw2(F.gelu(s.pw1(s.norm(y))))
        if DEV != "no_layer_scale":
            y = y * s.scale
        y = y.permute(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]
        if s.drop:  # stochastic depth, but without `if self.training`
            keep = (torch.rand(len(x), 1, 1, 1) > s.drop).float() / (1 - s.drop)
            y = y * keep
        return x + y

class Student(nn.Module):
    def __init__(s, num_classes=10, dims=(16, 32, 48, 64)):
        super().__init__()
        s.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LN2d(dims[0]))
        s.stages = nn.ModuleList()
        for i, c in enumerate(dims):
            down = nn.Identity() if i == 0 else nn.Sequential(LN2d(dims[i - 1]), nn.Conv2d(dims[i - 1], c, 2, 2))
            s.stages.append(nn.Sequential(down, Block(c)))
        s.head_norm = nn.LayerNorm(dims[-1], eps=1e-6)
        s.fc = nn.Linear(dims[-1], num_classes)
        for m in s.modules():  # timm's init: trunc_normal(0.02) convs and linears, zero biases
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
    def forward(s, x):
        x = s.stem(x)
        for st in s.stages:
            x = st(x)
        return s.fc(s.head_norm(x.mean((2, 3))))

def make(num_classes=10, img_size=32):
    return Student(num_classes)
"""


def _files(tmp_path, student: str, dev: str):
    (tmp_path / "ref.py").write_text(textwrap.dedent(REF))
    (tmp_path / "mine.py").write_text(textwrap.dedent(student).replace("{dev}", dev))
    return f"{tmp_path / 'mine.py'}:make"


def _vit(tmp_path, dev, **kw):
    return align(_files(tmp_path, VIT, dev), f"{tmp_path / 'ref.py'}:vit", img_size=32, num_classes=10, **kw)


def _convnext(tmp_path, dev, **kw):
    return align(_files(tmp_path, CONVNEXT, dev), f"{tmp_path / 'ref.py'}:convnext", img_size=32, num_classes=10,
                 **kw)


def test_a_faithful_student_vit_agrees_despite_other_names_nesting_and_split_qkv(tmp_path):
    r = _vit(tmp_path, "none", out_dir=tmp_path / "out")
    assert r.agree and r.verdict == "agree" and not r.init, (r.codes, r.init)
    assert r.mapping["layers.0.attention.q.weight"] == ["blocks.0.attn.qkv.weight", 0, 3]
    assert r.mapping["layers.1.ln_b.weight"] == "blocks.1.norm2.weight" and r.mapping["cls"] == "cls_token"
    assert (tmp_path / "out" / "map.json").is_file()


def test_a_faithful_student_convnext_agrees(tmp_path):
    r = _convnext(tmp_path, "none")
    assert r.agree and r.verdict == "agree" and not r.init, (r.codes, r.init)
    assert r.mapping["stages.1.1.scale"] == "stages.1.blocks.0.gamma"


def test_a_student_left_at_torchs_default_init_is_init_differs(tmp_path):
    """torch's default Linear init (kaiming-uniform weights, uniform biases) where timm draws trunc_normal(0.02)
    and zero biases: the same function once the weights are copied, not the same start (issue 45)."""
    r = _vit(tmp_path, "default_init")
    assert r.same_function and r.verdicts == ["init-differs"] and not r.agree
    assert any(line.startswith("layers.0.fc_in.bias ") and "vs REF blocks.0.mlp.fc1.bias mean 0 std 0" in line
               for line in r.init), r.init


def test_layernorm_eps(tmp_path):
    f = _vit(tmp_path, "eps").forward
    assert (f.kind, f.module, f.ref_module) == ("module", "layers.0.ln_a", "blocks.0.norm1")
    assert "eps=1e-05" in f.repr_mine and "eps=1e-06" in f.repr_ref


def test_tanh_gelu_instead_of_exact(tmp_path):
    f = _vit(tmp_path, "tanh_gelu").forward
    assert f.kind == "between" and f.after == "layers.0.fc_in" and f.before == "layers.0.fc_out"
    assert f.where.startswith("Block.forward (layers.0)")


def test_attention_scaled_by_the_full_width(tmp_path):
    f = _vit(tmp_path, "scale_full_width").forward
    assert f.kind == "between" and f.before == "layers.0.attention.out"
    assert f.where == "Attention.forward (layers.0.attention)"


def test_position_embedding_not_added_to_the_class_token(tmp_path):
    f = _vit(tmp_path, "pos_not_on_cls").forward
    assert (f.kind, f.after, f.before) == ("between", "embed", "layers.0.ln_a")
    assert f.where.startswith("Student.forward")


def test_a_float64_buffer_is_a_difference_the_float64_comparison_would_hide(tmp_path):
    r = _vit(tmp_path, "pos_float64")
    f = r.finding("dtype-differs")
    assert not r.agree and f is not None and f.deviation and (f.mine, f.ref) == (["pos"], ["pos_embed"])
    assert r.forward is None  # the outputs agree in float64: only the dtype tells them apart


def test_qkv_without_bias(tmp_path):
    r = _vit(tmp_path, "no_qkv_bias")
    assert r.verdicts == ["structure-differs", "diverge"]
    assert r.unmatched_ref == ["blocks.0.attn.qkv.bias", "blocks.1.attn.qkv.bias"]
    assert r.mapping["layers.0.attention.k.weight"] == ["blocks.0.attn.qkv.weight", 1, 3]
    assert r.forward is not None and r.forward.module.startswith("layers.0.attention")


def test_dyt_beta_initialised_to_ones(tmp_path):
    (tmp_path / "dytref.py").write_text(textwrap.dedent(VIT).replace("{dev}", "dyt"))
    r = align(_files(tmp_path, VIT, "dyt_beta_ones"), f"{tmp_path / 'dytref.py'}:make", img_size=32, num_classes=10)
    assert r.same_function  # the same computation once the weights are copied ...
    assert r.init and r.init[0].startswith("layers.0.ln_a.beta mean 1")  # ... but not the same init
    assert r.verdict == "init-differs" and not r.agree


def test_channels_first_layernorm_on_the_wrong_axis(tmp_path):
    f = _convnext(tmp_path, "ln_wrong_axis").forward
    assert (f.kind, f.module, f.ref_module) == ("module", "stem.1", "stem.1")


def test_missing_layer_scale(tmp_path):
    r = _convnext(tmp_path, "no_layer_scale")
    assert r.verdict == "structure-differs" and all(n.endswith(".gamma") for n in r.unmatched_ref)
    assert len(r.unmatched_ref) == 4
    f = r.forward
    assert f.kind == "between" and f.where.startswith("Block.forward (stages.0.1)") and f.after == "stages.0.1.pw2"


def test_stochastic_depth_applied_in_eval(tmp_path):
    f = _convnext(tmp_path, "drop_path_in_eval").forward
    assert f.kind == "between" and f.where.startswith("Block.forward (stages.0.1)") and f.after == "stages.0.1.pw2"


def test_align_cli_exit_status_and_bad_spec(tmp_path, capsys):
    from reproscope.cli import main
    mine = _files(tmp_path, VIT, "eps")
    assert main(["align", mine, f"{tmp_path / 'ref.py'}:vit", "--img-size", "32", "--num-classes", "10",
                 "--out", str(tmp_path / "o")]) == 1
    out = capsys.readouterr().out
    assert "outputs differ after layers.0.ln_a <-> blocks.0.norm1" in out and "verdict: DIVERGE" in out
    assert main(["align", str(tmp_path / "nope.py:make"), "vit_tiny"]) == 2
    assert "MINE" in capsys.readouterr().err
    # the written map, passed back, gives the same answer
    assert main(["align", mine, f"{tmp_path / 'ref.py'}:vit", "--img-size", "32", "--num-classes", "10",
                 "--map", str(tmp_path / "o" / "map.json"), "--json", "--out", str(tmp_path / "o2")]) == 1
    assert '"module": "layers.0.ln_a"' in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("ours, ref, size", [("vit_tiny", "timm:vit_tiny_patch16_224", 224),
                                             ("convnext_tiny", "timm:convnext_tiny", 64),
                                             ("mambaout_femto", "timm:mambaout_femto", 64)])
def test_our_models_align_with_timm(ours, ref, size):
    torch.set_num_threads(2)
    r = align(ours, ref, img_size=size, num_classes=10)
    assert r.agree and not r.init, (r.forward, r.backward, r.init)


@pytest.mark.slow
def test_torchvision_and_timm_twins_align_and_init_differences_are_named():
    """Inputs this was not written for: torchvision's ConvNeXt-T (layer scale [C, 1, 1], other names) against
    timm's ([C]), and torchvision's ResNet-18 against timm's, whose last BatchNorm of each residual
    branch starts at 0 (timm's zero_init_last) where torchvision's starts at 1."""
    r = align("torchvision.models:convnext_tiny", "timm:convnext_tiny", img_size=64, num_classes=10)
    assert r.agree and not r.init
    r = align("torchvision.models:resnet18", "timm:resnet18", img_size=64, num_classes=10)
    assert r.same_function and r.verdict == "init-differs" and r.init[0].startswith("layer1.0.bn2.weight mean 1 std 0 vs REF layer1.0.bn2.weight mean 0")
