"""The data check: the batch as the model sees it, and the datasets behind it (Karpathy's "look at the data").

- per-channel mean and std of the model's input: ~0 and ~1 after normalisation (fail when the mean
  is beyond 1.5 or the std beyond [0.2, 5]: a 0-255 input has mean ~120);
- label distribution: every class present, no label outside [0, K), imbalance reported;
- exact duplicates between train and val, by a hash of the stored uint8 image (fail above 1% of val);
- near duplicates (a training image re-saved as JPEG, resized): a perceptual hash (``imagehash.phash``,
  64 bits) within Hamming distance 6 proposes a training image for each checked val image, and a
  pixel correlation >= 0.9 confirms it (ours: on the built-in shapes10 at 32 px, correct pairs proposed
  by the hash correlate at most 0.88, and JPEG q75 / 24 px-resized copies at least 0.90); warn, and
  fail above 10% of the checked val images; up to 8 pairs drawn in near_duplicates.png;
- all-constant images (fail above 1%);
- the validation pipeline must be deterministic (two passes over the same images are identical:
  random augmentation applied at evaluation makes them differ);
- a contact sheet PNG of an augmented training batch with its labels, to look at.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import torch

from ..plotting import pyplot, save_figure
from .core import Causes, CheckData, CheckResult, check


def image_hashes(images: torch.Tensor) -> list[str]:
    """One blake2b digest per stored image [N, C, H, W] (exact-duplicate detection)."""
    arr = images.contiguous().numpy()
    return [hashlib.blake2b(a.tobytes(), digest_size=12).hexdigest() for a in arr]


NEAR_HAMMING, NEAR_CORR = 6, 0.9
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def phashes(images: torch.Tensor) -> np.ndarray:
    """64-bit perceptual hashes (``imagehash.phash``) of uint8 images [N, 3, H, W], as uint64 [N]."""
    import imagehash
    from PIL import Image
    return np.array([int(str(imagehash.phash(Image.fromarray(a.transpose(1, 2, 0)))), 16)
                     for a in images.numpy()], dtype=np.uint64)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().flatten(), b.float().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm() + 1e-8))


def near_duplicates(train: torch.Tensor, val: torch.Tensor, max_train: int = 20000, max_val: int = 2000):
    """(pairs [(val index, train index, hamming, correlation)], val images checked): validation images
    that are near copies of a training image (see the module docstring), on strided subsets of at most
    ``max_val`` val and ``max_train`` train images."""
    ti = torch.linspace(0, len(train) - 1, min(len(train), max_train)).round().long().unique()
    vi = torch.linspace(0, len(val) - 1, min(len(val), max_val)).round().long().unique()
    ht, hv = phashes(train[ti]), phashes(val[vi])
    tb = ht.view(np.uint8).reshape(len(ht), 8)
    pairs = []
    for k, h in enumerate(hv):
        d = _POPCOUNT[np.bitwise_xor(tb, np.frombuffer(np.uint64(h).tobytes(), dtype=np.uint8))].sum(1)
        j = int(d.argmin())
        if d[j] <= NEAR_HAMMING:
            c = _corr(val[vi[k]], train[ti[j]])
            if c >= NEAR_CORR:
                pairs.append((int(vi[k]), int(ti[j]), int(d[j]), c))
    return pairs, len(vi)


def constant_images(images: torch.Tensor) -> int:
    flat = images.flatten(1)
    return int((flat.amax(1) == flat.amin(1)).sum())


@check("data")
def data_check(make_model, data: CheckData) -> CheckResult:
    x = data.x.float()
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).tolist()
    fails, warns, details = Causes(), Causes(), {"channel_mean": mean, "channel_std": std}
    worst_mean = max(abs(m) for m in mean)
    if worst_mean > 1.5 or not all(0.2 <= s <= 5 for s in std):
        fails.add("not-normalised", f"the model's input is not normalised: channel mean {_fmt(mean)}, std {_fmt(std)} (expected "
                     f"~0 and ~1){' - it looks like 0-255 pixels' if worst_mean > 20 else ''}: normalisation "
                     "missing or applied twice, or wrong mean/std units")
    elif worst_mean > 0.5 or not all(0.5 <= s <= 2 for s in std):
        warns.add("roughly-normalised", f"the model's input is only roughly normalised (channel mean {_fmt(mean)}, std {_fmt(std)})")
    src = data.source
    labels = src.train_labels if src is not None else data.y
    counts = Counter(labels.tolist())
    k = data.num_classes
    outside = sorted(c for c in counts if not 0 <= c < k)
    missing = [c for c in range(k) if c not in counts]
    details["label_counts"] = {int(c): n for c, n in sorted(counts.items())}
    if outside:
        fails.add("labels-out-of-range", f"labels outside [0, {k}): {outside[:5]}")
    if missing and src is not None:
        fails.add("classes-missing", f"{len(missing)} of {k} classes have no training images (e.g. class {missing[0]})")
    present = [counts[c] for c in range(k) if c in counts]
    if present and max(present) > 10 * min(present):
        warns.add("classes-imbalanced", f"classes are imbalanced {max(present) / min(present):.1f}:1")
    if src is not None:
        train_h = image_hashes(src.train_images)
        val_h = image_hashes(src.val_images)
        overlap = set(train_h) & set(val_h)
        n_dup = sum(h in overlap for h in val_h)
        details["val_images_in_train"] = n_dup
        if n_dup > 0.01 * len(val_h):
            fails.add("train-val-overlap", f"{n_dup} of {len(val_h)} validation images ({n_dup / len(val_h):.1%}) are exact copies of "
                         "training images: train/val overlap, validation accuracy will be inflated")
        elif n_dup:
            warns.add("train-val-copies", f"{n_dup} validation images are exact copies of training images")
        near, checked = near_duplicates(src.train_images, src.val_images)
        near = [p for p in near if val_h[p[0]] not in overlap]  # exact copies are counted above
        details["val_near_duplicates"] = len(near)
        details["near_duplicates_checked"] = checked
        if near:
            fig = near_duplicate_sheet(data, near)
            if fig:
                details["near_duplicates_figure"] = str(fig)
            what = (f"{len(near)} of {checked} checked validation images are near copies of training images "
                    f"(perceptual hash + pixel correlation >= {NEAR_CORR}; re-saved or resized; e.g. val "
                    f"{near[0][0]} ~ train {near[0][1]}, correlation {near[0][3]:.3f})")
            (fails if len(near) > 0.1 * checked else warns).add(
                "train-val-near-duplicates", what + ": validation accuracy is inflated by that much at most")
        n_const = constant_images(src.train_images) + constant_images(src.val_images)
        n_all = len(src.train_images) + len(src.val_images)
        details["constant_images"] = n_const
        if n_const > 0.01 * n_all:
            fails.add("constant-images", f"{n_const} of {n_all} images are a single constant value: broken decoding or padding")
        elif n_const:
            warns.add("constant-images", f"{n_const} images are a single constant value")
        v1, v2 = src.val_batch(), src.val_batch()
        val_diff = (v1[0].float() - v2[0].float()).abs().max().item()
        details["val_pass_diff"] = val_diff
        if val_diff > 0:
            fails.add("val-augmented", f"two passes of the validation pipeline over the same images differ (max diff {val_diff:.3g}): "
                         "random augmentation is applied to validation data")
        sheet = contact_sheet(data)
        if sheet:
            details["contact_sheet"] = str(sheet)
    status = "fail" if fails else "warn" if warns else "pass"
    return CheckResult(
        "data", status,
        f"input mean {_fmt(mean)} std {_fmt(std)}; {len(counts)} classes; " + (
            f"{details['val_images_in_train']} val images in train (exact), {details['val_near_duplicates']} of "
            f"{details['near_duplicates_checked']} checked near copies; {details['constant_images']} constant images"
            if src is not None else "duplicates, constant images and the val pipeline not checked (only a batch given)"),
        "normalised input, every class present, no train/val copies, no constant images, deterministic eval data",
        "The batch as the model sees it, and the datasets behind it." + (
            f" Contact sheet: {details['contact_sheet']}" if "contact_sheet" in details else ""),
        fails.sentences + warns.sentences, details, fails.codes + warns.codes)


def _fmt(v) -> str:
    return "[" + ", ".join(f"{a:.3g}" for a in v) + "]"


def near_duplicate_sheet(data: CheckData, pairs, n: int = 8):
    """PNG of up to ``n`` (val, train) near-duplicate pairs, side by side."""
    if data.out_dir is None or data.source is None or not pairs:
        return None
    pairs = pairs[:n]
    fig, axes = pyplot().subplots(2, len(pairs), figsize=(1.4 * len(pairs), 3.0), squeeze=False)
    for k, (v, t, d, c) in enumerate(pairs):
        for row, (img, label) in enumerate(((data.source.val_images[v], f"val {v}"),
                                            (data.source.train_images[t], f"train {t}\nr={c:.3f}"))):
            ax = axes[row][k]
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_title(label, fontsize=6)
            ax.axis("off")
    fig.suptitle("validation images (top) and their near copies in train (bottom)", fontsize=8)
    return save_figure(fig, data.out_dir / "near_duplicates.png", dpi=100)


def contact_sheet(data: CheckData, n: int = 32):
    """PNG grid of the first augmented training batch with its labels (min-max scaled per image for display)."""
    if data.out_dir is None or data.source is None:
        return None
    x, y = data.source.train_batch(0)
    x, y = x[:n].detach().float().cpu(), y[:n].detach().cpu()
    names = data.source.class_names
    cols = 8
    rows = -(-len(x) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(cols * 1.3, rows * 1.45))
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:len(x)]):
        img = x[i]
        img = (img - img.amin()) / (img.amax() - img.amin()).clamp(min=1e-8)
        ax.imshow(img.permute(1, 2, 0).numpy())
        if y.ndim == 1:
            label = names[int(y[i])] if names and 0 <= int(y[i]) < len(names) else str(int(y[i]))
        else:  # soft targets (mixup/cutmix): the two largest weights
            top = y[i].topk(2)
            label = "/".join(f"{int(c)}:{w:.2f}" for w, c in zip(top.values.tolist(), top.indices.tolist()))
        ax.set_title(label[:16], fontsize=6)
    fig.suptitle("first training batch as the model sees it (per-image min-max scaled)", fontsize=8)
    return save_figure(fig, data.out_dir / "contact_sheet.png", dpi=100)
