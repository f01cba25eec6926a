"""Which parameters get weight decay: decided by kind (shape and where a parameter lives), not by name."""

import pytest
import torch
import torch.nn as nn

from reproscope.config import OptimConfig
from reproscope.model import DyT, create_model
from reproscope.train.optim import DECAY_RULES, build_optimizer, decay_rules, no_decay_names, param_groups


def _tv_vit():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=10)


class Encoder(nn.Module):
    """torchvision's naming: the position embedding lives on the encoder, as ``pos_embedding``."""

    def __init__(self, n: int, c: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.zeros(1, n, c))
        self.layer = nn.Linear(c, c)
        self.ln = nn.LayerNorm(c)


class TVNamedViT(nn.Module):
    """A ViT that names its class token ``class_token`` and declares no ``no_weight_decay()``."""

    def __init__(self, c: int = 16, n: int = 17):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, c, 8, 8)
        self.class_token = nn.Parameter(torch.zeros(1, 1, c))
        self.encoder = Encoder(n, c)
        self.head = nn.Linear(c, 10)


def test_torchvision_names_get_no_decay_by_kind():
    rules = decay_rules(TVNamedViT())
    assert rules["class_token"] == "class-token"
    assert rules["encoder.pos_embedding"] == "position-embedding"
    assert rules["conv_proj.weight"] == rules["encoder.layer.weight"] == rules["head.weight"] == "decay"
    assert rules["conv_proj.bias"] == rules["encoder.ln.weight"] == rules["head.bias"] == "1-d"
    assert set(rules.values()) <= set(DECAY_RULES)
    assert no_decay_names(TVNamedViT()) == {n for n, r in rules.items() if r != "decay"}


def test_real_torchvision_vit():
    m = _tv_vit()
    rules = decay_rules(m)
    assert rules["class_token"] == "class-token"
    assert rules["encoder.pos_embedding"] == "position-embedding"
    assert rules["conv_proj.weight"] == "decay"
    assert rules["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"] == "decay"
    assert rules["encoder.layers.encoder_layer_0.mlp.0.weight"] == "decay"
    assert rules["heads.head.weight"] == "decay"
    assert rules["encoder.layers.encoder_layer_0.self_attention.in_proj_bias"] == "1-d"
    assert set(rules) == {n for n, p in m.named_parameters()}  # every trainable parameter has a rule


def test_build_optimizer_puts_torchvision_pos_embedding_in_zero_decay_group():
    m = _tv_vit()
    opt = build_optimizer(m, OptimConfig(weight_decay=0.05))
    ids = {g["group"]: ({id(p) for p in g["params"]}, g["weight_decay"]) for g in opt.param_groups}
    no_decay, wd0 = ids["no_decay"]
    decay, wd = ids["decay"]
    assert wd0 == 0.0 and wd == 0.05
    assert id(m.encoder.pos_embedding) in no_decay and id(m.class_token) in no_decay
    assert id(m.conv_proj.weight) in decay and id(m.heads.head.weight) in decay
    assert id(m.encoder.pos_embedding) not in decay
    assert len(no_decay) + len(decay) == sum(1 for _ in m.parameters())


def test_reproscope_vit_declared_names_and_dyt_alpha():
    m = create_model("vit_quick", num_classes=10, norm="dyt")
    rules = decay_rules(m)
    # declared in VisionTransformer.no_weight_decay(): the declaration names the rule
    assert rules["pos_embed"] == rules["cls_token"] == "no_weight_decay()"
    assert m.norm.alpha.shape == (1,) and rules["norm.alpha"] == "1-d"
    assert rules["blocks.0.norm1.weight"] == rules["head.bias"] == "1-d"
    assert rules["blocks.0.attn.qkv.weight"] == rules["head.weight"] == rules["patch_embed.proj.weight"] == "decay"
    groups = {g["group"]: g for g in param_groups(m, 0.05)}
    assert any(p is m.pos_embed for p in groups["no_decay"]["params"])
    assert any(p is m.blocks[0].attn.qkv.weight for p in groups["decay"]["params"])


def test_dyt_alpha_scalar_parameter():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.norm = DyT(8)

    rules = decay_rules(Net())
    assert rules == {"fc.weight": "decay", "fc.bias": "1-d", "norm.alpha": "1-d", "norm.weight": "1-d",
                     "norm.bias": "1-d"}


def test_timm_vit():
    timm = pytest.importorskip("timm")
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=10)
    rules = decay_rules(m)
    assert rules["pos_embed"] == rules["cls_token"] == "no_weight_decay()"
    assert rules["blocks.0.attn.qkv.weight"] == "decay"
    assert rules["blocks.0.attn.qkv.bias"] == rules["blocks.0.norm1.weight"] == "1-d"
    nd = no_decay_names(m)
    assert {"pos_embed", "cls_token"} <= nd and "blocks.0.attn.qkv.weight" not in nd


def test_convnext_layer_scale_and_kernels():
    class Block(nn.Module):
        def __init__(self, c: int = 8):
            super().__init__()
            self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c)
            self.pwconv1 = nn.Linear(c, 4 * c)
            self.pwconv2 = nn.Linear(4 * c, c)
            self.gamma = nn.Parameter(torch.full((c,), 1e-6))  # layer scale

    rules = decay_rules(nn.Sequential(nn.Conv2d(3, 8, 4, 4), Block()))
    assert rules["1.gamma"] == "1-d"
    assert rules["0.weight"] == rules["1.dwconv.weight"] == rules["1.pwconv1.weight"] == "decay"
    assert rules["1.dwconv.bias"] == rules["1.norm.weight"] == "1-d"

    with torch.device("meta"):
        cn = create_model("convnext_tiny", num_classes=10)
    rules = decay_rules(cn)
    gammas = [n for n in rules if n.endswith("ls.gamma")]
    assert gammas and all(rules[n] == "1-d" for n in gammas)
    kernels = [n for n, p in cn.named_parameters() if p.ndim == 4]
    assert kernels and all(rules[n] == "decay" for n in kernels)


def test_register_tokens_and_2d_position_embedding_by_kind():
    class Net(nn.Module):
        def __init__(self, c: int = 16):
            super().__init__()
            self.pe = nn.Parameter(torch.zeros(1, 17, c))
            self.regs = nn.Parameter(torch.zeros(1, 4, c))  # register tokens next to the embedding
            self.dist = nn.Parameter(torch.zeros(1, 1, c))
            self.grid_pe = nn.Parameter(torch.zeros(1, c, 4, 4))  # a [1, C, H, W] embedding
            self.mat = nn.Parameter(torch.zeros(c, c))  # a hand-rolled weight matrix
            self.conv3d = nn.Conv3d(c, 1, 3)  # a standard layer's weight [1, C, 3, 3, 3]: still a kernel

    rules = decay_rules(Net())
    assert rules["pe"] == rules["grid_pe"] == "position-embedding"
    assert rules["regs"] == rules["dist"] == "class-token"
    assert rules["mat"] == rules["conv3d.weight"] == "decay"


def test_relative_position_bias_table_decayed_unless_declared():
    class WindowAttention(nn.Module):
        def __init__(self, w: int = 4, heads: int = 2, c: int = 8, declare: bool = False):
            super().__init__()
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
            self.qkv = nn.Linear(c, 3 * c)
            self.declare = declare

        def no_weight_decay(self):
            return {"relative_position_bias_table"} if self.declare else set()

    class Swinish(nn.Module):
        def __init__(self, declare_on_block=False, declare_on_root=None):
            super().__init__()
            self.blocks = nn.ModuleList([WindowAttention(declare=declare_on_block) for _ in range(2)])
            self.root_declares = declare_on_root or set()

        def no_weight_decay(self):
            return self.root_declares

    table = "blocks.{}.relative_position_bias_table"
    rules = decay_rules(Swinish())  # not declared: a 2-D table on an attention module is decayed
    assert rules[table.format(0)] == rules[table.format(1)] == "decay"
    for m in (Swinish(declare_on_block=True),  # relative to the declaring submodule
              Swinish(declare_on_root={"relative_position_bias_table"}),  # by last component
              Swinish(declare_on_root={"blocks.*.relative_position_bias_table"}),  # timm's fnmatch wildcards
              Swinish(declare_on_root={table.format(0), table.format(1)})):  # full names (timm's Swin)
        rules = decay_rules(m)
        assert rules[table.format(0)] == rules[table.format(1)] == "no_weight_decay()"
        assert rules["blocks.0.qkv.weight"] == "decay"


def test_timm_swin_relative_position_bias_table():
    timm = pytest.importorskip("timm")
    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
                          embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=10)
    rules = decay_rules(m)
    tables = [n for n in rules if n.endswith("relative_position_bias_table")]
    assert tables and all(rules[n] == "no_weight_decay()" for n in tables)
    assert rules["layers.0.blocks.0.attn.qkv.weight"] == "decay"


def test_frozen_parameters_have_no_rule():
    m = TVNamedViT()
    m.head.weight.requires_grad_(False)
    rules = decay_rules(m)
    assert "head.weight" not in rules and "head.bias" in rules
