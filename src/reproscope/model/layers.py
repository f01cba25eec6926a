"""Layers shared by the paper models.

DyT is written from "Transformers without Normalization" (Zhu, Chen, He, LeCun, Liu,
CVPR 2025, arXiv 2503.10622), Sec. 3: DyT(x) = gamma * tanh(alpha * x) + beta, with alpha a
learnable scalar (init alpha0 = 0.5 for ViT/ConvNeXt) and gamma, beta per-channel vectors
initialised to ones and zeros. No statistics are computed. The squashing function is
selectable for the paper's Table 7 ablation (tanh, hardtanh, sigmoid, identity), and alpha
can be frozen at alpha0 for the "without alpha" row of Table 8 (our choice of how to express
"no alpha": a fixed, non-learned scale, which with alpha0 = 1 is plain tanh).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

SQUASH = {
    "tanh": torch.tanh,
    "hardtanh": F.hardtanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


class DyT(nn.Module):
    """Dynamic Tanh over the channel dimension.

    ``channels_last=True`` (default) normalises the last dim ([B, N, C] or [B, H, W, C]);
    ``channels_last=False`` handles [B, C, H, W] feature maps.
    """

    def __init__(self, num_features: int, alpha0: float = 0.5, *, squash: str = "tanh",
                 learn_alpha: bool = True, channels_last: bool = True):
        super().__init__()
        if squash not in SQUASH:
            raise ValueError(f"DyT squash={squash!r}: choose one of {sorted(SQUASH)}")
        self.num_features, self.squash, self.channels_last = num_features, squash, channels_last
        self.alpha = nn.Parameter(torch.full((1,), float(alpha0)), requires_grad=learn_alpha)
        self.weight = nn.Parameter(torch.ones(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        self._fn = SQUASH[squash]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._fn(self.alpha * x)
        if self.channels_last:
            return y * self.weight + self.bias
        return y * self.weight[:, None, None] + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return (f"{self.num_features}, alpha0={self.alpha.item():.3g}, squash={self.squash}, "
                f"learn_alpha={self.alpha.requires_grad}, channels_last={self.channels_last}")


# |pre-activation| beyond which tanh is within 4% of +-1 (tanh(2) = 0.964): "saturated" in the
# init-scale check and the DyT Fig. 8 probe alike (our threshold; the paper shows the curves only)
SATURATION = 2.0


def dyt_like(m: nn.Module) -> bool:
    """The duck-typing rule the instruments and checks use: a module with a tensor ``alpha`` (ours, or a
    user's DyT written from the paper) is DyT-like; its pre-activation is ``alpha * input``. The paper's
    alpha is "a learnable scalar" beside a per-channel scale and shift (Sec. 3): a per-channel ``alpha``
    counts only beside two more tensors (a student's per-channel DyT, alpha, weight and bias); with a
    shift alone it is another layer (ResMLP's ``Affine``: alpha * x + beta, no squash)."""
    alpha = getattr(m, "alpha", None)
    if not isinstance(alpha, torch.Tensor):
        return False
    others = [t for n, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
              if n != "alpha"] + [v for k, v in vars(m).items() if isinstance(v, torch.Tensor) and k != "alpha"]
    return alpha.numel() == 1 or len(others) >= 2


def saturated_fraction(pre: torch.Tensor) -> torch.Tensor:
    """Fraction (0-d float tensor, no sync) of pre-activation elements with |value| > ``SATURATION``."""
    return (pre.abs() > SATURATION).float().mean()


def first_tensor(x):
    """``x`` if it is a tensor, else the first element of a tuple/list when that is a tensor, else None
    (what a module hook gets as inputs or outputs)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of a [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [B, C, H, W] -> [B, H, W, C]
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016): drop the residual branch with prob p."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def trunc_normal_init_(model: nn.Module, types=(nn.Linear,), std: float = 0.02) -> None:
    """trunc_normal(std) weights and zero biases for every module of the given types."""
    for m in model.modules():
        if isinstance(m, types):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def drop_path_or_identity(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT; ConvNeXt init 1e-6)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv, through scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, 3C] -> 3 x [B, heads, N, C/heads]
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = rearrange(x, "b h n d -> b n (h d)")  # [B, heads, N, C/heads] -> [B, N, C]
        return self.proj_drop(self.proj(x))


@torch.no_grad()
def mimetic_init_(attn: Attention, alpha_qk: float = 0.7, beta_qk: float = 0.7, alpha_vo: float = 0.4,
                  beta_vo: float = 0.4) -> None:
    """Mimetic initialisation of one attention layer (Trockman and Kolter, "Mimetic Initialization of
    Self-Attention Layers", ICML 2023, Sec. 3): per head h, W_q^h^T W_k^h ~ alpha_qk Z + beta_qk I
    (its best rank-C/heads approximation), and W_proj W_v = alpha_vo Z' - beta_vo I exactly, with
    Z, Z' ~ N(0, 1/C) [C, C]; each product is split into its factors by SVD (sqrt of the singular
    values on both sides). Biases are left as they are.

    The defaults (0.7, 0.7, 0.4, 0.4) are the paper's ViT values as we recall them; its text could not
    be consulted when this was written, so check them against Sec. 3 before citing. The KAT public
    code's mimetic init gives a mean W_proj W_v diagonal of about -0.4 on KAT-T, which matches
    beta_vo = 0.4.

    Shapes: ``attn.qkv.weight`` [3C, C] (rows q | k | v, heads contiguous), ``attn.proj.weight`` [C, C].
    """
    c = attn.proj.weight.shape[0]
    h = attn.num_heads
    d = c // h
    dev, dt = attn.qkv.weight.device, attn.qkv.weight.dtype
    eye = torch.eye(c, dtype=torch.float64)
    wq, wk = torch.empty(c, c, dtype=torch.float64), torch.empty(c, c, dtype=torch.float64)
    for i in range(h):  # scores of head i: x W_q^i^T W_k^i x^T, rank d
        m = alpha_qk * torch.randn(c, c, dtype=torch.float64) / c ** 0.5 + beta_qk * eye
        u, sv, vh = torch.linalg.svd(m)
        root = sv[:d].sqrt()
        wq[i * d:(i + 1) * d] = (u[:, :d] * root).T  # [d, C]
        wk[i * d:(i + 1) * d] = root[:, None] * vh[:d]  # [d, C]
    m = alpha_vo * torch.randn(c, c, dtype=torch.float64) / c ** 0.5 - beta_vo * eye
    u, sv, vh = torch.linalg.svd(m)
    root = sv.sqrt()
    wv, wp = root[:, None] * vh, u * root  # W_proj W_v = U S V^T = m
    attn.qkv.weight.copy_(torch.cat([wq, wk, wv]).to(dev, dt))
    attn.proj.weight.copy_(wp.to(dev, dt))


def norm_factory(norm: str = "ln", *, alpha0: float = 0.5, eps: float = 1e-6, squash: str = "tanh",
                 learn_alpha: bool = True, channels_last: bool = True):
    """A ``norm_layer(dim) -> nn.Module`` for blocks: LayerNorm or DyT, picked at construction."""
    if norm == "ln":
        if channels_last:
            return lambda dim: nn.LayerNorm(dim, eps=eps)
        return lambda dim: LayerNorm2d(dim, eps=eps)
    if norm == "dyt":
        return lambda dim: DyT(dim, alpha0, squash=squash, learn_alpha=learn_alpha,
                               channels_last=channels_last)
    raise ValueError(f"norm={norm!r}: choose 'ln' or 'dyt'")


class Conversion(list):
    """The norms ``convert_norm_to_dyt`` swapped, as [(name, old type)], with ``left_alone``:
    [(name, type, reason)] for the norm layers it did not convert."""

    def __init__(self):
        super().__init__()
        self.left_alone: list[tuple[str, str, str]] = []


def _norm_axis(m: nn.Module, channels: int) -> str | None:
    """Which axis a LayerNorm-like module normalises: "last" ([..., C]), "first" ([B, C, H, W]) or None.
    From ``data_format`` (the ConvNeXt reference's LayerNorm), else by a probe forward on both layouts
    with spatial sizes that differ from C (the class name is not trusted)."""
    fmt = getattr(m, "data_format", None)
    if fmt in ("channels_last", "channels_first"):
        return "last" if fmt == "channels_last" else "first"
    h, w = [s for s in range(2, channels + 6) if s != channels][:2]
    ok = {}
    p = next(iter(m.parameters()), None)
    kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    for axis, shape in (("last", (2, h, w, channels)), ("first", (2, channels, h, w))):
        try:
            with torch.no_grad():
                ok[axis] = m(torch.randn(*shape, **kw)).shape == shape
        except Exception:  # the layout this module does not take
            ok[axis] = False
    if ok["last"] != ok["first"]:
        return "last" if ok["last"] else "first"
    return None


def convert_norm_to_dyt(model: nn.Module, alpha0: float = 0.5, *, squash: str = "tanh",
                        learn_alpha: bool = True) -> Conversion:
    """Swap every LayerNorm-like layer in ``model`` (in place) for a fresh DyT; returns the swapped
    [(name, old type)] with ``.left_alone`` [(name, type, reason)].

    Converted: ``nn.LayerNorm`` and its subclasses over one dimension, any module with a 1-D
    ``normalized_shape`` (e.g. the ConvNeXt reference's LayerNorm with ``data_format``), and
    ``GroupNorm(1, C)`` (MetaFormer's LayerNorm over [C, H, W], DyT Sec. 4 applies DyT per channel
    there). The normalised axis is read from ``data_format`` or found by a probe forward, so a
    channels-first LayerNorm gets a channels-first DyT whatever its class is called. Left alone,
    with the reason: BatchNorm (the DyT paper reports that replacing it fails: ResNet-50 76.2 ->
    68.9), GroupNorm with more than one group, LayerNorm over more than one dimension, and layers
    whose axis cannot be told.
    """
    out = Conversion()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            kind = type(child).__name__
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                out.left_alone.append((full, kind, "BatchNorm: the DyT paper reports replacing it fails (ResNet-50 "
                                                   "76.2 -> 68.9)"))
                continue
            if isinstance(child, nn.GroupNorm):
                if child.num_groups != 1:
                    out.left_alone.append((full, kind, f"GroupNorm with {child.num_groups} groups is not a LayerNorm"))
                    continue
                channels, axis = child.num_channels, "first"
            elif isinstance(child, nn.LayerNorm) or isinstance(getattr(child, "normalized_shape", None),
                                                                  (tuple, list, torch.Size, int)):
                shape = child.normalized_shape
                shape = (shape,) if isinstance(shape, int) else tuple(shape)
                if len(shape) != 1:
                    out.left_alone.append((full, kind, f"normalises over {shape}: only 1-D LayerNorm has a DyT twin"))
                    continue
                channels, axis = shape[0], _norm_axis(child, shape[0])
                if axis is None:
                    out.left_alone.append((full, kind, "its normalised axis could not be told from a probe forward"))
                    continue
            else:
                continue
            dyt = DyT(channels, alpha0, squash=squash, learn_alpha=learn_alpha, channels_last=axis == "last")
            p = next(iter(child.parameters()), None)
            if p is not None:
                dyt = dyt.to(device=p.device, dtype=p.dtype)
            setattr(parent, child_name, dyt)
            out.append((full, kind))
    return out
