"""The data check: the batch as the model sees it, and the datasets behind it (Karpathy's "look at the data").

- per-channel mean and std of the model's input: ~0 and ~1 after normalisation (fail when the mean
  is beyond 1.5 or the std beyond [0.2, 5]: a 0-255 input has mean ~120);
- label distribution: every class present, no label outside [0, K), imbalance reported;
- exact duplicates between train and val, by a hash of the stored uint8 image (fail above 1% of val);
- all-constant images (fail above 1%);
- the validation pipeline must be deterministic (two passes over the same images are identical:
  random augmentation applied at evaluation makes them differ);
- a contact sheet PNG of an augmented training batch with its labels, to look at.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import torch

from ..plotting import pyplot, save_figure
from .core import Causes, CheckData, CheckResult, check


def image_hashes(images: torch.Tensor) -> list[str]:
    """One blake2b digest per stored image [N, C, H, W] (exact-duplicate detection)."""
    arr = images.contiguous().numpy()
    return [hashlib.blake2b(a.tobytes(), digest_size=12).hexdigest() for a in arr]


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
            f"{details['val_images_in_train']} val images in train; {details['constant_images']} constant images"
            if src is not None else "duplicates, constant images and the val pipeline not checked (only a batch given)"),
        "normalised input, every class present, no train/val copies, no constant images, deterministic eval data",
        "The batch as the model sees it, and the datasets behind it." + (
            f" Contact sheet: {details['contact_sheet']}" if "contact_sheet" in details else ""),
        fails.sentences + warns.sentences, details, fails.codes + warns.codes)


def _fmt(v) -> str:
    return "[" + ", ".join(f"{a:.3g}" for a in v) + "]"


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
