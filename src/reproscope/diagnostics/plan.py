"""`reproscope plan`: time real training steps of a recipe here, and budget a run.

The steps are real (the recipe's model, optimizer, precision and batch through the trainer's own
step) on random uint8 images of the recipe's size, so no dataset is needed. The L4 figure is an
estimate, not a measurement: L4 dense peak for the recipe's precision x an assumed MFU, divided by
the training FLOPs per image (3 x forward, torch's FLOP counter).
"""

from __future__ import annotations

import tempfile
import time

import torch

from ..config import Recipe, apply_overrides
from ..hardware import KNOWN_GPUS, peak_flops
from ..instrument import standard_callbacks
from ..runtime import resolve_device, synchronize
from ..train.data import ArrayDataset
from ..train.trainer import Trainer
from .models_table import count_flops_of_copy

# images in the standard training split of each dataset (used for epochs per budget)
TRAIN_IMAGES = {"imagenette": 9469, "tiny-imagenet": 100_000, "cifar10": 50_000, "cifar100": 50_000,
                "imagenet": 1_281_167, "imagenet-100": 126_689}
NUM_CLASSES = {"imagenette": 10, "tiny-imagenet": 200, "cifar10": 10, "cifar100": 100, "imagenet": 1000,
               "imagenet-100": 100, "shapes10": 10}
ASSUMED_L4_MFU = 0.35


def _synthetic(recipe: Recipe, n: int) -> tuple[ArrayDataset, ArrayDataset]:
    k = recipe.data.num_classes or NUM_CLASSES.get(recipe.data.dataset, 10)
    res = recipe.data.cache_res or round(recipe.data.img_size / recipe.data.eval_crop_pct)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % k
    classes = tuple(str(i) for i in range(k))
    return ArrayDataset(x, y, classes, "synthetic/train"), ArrayDataset(x[:8], y[:8], classes, "synthetic/val")


def time_steps(recipe: Recipe, steps: int = 5, warmup: int = 2, model_factory=None) -> dict:
    # probes off: the plan times the bare training step (instrument_overhead.py measures probes)
    r = apply_overrides(recipe, {"run.progress": False, "instrument.enabled": False})
    note = ""
    if resolve_device(r.precision.device).type == "cpu" and r.precision.amp in ("bf16", "fp16"):
        # CPU autocast in bf16/fp16 is emulated on most CPUs and far slower than fp32
        r = apply_overrides(r, {"precision.amp": "fp32"})
        note = f"timed in fp32: the recipe's {recipe.precision.amp} autocast is not representative on a CPU"
    n = r.data.batch_size * r.optim.accum_steps
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(r, d, tensorboard=False, datasets=_synthetic(r, n), model_factory=model_factory,
                     callbacks=standard_callbacks(r))
        batches = [tr.train_loader.make_batch(torch.arange(r.data.batch_size), i) for i in range(r.optim.accum_steps)]
        for _ in range(warmup):
            tr.train_step(batches)
        synchronize(tr.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step(batches)
        synchronize(tr.device)
        dt = (time.perf_counter() - t0) / steps
        fwd = count_flops_of_copy(tr.orig_model, r.data.img_size)
    return {"img_per_s": n / dt, "step_s": dt, "fwd_flops_per_img": fwd, "device": str(tr.device),
            "batch": n, "note": note}


def plan(recipe: Recipe, hours: float, steps: int = 5, model_factory=None) -> dict:
    """Time real training steps of the recipe (or of ``model_factory``'s model) here, and the epochs
    that fit in ``hours``; an L4 estimate from the counted FLOPs and an assumed MFU."""
    t = time_steps(recipe, steps, model_factory=model_factory)
    n_train = recipe.data.train_size if recipe.data.dataset == "shapes10" else TRAIN_IMAGES.get(recipe.data.dataset)
    l4 = KNOWN_GPUS["L4"]
    peak = peak_flops(l4, recipe.precision.amp if recipe.precision.amp != "auto" else "bf16", recipe.precision.tf32)
    l4_img_s = peak * ASSUMED_L4_MFU / (3 * t["fwd_flops_per_img"])
    out = {**t, "hours": hours, "train_images": n_train, "l4_img_per_s_estimate": l4_img_s,
           "l4_peak_flops": peak, "assumed_mfu": ASSUMED_L4_MFU}
    if n_train:
        out["epochs_here"] = t["img_per_s"] * hours * 3600 / n_train
        out["epochs_l4_estimate"] = l4_img_s * hours * 3600 / n_train
        out["recipe_epochs"] = recipe.sched.epochs
        out["l4_hours_for_recipe_estimate"] = recipe.sched.epochs * n_train / l4_img_s / 3600
    return out


def print_plan(recipe: Recipe, p: dict, model_label: str | None = None) -> None:
    print(f"recipe {recipe.name}: {model_label or recipe.model.name} at {recipe.data.img_size} px, batch {p['batch']}, "
          f"precision {recipe.precision.amp}")
    print(f"measured here ({p['device']}): {p['img_per_s']:.1f} img/s ({p['step_s'] * 1000:.0f} ms per step)"
          + (f"; {p['note']}" if p["note"] else ""))
    print(f"training FLOPs per image: {3 * p['fwd_flops_per_img'] / 1e9:.2f} GFLOP (3 x forward)")
    if p.get("train_images"):
        print(f"in {p['hours']:g} h here: {p['epochs_here']:.1f} epochs of {p['train_images']:,} images "
              f"(recipe asks for {p['recipe_epochs']})")
    print(f"L4 ESTIMATE (not measured): {p['l4_img_per_s_estimate']:.0f} img/s = L4 dense peak "
          f"{p['l4_peak_flops'] / 1e12:.0f} TFLOP/s x assumed MFU {p['assumed_mfu']:.0%} / training FLOPs per image")
    if p.get("train_images"):
        print(f"  -> {p['epochs_l4_estimate']:.1f} epochs in {p['hours']:g} h; the recipe's "
              f"{p['recipe_epochs']} epochs would take about {p['l4_hours_for_recipe_estimate']:.1f} L4-hours")
