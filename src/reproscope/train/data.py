"""Data path: uint8 image tensors in memory, batched augmentation on the training device.

Every dataset is turned into an :class:`ArrayDataset` (uint8 ``[N, 3, H, W]`` images and
int64 labels). Batches are gathered by index, moved to the device as uint8 and augmented
there in one batched op, so no per-image Python work happens per epoch.

Exact resume: the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the
augmentation of global step ``s`` from ``(seed, s)``, so a run resumed at any step sees
exactly the batches and augmentations the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ..config import ConfigError, DataConfig, nearest
from . import shapes


@dataclass
class ArrayDataset:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    classes: tuple[str, ...]
    name: str = ""

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be uint8 [N, 3, H, W], got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------- registry

BUILTIN_DATASETS = {"shapes10": "procedural 10-class shapes x textures, generated from a seed (no files)"}
DATASETS = dict(BUILTIN_DATASETS)


def build_datasets(cfg: DataConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, val) for the configured dataset."""
    if cfg.dataset == "shapes10":
        # train and val come from disjoint seeds so they never share an image
        xtr, ytr = shapes.generate_shapes(cfg.train_size, cfg.img_size, seed=2 * cfg.data_seed)
        xva, yva = shapes.generate_shapes(cfg.val_size, cfg.img_size, seed=2 * cfg.data_seed + 1)
        return (ArrayDataset(xtr, ytr, shapes.CLASSES, "shapes10/train"),
                ArrayDataset(xva, yva, shapes.CLASSES, "shapes10/val"))
    raise ConfigError(f"data.dataset={cfg.dataset!r}: unknown dataset; known: "
                      f"{', '.join(sorted(DATASETS))}{nearest(cfg.dataset, DATASETS)}")


def channel_stats(ds: ArrayDataset, max_images: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, from (a deterministic prefix of) the data."""
    x = ds.images[:max_images].float().div_(255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


# ----------------------------------------------------------------------------- order

def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1_000_003 * int(seed) + int(epoch))
    return torch.randperm(n, generator=g)


def batch_indices(n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                  drop_last: bool = True, shuffle: bool = True) -> Iterator[torch.Tensor]:
    """Index batches of one epoch, starting at batch ``start_batch`` (for mid-epoch resume)."""
    order = epoch_permutation(n, seed, epoch) if shuffle else torch.arange(n)
    nb = n // batch_size if drop_last else -(-n // batch_size)
    for i in range(start_batch, nb):
        yield order[i * batch_size:(i + 1) * batch_size]


def batches_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


# ----------------------------------------------------------------------------- augmentation

def random_crop_flip(x: torch.Tensor, pad: int, hflip: float, g: torch.Generator | None) -> torch.Tensor:
    """Per-sample random crop (reflect padding ``pad``) and horizontal flip on a batch.

    Written by hand because torchvision's v2 transforms draw one crop per call, not per sample
    of a device batch. x: [B, C, H, W] float.
    """
    b, c, h, w = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # [B, C, H+2p, W+2p]
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=g, device=x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=g, device=x.device)
        rows = oy[:, None] + torch.arange(h, device=x.device)  # [B, H]
        cols = ox[:, None] + torch.arange(w, device=x.device)  # [B, W]
        bi = torch.arange(b, device=x.device)[:, None, None]
        # advanced indexing: [B, H, W, C] -> [B, C, H, W]
        x = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if hflip > 0:
        flip = torch.rand(b, generator=g, device=x.device) < hflip
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


class BatchLoader:
    """Yields normalised float batches on ``device`` from an :class:`ArrayDataset`.

    ``train=True`` shuffles by (seed, epoch) and augments each step from (seed, step).
    """

    def __init__(self, ds: ArrayDataset, batch_size: int, device: torch.device, mean, std,
                 *, train: bool, seed: int = 0, crop_pad: int = 0, hflip: float = 0.0,
                 channels_last: bool = False):
        self.ds, self.batch_size, self.device, self.train = ds, batch_size, device, train
        self.seed, self.crop_pad, self.hflip = seed, crop_pad, hflip
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.drop_last = train
        if train and len(ds) < batch_size:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the training set "
                              f"({len(ds)} images in {ds.name}); lower data.batch_size")

    def __len__(self) -> int:
        return batches_per_epoch(len(self.ds), self.batch_size, self.drop_last)

    def _gen(self, step: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(7_919 * int(self.seed) + int(step) + 1)
        return g

    def epoch(self, epoch: int, start_batch: int = 0, first_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``epoch`` from ``start_batch``; ``first_step`` is the global step of that batch."""
        for i, idx in enumerate(batch_indices(len(self.ds), self.batch_size, self.seed, epoch,
                                              start_batch, self.drop_last, shuffle=self.train)):
            yield self.make_batch(idx, first_step + i)

    def make_batch(self, idx: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.ds.images[idx].to(self.device, non_blocking=True).float()
        y = self.ds.labels[idx].to(self.device, non_blocking=True)
        x = (x - self.mean) / self.std
        if self.train and (self.crop_pad or self.hflip):
            x = random_crop_flip(x, self.crop_pad, self.hflip, self._gen(step))
        return x.contiguous(memory_format=self.memory_format), y
