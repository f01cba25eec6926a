"""An honest L4 budget: throughput per model family as a range, from published evidence and a written
scaling rule, with evaluation and data time included.

Evidence (``EVIDENCE``): timm's published training benchmark (huggingface/pytorch-image-models,
``results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv``: train samples/s, mixed precision, NCHW,
224 px, on an RTX 3090). From it and torch's FLOP count of our model of the same size we get the MFU
the family reaches on that GPU: ``mfu = img/s x 3 x forward FLOPs / peak`` (3090 peak 71 TFLOP/s).
A measurement from ``benchmarks/gpu_session.py`` on an H100/H200 goes through the same rule (add it to
``EVIDENCE`` with its GPU); none exists yet, as no GPU was lent in the sessions that wrote this.

The scaling rule (source GPU S -> target GPU T), written down because the L4 differs from both in its
balance (121 TFLOP/s but only 300 GB/s):

- a step's time on S splits into matmul time, which runs at a fraction ``e`` of S's peak, and the
  rest (norms, activations, softmax, optimizer, copies), taken as memory-bound. So the memory-bound
  share is ``f = 1 - mfu / e``;
- on T the matmul part scales with peak FLOP/s and the rest with memory bandwidth:
  ``time_T / time_S = (1 - f) x peak_S / peak_T + f x bandwidth_S / bandwidth_T``;
- ``e`` is not known, so it spans the range: 0.60 (optimistic: little memory-bound time), 0.75
  (likely), 0.90 (pessimistic), never below ``mfu + 0.02``.

Further assumptions, each a range (optimistic / likely / pessimistic) until a GPU measures it:

- KAT's rationals are elementwise work the FLOP counter does not see: a KAT model costs
  ``1 + KAT_EXTRA`` times its ViT of the same size. Pessimistic 0.75 is the ratio measured on this
  project's CPU, eager, one thread (``kat_quick`` 100 img/s vs ``vit_quick`` 174 img/s over whole runs,
  ``python experiments/kat_cpu_findings.py``); torch.compile fuses the rational on a GPU, so less is likely.
- MambaOut has no published figure here; it takes ConvNeXt-T's (the same depthwise-conv + MLP
  structure, and the MambaOut paper compares the two at similar throughput). A smaller model than
  ConvNeXt-T usually reaches a lower MFU, so this leans optimistic.
- MFU is taken at 224 px; at a lower resolution fewer tokens make smaller matmuls, which lowers MFU,
  so estimates below 224 px lean optimistic.
- evaluation every epoch runs the forward only: ``EVAL_SPEEDUP`` x the training img/s (3 by FLOPs).
- augmentation on the device costs ``AUG_SHARE`` of the training step.
- the image cache is built once per dataset and resolution at ``DECODE_IMG_S`` images/s (an L4
  machine's 4-8 host cores decoding full-size JPEGs; this project's 2 cores decode the 224 px copy at
  ~3,500 img/s).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..hardware import GPU, KNOWN_GPUS
from ..papers import PAPERS, PaperPlan  # each registered paper's spec; its .plan is what a campaign needs
from ..recipes import DATASETS, Dataset  # noqa: F401  (the planner's datasets: the reduced recipes' table)

RANGE = ("optimistic", "likely", "pessimistic")
MATMUL_EFFICIENCY = {"optimistic": 0.60, "likely": 0.75, "pessimistic": 0.90}
KAT_EXTRA = {"optimistic": 0.2, "likely": 0.5, "pessimistic": 0.75}
EVAL_SPEEDUP = {"optimistic": 3.5, "likely": 3.0, "pessimistic": 2.0}
AUG_SHARE = {"optimistic": 0.05, "likely": 0.10, "pessimistic": 0.20}
DECODE_IMG_S = {"optimistic": 1200.0, "likely": 600.0, "pessimistic": 300.0}


@dataclass(frozen=True)
class Evidence:
    """Measured training throughput of one model at 224 px on one GPU (mixed precision)."""
    model: str  # our registered model of the same size, whose FLOPs are counted
    img_per_s: float
    gpu: str  # a KNOWN_GPUS key
    source: str


_TIMM_3090 = "timm results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv"
EVIDENCE = {  # family -> evidence
    "vit_base": Evidence("vit_base", 390.86, "RTX 3090", f"{_TIMM_3090}: vit_base_patch16_224, batch 192"),
    "vit_small": Evidence("vit_small", 1053.64, "RTX 3090", f"{_TIMM_3090}: deit_small_patch16_224, batch 384"),
    "vit_tiny": Evidence("vit_tiny", 2290.53, "RTX 3090", f"{_TIMM_3090}: deit_tiny_patch16_224, batch 512"),
    "convnext_tiny": Evidence("convnext_tiny", 813.16, "RTX 3090", f"{_TIMM_3090}: convnext_tiny, batch 256"),
}
FAMILY = {  # model -> (evidence family, extra elementwise cost table or None)
    "vit_base": ("vit_base", None), "vit_small": ("vit_small", None), "vit_tiny": ("vit_tiny", None),
    "kat_tiny": ("vit_tiny", KAT_EXTRA), "kat_small": ("vit_small", KAT_EXTRA), "kat_base": ("vit_base", KAT_EXTRA),
    "convnext_tiny": ("convnext_tiny", None), "mambaout_femto": ("convnext_tiny", None),
    "mambaout_kobe": ("convnext_tiny", None), "mambaout_tiny": ("convnext_tiny", None),
}


def patch_for(res: int) -> int:
    """The patch size (ViT) or stem stride (conv) used at ``res`` px: the paper's 16 from 128 px up,
    else res / 8 so the grid stays 8x8 (as the CIFAR / Tiny-ImageNet reductions do)."""
    return 16 if res >= 128 else max(2, res // 8)


_FLOPS_AS = {"kat_tiny": "vit_tiny", "kat_small": "vit_small", "kat_base": "vit_base"}  # the counter sees no rationals
_CONV = ("convnext", "mambaout")


@functools.lru_cache(maxsize=None)
def _flop_fit(model: str) -> tuple[float, float, float]:
    """Forward FLOPs of one image as ``a u + b u^2 + c`` in the grid size ``u`` (tokens of a ViT, stem
    cells of a conv net), solved exactly through torch's FLOP counts at 224, 112 and 64 px (patch 16 /
    stem 4), counted on the meta device (shapes only, no weights). A KAT model counts as its ViT."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..model import create_model
    from ..model.counting import register_cpu_attention_flops
    register_cpu_attention_flops()
    name = _FLOPS_AS.get(model, model)
    conv = name.startswith(_CONV)
    rows, fs = [], []
    for res in (224, 112, 64):
        with torch.device("meta"):
            m = create_model(name, num_classes=1000, **({} if conv else {"img_size": res, "patch_size": 16})).eval()
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                m(torch.zeros(1, 3, res, res))
        u = (res / (4 if conv else 16)) ** 2
        rows.append([u, u * u, 1.0])
        fs.append(float(fc.get_total_flops()))
    a, b, c = np.linalg.solve(np.array(rows), np.array(fs))
    return float(a), float(b), float(c)


def stem_for(res: int) -> int:
    """The conv nets' stem stride at ``res`` px: their default 4 from 128 px up, else 2 (the last
    feature map stays >= 2x2, as the CIFAR / Tiny-ImageNet reductions do)."""
    return 4 if res >= 128 else 2


def forward_flops(model: str, res: int) -> float:
    """Forward FLOPs per image of ``model`` at ``res`` px, with ``patch_for(res)`` (ViT, KAT) or
    ``stem_for(res)`` (conv nets)."""
    a, b, c = _flop_fit(model)
    u = (res / (stem_for(res) if model.startswith(_CONV) else patch_for(res))) ** 2
    return a * u + b * u * u + c


def source_mfu(family: str) -> float:
    """The MFU the evidence implies on its own GPU."""
    ev = EVIDENCE[family]
    gpu = KNOWN_GPUS[ev.gpu]
    return ev.img_per_s * 3 * forward_flops(ev.model, 224) / gpu.bf16


def time_ratio(mfu: float, src: GPU, dst: GPU, case: str) -> float:
    """time on ``dst`` / time on ``src`` for a step that reaches ``mfu`` on ``src`` (the module's rule)."""
    e = max(MATMUL_EFFICIENCY[case], mfu + 0.02)
    f = max(0.0, 1.0 - mfu / e)
    return (1 - f) * src.bf16 / dst.bf16 + f * src.bandwidth / dst.bandwidth


def train_img_per_s(model: str, res: int, gpu: str = "L4") -> dict[str, float]:
    """Training images/s of ``model`` at ``res`` px on ``gpu`` (bf16 autocast), per case of ``RANGE``.

    Raises:
        KeyError: a model with no family in ``FAMILY``.
    """
    family, extra = FAMILY[model]
    ev = EVIDENCE[family]
    src, dst = KNOWN_GPUS[ev.gpu], KNOWN_GPUS[gpu]
    mfu = source_mfu(family)
    out = {}
    for case in RANGE:
        flops = 3 * forward_flops(model, res)
        img_s_src = mfu * src.bf16 / flops  # the family's MFU at this model's FLOPs, on the source GPU
        img_s = img_s_src / time_ratio(mfu, src, dst, case)
        out[case] = img_s / (1 + (extra[case] if extra else 0.0))
    return out


def run_hours(model: str, res: int, epochs: int, n_train: int, n_val: int, gpu: str = "L4") -> dict[str, float]:
    """Device-hours of one training run (training with augmentation, evaluation every epoch), per case."""
    img_s = train_img_per_s(model, res, gpu)
    return {c: (epochs * n_train / img_s[c] * (1 + AUG_SHARE[c])
                + epochs * n_val / (img_s[c] * EVAL_SPEEDUP[c])) / 3600 for c in RANGE}


def cache_hours(n_images: int) -> dict[str, float]:
    """Hours to decode ``n_images`` once into the image cache, per case."""
    return {c: n_images / DECODE_IMG_S[c] / 3600 for c in RANGE}


# ----------------------------------------------------------------------------- campaigns that fit

RESOLUTIONS = (224, 192, 160, 128, 96, 64, 32)  # the papers train at 224
EPOCHS = (300, 200, 150, 100, 50)  # all three papers train 300 epochs
SEEDS = (5, 3)  # method and baseline: 3 at least; 5 where the day allows (a tighter interval)


@dataclass(frozen=True)
class Variant:
    role: str  # method, baseline, ablation
    label: str
    parent: str  # the paper recipe it derives from
    model: str
    sets: tuple[str, ...] = ()  # further --set values


@dataclass(frozen=True)
class Campaign:
    paper: str
    dataset: Dataset
    res: int
    epochs: int
    variants: tuple[tuple[Variant, int], ...]  # (variant, seeds)
    hours: dict  # per case of RANGE, all runs plus the cache

    @property
    def faithfulness(self) -> tuple:
        """Larger is closer to the paper, compared in the fidelity order: model size, resolution,
        schedule, seeds, then data."""
        plan = PAPERS[self.paper].plan
        tier = [m for m, _ in plan.tiers].index(self.variants[0][0].model)
        return (-tier, self.res, self.epochs, sum(s for _, s in self.variants),
                -[d.name for d in DATASETS].index(self.dataset.name))


def _resolutions(d: Dataset) -> tuple[int, ...]:
    """224 px and below; a dataset of small images also at its native size (upsampling is allowed)."""
    return tuple(r for r in RESOLUTIONS if r >= d.native or r == d.native) if d.native else tuple(
        r for r in RESOLUTIONS if r >= 96)


def _campaign(paper: PaperPlan, tier: tuple[str, str], d: Dataset, res: int, epochs: int, seeds: int,
              ablation_seeds: int, gpu: str) -> Campaign:
    variants = [(Variant("method", paper.method[0], paper.method[1], tier[0], paper.method[2]), seeds),
                (Variant("baseline", paper.baseline[0], paper.baseline[1], tier[1], paper.baseline[2]), seeds)]
    if paper.ablation is not None and ablation_seeds:
        variants.append((Variant("ablation", paper.ablation[0], paper.ablation[1], tier[0], paper.ablation[2]),
                         ablation_seeds))
    hours = {c: 0.0 for c in RANGE}
    for v, seeds in variants:
        h = run_hours(v.model, res, epochs, d.n_train, d.n_val, gpu)
        for c in RANGE:
            hours[c] += seeds * h[c]
    for c, h in cache_hours(d.n_train + d.n_val).items():
        hours[c] += h
    return Campaign(paper.paper, d, res, epochs, tuple(variants), hours)


class BudgetError(ValueError):
    """No campaign with 3 seeds each of method and baseline fits the budget."""


@functools.lru_cache(maxsize=None)
def candidates(paper: str, dataset: str | None = None, gpu: str = "L4") -> tuple[Campaign, ...]:
    """Every campaign the planner weighs for ``paper`` (on ``dataset`` only, if given): each model tier,
    dataset, resolution, schedule and seed count, computed once per (paper, dataset, gpu).

    Raises:
        KeyError: an unknown paper or dataset.
    """
    plan = PAPERS[paper].plan
    datasets = [d for d in DATASETS if dataset in (None, d.name, d.subset)]
    if not datasets:
        raise KeyError(dataset)
    return tuple(_campaign(plan, tier, d, res, epochs, seeds, abl, gpu)
                 for tier in plan.tiers for d in datasets for res in _resolutions(d) for epochs in EPOCHS
                 for seeds in SEEDS for abl in ((seeds, 1) if plan.ablation else (0,)))


def fit(paper: str, hours: float, dataset: str | None = None, gpu: str = "L4") -> Campaign:
    """The most faithful campaign for ``paper`` whose likely device-hours fit ``hours``: searched in the
    fidelity order (``Campaign.faithfulness``), so a larger budget never gives a less faithful one.
    Method and baseline get 3 seeds at least (5 if they fit); the ablation as many, else 1.

    Raises:
        KeyError: an unknown paper or dataset.
        BudgetError: not even the smallest model, resolution and schedule on the cheapest dataset
            fits with three seeds; the message gives what the cheapest campaign needs.
    """
    everything = candidates(paper, dataset, gpu)
    fitting = [c for c in everything if c.hours["likely"] <= hours]
    if fitting:
        return max(fitting, key=lambda c: c.faithfulness)  # the first of equals, as the search order gives
    cheapest = min(everything, key=lambda c: c.hours["likely"])
    need = math.ceil(cheapest.hours["likely"] * 100) / 100  # rounded up: --fit with this number fits
    raise BudgetError(
        f"{hours:g} device-hours cannot hold {min(SEEDS)} seeds each of {PAPERS[paper].plan.paper_models}: the cheapest "
        f"campaign ({cheapest.variants[0][0].model} at {cheapest.res} px, {cheapest.epochs} epochs on "
        f"{cheapest.dataset.name}) needs {need:g} h (likely); give it at least --fit {need:g} rather than fewer seeds")


def next_step_up(c: Campaign, dataset: str | None = None, gpu: str = "L4") -> Campaign | None:
    """The cheapest campaign more faithful than ``c`` (what a larger budget would buy next), or None."""
    better = [x for x in candidates(c.paper, dataset, gpu) if x.faithfulness > c.faithfulness]
    return min(better, key=lambda x: x.hours["likely"]) if better else None
