"""Image datasets on disk: layouts, validation with errors that name the file, and the uint8 cache.

Layouts (``data.dataset``):
- ``imagefolder``: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (``test/`` accepted for val).
- ``imagenette``: the official imagenette2, imagenette2-160 and imagenette2-320 archives (ROOT may be
  the extracted folder or its parent), or a plain train/val folder layout.
- ``tiny-imagenet``: the official layout, ``train/<wnid>/images/*.JPEG`` and ``val/images`` labelled by
  ``val/val_annotations.txt``.
- ``cifar10`` / ``cifar100``: torchvision's official binary (``cifar-10-batches-py``,
  ``cifar-100-python``) or a ``train|test/<class>/*.jpg`` folder layout.
- ``imagenet``: ImageFolder layout; ``imagenet-100``: the same, restricted to the 100 classes of
  ``imagenet100.txt`` (CMC's subset).

The cache: every image is decoded once, resized (shorter side) and centre-cropped to a square of
``data.cache_res`` pixels, and stored as a memory-mapped uint8 array with its labels and a manifest
holding a hash of the source listing (paths, sizes, mtimes). An unchanged source reuses the cache; a
changed one rebuilds it and says so. Training then never decodes a JPEG again.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..console import log as console
from ..runtime.progress import progress as progress_bar

IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
CACHE_VERSION = 2  # 2: 16-bit, 32-bit and float images scaled to 8 bits (were clipped)


class DataError(ConfigError):
    """Bad or missing data; the message names the file or folder and what to do."""


@dataclass
class FileList:
    paths: list[str]
    labels: list[int]
    classes: tuple[str, ...]
    name: str


# ----------------------------------------------------------------------------- scanning

def _need_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist{hint}")
    return path


def _scan_class_dirs(split: Path, name: str, classes: list[str] | None = None, sub: str = "",
                     skip_bad: bool = False) -> FileList:
    dirs = sorted(d.name for d in split.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs and classes is None:
        flat = [f for f in split.iterdir() if f.is_file() and f.suffix.lower() in IMG_EXT]
        if flat:
            raise DataError(f"{split} holds {len(flat)} image files but no class folders: a flat validation folder "
                            f"(ImageNet's val ships this way, its labels in a separate file); reproscope reads "
                            f"{split}/<class>/<images>: move each image into the folder of its class first")
    if classes is not None:
        missing = [c for c in classes if c not in dirs]
        if missing:
            raise DataError(f"{split}: {len(missing)} expected class folders are missing, e.g. {missing[:5]}")
        dirs = list(classes)
    if not dirs:
        raise DataError(f"{split} has no class folders; expected {split}/<class>/<image files>")
    paths, labels, strays = [], [], []
    for label, c in enumerate(dirs):
        folder = split / c / sub if sub else split / c
        n = 0
        for f in sorted(folder.iterdir()) if folder.is_dir() else []:
            if f.is_dir() or f.name.startswith("."):
                continue
            if f.suffix.lower() not in IMG_EXT:
                strays.append(str(f))
                continue
            paths.append(str(f))
            labels.append(label)
            n += 1
        if n == 0:
            raise DataError(f"class folder {folder} is empty (no image files); remove it or add images")
    if strays and not skip_bad:
        raise DataError(f"{len(strays)} non-image files in {split}: {', '.join(strays[:10])}"
                        f"{' ...' if len(strays) > 10 else ''}; remove them or pass --skip-corrupt")
    if strays:
        console.warning(f"{name}: skipping {len(strays)} non-image files")
    return FileList(paths, labels, tuple(dirs), name)


def _check_same_classes(train: FileList, val: FileList) -> None:
    if train.classes != val.classes:
        only_t = sorted(set(train.classes) - set(val.classes))
        only_v = sorted(set(val.classes) - set(train.classes))
        raise DataError(f"train and val classes differ ({train.name} vs {val.name}): only in train: {only_t[:10]}, "
                        f"only in val: {only_v[:10]}; both splits need the same class folders")


def _split_dir(root: Path, names: tuple[str, ...]) -> Path:
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise DataError(f"{root} has no {' or '.join(names)} folder; expected {root}/{names[0]}/<class>/<images>")


def imagefolder(root: Path, name: str, classes: list[str] | None = None, skip_bad: bool = False):
    train = _scan_class_dirs(_split_dir(root, ("train",)), f"{name}/train", classes, skip_bad=skip_bad)
    val = _scan_class_dirs(_split_dir(root, ("val", "test")), f"{name}/val", classes, skip_bad=skip_bad)
    _check_same_classes(train, val)
    return train, val


def imagenette(root: Path, skip_bad: bool = False):
    for sub in ("imagenette2", "imagenette2-320", "imagenette2-160"):
        if (root / sub / "train").is_dir():
            root = root / sub
            break
    return imagefolder(root, "imagenette", skip_bad=skip_bad)


def _has_images_sub(split: Path) -> bool:
    """Class folders that hold their images in an ``images/`` subfolder (Tiny-ImageNet's train layout)."""
    first = next((d for d in sorted(split.iterdir()) if d.is_dir() and not d.name.startswith(".")), None)
    return first is not None and (first / "images").is_dir()


def tiny_imagenet(root: Path, skip_bad: bool = False):
    """Tiny-ImageNet-200 in any of the layouts people store it in (the one found is printed):
    train/<wnid>/images/* (official) or train/<wnid>/*; val/images/* labelled by
    val/val_annotations.txt (official), or reorganised as val/<wnid>/images/* or val/<wnid>/*."""
    if (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    tr = _split_dir(root, ("train",))
    train = _scan_class_dirs(tr, "tiny-imagenet/train", sub="images" if _has_images_sub(tr) else "",
                             skip_bad=skip_bad)
    val_dir = _split_dir(root, ("val",))
    ann = val_dir / "val_annotations.txt"
    official = ann.is_file() and (val_dir / "images").is_dir() and any((val_dir / "images").iterdir())
    if not official:
        if not any(d.is_dir() and d.name in train.classes for d in val_dir.iterdir()):
            raise DataError(f"{val_dir}: neither the official layout (val/images/ labelled by val_annotations.txt) nor "
                            f"class folders val/<wnid>/ (reorganised); found {sorted(p.name for p in val_dir.iterdir())[:5]}")
        sub = "images" if _has_images_sub(val_dir) else ""
        console.info(f"tiny-imagenet: train {tr.name}/<wnid>/{'images/' if _has_images_sub(tr) else ''}*, "
                     f"val reorganised as val/<wnid>/{sub + '/' if sub else ''}*")
        val = _scan_class_dirs(val_dir, "tiny-imagenet/val", list(train.classes), sub=sub, skip_bad=skip_bad)
        return train, val
    index = {c: i for i, c in enumerate(train.classes)}
    paths, labels = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"{ann}:{n}: class {parts[1]!r} is not among the {len(index)} train classes")
        paths.append(str(root / "val" / "images" / parts[0]))
        labels.append(index[parts[1]])
    if not paths:
        raise DataError(f"{ann} lists no images")
    return train, FileList(paths, labels, train.classes, "tiny-imagenet/val")


def imagenet100_classes() -> list[str]:
    text = (Path(__file__).with_name("imagenet100.txt")).read_text()
    return [w for line in text.splitlines() if not line.startswith("#") for w in line.split()]


# ----------------------------------------------------------------------------- decoding

def to_rgb8(im):
    """Any Pillow mode as 8-bit RGB. 16-bit integer images (``I;16*``) are scaled by 255/65535, 32-bit
    integer (``I``) by 255/65535 when they fit 16 bits (PNG's 16-bit grey opens as ``I``), else by their
    maximum, float (``F``) by 255 when in [0, 1], else clipped to [0, 255]; Pillow's own ``convert``
    would clip them all to 255 (white). 1-bit, palette (transparency dropped), L, LA, RGBA, CMYK and
    YCbCr go through ``convert("RGB")``."""
    from PIL import Image
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        if im.mode == "F":
            a = a * 255 if hi <= 1.0 else a
        elif im.mode.startswith("I;16") or hi <= 65535:
            a = a * (255 / 65535)
        else:
            a = a * (255 / hi)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow's advice for palette transparency; the alpha is then dropped
    return im.convert("RGB")


def decode_image(path: str, size: int) -> np.ndarray:
    """Decode to 8-bit RGB (``to_rgb8``: every Pillow mode), resize the shorter side to ``size``
    (bicubic) and centre-crop a square. Returns uint8 [3, size, size]."""
    from PIL import Image
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode at reduced scale when much larger than needed
        im = to_rgb8(im)
        w, h = im.size
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _try_decode(path: str, size: int):
    try:
        return decode_image(path, size), None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for damaged files
        return None, f"{path}: {type(e).__name__}: {e}"


def listing_hash(files: FileList, size: int) -> str:
    """The cache's fingerprint: every file's path below the listing's common folder, label, size and
    mtime. Paths are taken below that folder so that the same files reached through another root
    (relative vs absolute, a symlink) keep their cache instead of rebuilding it as "changed"."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|{files.classes}".encode())
    start = len(os.path.commonpath(files.paths)) if len(files.paths) > 1 else 0
    for p, y in zip(files.paths, files.labels):
        try:
            st = os.stat(p)
            h.update(f"{p[start:]}|{y}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p[start:]}|{y}|missing\n".encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("REPROSCOPE_CACHE", Path.home() / ".cache" / "reproscope"))


def load_or_build_cache(files: FileList, size: int, cache_dir: Path, *, skip_corrupt: bool = False,
                        workers: int = 0, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(uint8 images [N, 3, size, size] memory-mapped, int64 labels [N], manifest).

    One process builds a given cache at a time (a file lock beside it, ``filelock``): two runs started
    together on the same data, e.g. a campaign's ``--jobs 2``, used to race on the temporary file and
    crash the second; now the second waits, says so, and reads what the first built.

    Raises:
        DataError: unreadable image files (all listed), unless ``skip_corrupt``.
    """
    from filelock import FileLock, Timeout
    digest = listing_hash(files, size)
    d = cache_dir / f"{files.name.replace('/', '-')}-{size}px"
    if (man := _complete_manifest(d, digest)) is not None:  # built already: no lock (a read-only cache works)
        return _open_cache(d, man)
    d.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(d) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        console.info(f"{files.name}: another process is building the cache in {d}; waiting for it")
        lock.acquire()
        console.info(f"{files.name}: the other process finished; reading its cache")
    try:
        return _load_or_build_locked(files, size, d, digest, skip_corrupt=skip_corrupt, workers=workers,
                                     progress=progress)
    finally:
        lock.release()


def _load_or_build_locked(files: FileList, size: int, d: Path, digest: str, *, skip_corrupt: bool, workers: int,
                          progress: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    manifest_path = d / "manifest.json"
    if (man := _complete_manifest(d, digest)) is not None:  # another process built it while we waited
        return _open_cache(d, man)
    if manifest_path.is_file():
        console.info(f"{files.name}: source changed since the cache in {d} was built; rebuilding it")
    d.mkdir(parents=True, exist_ok=True)
    n = len(files.paths)
    t0 = time.perf_counter()
    tmp_images = d / "images.npy.tmp"
    arr = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    ok = np.zeros(n, dtype=bool)
    bad: list[str] = []
    workers = workers or min(8, os.cpu_count() or 1)
    desc = f"caching {files.name} at {size}px"
    # a line even without a bar: decoding thousands of JPEGs takes a while, and silence looks like a hang
    console.info(f"{desc}: decoding {n:,} images once into {d} ({workers} threads)")
    bar = progress_bar(n, desc=desc, unit="img", enabled=progress)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _try_decode(p, size), files.paths, chunksize=1)
        for i, (img, err) in enumerate(results):
            bar.update()
            if err is None:
                arr[i] = img
                ok[i] = True
            else:
                bad.append(err)
    bar.close()
    if bad and not skip_corrupt:
        arr.flush()
        del arr
        tmp_images.unlink(missing_ok=True)
        listing = d / "unreadable.txt"  # every one, for a set with thousands
        listing.write_text("\n".join(bad) + "\n")
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(f"{len(bad)} of {n} image files in {files.name} are unreadable (corrupt, truncated or not "
                        f"images); all of them are listed in {listing}:\n  " + "\n  ".join(bad[:20]) + more
                        + "\nfix or remove them, or pass --skip-corrupt to skip them")
    labels = np.asarray(files.labels, dtype=np.int64)
    if bad:
        console.warning(f"{files.name}: skipped {len(bad)} unreadable files (--skip-corrupt)")
        keep = np.flatnonzero(ok)
        kept = np.lib.format.open_memmap(d / "images.npy.tmp2", mode="w+", dtype=np.uint8,
                                         shape=(len(keep), 3, size, size))
        for j in range(0, len(keep), 1024):
            kept[j:j + 1024] = arr[keep[j:j + 1024]]
        kept.flush()
        del arr, kept
        tmp_images.unlink()
        tmp_images = d / "images.npy.tmp2"
        labels = labels[keep]
    else:
        arr.flush()
        del arr
    os.replace(tmp_images, d / "images.npy")
    np.save(d / "labels.npy", labels)
    man = {"hash": digest, "complete": True, "n": int(len(labels)), "size": size, "classes": list(files.classes),
           "skipped": len(bad), "skipped_files": bad[:1000], "source_files": n, "name": files.name,
           "build_seconds": round(time.perf_counter() - t0, 2), "version": CACHE_VERSION}
    tmp_manifest = d / "manifest.json.tmp"  # written whole, then renamed: a reader never sees half of it
    tmp_manifest.write_text(json.dumps(man, indent=1))
    os.replace(tmp_manifest, manifest_path)
    console.info(f"{desc}: {len(labels):,} images cached in {man['build_seconds']:.0f} s")
    return _open_cache(d, man)


def _complete_manifest(d: Path, digest: str) -> dict | None:
    """The manifest of a finished cache of the same listing in ``d``, else None."""
    path = d / "manifest.json"
    if not path.is_file():
        return None
    man = json.loads(path.read_text())
    return man if man.get("hash") == digest and man.get("complete") else None


def _open_cache(d: Path, man: dict):
    images = np.load(d / "images.npy", mmap_mode="c")  # copy-on-write: writable view, file untouched
    labels = np.load(d / "labels.npy")
    return torch.from_numpy(images), torch.from_numpy(labels), man


# ----------------------------------------------------------------------------- CIFAR binaries

def cifar_md5(num_classes: int) -> dict[str, str]:
    """The official MD5 of every CIFAR python batch (file name -> md5), from torchvision's dataset tables."""
    from torchvision.datasets import CIFAR10, CIFAR100
    cls = CIFAR10 if num_classes == 10 else CIFAR100
    return {**dict(cls.train_list), **dict(cls.test_list), cls.meta["filename"]: cls.meta["md5"]}


def verify_cifar_checksums(paths: list[Path], num_classes: int) -> None:
    """CIFAR's python batches are pickles, and unpickling runs code: each file's MD5 must be the
    official one before it is read.

    Raises:
        DataError: naming every file whose checksum differs.
    """
    from torchvision.datasets.utils import check_integrity
    md5 = cifar_md5(num_classes)
    bad = [str(p) for p in paths if not check_integrity(str(p), md5.get(p.name))]
    if bad:
        raise DataError(f"{len(bad)} CIFAR batch file(s) do not have the official checksum, and reproscope does not "
                        f"unpickle files it cannot verify (unpickling can run code): {', '.join(bad)}; delete them "
                        f"and fetch the official archive (--download), or use a train|test/<class>/*.jpg folder")


def cifar_binary(root: Path, num_classes: int):
    """(train, val) uint8 arrays from torchvision's official pickled batches, or None if absent."""
    sub = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    base = root / sub if (root / sub).is_dir() else root
    if num_classes == 10:
        files = [base / f"data_batch_{i}" for i in range(1, 6)], [base / "test_batch"]
        meta, key, names_key = base / "batches.meta", b"labels", b"label_names"
    else:
        files = [base / "train"], [base / "test"]
        meta, key, names_key = base / "meta", b"fine_labels", b"fine_label_names"
    if not all(p.is_file() for p in files[0] + files[1] + [meta]):
        return None
    verify_cifar_checksums(files[0] + files[1] + [meta], num_classes)

    def load(paths):
        xs, ys = [], []
        for p in paths:
            try:
                with open(p, "rb") as f:
                    d = pickle.load(f, encoding="bytes")
            except Exception as e:
                raise DataError(f"{p} is not a readable CIFAR batch ({type(e).__name__}: {e}); "
                                f"delete it and download again") from e
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    with open(meta, "rb") as f:
        classes = tuple(n.decode() for n in pickle.load(f, encoding="bytes")[names_key])
    return load(files[0]), load(files[1]), classes
