"""Read a user's data pipeline into the keys of a reproscope recipe (``aug.*``, ``data.*``).

    report = describe_data(train=train_loader, val=val_loader, mixup=mixup_fn)
    report["observed"]   # {"data.img_size": 224, "aug.rrc_scale_min": 0.08, "aug.hflip": 0.5, ...}
    report["details"]    # mean/std, crop ratio, sampler, what each key was read from ("sources"), ...
    report["notes"]      # what could not be read, and differences worth a look

What is read from which object:

- train transforms (torchvision v1 and v2, timm): ``RandomResizedCrop`` /
  ``RandomResizedCropAndInterpolation`` -> ``data.img_size``, ``aug.rrc_scale_min``,
  ``aug.interpolation`` (ratio in details); ``RandomCrop`` -> ``data.img_size``, ``aug.crop_pad``,
  ``aug.rrc_scale_min`` = 0; ``RandomHorizontalFlip`` -> ``aug.hflip``; ``RandAugment`` (torchvision:
  ``num_ops``/``magnitude`` on its own 0..bins-1 scale; timm: ``num_layers`` and the ops' ``magnitude``
  and ``magnitude_std``) -> ``aug.randaug_n``, ``aug.randaug_m``, ``aug.randaug_mstd``; AutoAugment,
  TrivialAugmentWide and AugMix -> ``details["auto_augment"]`` and a note; ``ColorJitter`` ->
  ``aug.color_jitter``; ``RandomErasing`` (``p`` or timm's ``probability``) -> ``aug.random_erasing``;
  ``Normalize`` -> ``details["mean"]``, ``details["std"]``. Containers (``Compose``, ``RandomApply``,
  ``RandomChoice``, ``RandomOrder``, ``nn.Sequential``, anything with a ``.transforms`` list) are
  walked; a flip or an erasing inside ``RandomApply``/``RandomChoice`` counts with the product of the
  probabilities.
- val transforms: ``Resize`` and ``CenterCrop`` (timm: ``ResizeKeepRatio``, ``CenterCropOrPad``) ->
  ``data.eval_crop_pct`` = crop / resize, the resize interpolation in details.
- DataLoader: ``batch_size`` -> ``data.batch_size`` (val: ``data.eval_batch_size``), ``drop_last`` and the
  sampler's shuffling -> details and ``data.shuffle`` (not a recipe field; the audit compares it); a
  timm ``FastCollateMixup`` as ``collate_fn`` is read as the mixup. timm's ``PrefetchLoader`` is unwrapped
  (its random erasing and normalization are read too).
- mixup: timm ``Mixup``/``FastCollateMixup`` -> ``aug.mixup_alpha``, ``aug.cutmix_alpha``,
  ``aug.mix_prob``, ``aug.mix_switch_prob``, ``reg.label_smoothing``; torchvision v2 ``MixUp``, ``CutMix``
  and ``RandomChoice``/``RandomApply`` of them -> the same ``aug.*`` keys.

A key is in ``observed`` only when it was read from an object. No flip, no erasing, no colour jitter,
no RandAugment and no mixing are observed as 0 only when a train transform pipeline was found.
Transforms are recognised by class name, for classes defined in torchvision, timm or torch (a user's
subclass of one reads as its parent); nothing is imported from timm. Anything unrecognised becomes
a note, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from torch.utils.data import Dataset, RandomSampler, SequentialSampler, SubsetRandomSampler

__all__ = ["describe_data"]

_PACKAGES = ("torchvision", "timm", "torch")
_MAX_DEPTH = 16


# ----------------------------------------------------------------------------- the report

@dataclass
class _Report:
    observed: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)

    def observe(self, key: str, value: Any, source: str) -> None:
        """Record one recipe key; a second, different reading keeps the first and says so."""
        if key in self.observed:
            if self.observed[key] != value:
                self.note(f"{key} read twice ({self.observed[key]!r} from {self.sources[key]}, "
                          f"{value!r} from {source}): kept the first")
            return
        self.observed[key] = value
        self.sources[key] = source

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def as_dict(self) -> dict:
        return {"observed": dict(self.observed), "details": {**self.details, "sources": dict(self.sources)},
                "notes": list(self.notes)}


# ----------------------------------------------------------------------------- small helpers

def _name(obj: Any) -> str:
    if type(obj).__name__ == "Lambda" and hasattr(obj, "lambd"):
        return f"Lambda({getattr(obj.lambd, '__name__', '?')})"
    return type(obj).__name__


def _kind(obj: Any) -> str | None:
    """The name of the first class of ``obj``'s MRO that torchvision, timm or torch defines and that
    this module knows: a user's subclass of ``RandomResizedCrop`` reads as ``RandomResizedCrop``,
    an albumentations ``RandomResizedCrop`` (other attributes) does not."""
    for cls in type(obj).__mro__:
        if cls.__module__.split(".")[0] in _PACKAGES and cls.__name__ in _KNOWN:
            return cls.__name__
    return None


def _first(size: Any) -> int | None:
    """An int size, or the first element of a sequence size."""
    if size is None:
        return None
    if isinstance(size, (list, tuple)):
        return int(size[0]) if size else None
    return int(size)


_PIL_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _interp(mode: Any) -> str:
    """'bilinear', 'bicubic', ...: from an InterpolationMode, a PIL code, a string; 'random' for timm's
    tuple of modes (interpolation='random')."""
    if isinstance(mode, (list, tuple)):
        return "random"
    value = getattr(mode, "value", mode)
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, int):
        return _PIL_CODES.get(value, str(value))
    return str(mode)


def _floats(v: Any) -> list[float]:
    v = v.flatten().tolist() if hasattr(v, "tolist") and hasattr(v, "flatten") else list(v)
    return [round(float(x), 4) for x in v]


def _jitter(v: Any) -> float:
    """The jitter strength b from torchvision's stored range (max(0, 1 - b), 1 + b), or hue's (-h, h)."""
    if v is None:
        return 0.0
    if isinstance(v, (list, tuple)):
        return round(float(v[1]) - 1.0, 6) if float(v[0]) >= 0 and float(v[1]) >= 1 else round(float(v[1]), 6)
    return float(v)


# ----------------------------------------------------------------------------- walking a transform tree

def _weights(p: Any, n: int) -> list[float]:
    w = [1.0] * n if p is None else [float(x) for x in p]
    total = sum(w) or 1.0
    return [x / total for x in w]


def _children(t: Any) -> list[tuple[Any, float]] | None:
    """The sub-transforms of a container with the probability each is applied; None for a leaf."""
    kind = _kind(t)
    if kind in _TRAIN_READERS or kind in _VAL_READERS or kind in _NEUTRAL or kind in _MIXERS:
        return None
    if kind == "RandomApply":
        return [(c, float(t.p)) for c in t.transforms]
    if kind == "RandomChoice":
        return list(zip(t.transforms, _weights(getattr(t, "p", None), len(t.transforms))))
    if kind == "Sequential":
        return [(c, 1.0) for c in t]
    sub = getattr(t, "transforms", None)
    if isinstance(sub, (list, tuple)):
        return [(c, 1.0) for c in sub]
    return None


def _leaves(t: Any, rep: _Report, side: str, p: float = 1.0, depth: int = 0) -> Iterator[tuple[Any, float]]:
    """Every leaf transform with the probability that it is applied (RandomApply / RandomChoice)."""
    children = _children(t)
    if children is None:
        yield t, p
        return
    if depth >= _MAX_DEPTH:
        rep.note(f"{side} transforms nested deeper than {_MAX_DEPTH} levels: the rest is not observed")
        return
    if _kind(t) not in _CONTAINERS:
        rep.note(f"{side} transform {_name(t)} walked as a Compose of its .transforms (its own logic is not observed)")
    for child, q in children:
        yield from _leaves(child, rep, side, p * q, depth + 1)


# ----------------------------------------------------------------------------- train readers

def _read_rrc(rep: _Report, t: Any, p: float) -> None:
    src = _name(t)
    rep.observe("data.img_size", _first(t.size), src)
    rep.observe("aug.rrc_scale_min", float(t.scale[0]), src)
    rep.observe("aug.interpolation", _interp(t.interpolation), src)
    rep.details["rrc_scale"] = tuple(float(s) for s in t.scale)
    rep.details["rrc_ratio"] = tuple(round(float(r), 4) for r in t.ratio)
    if isinstance(t.interpolation, (list, tuple)):
        rep.details["rrc_interpolations"] = [_interp(m) for m in t.interpolation]


def _read_random_crop(rep: _Report, t: Any, p: float) -> None:
    src = _name(t)
    rep.observe("data.img_size", _first(t.size), src)
    rep.observe("aug.crop_pad", _first(t.padding) or 0, src)
    rep.observe("aug.rrc_scale_min", 0.0, src)
    rep.details["crop_padding_mode"] = getattr(t, "padding_mode", None)
    if isinstance(t.padding, (list, tuple)) and len(set(t.padding)) > 1:
        rep.note(f"{src} pads unevenly {tuple(t.padding)}: aug.crop_pad is the first value")


def _read_hflip(rep: _Report, t: Any, p: float) -> None:
    rep.observe("aug.hflip", round(float(t.p) * p, 6), _name(t))


def _read_randaugment(rep: _Report, t: Any, p: float) -> None:
    if hasattr(t, "num_layers") and hasattr(t, "ops"):
        _read_timm_randaugment(rep, t)
    elif hasattr(t, "num_ops"):
        _read_tv_randaugment(rep, t)
    else:
        rep.note(f"train transform {_name(t)} not recognised: its effect is not observed")


def _read_timm_randaugment(rep: _Report, t: Any) -> None:
    src, ops = "RandAugment (timm)", list(t.ops)
    magnitudes = sorted({float(op.magnitude) for op in ops})
    op = ops[0] if ops else None
    mstd = getattr(op, "magnitude_std", None)
    if mstd is None and op is not None:
        mstd = getattr(op, "hparams", {}).get("magnitude_std", 0.0)
    rep.observe("aug.randaug_n", int(t.num_layers), src)
    if magnitudes:
        rep.observe("aug.randaug_m", magnitudes[-1], src)
        rep.observe("aug.randaug_mstd", float(mstd or 0.0), src)
    rep.details["auto_augment"] = "randaugment-timm"
    rep.details["randaug_ops"] = [op.name for op in ops]
    rep.details["randaug_op_prob"] = sorted({float(op.prob) for op in ops})
    rep.details["randaug_increasing"] = any("Increasing" in op.name for op in ops)
    if len(magnitudes) > 1:
        rep.note(f"timm RandAugment ops have different magnitudes {magnitudes}: aug.randaug_m is the largest")


def _read_tv_randaugment(rep: _Report, t: Any) -> None:
    src, bins = "RandAugment (torchvision)", int(getattr(t, "num_magnitude_bins", 31))
    m = float(t.magnitude)
    rep.observe("aug.randaug_n", int(t.num_ops), src)
    rep.observe("aug.randaug_m", m, src)
    rep.observe("aug.randaug_mstd", 0.0, src)
    timm_m = round(m * 10.0 / max(bins - 1, 1), 3)
    rep.details["auto_augment"] = "randaugment-torchvision"
    rep.details["randaug_scale"] = f"0..{bins - 1} (torchvision num_magnitude_bins={bins})"
    rep.details["randaug_m_timm_scale"] = timm_m
    rep.note(f"torchvision RandAugment magnitude {m:g} is on a 0..{bins - 1} scale, not timm's 0..10: "
             f"aug.randaug_m is reported as given; on timm's scale it is {timm_m:g}")


def _auto_augment_label(t: Any) -> str:
    kind = _kind(t)
    if kind == "TrivialAugmentWide":
        return "trivialaugment"
    if kind in ("AugMix", "AugMixAugment"):
        return "augmix"
    policy = getattr(t, "policy", None)
    if isinstance(policy, (list, tuple)):  # timm's AutoAugment holds the policy itself
        return "autoaugment-timm"
    return f"autoaugment-{getattr(policy, 'value', policy)}".lower()


def _read_auto_augment(rep: _Report, t: Any, p: float) -> None:
    label = _auto_augment_label(t)
    rep.details["auto_augment"] = label
    rep.note(f"train transform {_name(t)} ({label}) is not RandAugment: the recipe keys aug.randaug_* "
             f"describe RandAugment, so they are not observed")


def _read_color_jitter(rep: _Report, t: Any, p: float) -> None:
    b, c, s = (_jitter(getattr(t, k, None)) for k in ("brightness", "contrast", "saturation"))
    hue = _jitter(getattr(t, "hue", None))
    rep.details["color_jitter"] = (b, c, s, hue)
    if b == c == s:
        rep.observe("aug.color_jitter", b, _name(t))
    else:
        rep.note(f"ColorJitter brightness/contrast/saturation differ ({b:g}, {c:g}, {s:g}): aug.color_jitter "
                 f"(one value for all three) is not observed")
    if hue:
        rep.note(f"ColorJitter also jitters hue ({hue:g}), which the recipe does not")


def _read_random_erasing(rep: _Report, t: Any, p: float) -> None:
    prob = getattr(t, "p", None)
    if prob is None:
        prob = getattr(t, "probability")  # timm
    rep.observe("aug.random_erasing", round(float(prob) * p, 6), _name(t))
    if hasattr(t, "mode"):
        rep.details["random_erasing_mode"] = t.mode


def _read_normalize(rep: _Report, t: Any, p: float, prefix: str = "") -> None:
    rep.details[prefix + "mean"] = _floats(t.mean)
    rep.details[prefix + "std"] = _floats(t.std)


def _read_train_resize(rep: _Report, t: Any, p: float) -> None:
    rep.details["train_resize"] = _first(t.size)


def _read_train_center_crop(rep: _Report, t: Any, p: float) -> None:
    rep.details["train_center_crop"] = _first(t.size)


_Reader = Callable[[_Report, Any, float], None]

_TRAIN_READERS: dict[str, _Reader] = {
    "RandomResizedCrop": _read_rrc,
    "RandomResizedCropAndInterpolation": _read_rrc,
    "RandomCrop": _read_random_crop,
    "RandomHorizontalFlip": _read_hflip,
    "RandAugment": _read_randaugment,
    "AutoAugment": _read_auto_augment,
    "TrivialAugmentWide": _read_auto_augment,
    "AugMix": _read_auto_augment,
    "AugMixAugment": _read_auto_augment,
    "ColorJitter": _read_color_jitter,
    "RandomErasing": _read_random_erasing,
    "Normalize": _read_normalize,
    "Resize": _read_train_resize,
    "ResizeKeepRatio": _read_train_resize,
    "CenterCrop": _read_train_center_crop,
    "CenterCropOrPad": _read_train_center_crop,
}

# readers that fold the container probability into their value; others get a note under RandomApply
_TAKES_PROBABILITY = {"RandomHorizontalFlip", "RandomErasing"}


# ----------------------------------------------------------------------------- val readers

def _read_val_resize(rep: _Report, t: Any, p: float) -> None:
    rep.details["val_resize"] = _first(t.size)
    rep.details["val_interpolation"] = _interp(getattr(t, "interpolation", "bilinear"))


def _read_val_center_crop(rep: _Report, t: Any, p: float) -> None:
    rep.details["val_crop"] = _first(t.size)


def _read_val_normalize(rep: _Report, t: Any, p: float) -> None:
    _read_normalize(rep, t, p, prefix="val_")


_VAL_READERS: dict[str, _Reader] = {
    "Resize": _read_val_resize,
    "ResizeKeepRatio": _read_val_resize,
    "CenterCrop": _read_val_center_crop,
    "CenterCropOrPad": _read_val_center_crop,
    "Normalize": _read_val_normalize,
}

# format conversions: no effect on any recipe key
_NEUTRAL = {"ToTensor", "PILToTensor", "ToImage", "ToImageTensor", "ToDtype", "ConvertImageDtype", "ToPILImage",
            "ToPureTensor", "MaybeToTensor", "MaybePILToTensor", "ToNumpy", "Identity"}
_CONTAINERS = {"Compose", "RandomApply", "RandomChoice", "RandomOrder", "Sequential"}
_MIXERS = {"MixUp", "CutMix"}
_KNOWN = set(_TRAIN_READERS) | set(_VAL_READERS) | _NEUTRAL | _CONTAINERS | _MIXERS


def _apply(reader: _Reader, rep: _Report, t: Any, p: float, side: str) -> None:
    try:
        reader(rep, t, p)
    except Exception as exc:  # a transform with unexpected attributes: say so, never raise
        rep.note(f"{side} transform {_name(t)} could not be read ({type(exc).__name__}: {exc})")


def _read_train(rep: _Report, transform: Any, extra: tuple = ()) -> None:
    """Walk the train transforms, then fill the keys whose transform is absent (meaning 0)."""
    leaves = list(_leaves(transform, rep, "train")) + [(t, 1.0) for t in extra]
    kinds = set()
    for t, p in leaves:
        kind = _kind(t)
        kinds.add(kind)
        if kind in _TRAIN_READERS:
            if p < 1.0 and kind not in _TAKES_PROBABILITY:
                rep.note(f"train transform {_name(t)} is applied with probability {p:g}: its recipe keys "
                         f"assume it always is")
            _apply(_TRAIN_READERS[kind], rep, t, p, "train")
        elif kind not in _NEUTRAL:
            rep.note(f"train transform {_name(t)} not recognised: its effect is not observed")
    rep.details["train_transforms"] = [_name(t) + (f"[p={p:g}]" if p < 1.0 else "") for t, p in leaves]
    _fill_absent(rep, kinds)


def _fill_absent(rep: _Report, kinds: set) -> None:
    if "RandomHorizontalFlip" not in kinds:
        rep.observe("aug.hflip", 0.0, "no RandomHorizontalFlip")
    if "RandomErasing" not in kinds:
        rep.observe("aug.random_erasing", 0.0, "no RandomErasing")
    if "ColorJitter" not in kinds:
        rep.observe("aug.color_jitter", 0.0, "no ColorJitter")
    if not kinds & {"RandAugment", "AutoAugment", "TrivialAugmentWide", "AugMix", "AugMixAugment"}:
        rep.observe("aug.randaug_n", 0, "no RandAugment")
    if "data.img_size" not in rep.observed:
        size = rep.details.get("train_center_crop") or rep.details.get("train_resize")
        if size:
            rep.observe("data.img_size", size, "train Resize/CenterCrop")
        rep.note("no RandomResizedCrop or RandomCrop in the train transforms: aug.rrc_scale_min and "
                 "aug.crop_pad are not observed")


def _read_val(rep: _Report, transform: Any) -> None:
    leaves = list(_leaves(transform, rep, "val"))
    for t, p in leaves:
        kind = _kind(t)
        if kind in _VAL_READERS:
            _apply(_VAL_READERS[kind], rep, t, p, "val")
        elif kind in _TRAIN_READERS:
            rep.note(f"val transform {_name(t)} is a random augmentation: evaluation is not deterministic")
        elif kind not in _NEUTRAL:
            rep.note(f"val transform {_name(t)} not recognised: its effect is not observed")
    rep.details["val_transforms"] = [_name(t) for t, _ in leaves]
    _eval_crop(rep)
    if "mean" in rep.details and "val_mean" in rep.details and (
            rep.details["mean"] != rep.details["val_mean"] or rep.details["std"] != rep.details["val_std"]):
        rep.note("train and val Normalize use different mean/std")


def _eval_crop(rep: _Report) -> None:
    """data.eval_crop_pct = crop / resize, and what the val pipeline does differently from train."""
    resize, crop = rep.details.get("val_resize"), rep.details.get("val_crop")
    if resize and crop:
        rep.observe("data.eval_crop_pct", round(crop / resize, 6), "val Resize + CenterCrop")
    elif crop:  # the resize (if any) happened before the data reached this pipeline: the ratio was not shown
        rep.note("val CenterCrop without Resize: data.eval_crop_pct is not observed (the images were resized "
                 "before this pipeline, e.g. in a cache, or not at all)")
    elif resize:
        rep.observe("data.eval_crop_pct", 1.0, "val Resize without CenterCrop")
    else:
        rep.note("no Resize or CenterCrop in the val transforms: data.eval_crop_pct is not observed")
        return
    eval_size = crop or resize
    rep.details["eval_img_size"] = eval_size
    train_size = rep.observed.get("data.img_size")
    if train_size and eval_size != train_size:
        rep.note(f"evaluation at {eval_size} px, training at {train_size} px")
    train_interp, val_interp = rep.observed.get("aug.interpolation"), rep.details.get("val_interpolation")
    if train_interp and val_interp and train_interp != val_interp:
        rep.note(f"val Resize interpolation is {val_interp}, the train crop's is {train_interp}")


# ----------------------------------------------------------------------------- loaders and datasets

@dataclass
class _Parts:
    loader: Any = None
    prefetcher: Any = None
    transform: Any = None


def _is_loader(x: Any) -> bool:
    return x is not None and all(hasattr(x, a) for a in ("dataset", "batch_size", "sampler"))


def _is_dataset(x: Any) -> bool:
    return isinstance(x, Dataset) or (hasattr(x, "__getitem__") and hasattr(x, "__len__") and not callable(x))


def _dataset_transform(ds: Any, rep: _Report, side: str) -> Any:
    """The image transform of a dataset, looking through Subset-like wrappers (``.dataset``) and
    ConcatDataset (its first part); None when there is none."""
    for _ in range(_MAX_DEPTH):
        if hasattr(ds, "transform") or hasattr(ds, "transforms"):
            t = getattr(ds, "transform", None)
            joint = getattr(ds, "transforms", None)
            if t is None and joint is not None and type(joint).__name__ != "StandardTransform":
                return joint  # a VisionDataset built with transforms= (image and target together)
            return t
        if getattr(ds, "dataset", None) is not None:
            ds = ds.dataset
        elif getattr(ds, "datasets", None):
            rep.note(f"{side} dataset {_name(ds)} concatenates {len(ds.datasets)} datasets: the transforms "
                     f"of the first are read")
            ds = ds.datasets[0]
        else:
            break
    return None


def _unpack(obj: Any, rep: _Report, side: str) -> _Parts:
    """Split what the user passed into loader, timm prefetcher and transform."""
    parts = _Parts()
    if not _is_loader(obj) and _is_loader(getattr(obj, "loader", None)):  # timm PrefetchLoader
        parts.prefetcher, obj = obj, obj.loader
    if _is_loader(obj):
        parts.loader, obj = obj, obj.dataset
    if _is_dataset(obj):
        parts.transform = _dataset_transform(obj, rep, side)
        if parts.transform is None:
            rep.note(f"{side} dataset {_name(obj)} has no transform: augmentation done elsewhere (e.g. in the "
                     f"training loop) is not observed")
    elif callable(obj):
        parts.transform = obj
    else:
        rep.note(f"{side}: {_name(obj)} is neither a DataLoader, a Dataset nor a transform: not observed")
    return parts


def _shuffle(sampler: Any) -> bool | None:
    if isinstance(sampler, (RandomSampler, SubsetRandomSampler)):
        return True
    if isinstance(sampler, SequentialSampler):
        return False
    shuffle = getattr(sampler, "shuffle", None)  # DistributedSampler, timm's RepeatAugSampler
    return shuffle if isinstance(shuffle, bool) else None


def _read_loader(rep: _Report, loader: Any, side: str) -> None:
    batch_size, drop_last, sampler = loader.batch_size, loader.drop_last, loader.sampler
    if batch_size is None:  # a custom batch_sampler
        batch_sampler = getattr(loader, "batch_sampler", None)
        batch_size = getattr(batch_sampler, "batch_size", None)
        drop_last = getattr(batch_sampler, "drop_last", None)
        sampler = getattr(batch_sampler, "sampler", None)
        if batch_size is None:
            rep.note(f"{side} DataLoader batch_sampler {_name(batch_sampler)}: batch size not observed")
    prefix = "" if side == "train" else "val_"
    if batch_size is not None:
        rep.observe("data.batch_size" if side == "train" else "data.eval_batch_size", int(batch_size),
                    f"{side} DataLoader")
    if drop_last is not None:
        rep.details[prefix + "drop_last"] = bool(drop_last)
    rep.details[prefix + "sampler"] = _name(sampler)
    shuffle = _shuffle(sampler)
    if shuffle is None:
        rep.note(f"{side} DataLoader sampler {_name(sampler)} not recognised: shuffling is not observed")
    else:
        rep.details[prefix + "shuffle"] = shuffle
        if side == "train":
            rep.observe("data.shuffle", shuffle, f"train DataLoader {_name(sampler)}")
    replicas = getattr(sampler, "num_replicas", 1)
    if side == "train" and isinstance(replicas, int) and replicas > 1 and batch_size is not None:
        rep.details["world_size"] = replicas
        rep.note(f"{_name(sampler)} over {replicas} processes: data.batch_size {batch_size} is per process, "
                 f"the global batch is {replicas * batch_size}")


def _read_prefetcher(rep: _Report, prefetcher: Any, prefix: str) -> None:
    """timm's PrefetchLoader normalizes (mean/std x 255) and may erase on the device."""
    for key in ("mean", "std"):
        value = getattr(prefetcher, key, None)
        if value is not None and prefix + key not in rep.details:
            rep.details[prefix + key] = [round(x / 255.0, 4) for x in _floats(value)]


# ----------------------------------------------------------------------------- mixing

_PLAIN_COLLATES = {"default_collate", "default_convert", "fast_collate"}


def _is_timm_mixup(m: Any) -> bool:
    return all(hasattr(m, a) for a in ("mixup_alpha", "cutmix_alpha", "mix_prob", "switch_prob"))


def _read_timm_mixup(rep: _Report, m: Any) -> None:
    src = f"{_name(m)} (timm)"
    rep.observe("aug.mixup_alpha", float(m.mixup_alpha), src)
    rep.observe("aug.cutmix_alpha", float(m.cutmix_alpha), src)
    rep.observe("aug.mix_prob", float(m.mix_prob), src)
    rep.observe("aug.mix_switch_prob", float(m.switch_prob), src)
    if getattr(m, "label_smoothing", None) is not None:
        rep.observe("reg.label_smoothing", float(m.label_smoothing), src)
    rep.details.update(mixup_mode=getattr(m, "mode", None), mixup_num_classes=getattr(m, "num_classes", None),
                       cutmix_minmax=getattr(m, "cutmix_minmax", None))
    if getattr(m, "cutmix_minmax", None) is not None:
        rep.note(f"timm Mixup uses cutmix_minmax={m.cutmix_minmax}: the box size does not follow cutmix_alpha")
    if getattr(m, "mixup_enabled", True) is False:
        rep.note("timm Mixup has mixup_enabled=False: no batch is mixed while it stays off")


def _read_v2_mix(rep: _Report, m: Any) -> bool:
    """torchvision v2 MixUp / CutMix, alone or in RandomChoice / RandomApply."""
    leaves = list(_leaves(m, rep, "mixup"))
    by_kind = {"MixUp": [], "CutMix": []}
    for t, p in leaves:
        if _kind(t) in by_kind:
            by_kind[_kind(t)].append((t, p))
    if not by_kind["MixUp"] and not by_kind["CutMix"]:
        return False
    for t, _ in leaves:
        if _kind(t) not in by_kind:
            rep.note(f"mixup transform {_name(t)} not recognised: its effect is not observed")
    src = "MixUp/CutMix (torchvision v2)"
    p_mix, p_cut = (sum(p for _, p in by_kind[k]) for k in ("MixUp", "CutMix"))
    rep.observe("aug.mixup_alpha", float(by_kind["MixUp"][0][0].alpha) if by_kind["MixUp"] else 0.0, src)
    rep.observe("aug.cutmix_alpha", float(by_kind["CutMix"][0][0].alpha) if by_kind["CutMix"] else 0.0, src)
    rep.observe("aug.mix_prob", round(min(p_mix + p_cut, 1.0), 6), src)
    if p_mix and p_cut:
        rep.observe("aug.mix_switch_prob", round(p_cut / (p_mix + p_cut), 6), src)
    if p_mix + p_cut > 1.0 + 1e-9:
        rep.note("torchvision MixUp and CutMix are both applied to the same batch (not RandomChoice)")
    first = (by_kind["MixUp"] or by_kind["CutMix"])[0][0]
    rep.details["mixup_num_classes"] = getattr(first, "num_classes", None)
    return True


def _read_mixup(rep: _Report, m: Any) -> bool:
    """True when ``m`` was read as a mixing object."""
    try:
        if _is_timm_mixup(m):
            _read_timm_mixup(rep, m)
            return True
        if _read_v2_mix(rep, m):
            return True
    except Exception as exc:
        rep.note(f"mixup {_name(m)} could not be read ({type(exc).__name__}: {exc})")
        return False
    rep.note(f"mixup {_name(m)} not recognised: mixing is not observed")
    return False


def _read_collate(rep: _Report, loader: Any) -> str:
    """'mix' (a timm FastCollateMixup), 'plain' (a default collate) or 'unknown'."""
    fn = getattr(loader, "collate_fn", None)
    if fn is None or getattr(fn, "__name__", None) in _PLAIN_COLLATES:
        return "plain"
    if _is_timm_mixup(fn):
        _read_timm_mixup(rep, fn)
        return "mix"
    rep.note(f"DataLoader collate_fn {getattr(fn, '__name__', _name(fn))} not recognised: mixing done there "
             f"is not observed")
    return "unknown"


def _read_mixing(rep: _Report, mixup: Any, train: _Parts | None) -> None:
    found = mixup is not None and _read_mixup(rep, mixup)
    collate = _read_collate(rep, train.loader) if train and train.loader is not None else "plain"
    found = found or collate == "mix"
    if not found and mixup is None and train and train.transform is not None and collate == "plain":
        rep.observe("aug.mixup_alpha", 0.0, "no mixup object")
        rep.observe("aug.cutmix_alpha", 0.0, "no mixup object")
        rep.note("no mixup/cutmix object given or in the DataLoader: aug.mixup_alpha and aug.cutmix_alpha "
                 "read as 0 (pass mixup= if the training loop mixes batches)")


# ----------------------------------------------------------------------------- entry point

def describe_data(train: Any = None, val: Any = None, mixup: Any = None) -> dict:
    """Read a data pipeline into recipe keys.

    Returns ``{"observed": {key: value}, "details": {...}, "notes": [str]}``.
    ``train`` / ``val``: a DataLoader (or timm PrefetchLoader), a Dataset (with ``.transform``, e.g.
    torchvision's ImageFolder or CIFAR10), or a transform (a Compose or a single transform).
    ``mixup``: a timm ``Mixup`` / ``FastCollateMixup``, or torchvision v2 ``MixUp`` / ``CutMix`` /
    ``RandomChoice([MixUp, CutMix])``; a ``FastCollateMixup`` used as the train DataLoader's
    ``collate_fn`` is found without it. Never raises on objects it does not know: they become notes.
    """
    rep = _Report()
    train_parts = _read_side(rep, train, "train") if train is not None else None
    _guard(rep, "mixup", lambda: _read_mixing(rep, mixup, train_parts))
    if val is not None:
        _read_side(rep, val, "val")
    return rep.as_dict()


def _read_side(rep: _Report, obj: Any, side: str) -> _Parts | None:
    parts = _guard(rep, side, lambda: _unpack(obj, rep, side))
    if parts is None:
        return None
    prefix = "" if side == "train" else "val_"
    if parts.loader is not None:
        _guard(rep, side, lambda: _read_loader(rep, parts.loader, side))
    if parts.transform is not None:
        if side == "train":
            erasing = getattr(parts.prefetcher, "random_erasing", None)
            _guard(rep, side, lambda: _read_train(rep, parts.transform, (erasing,) if erasing is not None else ()))
        else:
            _guard(rep, side, lambda: _read_val(rep, parts.transform))
    if parts.prefetcher is not None:
        _guard(rep, side, lambda: _read_prefetcher(rep, parts.prefetcher, prefix))
    return parts


def _guard(rep: _Report, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # the last line of defence: describe_data never raises
        rep.note(f"{what}: reading stopped at {type(exc).__name__}: {exc}")
        return None
