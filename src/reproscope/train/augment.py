"""Batched augmentation on the training device (GPU or CPU, same code), after DeiT/ConvNeXt.

Input: a uint8 batch [B, 3, R, R] from the cache, already on the device. Output: a normalised
float batch [B, 3, S, S] and integer labels or soft targets.

Order: RandAugment on the cached uint8 image -> RandomResizedCrop + horizontal flip -> colour
jitter (only when RandAugment is off, as in timm's transform factory, which the DyT/ConvNeXt
reference uses) -> normalise -> random erasing -> mixup/cutmix with label smoothing folded into
the soft targets. Deviation: timm applies RandAugment after the crop, at the output size; we apply
it before, on the cache-resolution image, so that it runs on uint8 once per sample.

What comes from torchvision.transforms.v2 and what is ours, and why:
- RandAugment: ``v2.RandAugment``, called per sample (its ops draw one set of ops per call, and a
  GPU batch needs per-sample randomness); the magnitude is drawn per sample from N(m, mstd) as in
  timm's "rand-m9-mstd0.5".
- MixUp / CutMix: ``v2.MixUp`` / ``v2.CutMix`` on the whole batch (one lambda per batch, timm's
  default "batch" mode), switching between them with ``mix_switch_prob``.
- RandomResizedCrop + flip: ours, one ``affine_grid``/``grid_sample`` call for the whole batch
  with a per-sample crop box (v2 draws one box per call). Deviation: boxes larger than the image
  are clipped to it instead of re-drawn (torchvision retries 10 times, then centre-crops).
- Random erasing: ours, vectorised per sample (v2.RandomErasing erases one box per call); timm's
  "pixel" mode (normal noise fill), area [0.02, 1/3], aspect [0.3, 3.3], one box, clipped to the image.
- Colour jitter: ours, vectorised brightness/contrast/saturation factors per sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugConfig


def random_resized_crop_flip(x: torch.Tensor, out_size: int, scale_min: float, hflip: float,
                             ratio=(3 / 4, 4 / 3), mode: str = "bilinear") -> torch.Tensor:
    """Per-sample RandomResizedCrop and horizontal flip of a float batch [B, C, H, W] -> [B, C, S, S]."""
    b = x.shape[0]
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(scale_min, 1.0)
    logr = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)  # box width as a fraction of the image
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)  # box centre in [-1, 1] coordinates
    cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, device=dev) < hflip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation factors ~ U(1 - s, 1 + s) per sample; x in [0, 1]."""
    b = x.shape[0]

    def factor():
        return torch.empty(b, 1, 1, 1, device=x.device).uniform_(1 - strength, 1 + strength)

    x = x * factor()
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # [B, 1, H, W]
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * factor() + gray.mean(dim=(2, 3), keepdim=True)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + (x - gray) * factor()
    return x.clamp(0, 1)


def rand_augment(x: torch.Tensor, num_ops: int, magnitude: float, mstd: float) -> torch.Tensor:
    """torchvision v2 RandAugment per sample on a uint8 batch; magnitude ~ N(m, mstd), clipped to [0, 10]."""
    from torchvision.transforms import v2
    out = torch.empty_like(x)
    mags = (torch.randn(x.shape[0]) * mstd + magnitude).round().clamp(0, 10).int().tolist()
    for i, m in enumerate(mags):
        out[i] = v2.RandAugment(num_ops=num_ops, magnitude=m, num_magnitude_bins=11)(x[i])
    return out


def random_erasing(x: torch.Tensor, prob: float, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3)) -> torch.Tensor:
    """Erase one box per selected sample (prob) with N(0, 1) noise (x is normalised). [B, C, H, W]."""
    b, c, hh, ww = x.shape
    dev = x.device
    apply = torch.rand(b, device=dev) < prob
    a = torch.empty(b, device=dev).uniform_(*area) * hh * ww
    logr = torch.empty(b, device=dev).uniform_(math.log(aspect[0]), math.log(aspect[1]))
    eh = torch.sqrt(a * torch.exp(logr)).round().clamp(1, hh).long()
    ew = torch.sqrt(a / torch.exp(logr)).round().clamp(1, ww).long()
    top = (torch.rand(b, device=dev) * (hh - eh + 1)).long()
    left = (torch.rand(b, device=dev) * (ww - ew + 1)).long()
    rows = torch.arange(hh, device=dev)[None, :]  # [1, H]
    cols = torch.arange(ww, device=dev)[None, :]
    in_r = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # [B, H]
    in_c = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # [B, W]
    mask = (in_r[:, :, None] & in_c[:, None, :] & apply[:, None, None])[:, None]  # [B, 1, H, W]
    return torch.where(mask, torch.randn_like(x), x)


def smooth_targets(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot (or soft) targets with label smoothing: y * (1 - s) + s / K. Rows sum to 1."""
    if y.ndim == 1:
        y = F.one_hot(y, num_classes).float()
    return y * (1 - smoothing) + smoothing / num_classes


class MixCut:
    """With probability ``prob``, mixup (Beta(alpha, alpha)) or cutmix, chosen with ``switch_prob``."""

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float):
        from torchvision.transforms import v2
        self.num_classes, self.prob, self.switch_prob = num_classes, prob, switch_prob
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup is not None or self.cutmix is not None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.rand(()) >= self.prob:
            return x, F.one_hot(y, self.num_classes).float()
        use_cut = self.cutmix is not None and (self.mixup is None or torch.rand(()) < self.switch_prob)
        return (self.cutmix if use_cut else self.mixup)(x, y)


class BatchTransform:
    """uint8 [B, 3, R, R] on device -> (normalised float [B, 3, S, S], labels or soft targets)."""

    def __init__(self, cfg: AugConfig, img_size: int, mean, std, num_classes: int, label_smoothing: float,
                 *, train: bool):
        self.cfg, self.size, self.train = cfg, img_size, train
        self.num_classes, self.smoothing = num_classes, label_smoothing
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.mix = MixCut(num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, cfg.mix_switch_prob)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None):
        if not self.train:
            return self._normalise(center_crop(x, self.size).float() / 255), y
        c = self.cfg
        if c.randaug_n > 0:  # photometric ops on uint8, before the geometric crop (same distribution)
            x = rand_augment(x, c.randaug_n, c.randaug_m, c.randaug_mstd)
        xf = x.float() / 255
        if c.rrc_scale_min > 0:
            mode = "bicubic" if c.interpolation == "bicubic" else "bilinear"
            xf = random_resized_crop_flip(xf, self.size, c.rrc_scale_min, c.hflip, mode=mode).clamp(0, 1)
        else:
            from .data import random_crop_flip
            xf = random_crop_flip(center_crop(xf, self.size), c.crop_pad, c.hflip, gen)
        if c.color_jitter > 0 and c.randaug_n == 0:
            xf = color_jitter(xf, c.color_jitter)
        xf = self._normalise(xf)
        if c.random_erasing > 0:
            xf = random_erasing(xf, c.random_erasing)
        if self.mix.active:
            xf, y = self.mix(xf, y)
            y = smooth_targets(y, self.num_classes, self.smoothing)
        return xf, y


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    if h < size or w < size:
        return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False).to(x.dtype)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for integer labels (with smoothing) or soft targets (smoothing already folded in)."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
