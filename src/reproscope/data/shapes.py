"""`shapes10`: a procedurally generated 10-class image dataset that ships as code.

Each image shows one shape (disk or triangle) filled with one texture (solid,
horizontal stripes, vertical stripes, checker or dots), giving 2 x 5 = 10 classes (label = 5 * shape + texture). Every image
draws a random position, scale, rotation, foreground/background/stripe colours, stripe
frequency and phase, a background gradient and pixel noise. Nothing about the class is
at a fixed pixel, so a linear classifier on raw pixels does poorly while a small ViT
learns it (see README, `benchmarks/quickstart.py`).

Generation is vectorised torch code on CPU, deterministic from a seed: the same
(seed, n, size) always gives the same uint8 tensor, on any machine.
"""

from __future__ import annotations

import math

import torch

SHAPES = ("disk", "triangle")
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dots")
CLASSES = tuple(f"{s}-{t}" for s in SHAPES for t in TEXTURES)


def _shape_masks(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-masks of every shape in local coordinates. [B, H, W] -> [2, B, H, W]."""
    disk = (u * u + v * v) < 1.0
    # equilateral triangle with circumradius 1.15: inside the three half-planes n_k . p < 0.575
    tri = torch.ones_like(disk)
    for ang in (3 * math.pi / 2, math.pi / 6, 5 * math.pi / 6):
        tri &= (u * math.cos(ang) + v * math.sin(ang)) < 0.575
    return torch.stack([disk, tri])


def _texture_masks(u: torch.Tensor, v: torch.Tensor, freq: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Where each texture shows its second colour. [B, H, W] -> [5, B, H, W]."""
    f, ph = freq[:, None, None], phase[:, None, None]
    su, sv = torch.sin(math.pi * f * u + ph), torch.sin(math.pi * f * v + ph)
    solid = torch.zeros_like(u, dtype=torch.bool)
    hstripes = sv > 0
    vstripes = su > 0
    checker = (su * sv) > 0
    fu, fv = torch.frac(f * u / 2 + ph) - 0.5, torch.frac(f * v / 2 + ph) - 0.5
    dots = (fu * fu + fv * fv) < 0.07
    return torch.stack([solid, hstripes, vstripes, checker, dots])


@torch.no_grad()
def generate_shapes(n: int, size: int = 32, seed: int = 0, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` images. Returns (uint8 images [n, 3, size, size], int64 labels [n])."""
    if n < 1 or size < 8:
        raise ValueError(f"shapes10 needs n >= 1 and size >= 8, got n={n}, size={size}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n) % len(CLASSES)
    labels = labels[torch.randperm(n, generator=g)]
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    # pixel centres in [-1, 1]
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")  # [H, W] each
    for start in range(0, n, chunk):
        y = labels[start:start + chunk]
        b = y.numel()

        def rand(*shape):
            return torch.rand(*shape, generator=g)

        shape_id, texture = y // len(TEXTURES), y % len(TEXTURES)
        cx, cy = (rand(b) - 0.5) * 0.6, (rand(b) - 0.5) * 0.6
        scale = 0.5 + 0.3 * rand(b)
        theta = (rand(b) - 0.5) * 0.5  # +-14 degrees
        dx = xx[None] - cx[:, None, None]  # [B, H, W]
        dy = yy[None] - cy[:, None, None]
        c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        u = (dx * c + dy * s) / scale[:, None, None]
        v = (-dx * s + dy * c) / scale[:, None, None]
        masks = _shape_masks(u, v)  # [2, B, H, W]
        inside = masks.gather(0, shape_id[None, :, None, None].expand(1, b, size, size))[0]

        bg = rand(b, 3)
        fg = (1 - bg + 0.25 * (rand(b, 3) - 0.5)).clamp(0, 1)
        alt = (0.3 * fg + 0.7 * bg + 0.2 * (rand(b, 3) - 0.5)).clamp(0, 1)
        freq = 1.6 + 0.8 * rand(b)
        phase = rand(b) * 2 * math.pi
        tex = _texture_masks(u, v, freq, phase)  # [5, B, H, W]
        use_alt = tex.gather(0, texture[None, :, None, None].expand(1, b, size, size))[0]  # [B, H, W]
        fill = torch.where(use_alt[:, None], alt[:, :, None, None], fg[:, :, None, None])  # [B, 3, H, W]

        grad_dir = rand(b) * 2 * math.pi
        ramp = xx[None] * torch.cos(grad_dir)[:, None, None] + yy[None] * torch.sin(grad_dir)[:, None, None]
        background = bg[:, :, None, None] + 0.15 * ramp[:, None]
        img = torch.where(inside[:, None], fill, background)
        img = img + 0.04 * torch.randn(img.shape, generator=g)
        out[start:start + b] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return out, labels
