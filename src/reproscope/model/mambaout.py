"""MambaOut: Gated CNN blocks without the SSM.

Paper: "MambaOut: Do We Really Need Mamba for Vision?" (Yu and Wang, CVPR 2025,
arXiv 2405.07992). Reference repository: yuweihao/MambaOut (read, not copied).

From the paper (Alg. 1, Sec. 4.1, Table 1):
- Gated CNN block: X' = Norm(X); fc1: D -> 2h with h = int(8/3 * D) (expansion 8/3);
  split into g (h channels), i (h - D) and c (D channels: the "partial channels");
  c goes through a 7x7 depthwise conv; Y = fc2(GELU(g) * concat(i, conv(c))); out = X + DropPath(Y).
  No SSM, no layer scale, no BatchNorm.
- stem: 3x3 conv stride 2 (3 -> D0/2), LN, GELU, 3x3 conv stride 2 (-> D0), LN;
  downsampling between stages: 3x3 conv stride 2 then LN; head: global average pool -> LN ->
  MLP (4x, GELU, LN) -> classes; init trunc_normal(std=0.02).
- sizes: Femto (3,3,9,3)/(48,96,192,288), Kobe (3,3,15,3)/same, Tiny (3,3,9,3)/(96,192,384,576),
  Small (3,4,27,3)/(96,192,384,576), Base (3,4,27,3)/(128,256,512,768).

Chosen where the paper is silent, or deviations:
- LN eps 1e-6; features are kept as [B, H, W, C] inside stages so LN and the linears act on the
  last dim, with permutes only around the convolutions.
- ``patch_size`` (total stem stride, 4 by default) can be 2 (second stem conv of stride 1) or 1
  for 32-64 px inputs: at 64 px with stride 4 the last feature map is 2 x 2.
- ``kernel_size`` (7 by default, the paper's) is an ablation knob (``model.kernel_size``): at 32 px
  the 7x7 mixer is larger than the last stages' 4x4 and 2x2 maps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import drop_path_or_identity, norm_factory, trunc_normal_init_
from .registry import options_of, register_model


def _conv_nhwc(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    x = conv(x.permute(0, 3, 1, 2))  # [B, H, W, C] -> [B, C, H, W] -> conv
    return x.permute(0, 2, 3, 1)  # -> [B, H', W', C']


# ----------------------------------------------------------------------------- layers

class Stem(nn.Module):
    def __init__(self, in_chans: int, dim: int, stride: int, norm_layer, act_layer=nn.GELU):
        super().__init__()
        if stride not in (1, 2, 4):
            raise ValueError(f"MambaOut stem stride (patch_size) must be 1, 2 or 4, got {stride}")
        s1, s2 = (2, 2) if stride == 4 else (2, 1) if stride == 2 else (1, 1)
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=s1, padding=1)
        self.norm1 = norm_layer(dim // 2)
        self.act = act_layer()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=s2, padding=1)
        self.norm2 = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).permute(0, 2, 3, 1)  # [B, 3, H, W] -> [B, H/2, W/2, D0/2]
        x = self.act(self.norm1(x))
        return self.norm2(_conv_nhwc(self.conv2, x))  # -> [B, H/4, W/4, D0]


class Downsample(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, norm_layer):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, 3, stride=2, padding=1)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_conv_nhwc(self.conv, x))  # [B, H, W, C] -> [B, H/2, W/2, C']


# ----------------------------------------------------------------------------- blocks

class GatedCNNBlock(nn.Module):
    def __init__(self, dim: int, expansion: float = 8 / 3, kernel_size: int = 7, conv_ratio: float = 1.0,
                 drop_path: float = 0.0, norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__()
        hidden = int(expansion * dim)
        conv_ch = int(conv_ratio * dim)
        self.split = (hidden, hidden - conv_ch, conv_ch)  # g, i, c
        self.norm = norm_layer(dim)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = act_layer()
        self.conv = nn.Conv2d(conv_ch, conv_ch, kernel_size, padding=kernel_size // 2, groups=conv_ch)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, W, C]
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split, dim=-1)  # [B, H, W, 2h] -> 3 parts
        c = _conv_nhwc(self.conv, c)  # depthwise 7x7 on the partial channels
        y = self.fc2(self.act(g) * torch.cat([i, c], dim=-1))  # [B, H, W, h] -> [B, H, W, C]
        return x + self.drop_path(y)


class MlpHead(nn.Module):
    """avg pool -> norm -> fc(4x) -> GELU -> norm -> fc(classes)."""

    def __init__(self, dim: int, num_classes: int, norm_layer, ratio: int = 4, act_layer=nn.GELU):
        super().__init__()
        self.norm = norm_layer(dim)
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.act = act_layer()
        self.norm2 = norm_layer(ratio * dim)
        self.fc2 = nn.Linear(ratio * dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.mean(dim=(1, 2)))  # [B, H, W, C] -> [B, C]
        return self.fc2(self.norm2(self.act(self.fc1(x))))


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class MambaOutConfig:
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (48, 96, 192, 288)
    num_classes: int = 1000
    in_chans: int = 3
    patch_size: int = 4
    drop_path_rate: float = 0.0
    norm: str = "ln"
    dyt_alpha0: float = 0.5
    ln_eps: float = 1e-6
    kernel_size: int = 7  # the token mixer's depthwise conv (Sec. 4.1); odd, so "same" padding keeps H x W


# ----------------------------------------------------------------------------- model

class MambaOut(nn.Module):
    def __init__(self, cfg: MambaOutConfig):
        super().__init__()
        if cfg.kernel_size < 1 or cfg.kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size must be odd for MambaOut (same padding keeps the map size), "
                             f"got {cfg.kernel_size}: use 3, 5 or 7")
        self.cfg = cfg
        norm_layer = norm_factory(cfg.norm, alpha0=cfg.dyt_alpha0, eps=cfg.ln_eps)
        self.stem = Stem(cfg.in_chans, cfg.dims[0], cfg.patch_size, norm_layer)
        total = sum(cfg.depths)
        dprs = [cfg.drop_path_rate * i / max(1, total - 1) for i in range(total)]
        stages, start = [], 0
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
            down = nn.Identity() if i == 0 else Downsample(cfg.dims[i - 1], dim, norm_layer)
            blocks = [GatedCNNBlock(dim, kernel_size=cfg.kernel_size, drop_path=dprs[start + j], norm_layer=norm_layer)
                      for j in range(depth)]
            stages.append(nn.Sequential(down, *blocks))
            start += depth
        self.stages = nn.Sequential(*stages)
        self.head = MlpHead(cfg.dims[-1], cfg.num_classes, norm_layer)
        self.reset_parameters()

    def reset_parameters(self):
        trunc_normal_init_(self, (nn.Conv2d, nn.Linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


# ----------------------------------------------------------------------------- constructors

def _mambaout(depths, dims, *, num_classes=1000, drop_path_rate=0.0, patch_size=4, img_size=None,
              **kw) -> MambaOut:
    del img_size  # fully convolutional
    return MambaOut(MambaOutConfig(depths=depths, dims=dims, num_classes=num_classes, patch_size=patch_size,
                                   drop_path_rate=drop_path_rate, **kw))


register_mambaout = functools.partial(register_model, options=options_of(_mambaout, MambaOutConfig))


@register_mambaout(paper="MambaOut (Table 1)", paper_params_m=7.3, paper_top1=78.9)
def mambaout_femto(**kw):
    """MambaOut-Femto: Gated CNN, depths (3,3,9,3), widths (48,96,192,288)."""
    return _mambaout((3, 3, 9, 3), (48, 96, 192, 288), **kw)


@register_mambaout(paper="reproscope (CPU campaign size; MambaOut's Gated CNN at vit_quick's parameter count with 10 classes)",
                default_img_size=32)
def mambaout_quick(**kw):
    """MambaOut with depths (2, 2, 3, 2) and widths (16, 32, 64, 112): 0.49M parameters at 10 classes, the
    size of ``vit_quick``, for the CPU-scale MambaOut campaign; stem stride 2 at 32 px (keeps a 2x2 last map)."""
    kw.setdefault("img_size", 32)
    kw.setdefault("patch_size", 2)
    return _mambaout((2, 2, 3, 2), (16, 32, 64, 112), **kw)


@register_mambaout(paper="MambaOut (Table 1)", paper_params_m=9.1, paper_top1=80.0)
def mambaout_kobe(**kw):
    """MambaOut-Kobe: Gated CNN, depths (3,3,15,3), widths (48,96,192,288)."""
    return _mambaout((3, 3, 15, 3), (48, 96, 192, 288), **kw)


@register_mambaout(paper="MambaOut (Table 4)", paper_params_m=26.5, paper_top1=82.7)
def mambaout_tiny(**kw):
    """MambaOut-Tiny: Gated CNN, depths (3,3,9,3), widths (96,192,384,576)."""
    return _mambaout((3, 3, 9, 3), (96, 192, 384, 576), **kw)


@register_mambaout(paper="MambaOut (Table 4)", paper_params_m=48.5, paper_top1=84.1)
def mambaout_small(**kw):
    """MambaOut-Small: Gated CNN, depths (3,4,27,3), widths (96,192,384,576)."""
    return _mambaout((3, 4, 27, 3), (96, 192, 384, 576), **kw)


@register_mambaout(paper="MambaOut (Table 4)", paper_params_m=84.8, paper_top1=84.2)
def mambaout_base(**kw):
    """MambaOut-Base: Gated CNN, depths (3,4,27,3), widths (128,256,512,768)."""
    return _mambaout((3, 4, 27, 3), (128, 256, 512, 768), **kw)
