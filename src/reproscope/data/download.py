"""Downloads, only when the user passes ``--download``: official addresses, checksums verified.

Imagenette and CIFAR use torchvision's own dataset tables (official URLs and MD5s); Tiny-ImageNet
comes from the CS231n address with its published MD5. Nothing is ever fetched silently.
"""

from __future__ import annotations

from pathlib import Path

from .folders import DataError

TINY_IMAGENET = ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")

LAYOUT_HINT = {
    "imagenette": "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (or the extracted imagenette2[-160|-320])",
    "tiny-imagenet": "ROOT/train/<wnid>/images/*.JPEG, ROOT/val/images/*.JPEG and ROOT/val/val_annotations.txt",
    "cifar10": "ROOT/cifar-10-batches-py/ (torchvision's binary) or ROOT/train|test/<class>/*.jpg",
    "cifar100": "ROOT/cifar-100-python/ (torchvision's binary) or ROOT/train|test/<class>/*.jpg",
    "imagefolder": "ROOT/train/<class>/<images> and ROOT/val/<class>/<images>",
    "imagenet": "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG",
    "imagenet-100": "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG for the 100 classes of imagenet100.txt",
}
DOWNLOADABLE = ("imagenette", "tiny-imagenet", "cifar10", "cifar100")


def where_to_put(dataset: str, root: Path) -> str:
    how = ("Download it with --download (official address, checksum verified), or put" if dataset in DOWNLOADABLE
           else "Put")
    return (f"{how} the files at {root} in this layout: {LAYOUT_HINT.get(dataset, '')}, or point the run at "
            f"your copy with --set data.root=PATH" + (" (a relative root is read from the folder you run in)"
                                                     if not root.is_absolute() else ""))


def download(dataset: str, root: Path) -> None:
    if dataset not in DOWNLOADABLE:
        raise DataError(f"--download is not available for {dataset} (licence/size); {where_to_put(dataset, root)}")
    root.mkdir(parents=True, exist_ok=True)
    try:
        if dataset == "imagenette":
            from torchvision.datasets import Imagenette
            if not any((root / s / "train").is_dir() for s in ("imagenette2", "imagenette2-320", "imagenette2-160")):
                Imagenette(str(root), split="train", size="full", download=True)
        elif dataset == "tiny-imagenet":
            from torchvision.datasets.utils import download_and_extract_archive
            if not (root / "tiny-imagenet-200").is_dir():
                download_and_extract_archive(TINY_IMAGENET[0], str(root), md5=TINY_IMAGENET[1])
        else:
            from torchvision.datasets import CIFAR10, CIFAR100
            (CIFAR10 if dataset == "cifar10" else CIFAR100)(str(root), train=True, download=True)
    except (OSError, RuntimeError) as e:  # no network, bad checksum, full disk
        raise DataError(f"downloading {dataset} into {root} failed: {e}. {where_to_put(dataset, root)}") from e
