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
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from ..config import ConfigError, DataConfig, nearest
from ..console import log as console
from ..runtime.distributed import shard
from . import shapes


@dataclass
class ArrayDataset:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    classes: tuple[str, ...]
    name: str = ""
    skipped: int = 0  # unreadable source files left out (--skip-corrupt)

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

def check_labels(train: ArrayDataset, val: ArrayDataset, num_classes: int) -> None:
    """Every label of both splits lies in [0, num_classes), checked once before anything runs (an
    out-of-range label is an IndexError in cross-entropy on CPU and a device-side assert on CUDA).

    Raises:
        ConfigError: naming the split, the label, the dataset's classes and the key to change.
    """
    for split in (train, val):
        if len(split) == 0:
            continue
        lo, hi = int(split.labels.min()), int(split.labels.max())
        if lo < 0 or hi >= num_classes:
            names = ", ".join(split.classes[:12]) + (" ..." if len(split.classes) > 12 else "")
            raise ConfigError(f"{split.name or 'dataset'} has label {hi if hi >= num_classes else lo} but "
                              f"data.num_classes={num_classes} (labels must lie in [0, {num_classes})); the dataset "
                              f"has {len(split.classes)} classes ({names}): set --set data.num_classes="
                              f"{max(len(split.classes), hi + 1)}, or 0 to take it from the dataset")


BUILTIN_DATASETS = {"shapes10": "procedural 10-class shapes x textures, generated from a seed (no files)"}
DISK_DATASETS = {
    "imagenette": "ImageNet 10-class subset (imagenette2 / -160 / -320 archives, or train/val folders)",
    "tiny-imagenet": "Tiny-ImageNet-200 official layout (val labelled by val/val_annotations.txt)",
    "cifar10": "CIFAR-10: torchvision's official binary or train|test/<class>/*.jpg folders",
    "cifar100": "CIFAR-100: torchvision's official binary or train|test/<class>/*.jpg folders",
    "imagefolder": "any ROOT/train/<class>/* and ROOT/val/<class>/*",
    "imagenet": "ImageNet-1K in ImageFolder layout",
    "imagenet-100": "ImageNet-100 (CMC's 100-class subset) of an ImageFolder ImageNet",
}
DATASETS = {**BUILTIN_DATASETS, **DISK_DATASETS}


def build_datasets(cfg: DataConfig, *, download: bool = False, progress: bool = True
                   ) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, val) uint8 datasets for the configured dataset (decoded once into a cache)."""
    if cfg.dataset == "shapes10":
        # train and val come from disjoint seeds so they never share an image
        if progress:
            console.info(f"generating shapes10: {cfg.train_size:,} train + {cfg.val_size:,} val images at "
                         f"{cfg.img_size} px")
        xtr, ytr = shapes.generate_shapes(cfg.train_size, cfg.img_size, seed=2 * cfg.data_seed)
        xva, yva = shapes.generate_shapes(cfg.val_size, cfg.img_size, seed=2 * cfg.data_seed + 1)
        return (ArrayDataset(xtr, ytr, shapes.CLASSES, "shapes10/train"),
                ArrayDataset(xva, yva, shapes.CLASSES, "shapes10/val"))
    if cfg.dataset not in DISK_DATASETS:
        raise ConfigError(f"data.dataset={cfg.dataset!r}: unknown dataset; known: "
                          f"{', '.join(sorted(DATASETS))}{nearest(cfg.dataset, DATASETS)}")
    from . import download as dl
    from . import folders
    if not cfg.root:
        raise folders.DataError(f"data.dataset={cfg.dataset!r} needs data.root: --set data.root=PATH "
                                f"(e.g. ../shared/datasets/imagenette), or --download to fetch it")
    root = Path(cfg.root).expanduser()
    if download:
        dl.download(cfg.dataset, root)
    if not root.is_dir():
        shown = root if root.is_absolute() else f"{root} (here: {Path.cwd() / root})"
        raise folders.DataError(f"data root {shown} does not exist. {dl.where_to_put(cfg.dataset, root)}")
    if cfg.dataset in ("cifar10", "cifar100"):
        got = folders.cifar_binary(root, 10 if cfg.dataset == "cifar10" else 100)
        if got is not None:
            (xtr, ytr), (xva, yva), classes = got
            return (ArrayDataset(xtr, ytr, classes, f"{cfg.dataset}/train"),
                    ArrayDataset(xva, yva, classes, f"{cfg.dataset}/val"))
    skip = cfg.skip_corrupt
    if cfg.dataset == "imagenette":
        files = folders.imagenette(root, skip)
    elif cfg.dataset == "tiny-imagenet":
        files = folders.tiny_imagenet(root, skip)
    elif cfg.dataset == "imagenet-100":
        files = folders.imagefolder(root, "imagenet-100", folders.imagenet100_classes(), skip)
    else:
        files = folders.imagefolder(root, cfg.dataset, skip_bad=skip)
    res = cfg.cache_res or round(cfg.img_size / cfg.eval_crop_pct)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else folders.default_cache_dir()
    out, errors = [], []
    for fl in files:  # both splits are read before any error is raised: one pass names every bad file
        try:
            x, y, man = folders.load_or_build_cache(fl, res, cache_dir, skip_corrupt=skip, workers=cfg.workers,
                                                    progress=progress)
        except folders.DataError as e:
            errors.append(str(e))
            continue
        out.append(ArrayDataset(x, y, fl.classes, fl.name, skipped=int(man.get("skipped", 0))))
    if errors:
        raise folders.DataError("\n".join(errors))
    for ds in out:
        if len(ds) == 0:
            raise folders.DataError(f"{ds.name} has no readable images left ({ds.skipped} skipped as unreadable): "
                                    f"nothing to train or evaluate on; check data.root")
    return out[0], out[1]


def channel_stats(ds: ArrayDataset, max_images: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, from (a deterministic prefix of) the data.

    Raises:
        ConfigError: a channel whose std is 0 (every image constant, or decoded to one value): the
            normalisation would divide by zero and train on NaN.
    """
    step = max(1, len(ds) // max_images)  # a strided subset: folder datasets are sorted by class
    x = ds.images[::step][:max_images].float().div_(255)
    mean, std = x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()
    if len(ds) and min(std) < 1e-6:
        flat = ds.images.flatten(1)
        constant = int((flat.amax(1) == flat.amin(1)).sum())
        raise ConfigError(f"{ds.name or 'dataset'}: channel std {[round(s, 6) for s in std]} (0 means no variation): "
                          f"{constant} of {len(ds)} images are a single constant value; normalising would divide by 0. "
                          "Check the files (a 16-bit or float image read as 8-bit, blank exports) or the data.root")
    return tuple(mean), tuple(std)


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
    """Yields transformed batches on ``device`` from an :class:`ArrayDataset`.

    ``train=True`` shuffles by (seed, epoch); ``transform`` maps the uint8 batch (on the device)
    to model inputs and targets. ``device_cache`` keeps the whole uint8 dataset on the device.
    """

    def __init__(self, ds: ArrayDataset, batch_size: int, device: torch.device, transform, *, train: bool,
                 seed: int = 0, channels_last: bool = False, device_cache: str = "auto", dist=None):
        self.ds, self.batch_size, self.device, self.train = ds, batch_size, device, train
        self.dist = dist  # under DDP each rank takes its strided share of every global training batch
        self.seed, self.transform = seed, transform
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.drop_last = train
        if train and len(ds) < batch_size:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the training set "
                              f"({len(ds)} images in {ds.name}); lower data.batch_size")
        self.last_indices: torch.Tensor | None = None
        self.images = ds.images
        if device.type != "cpu" and _fits_on_device(ds.images, device, device_cache):
            self.images = ds.images.to(device)
        self.labels = ds.labels.to(device) if self.images.device == device else ds.labels

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
            if self.train and self.dist is not None:
                idx = shard(idx, self.dist)
            yield self.make_batch(idx, first_step + i)

    def raw_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels of ``idx``, on the device, before any transform."""
        if self.images.device != self.device:
            x = self.images[idx].to(self.device, non_blocking=True)
            y = self.labels[idx].to(self.device, non_blocking=True)
        else:
            idx = idx.to(self.device)
            x, y = self.images[idx], self.labels[idx]
        return x, y

    def make_batch(self, idx: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_indices = idx
        x, y = self.raw_batch(idx)
        x, y = self.transform(x, y, self._gen(step) if self.train else None)
        return x.contiguous(memory_format=self.memory_format), y


def build_loaders(train_set: ArrayDataset, val_set: ArrayDataset, recipe, device: torch.device, num_classes: int,
                  make_transform, *, channels_last: bool = False, dist=None) -> tuple[BatchLoader, BatchLoader]:
    """The train and val :class:`BatchLoader` a recipe names: normalised by the train set's channel
    statistics, ``make_transform(cfg=, img_size=, mean=, std=, num_classes=, label_smoothing=, train=)``
    builds each split's batch transform (label smoothing on the train split only); the train loader
    shuffles by ``run.seed`` and shards over ``dist``'s ranks."""
    r = recipe
    mean, std = channel_stats(train_set)
    tf = dict(cfg=r.aug, img_size=r.data.img_size, mean=mean, std=std, num_classes=num_classes)
    train = BatchLoader(train_set, r.data.batch_size, device,
                        make_transform(**tf, label_smoothing=r.reg.label_smoothing, train=True), train=True,
                        seed=r.run.seed, channels_last=channels_last, device_cache=r.data.device_cache, dist=dist)
    val = BatchLoader(val_set, r.data.eval_batch_size, device, make_transform(**tf, label_smoothing=0.0, train=False),
                      train=False, channels_last=channels_last, device_cache=r.data.device_cache)
    return train, val


def _fits_on_device(images: torch.Tensor, device: torch.device, mode: str) -> bool:
    if mode == "off":
        return False
    if mode == "on":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() < 0.4 * free
