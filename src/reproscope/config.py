"""Recipe configuration: a tree of frozen dataclasses, one per concern.

A :class:`Recipe` holds one section per concern (model, data, optim, sched, aug, reg,
precision, dist, run, instrument). Every field carries its accepted values in ``metadata`` so that the CLI
(``--set section.key=value``) is derived from the dataclasses and every bad key or value is
an error that names the key, the accepted values and, for typos, the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping


class ConfigError(ValueError):
    """A bad recipe key or value. The message names the key and what is accepted."""


def _f(default: Any, help: str, *, min: float | None = None, max: float | None = None,
       choices: tuple | None = None, gt: float | None = None) -> Any:
    """A dataclass field with a help string and accepted values in its metadata."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "gt": gt}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("vit_quick", "registered model name (see `reproscope models`)")
    norm: str = _f("default", "normalization layer: the model's own, LayerNorm or DyT",
                   choices=("default", "ln", "dyt"))
    dyt_alpha0: float = _f(0.5, "initial alpha of every DyT layer (paper: 0.5)", gt=0)
    dyt_squash: str = _f("tanh", "DyT squashing function (paper Tab. 7 ablation; identity is the no-squash control)",
                         choices=("tanh", "hardtanh", "sigmoid", "identity"))
    patch_size: int = _f(0, "patch size / stem stride; 0 = model default", min=0)
    drop_path: float = _f(0.0, "stochastic depth rate", min=0, max=1)
    global_pool: str = _f("default", "ViT pooling: the model's own, class token or average",
                          choices=("default", "token", "avg"))
    attn_init: str = _f("default", "ViT/KAT attention init: the model's own, trunc_normal(0.02) or mimetic "
                        "(Trockman and Kolter 2023)", choices=("default", "trunc_normal", "mimetic"))
    denominator: str = _f("default", "KAT rational denominator: the model's own, the paper's 1+|sum b_i x^i|, "
                          "the public GPU kernel's 1+sum |b_i||x|^i, or its CPU fallback's 1+sum |b_i| x^i",
                          choices=("default", "paper", "abs_terms", "signed_terms"))
    kernel_size: int = _f(0, "MambaOut token-mixer (depthwise conv) kernel size; 0 = the model's own (7, "
                          "MambaOut Sec. 4.1)", min=0)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("shapes10", "dataset name (built-in `shapes10` needs no files)")
    root: str = _f("", "dataset root folder (unused by built-in datasets)")
    img_size: int = _f(32, "training resolution in pixels", min=8)
    num_classes: int = _f(0, "0 = taken from the dataset", min=0)
    train_size: int = _f(12000, "built-in datasets: number of training images", min=1)
    val_size: int = _f(2000, "built-in datasets: number of validation images", min=1)
    batch_size: int = _f(128, "micro-batch size; an optimizer step sees batch_size x optim.accum_steps", min=1)
    eval_batch_size: int = _f(500, "batch size for evaluation", min=1)
    data_seed: int = _f(0, "seed of the generated dataset (separate from the run seed)", min=0)
    cache_res: int = _f(0, "side of the cached uint8 images; 0 = img_size / eval_crop_pct", min=0)
    cache_dir: str = _f("", "where decoded caches live; empty = $REPROSCOPE_CACHE or ~/.cache/reproscope")
    eval_crop_pct: float = _f(0.875, "eval centre crop fraction (224 of 256)", gt=0, max=1)
    skip_corrupt: bool = _f(False, "skip unreadable images (and log the count) instead of stopping")
    device_cache: str = _f("auto", "keep the uint8 dataset on the training device; auto = if it fits",
                           choices=("auto", "on", "off"))
    workers: int = _f(0, "decode threads for building the cache; 0 = min(8, cores)", min=0)


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float = _f(2e-3, "peak learning rate (absolute, after warmup)", gt=0)
    weight_decay: float = _f(0.05, "decoupled weight decay (not on 1-D params, position embeddings, class/register tokens, or what the model lists in no_weight_decay())", min=0)
    beta1: float = _f(0.9, "AdamW beta1 / SGD momentum", min=0, max=1)
    beta2: float = _f(0.999, "AdamW beta2", min=0, max=1)
    eps: float = _f(1e-8, "AdamW epsilon", gt=0)
    grad_clip: float = _f(0.0, "clip the global grad norm to this value; 0 = off", min=0)
    accum_steps: int = _f(1, "micro-batches accumulated per optimizer step", min=1)


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = _f(12, "training epochs", min=1)
    warmup_epochs: float = _f(1.0, "linear warmup from 0, per iteration", min=0)
    min_lr: float = _f(1e-5, "final lr of the per-iteration cosine decay", min=0)
    max_steps: int = _f(0, "stop after this many optimizer steps with one evaluation and one checkpoint: a "
                           "smoke run of your code (Lightning's fast_dev_run); the lr follows the whole "
                           "schedule's curve; 0 = off", min=0)


@dataclass(frozen=True)
class AugConfig:
    hflip: float = _f(0.5, "horizontal flip probability", min=0, max=1)
    crop_pad: int = _f(2, "random-crop padding in pixels (reflect), used when rrc_scale_min = 0", min=0)
    rrc_scale_min: float = _f(0.0, "RandomResizedCrop min area fraction (0.08 in DeiT); 0 = pad-crop instead",
                              min=0, max=1)
    interpolation: str = _f("bilinear", "resampling of the crop", choices=("bilinear", "bicubic"))
    randaug_n: int = _f(0, "RandAugment ops per image; 0 = off", min=0)
    randaug_m: float = _f(9.0, "RandAugment magnitude (0-10)", min=0, max=10)
    randaug_mstd: float = _f(0.5, "std of the per-image RandAugment magnitude", min=0)
    color_jitter: float = _f(0.0, "brightness/contrast/saturation jitter (only when RandAugment is off)", min=0)
    random_erasing: float = _f(0.0, "random erasing probability", min=0, max=1)
    mixup_alpha: float = _f(0.0, "mixup Beta(alpha, alpha); 0 = off", min=0)
    cutmix_alpha: float = _f(0.0, "cutmix Beta(alpha, alpha); 0 = off", min=0)
    mix_prob: float = _f(1.0, "probability of mixing a batch (when mixup or cutmix is on)", min=0, max=1)
    mix_switch_prob: float = _f(0.5, "probability of cutmix rather than mixup when both are on", min=0, max=1)


@dataclass(frozen=True)
class RegConfig:
    label_smoothing: float = _f(0.0, "label smoothing", min=0, max=1)
    ema_decay: float = _f(0.0, "EMA of weights; 0 = off", min=0, max=1)
    eval_ema: bool = _f(False, "evaluate the EMA weights instead of the raw ones")


@dataclass(frozen=True)
class PrecisionConfig:
    device: str = _f("auto", "device", choices=("auto", "cpu", "cuda"))
    amp: str = _f("auto", "autocast dtype; auto = bf16 on CUDA, fp32 on CPU",
                  choices=("auto", "bf16", "fp16", "fp32"))
    compile: bool = _f(False, "wrap the model in torch.compile")
    channels_last: str = _f("auto", "channels_last memory format; auto = conv models on CUDA",
                            choices=("auto", "on", "off"))
    tf32: bool = _f(True, "allow TF32 matmuls on CUDA")


@dataclass(frozen=True)
class DistConfig:
    """Several processes under torchrun (DistributedDataParallel); nothing changes in one process."""
    find_unused_parameters: bool = _f(False, "DDP: let trainable parameters go without a gradient in a step (a head "
                                             "the loss does not use); costs an extra pass over the autograd graph "
                                             "after every forward (DDP's find_unused_parameters)")
    sync_bn: bool = _f(False, "DDP: BatchNorm statistics over the whole batch of all processes "
                              "(nn.SyncBatchNorm; CUDA only) instead of each process's share of it")


@dataclass(frozen=True)
class RunConfig:
    seed: int = _f(0, "run seed (init, data order, augmentation)", min=0)
    out_dir: str = _f("runs", "parent folder of run directories")
    log_every: int = _f(20, "log scalars every N optimizer steps", min=1)
    eval_every: int = _f(1, "evaluate every N epochs", min=1)
    threads: int = _f(0, "torch CPU threads; 0 = leave torch's default", min=0)
    deterministic: bool = _f(False, "torch deterministic algorithms (slower)")
    ckpt_every: int = _f(0, "also checkpoint every N optimizer steps (0 = at epoch ends only)", min=0)
    keep_last: int = _f(3, "step checkpoints kept (older ones are deleted)", min=1)
    progress: bool = _f(True, "show progress bars")


@dataclass(frozen=True)
class InstrumentConfig:
    enabled: bool = _f(True, "per-layer probes (activation/gradient/parameter stats)")
    probe_every: int = _f(200, "probe every N optimizer steps", min=1)
    probe_early: bool = _f(True, "also probe at log-spaced early steps (1, 2, 4, 8, ...)")
    histograms: bool = _f(True, "TensorBoard histograms of weights, grads and activations, on the first probe step "
                                "and then every instrument.hist_every steps (at the next probe step)")
    hist_every: int = _f(1000, "steps between two histogram sets (sparse: each set serialises every tensor)", min=1)
    stat_samples: int = _f(16, "per-module stats use the first N samples of the batch (0 = all); "
                               "the NaN tripwire always checks everything", min=0)
    stat_elements: int = _f(8192, "per-module stats use at most N elements of those samples, an evenly strided "
                                  "subset (0 = all); bounds the cost of every-step probing", min=0)
    nan_policy: str = _f("stop", "on a non-finite loss or grad norm: stop, skip the step, or roll back and halve lr",
                         choices=("stop", "skip", "rollback"))
    spike_window: int = _f(100, "loss-spike detector window (steps)", min=5)
    spike_threshold: float = _f(8.0, "a spike is loss > median + threshold x MAD of the window", gt=0)
    spike_min_rel: float = _f(0.25, "a spike must also exceed the window's median by this fraction of it (a flat "
                                    "run's wiggles score high against a near-zero MAD)", min=0)
    spike_skip: bool = _f(False, "skip the optimizer step on a loss spike")
    probes: bool = _f(True, "paper-figure probes (DyT curves and alpha, KAT ranges, MambaOut gates): numbers every epoch, figures at the end")


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "sched": ScheduleConfig,
    "aug": AugConfig, "reg": RegConfig, "precision": PrecisionConfig, "dist": DistConfig, "run": RunConfig,
    "instrument": InstrumentConfig,
}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    parent: str = ""  # the paper recipe a reduced recipe derives from
    sources: Mapping[str, str] = field(default_factory=dict)  # key -> paper section/table it comes from
    deviations: Mapping[str, str] = field(default_factory=dict)  # key -> why it differs from the parent
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    sched: ScheduleConfig = ScheduleConfig()
    aug: AugConfig = AugConfig()
    reg: RegConfig = RegConfig()
    precision: PrecisionConfig = PrecisionConfig()
    dist: DistConfig = DistConfig()
    run: RunConfig = RunConfig()
    instrument: InstrumentConfig = InstrumentConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ----------------------------------------------------------------------------- validation

def nearest(name: str, options: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


@functools.cache
def _type_hints(cls: type) -> dict[str, type]:
    """``typing.get_type_hints(cls)``, once per class (it evaluates every annotation string anew)."""
    return typing.get_type_hints(cls)


def _field_type(cls: type, name: str) -> type:
    return _type_hints(cls)[name]


def _describe(f: dataclasses.Field, typ: type) -> str:
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(map(str, m["choices"]))
    parts = [typ.__name__]
    if m.get("gt") is not None:
        parts.append(f"> {m['gt']}")
    if m.get("min") is not None:
        parts.append(f">= {m['min']}")
    if m.get("max") is not None:
        parts.append(f"<= {m['max']}")
    return " ".join(parts)


def _check_value(key: str, f: dataclasses.Field, typ: type, value: Any) -> Any:
    m = f.metadata
    accepted = _describe(f, typ)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a boolean (true/false)")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer ({accepted})")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number ({accepted})")
        value = float(value)
        if value != value:
            raise ConfigError(f"{key}=nan: expected a finite number ({accepted})")
    elif typ is str and not isinstance(value, str):
        raise ConfigError(f"{key}={value!r}: expected a string ({accepted})")
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f"{key}={value!r}: accepted values are {accepted}"
                          f"{nearest(str(value), map(str, m['choices']))}")
    if m.get("min") is not None and value < m["min"]:
        raise ConfigError(f"{key}={value!r}: out of range, accepted: {accepted}")
    if m.get("max") is not None and value > m["max"]:
        raise ConfigError(f"{key}={value!r}: out of range, accepted: {accepted}")
    if m.get("gt") is not None and not value > m["gt"]:
        raise ConfigError(f"{key}={value!r}: out of range, accepted: {accepted}")
    return value


def validate(recipe: Recipe) -> Recipe:
    """Check every field of every section; return the recipe unchanged."""
    for section, cls in SECTIONS.items():
        obj = getattr(recipe, section)
        for f in dataclasses.fields(cls):
            _check_value(f"{section}.{f.name}", f, _field_type(cls, f.name), getattr(obj, f.name))
    return recipe


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def key_table() -> list[tuple[str, str, str, str]]:
    """(key, accepted values with the type, default, help) for every configurable key, in order."""
    return [(f"{s}.{f.name}", _describe(f, _field_type(cls, f.name)), repr(f.default), f.metadata.get("help", ""))
            for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def parse_scalar(text: str, typ: type, key: str) -> Any:
    """Parse a command-line string into the field's type."""
    t = text.strip()
    if typ is bool:
        low = t.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")
    if typ is int:
        try:
            return int(t)
        except ValueError:
            try:
                v = float(t)
            except ValueError:
                raise ConfigError(f"{key}={text!r}: expected an integer") from None
            if v.is_integer():
                return int(v)
            raise ConfigError(f"{key}={text!r}: expected an integer") from None
    if typ is float:
        try:
            return float(t)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number") from None
    return t


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any] | typing.Iterable[str]) -> Recipe:
    """Apply ``section.key=value`` overrides (strings from the CLI, or a mapping of typed values).

    Unknown sections/keys raise :class:`ConfigError` naming the nearest valid key.
    """
    if isinstance(overrides, Mapping):
        items = [(k, v, False) for k, v in overrides.items()]
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
            k, v = item.split("=", 1)
            items.append((k.strip(), v, True))
    changes: dict[str, dict[str, Any]] = {}
    for key, value, from_text in items:
        if key.count(".") != 1:
            raise ConfigError(f"unknown key {key!r}: keys look like section.name"
                              f"{nearest(key, all_keys())}")
        section, name = key.split(".")
        if section not in SECTIONS:
            raise ConfigError(f"unknown key {key!r}: no section {section!r}"
                              f"{nearest(key, all_keys())}")
        cls = SECTIONS[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name not in fields:
            raise ConfigError(f"unknown key {key!r}{nearest(key, all_keys())}")
        typ = _field_type(cls, name)
        if from_text:
            value = parse_scalar(value, typ, key)
        value = _check_value(key, fields[name], typ, value)
        changes.setdefault(section, {})[name] = value
    for section, kv in changes.items():
        recipe = dataclasses.replace(recipe, **{section: dataclasses.replace(getattr(recipe, section), **kv)})
    return recipe


def flat_items(recipe: Recipe) -> dict[str, Any]:
    """{section.key: value} over every configurable field."""
    return {f"{s}.{f.name}": getattr(getattr(recipe, s), f.name)
            for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def recipe_diff(a: Recipe, b: Recipe) -> dict[str, tuple[Any, Any]]:
    """{key: (value in a, value in b)} for every field that differs."""
    fa, fb = flat_items(a), flat_items(b)
    return {k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k]}


META_KEYS = {"name", "description", "parent", "sources", "deviations"}


def recipe_from_dict(d: Mapping[str, Any]) -> Recipe:
    """Rebuild a recipe from its saved ``config.json`` (unknown keys are errors)."""
    base = Recipe(name=d["name"], description=d.get("description", ""), parent=d.get("parent", ""),
                  sources=dict(d.get("sources") or {}), deviations=dict(d.get("deviations") or {}))
    flat = {}
    for section in SECTIONS:
        for k, v in (d.get(section) or {}).items():
            flat[f"{section}.{k}"] = v
    unknown = set(d) - set(SECTIONS) - META_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise ConfigError(f"unknown top-level key {k!r} in config{nearest(k, list(SECTIONS))}")
    return validate(apply_overrides(base, flat))
