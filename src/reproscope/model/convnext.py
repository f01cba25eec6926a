"""ConvNeXt with LayerNorm or DyT.

Papers: "A ConvNet for the 2020s" (Liu et al., CVPR 2022) for the architecture, and
"Transformers without Normalization" (DyT; Zhu et al., CVPR 2025, arXiv 2503.10622) for the
DyT variant. Reference repositories: facebookresearch/ConvNeXt, jiachenzhu/DyT (read, not copied).

From the papers:
- stem: 4x4 conv, stride 4, then LN; four stages; between stages LN then a 2x2 conv of stride 2;
  block: 7x7 depthwise conv -> LN -> Linear(4x) -> GELU -> Linear -> layer scale (init 1e-6)
  -> drop path, with a residual; head: global average pool -> LN -> Linear.
- sizes T/S/B/L: depths (3,3,9,3) / (3,3,27,3) x3, widths (96,...,768), (96,...,768),
  (128,...,1024), (192,...,1536).
- DyT replaces every LayerNorm (stem, the three downsampling layers, every block, the head)
  with alpha0 = 0.5; the norm is a constructor argument, never an ``if`` in ``forward``.

Chosen where the papers are silent, or deviations:
- ``patch_size`` (the stem stride, default 4) is configurable so that 32/64 px inputs keep a
  usable final feature map: use 2 or 1 for 32-64 px data (final map = img / (patch * 8)).
- Init: trunc_normal(std=0.02) for conv and linear weights, zero biases (as the ConvNeXt paper's code).
- Blocks run in [B, H, W, C] after the depthwise conv so LN/DyT and the MLP act on the last dim.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import LayerScale, Mlp, drop_path_or_identity, norm_factory, trunc_normal_init_
from .registry import options_of, register_model

# ----------------------------------------------------------------------------- blocks

class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0, ls_init: float = 1e-6,
                 norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, 4 * dim, act_layer=act_layer)
        self.ls = LayerScale(dim, ls_init) if ls_init > 0 else nn.Identity()
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # [B, C, H, W] -> [B, H, W, C]
        x = self.ls(self.mlp(self.norm(x))).permute(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]
        return shortcut + self.drop_path(x)


class Downsample(nn.Sequential):
    """Norm then 2x2 conv of stride 2 (between stages)."""

    def __init__(self, dim_in: int, dim_out: int, norm_layer_2d):
        super().__init__(norm_layer_2d(dim_in), nn.Conv2d(dim_in, dim_out, kernel_size=2, stride=2))


class ConvNeXtStage(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, depth: int, dprs: list[float], ls_init: float,
                 norm_layer, norm_layer_2d, first: bool):
        super().__init__()
        self.downsample = nn.Identity() if first else Downsample(dim_in, dim_out, norm_layer_2d)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim_out, dprs[i], ls_init, norm_layer) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    def __init__(self, dim: int, num_classes: int, norm_layer):
        super().__init__()
        self.norm = norm_layer(dim)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean(dim=(2, 3))))  # [B, C, H, W] -> [B, C] -> [B, classes]


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ConvNeXtConfig:
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_classes: int = 1000
    in_chans: int = 3
    patch_size: int = 4
    drop_path_rate: float = 0.0
    ls_init: float = 1e-6
    norm: str = "ln"
    dyt_alpha0: float = 0.5
    dyt_squash: str = "tanh"
    ln_eps: float = 1e-6


# ----------------------------------------------------------------------------- model

class ConvNeXt(nn.Module):
    def __init__(self, cfg: ConvNeXtConfig):
        super().__init__()
        self.cfg = cfg
        norm_layer = norm_factory(cfg.norm, alpha0=cfg.dyt_alpha0, eps=cfg.ln_eps, squash=cfg.dyt_squash)
        norm_layer_2d = norm_factory(cfg.norm, alpha0=cfg.dyt_alpha0, eps=cfg.ln_eps, squash=cfg.dyt_squash,
                                     channels_last=False)
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, cfg.dims[0], cfg.patch_size, stride=cfg.patch_size),
                                  norm_layer_2d(cfg.dims[0]))
        total, dprs = sum(cfg.depths), []
        for i in range(total):
            dprs.append(cfg.drop_path_rate * i / max(1, total - 1))
        stages, start, prev = [], 0, cfg.dims[0]
        for i, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
            stages.append(ConvNeXtStage(prev, dim, depth, dprs[start:start + depth], cfg.ls_init,
                                        norm_layer, norm_layer_2d, first=i == 0))
            start, prev = start + depth, dim
        self.stages = nn.Sequential(*stages)
        self.head = Head(cfg.dims[-1], cfg.num_classes, norm_layer)
        self.reset_parameters()

    def reset_parameters(self):
        trunc_normal_init_(self, (nn.Conv2d, nn.Linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


# ----------------------------------------------------------------------------- constructors

def _convnext(depths, dims, *, num_classes=1000, drop_path_rate=0.0, norm="ln", patch_size=4,
              img_size=None, **kw) -> ConvNeXt:
    del img_size  # fully convolutional: any size divisible by patch_size * 8
    return ConvNeXt(ConvNeXtConfig(depths=depths, dims=dims, num_classes=num_classes, patch_size=patch_size,
                                   drop_path_rate=drop_path_rate, norm=norm, **kw))


register_convnext = functools.partial(register_model, options=options_of(_convnext, ConvNeXtConfig))


@register_convnext(paper="ConvNeXt (prints 28M; DyT: LN baseline)", paper_params_m=28.6, paper_top1=82.1)
def convnext_tiny(**kw):
    """ConvNeXt-T with LayerNorm."""
    return _convnext((3, 3, 9, 3), (96, 192, 384, 768), **kw)


@register_convnext(paper="ConvNeXt (DyT: LN baseline)", paper_params_m=50.0, paper_top1=83.1)
def convnext_small(**kw):
    """ConvNeXt-S with LayerNorm."""
    return _convnext((3, 3, 27, 3), (96, 192, 384, 768), **kw)


@register_convnext(paper="DyT (LN baseline, Table 1)", paper_params_m=89.0, paper_top1=83.7)
def convnext_base(**kw):
    """ConvNeXt-B with LayerNorm."""
    return _convnext((3, 3, 27, 3), (128, 256, 512, 1024), **kw)


@register_convnext(paper="DyT (LN baseline, Table 1)", paper_params_m=198.0, paper_top1=84.3)
def convnext_large(**kw):
    """ConvNeXt-L with LayerNorm."""
    return _convnext((3, 3, 27, 3), (192, 384, 768, 1536), **kw)


@register_convnext(paper="DyT (Table 1)", paper_params_m=89.0, paper_top1=83.7)
def convnext_base_dyt(**kw):
    """ConvNeXt-B with DyT in place of every LayerNorm."""
    return _convnext((3, 3, 27, 3), (128, 256, 512, 1024), **{"norm": "dyt", **kw})


@register_convnext(paper="DyT (Table 1)", paper_params_m=198.0, paper_top1=84.4)
def convnext_large_dyt(**kw):
    """ConvNeXt-L with DyT in place of every LayerNorm."""
    return _convnext((3, 3, 27, 3), (192, 384, 768, 1536), **{"norm": "dyt", **kw})
