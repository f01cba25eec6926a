"""Batched augmentation on the training device (GPU or CPU, same code), after DeiT/ConvNeXt.

Input: a uint8 batch [B, 3, R, R] from the cache, already on the device. Output: a normalised
float batch [B, 3, S, S] and integer labels or soft targets.

Order: RandAugment on the cached uint8 image -> RandomResizedCrop + horizontal flip -> colour
jitter (only when RandAugment is off, as in timm's transform factory, which the DyT/ConvNeXt
reference uses) -> normalise -> random erasing -> mixup/cutmix with label smoothing folded into
the soft targets. Deviation: timm applies RandAugment after the crop, at the output size; we apply
it before, on the cache-resolution image, so that it runs on uint8 once per sample.

What comes from torchvision.transforms.v2 and what is ours, and why:
- RandAugment: ours, batched (``rand_augment``): torchvision v2.RandAugment's 14 ops, magnitudes
  and random signs, per-sample ops and magnitude ~ N(m, mstd) as in timm's "rand-m9-mstd0.5"; the
  photometric ops match torchvision's uint8 arithmetic (``tests/test_augment.py``), the geometric
  ones use one nearest-neighbour warp per round. v2.RandAugment draws one op per call, which on a
  GPU batch meant a Python loop over samples (kept as ``rand_augment_reference``).
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
from .datasets import random_crop_flip


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


RA_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
          "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")  # torchvision's RandAugment space
_GEOMETRIC = {1, 2, 3, 4, 5}


def _ra_magnitude(op: str, m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """torchvision's RandAugment magnitude for bin ``m`` (0..10) of 11 bins, per sample."""
    t = m.float() / 10
    if op in ("ShearX", "ShearY"):
        return 0.3 * t
    if op == "TranslateX":
        return (150.0 / 331.0 * w * t).trunc()
    if op == "TranslateY":
        return (150.0 / 331.0 * h * t).trunc()
    if op == "Rotate":
        return 30.0 * t
    if op == "Posterize":
        return 8 - (m.float() / 2.5).round()  # bits kept
    if op == "Solarize":
        return 255.0 * (1 - t)  # threshold
    return 0.9 * t  # Brightness, Color, Contrast, Sharpness: factor 1 +- this


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).floor()  # [B, 1, H, W], as uint8 rgb_to_grayscale


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f * a + (1 - f) * b on 0-255 floats, truncated to integer levels (torchvision's uint8 _blend)."""
    return (f.view(-1, 1, 1, 1) * a + (1 - f.view(-1, 1, 1, 1)) * b).clamp(0, 255).floor()


def _sharpen_base(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 smoothed image torchvision blends against (border pixels kept)."""
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13
    c = x.shape[1]
    blur = F.conv2d(x, k.expand(c, 1, 3, 3), groups=c).round().clamp(0, 255)  # [B, C, H-2, W-2]
    out = x.clone()
    out[..., 1:-1, 1:-1] = blur
    return out


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel histogram equalisation of 0-255 integer floats, batched (torchvision's rule)."""
    b, c, h, w = x.shape
    v = x.reshape(b * c, h * w).long()  # [B*C, HW]
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, v, torch.ones_like(v, dtype=torch.float))
    top = hist.gather(1, v.amax(1, keepdim=True))  # count of the largest value present
    step = ((h * w - top) / 255).floor()  # [B*C, 1]
    lut = ((hist.cumsum(1) + (step / 2).floor()) / step.clamp(min=1)).floor()
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)  # shift right by one
    out = lut.gather(1, v)
    out = torch.where(step > 0, out, v.float())
    return out.reshape(b, c, h, w)


def _photometric(op: str, x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    if op == "Brightness":
        return _blend(x, torch.zeros_like(x), 1 + mag)
    if op == "Color":
        return _blend(x, _gray(x).expand_as(x), 1 + mag)
    if op == "Contrast":
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x, mean.expand_as(x), 1 + mag)
    if op == "Sharpness":  # x + (1 - f) (blur - x), in torchvision's order of operations
        return (x + (1 - (1 + mag)).view(-1, 1, 1, 1) * (_sharpen_base(x) - x)).clamp(0, 255).floor()
    if op == "Posterize":
        keep = (2 ** (8 - mag)).view(-1, 1, 1, 1)  # drop the low 8 - bits bits
        return (x / keep).floor() * keep
    if op == "Solarize":
        return torch.where(x >= mag.view(-1, 1, 1, 1), 255 - x, x)
    if op == "AutoContrast":
        lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        scale = torch.where(hi > lo, 255 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
        lo = torch.where(hi > lo, lo, torch.zeros_like(lo))
        return ((x - lo) * scale).clamp(0, 255).floor()
    if op == "Equalize":
        return _equalize(x)
    raise ValueError(op)


def _geometric_theta(op: torch.Tensor, mag: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, 2, 3] maps output pixel (u, v, 1) to the input pixel it samples. Shear about the top-left
    corner, rotation about the centre, integer translation (torchvision's conventions; the sign of
    every geometric op is random, so its direction convention does not matter)."""
    b = op.shape[0]
    theta = torch.zeros(b, 2, 3, device=mag.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    sx, sy = op == 1, op == 2
    theta[sx, 0, 1] = mag[sx]
    theta[sy, 1, 0] = mag[sy]
    tx, ty = op == 3, op == 4
    theta[tx, 0, 2] = -mag[tx]
    theta[ty, 1, 2] = -mag[ty]
    rot = op == 5
    a = torch.deg2rad(mag[rot])
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cos, sin = torch.cos(a), torch.sin(a)
    theta[rot, 0, 0], theta[rot, 0, 1], theta[rot, 0, 2] = cos, -sin, cx - cos * cx + sin * cy
    theta[rot, 1, 0], theta[rot, 1, 1], theta[rot, 1, 2] = sin, cos, cy - sin * cx - cos * cy
    return theta


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp with zero fill; theta in pixel coordinates (see _geometric_theta)."""
    b, _, h, w = x.shape
    v, u = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                          torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).view(1, h * w, 3)  # [1, HW, 3]
    src = pix @ theta.transpose(1, 2)  # [B, HW, 2] input pixel coordinates
    grid = torch.stack([2 * src[..., 0] / max(w - 1, 1) - 1, 2 * src[..., 1] / max(h - 1, 1) - 1], -1)
    return F.grid_sample(x, grid.view(b, h, w, 2), mode="nearest", padding_mode="zeros", align_corners=True)


def rand_augment(x: torch.Tensor, num_ops: int, magnitude: float, mstd: float) -> torch.Tensor:
    """RandAugment on a uint8 batch [B, 3, H, W], batched on the batch's device.

    Same op space, magnitudes (11 bins) and random signs as torchvision's v2.RandAugment (which
    draws one op per call, so a GPU batch would need a Python loop); each sample draws its own ops
    and its own magnitude ~ N(m, mstd) rounded and clipped to [0, 10] (timm's "mstd"). Each
    round groups the samples by op: one warp for all geometric ones, one call per photometric op.
    """
    b, _, h, w = x.shape
    out = x.float()
    mags = (torch.randn(b, device=x.device) * mstd + magnitude).round().clamp(0, 10)
    for _ in range(num_ops):
        op = torch.randint(len(RA_OPS), (b,), device=x.device)
        sign = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
        geo = sum(op == k for k in _GEOMETRIC).bool()
        if geo.any():
            idx = geo.nonzero().squeeze(1)
            mag = torch.zeros(len(idx), device=x.device)
            for k in _GEOMETRIC:
                sel = op[idx] == k
                mag[sel] = _ra_magnitude(RA_OPS[k], mags[idx][sel], h, w) * sign[idx][sel]
            out[idx] = _warp(out[idx], _geometric_theta(op[idx], mag, h, w))
        for k in range(6, len(RA_OPS)):
            idx = (op == k).nonzero().squeeze(1)
            if len(idx):
                name = RA_OPS[k]
                mag = _ra_magnitude(name, mags[idx], h, w)
                if name in ("Brightness", "Color", "Contrast", "Sharpness"):
                    mag = mag * sign[idx]
                out[idx] = _photometric(name, out[idx], mag)
    return out.round().clamp(0, 255).to(torch.uint8)


def rand_augment_reference(x: torch.Tensor, num_ops: int, magnitude: float, mstd: float) -> torch.Tensor:
    """The per-sample torchvision loop that :func:`rand_augment` replaces (kept for tests and benchmarks)."""
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

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] floats -> (x - mean) / std per channel (a subclass may override it, e.g. the bug zoo's)."""
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None):
        if not self.train:
            return self.normalise(center_crop(x, self.size).float() / 255), y
        c = self.cfg
        if c.randaug_n > 0:  # photometric ops on uint8, before the geometric crop (same distribution)
            x = rand_augment(x, c.randaug_n, c.randaug_m, c.randaug_mstd)
        xf = x.float() / 255
        if c.rrc_scale_min > 0:
            mode = "bicubic" if c.interpolation == "bicubic" else "bilinear"
            xf = random_resized_crop_flip(xf, self.size, c.rrc_scale_min, c.hflip, mode=mode).clamp(0, 1)
        else:
            xf = random_crop_flip(center_crop(xf, self.size), c.crop_pad, c.hflip, gen)
        if c.color_jitter > 0 and c.randaug_n == 0:
            xf = color_jitter(xf, c.color_jitter)
        xf = self.normalise(xf)
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
