"""Vision Transformer (DeiT-style) with LayerNorm or DyT.

Paper: "Transformers without Normalization" (DyT; Zhu, Chen, He, LeCun, Liu; CVPR 2025,
arXiv 2503.10622). Reference repository: jiachenzhu/DyT (read, not copied). Backbone:
ViT (Dosovitskiy et al. 2021) as trained by DeiT (Touvron et al. 2021).

From the papers:
- pre-norm blocks x + Attn(Norm(x)), x + MLP(Norm(x)), MLP ratio 4, GELU; patch-embedding
  convolution, class token, learned positional embedding; sizes Ti/S/B/L = (192, 12, 3),
  (384, 12, 6), (768, 12, 12), (1024, 24, 16) for (width, depth, heads).
- DyT replaces *every* normalization layer: both per block and the final one before the head
  (``norm_layer`` is a constructor argument; blocks never branch on it in ``forward``).
- DyT alpha0 = 0.5 by default for ViT (paper Sec. 4 / Appendix A).

Chosen where the paper is silent, or deviations:
- ``global_pool='token'`` (DeiT: class token, final norm before pooling) is the default. The
  DyT reference builds timm's ViT with average pooling and a norm after pooling ("fc_norm");
  ``global_pool='avg'`` gives that layout (the final norm then sits after pooling; the patch
  tokens are averaged, the class token left out). ``class_token=False`` (with ``global_pool='avg'``)
  drops the class token altogether, as timm's ``class_token=False``: N tokens instead of N + 1.
- The DyT family at every size the planner and the recipes use: ``vit_tiny_dyt``, ``vit_small_dyt``,
  ``vit_base_dyt``, ``vit_large_dyt`` (DyT in place of every LayerNorm: both per block and the final
  one, alpha0 0.5, gamma 1, beta 0); every LN model takes ``norm="dyt"`` too (the recipes' way:
  ``model.norm=dyt``). The DyT reference's layout is ``global_pool="avg"`` (and, for a student ViT
  without a class token, ``class_token=False``), e.g. the spec
  ``vit_tiny_dyt:global_pool=avg,class_token=False`` for ``reproscope align``.
- Init: trunc_normal(std=0.02) for Linear weights and the positional embedding, zero biases,
  class token normal(std=1e-6), PyTorch's default init for the patch convolution (as timm).
  ``attn_init="mimetic"`` re-initialises every attention layer mimetically (Trockman and Kolter,
  ICML 2023; ``layers.mimetic_init_``): an option, used by the KAT public variant.
- ``vit_quick`` (width 96, depth 4, 4 heads, patch 8 at 32 px, i.e. a 4 x 4 token grid) is our
  size for the CPU quickstart.
- Patch size and image size are constructor arguments: for 32/64 px data use patch 4 or 8 so
  that the token grid stays at least 4 x 4.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange

from .layers import Attention, Mlp, drop_path_or_identity, mimetic_init_, norm_factory, trunc_normal_init_
from .registry import options_of, register_model

# ----------------------------------------------------------------------------- layers

class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"PatchEmbed: img_size {img_size} is not divisible by patch_size {patch_size}")
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, 3, H, W] -> [B, C, H/p, W/p]
        return rearrange(x, "b c h w -> b (h w) c")  # -> [B, N, C]


# ----------------------------------------------------------------------------- blocks

class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(Norm(x))); x + DropPath(MLP(Norm(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 norm_layer=nn.LayerNorm, mlp_layer=Mlp, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path1 = drop_path_or_identity(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio))
        self.drop_path2 = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    global_pool: str = "token"  # "token" (DeiT) or "avg" (DyT reference / timm fc_norm)
    class_token: bool = True  # False: no class token (needs global_pool="avg"); tokens [B, N, C]
    norm: str = "ln"  # "ln" or "dyt"
    dyt_alpha0: float = 0.5
    dyt_squash: str = "tanh"
    dyt_learn_alpha: bool = True
    ln_eps: float = 1e-6
    attn_init: str = "trunc_normal"  # or "mimetic" (Trockman and Kolter 2023; see layers.mimetic_init_)


# ----------------------------------------------------------------------------- model

class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig, mlp_layer=Mlp):
        super().__init__()
        if cfg.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool={cfg.global_pool!r}: choose 'token' or 'avg'")
        if not cfg.class_token and cfg.global_pool != "avg":
            raise ValueError("class_token=False needs global_pool='avg' (there is no class token to pool)")
        if cfg.attn_init not in ("trunc_normal", "mimetic"):
            raise ValueError(f"attn_init={cfg.attn_init!r}: choose 'trunc_normal' or 'mimetic'")
        self.cfg = cfg
        norm_layer = norm_factory(cfg.norm, alpha0=cfg.dyt_alpha0, eps=cfg.ln_eps,
                                  squash=cfg.dyt_squash, learn_alpha=cfg.dyt_learn_alpha)
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim)
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, cfg.dim))
        dpr = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]  # linear depth rule
        self.blocks = nn.Sequential(*[
            Block(cfg.dim, cfg.num_heads, cfg.mlp_ratio, dpr[i], norm_layer=norm_layer, mlp_layer=mlp_layer)
            for i in range(cfg.depth)])
        # token pooling: final norm before pooling; avg pooling: norm after pooling (fc_norm)
        self.norm = norm_layer(cfg.dim) if cfg.global_pool == "token" else nn.Identity()
        self.fc_norm = norm_layer(cfg.dim) if cfg.global_pool == "avg" else nn.Identity()
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        trunc_normal_init_(self, (nn.Linear,))
        if self.cfg.attn_init == "mimetic":
            for m in self.modules():
                if isinstance(m, Attention):
                    mimetic_init_(m)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"} if self.cls_token is not None else {"pos_embed"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [B, 3, H, W] -> [B, N, C]
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)  # [1, 1, C] -> [B, 1, C]
            x = torch.cat([cls, x], dim=1)  # [B, N+1, C]
        x = x + self.pos_embed  # [B, N+1, C] ([B, N, C] without a class token)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.global_pool == "token":
            x = x[:, 0]  # [B, N+1, C] -> [B, C]
        else:
            x = x[:, self.num_prefix_tokens:].mean(dim=1)  # patch tokens only: [B, N(+1), C] -> [B, C]
        return self.head(self.fc_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------- constructors

def _vit(dim, depth, heads, *, img_size=224, patch_size=16, num_classes=1000, drop_path_rate=0.0,
         norm="ln", **kw) -> VisionTransformer:
    return VisionTransformer(ViTConfig(img_size=img_size, patch_size=patch_size, num_classes=num_classes,
                                       dim=dim, depth=depth, num_heads=heads,
                                       drop_path_rate=drop_path_rate, norm=norm, **kw))


register_vit = functools.partial(register_model, options=options_of(_vit, ViTConfig))


@register_vit(paper="DeiT (baseline for DyT, KAT, MambaOut)", paper_params_m=5.7, paper_top1=72.2)
def vit_tiny(**kw):
    """ViT-Ti/16 (DeiT-T) with LayerNorm."""
    return _vit(192, 12, 3, **kw)


@register_vit(paper="DeiT", paper_params_m=22.1, paper_top1=79.8)
def vit_small(**kw):
    """ViT-S/16 (DeiT-S) with LayerNorm."""
    return _vit(384, 12, 6, **kw)


@register_vit(paper="DyT (LN baseline, Table 1)", paper_params_m=86.6, paper_top1=82.3)
def vit_base(**kw):
    """ViT-B/16 with LayerNorm."""
    return _vit(768, 12, 12, **kw)


@register_vit(paper="DyT (LN baseline, Table 1)", paper_params_m=304.4, paper_top1=83.1)
def vit_large(**kw):
    """ViT-L/16 with LayerNorm."""
    return _vit(1024, 24, 16, **kw)


@register_vit(paper="DyT on DeiT-Ti (the planner's Ti size; the DyT paper reports no Ti)")
def vit_tiny_dyt(**kw):
    """ViT-Ti/16 with DyT in place of every LayerNorm (alpha0 0.5)."""
    return _vit(192, 12, 3, **{"norm": "dyt", **kw})


@register_vit(paper="DyT (Table 7, ViT-S with tanh)", paper_top1=80.3)
def vit_small_dyt(**kw):
    """ViT-S/16 with DyT in place of every LayerNorm (alpha0 0.5)."""
    return _vit(384, 12, 6, **{"norm": "dyt", **kw})


@register_vit(paper="DyT (Table 1)", paper_params_m=86.6, paper_top1=82.5)
def vit_base_dyt(**kw):
    """ViT-B/16 with DyT in place of every LayerNorm."""
    return _vit(768, 12, 12, **{"norm": "dyt", **kw})


@register_vit(paper="DyT (Table 1)", paper_params_m=304.4, paper_top1=83.6)
def vit_large_dyt(**kw):
    """ViT-L/16 with DyT in place of every LayerNorm."""
    return _vit(1024, 24, 16, **{"norm": "dyt", **kw})


@register_vit(paper="reproscope (CPU quickstart size)", default_img_size=32)
def vit_quick(**kw):
    """ViT width 96, depth 4, 4 heads, patch 8 at 32 px: trains on 2 CPU cores in minutes."""
    kw.setdefault("img_size", 32)
    kw.setdefault("patch_size", 8)
    return _vit(96, 4, 4, **kw)
