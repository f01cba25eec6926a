"""`reproscope plan`: time real training steps of a recipe here, and budget a run.

The steps are real (the recipe's model, optimizer, precision and batch through the trainer's own
step) on random uint8 images of the recipe's size, so no dataset is needed. The L4 figures are
estimates, not measurements, always printed as a range (optimistic / likely / pessimistic): for our
model families from published throughput scaled to the L4 (``budget.py`` writes the rule down), for
any other model from an assumed MFU range. ``plan --fit HOURS --paper P`` proposes the most faithful
campaign that fits a budget (``budget.fit``).
"""

from __future__ import annotations

import tempfile
import time

import torch

from ..config import Recipe, apply_overrides
from ..data.datasets import ArrayDataset
from ..hardware import KNOWN_GPUS, peak_flops
from ..instrument import standard_callbacks
from ..model.counting import count_flops_of_copy
from ..papers import PAPERS
from ..runtime import resolve_device, synchronize
from ..train.trainer import Trainer
from .budget import DATASETS

# images in the standard training split of each dataset (used for epochs per budget)
TRAIN_IMAGES = {"imagenet": 1_281_167, **{d.name: d.n_train for d in DATASETS}}
VAL_IMAGES = {"imagenet": 50_000, **{d.name: d.n_val for d in DATASETS}}
NUM_CLASSES = {"imagenette": 10, "tiny-imagenet": 200, "cifar10": 10, "cifar100": 100, "imagenet": 1000,
               "imagenet-100": 100, "shapes10": 10}


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


# MFU range for a model with no evidence in budget.EVIDENCE (a user's own model): typical of mixed-
# precision vision training on one GPU; the range is deliberately wide
ASSUMED_MFU = {"optimistic": 0.50, "likely": 0.35, "pessimistic": 0.20}
# ... plus a fixed cost per optimizer step (kernel launches, the optimizer, Python), which dominates a
# small model: an eager PyTorch step launches hundreds of kernels at ~10 us each
STEP_OVERHEAD_S = {"optimistic": 0.005, "likely": 0.015, "pessimistic": 0.040}


def plan(recipe: Recipe, hours: float, steps: int = 5, model_factory=None) -> dict:
    """Time real training steps of the recipe (or of ``model_factory``'s model) here, and the epochs
    that fit in ``hours``; an L4 estimate as a range (``budget``: from published evidence for our
    model families, else ``ASSUMED_MFU``), with evaluation, augmentation and the image cache."""
    from .budget import AUG_SHARE, EVAL_SPEEDUP, FAMILY, RANGE, cache_hours, train_img_per_s
    print(f"timing {steps} training steps of {recipe.model.name if model_factory is None else 'your model'} here "
          f"(after building it and {2} warm-up steps)...", flush=True)
    t = time_steps(recipe, steps, model_factory=model_factory)
    n_train = recipe.data.train_size if recipe.data.dataset == "shapes10" else TRAIN_IMAGES.get(recipe.data.dataset)
    n_val = recipe.data.val_size if recipe.data.dataset == "shapes10" else VAL_IMAGES.get(recipe.data.dataset, 0)
    l4 = KNOWN_GPUS["L4"]
    peak = peak_flops(l4, recipe.precision.amp if recipe.precision.amp != "auto" else "bf16", recipe.precision.tf32)
    if model_factory is None and recipe.model.name in FAMILY:
        l4_img_s = train_img_per_s(recipe.model.name, recipe.data.img_size)
        basis = "timm's published RTX 3090 training throughput for the family, scaled to the L4 (budget.py)"
    else:
        b = t["batch"]
        l4_img_s = {c: b / (b * 3 * t["fwd_flops_per_img"] / (peak * ASSUMED_MFU[c]) + STEP_OVERHEAD_S[c])
                    for c in RANGE}
        basis = ("no published evidence for this model: MFU " + " / ".join(f"{ASSUMED_MFU[c]:.0%}" for c in RANGE)
                 + " and " + " / ".join(f"{STEP_OVERHEAD_S[c] * 1000:.0f}" for c in RANGE) + " ms per step assumed")
    out = {**t, "hours": hours, "train_images": n_train, "l4_img_per_s_estimate": l4_img_s, "l4_peak_flops": peak,
           "l4_basis": basis}
    if n_train:
        out["epochs_here"] = t["img_per_s"] * hours * 3600 / n_train
        out["recipe_epochs"] = recipe.sched.epochs
        cache = cache_hours(n_train + n_val) if recipe.data.dataset != "shapes10" else {c: 0.0 for c in RANGE}
        per_epoch = {c: (n_train * (1 + AUG_SHARE[c]) + n_val / EVAL_SPEEDUP[c]) / l4_img_s[c] / 3600 for c in RANGE}
        out["l4_hours_for_recipe_estimate"] = {c: recipe.sched.epochs * per_epoch[c] + cache[c] for c in RANGE}
        out["epochs_l4_estimate"] = {c: max(0.0, hours - cache[c]) / per_epoch[c] for c in RANGE}
    return out


def print_plan(recipe: Recipe, p: dict, model_label: str | None = None) -> None:
    from .budget import RANGE
    print(f"recipe {recipe.name}: {model_label or recipe.model.name} at {recipe.data.img_size} px, batch {p['batch']}, "
          f"precision {recipe.precision.amp}")
    print(f"measured here ({p['device']}): {p['img_per_s']:.1f} img/s ({p['step_s'] * 1000:.0f} ms per step)"
          + (f"; {p['note']}" if p["note"] else ""))
    print(f"training FLOPs per image: {3 * p['fwd_flops_per_img'] / 1e9:.2f} GFLOP (3 x forward)")
    if p.get("train_images"):
        print(f"in {p['hours']:g} h here: {p['epochs_here']:.1f} epochs of {p['train_images']:,} images "
              f"(recipe asks for {p['recipe_epochs']})")
    rng = " / ".join(f"{p['l4_img_per_s_estimate'][c]:,.0f}" for c in RANGE)
    print(f"L4 ESTIMATE (not measured), optimistic / likely / pessimistic: {rng} training img/s; basis: {p['l4_basis']}")
    if p.get("train_images"):
        print(f"  -> in {p['hours']:g} h: " + " / ".join(f"{p['epochs_l4_estimate'][c]:,.0f}" for c in RANGE)
              + f" epochs; the recipe's {p['recipe_epochs']} epochs take "
              + " / ".join(_duration(p['l4_hours_for_recipe_estimate'][c]) for c in RANGE)
              + " on an L4 (evaluation every epoch, augmentation and the image cache included)")


def _duration(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 0.1 else f"{hours * 60:.1f} min"


# ----------------------------------------------------------------------------- plan --fit

def campaign_runs(c) -> list[tuple[str, list[str], str]]:
    """(recipe, --set values, label) per run of campaign ``c`` (``budget.Campaign``): the registered
    reduced recipe of each variant, with the campaign's resolution and schedule set where they differ."""
    from ..recipes import get_recipe, list_recipes, reduced_name
    from .budget import patch_for, stem_for
    registered = {r.name for r in list_recipes()}
    runs = []
    for v, seeds in c.variants:
        parent = get_recipe(v.parent)
        is_vit = v.model.startswith(("vit", "kat"))
        sets = []
        name = reduced_name(parent, v.model, c.dataset.subset)
        if name not in registered:  # a smaller tier: the quick recipe, else the paper model's day recipe
            name = reduced_name(parent, v.model, c.dataset.subset, "quick")
        if name not in registered:
            paper_model = PAPERS[c.paper].plan.tiers[0][0 if v.role != "baseline" else 1]
            name = reduced_name(parent, paper_model, c.dataset.subset)
            sets.append(f"model.name={v.model}")
        r = get_recipe(name)
        if r.data.img_size != c.res:
            sets.append(f"data.img_size={c.res}")
            patch = patch_for(c.res) if is_vit else stem_for(c.res)
            if patch != (r.model.patch_size or (16 if is_vit else 4)):
                sets.append(f"model.patch_size={patch}")
        if r.sched.epochs != c.epochs:
            sets += [f"sched.epochs={c.epochs}",
                     f"sched.warmup_epochs={round(parent.sched.warmup_epochs * c.epochs / parent.sched.epochs, 2):g}"]
        sets += list(v.sets)
        for seed in range(seeds):
            runs.append((name, [*sets, f"run.seed={seed}"], v.label))
    return runs


def campaign_script(c, hours: float) -> str:
    """A shell script of ``reproscope train`` commands for campaign ``c``, then the report."""
    from ..recipes import get_recipe
    root = get_recipe(campaign_runs(c)[0][0]).data.root
    lines = ["#!/bin/sh", f"# reproscope plan --fit {hours:g} --paper {c.paper} --dataset {c.dataset.name}",
             f"# likely {c.hours['likely']:.1f} L4-hours (optimistic {c.hours['optimistic']:.1f}, "
             f"pessimistic {c.hours['pessimistic']:.1f}); every run resumes where it stopped if you run this again",
             f"# run from the repository root: the data root {root} is relative to it (put {c.dataset.name} there, "
             f"or add --set data.root=PATH to each line; `reproscope train --download` fetches the public sets)",
             "set -e"]
    dirs = []
    for name, sets, _ in campaign_runs(c):
        rd = f"runs/{c.paper}-{c.dataset.subset}/{name}-" + "-".join(
            s.split("=")[0].split(".")[-1] + "_" + s.split("=")[1] for s in sets if not s.startswith("sched.warmup"))
        dirs.append(rd)
        lines.append(f"reproscope train --recipe {name} --run-dir {rd} --resume auto "
                     + " ".join(f"--set {s}" for s in sets))
    lines.append("reproscope report " + " ".join(dirs) + f" --out runs/{c.paper}-{c.dataset.subset}/report")
    return "\n".join(lines) + "\n"


def print_campaign(c, hours: float, dataset: str | None = None) -> None:
    from ..config import apply_overrides
    from ..recipes import deviation_log, get_recipe
    from .budget import RANGE
    plan_ = PAPERS[c.paper].plan
    print(f"plan --fit {hours:g} --paper {c.paper}: the most faithful campaign whose LIKELY L4 time fits "
          f"{hours:g} h ({plan_.paper_models}; searched in the order model size, resolution, schedule, seeds, data)")
    print(f"dataset {c.dataset.name} ({c.dataset.n_train:,} train / {c.dataset.n_val:,} val images), {c.res} px, "
          f"{c.epochs} epochs")
    print(f"{'variant':56s} {'model':16s} seeds  L4-hours per run (optimistic / likely / pessimistic)")
    from .budget import run_hours
    for v, seeds in c.variants:
        h = run_hours(v.model, c.res, c.epochs, c.dataset.n_train, c.dataset.n_val)
        print(f"{v.role + ': ' + v.label:56s} {v.model:16s} {seeds:5d}  "
              + " / ".join(f"{h[k]:.2f}" for k in RANGE))
    if plan_.ablation is None:
        print("(no ablation: none the claim hinges on is implemented for this paper)")
    elif c.variants[-1][1] < c.variants[0][1]:
        print(f"(the ablation gets {c.variants[-1][1]} seed: as many as the others would not fit)")
    print("total device-hours (all runs, evaluation every epoch, augmentation, the image cache built once): "
          + " / ".join(f"{c.hours[k]:.1f}" for k in RANGE) + " (optimistic / likely / pessimistic)")
    from .budget import next_step_up
    up = next_step_up(c, dataset)
    left = hours - c.hours["likely"]
    if up is not None and left > 0.05 * hours:
        print(f"{left:.1f} of the {hours:g} h stay unused (likely): the next more faithful campaign ({up.dataset.name}, "
              f"{up.res} px, {up.epochs} epochs, seeds {'/'.join(str(s) for _, s in up.variants)}) needs "
              f"{up.hours['likely']:.1f} h")
    print("what it gives up against the paper (each run's deviation log):")
    shown = set()
    ablation_keys = {s.split("=")[0]: v.label for v, _ in c.variants for s in v.sets}
    for name, sets, _ in campaign_runs(c):
        sets = [s for s in sets if not s.startswith("run.seed")]
        key = (name, tuple(sets))
        if key in shown:
            continue
        shown.add(key)
        r = apply_overrides(get_recipe(name), sets)
        print(f"  {name}" + (" " + " ".join(f"--set {s}" for s in sets) if sets else ""))
        for row in deviation_log(r):
            reason = row["reason"]
            if reason.startswith("command-line override"):
                reason = (f"the ablation: {ablation_keys[row['key']]}" if row["key"] in ablation_keys
                          else f"plan --fit {hours:g}: what the budget allows")
            print(f"    {row['key']:22s} {row['parent']!r} -> {row['value']!r}: {reason}")
    print("the estimate's assumptions and evidence: reproscope/diagnostics/budget.py (timm's RTX 3090 training "
          "benchmark scaled to the L4 by peak FLOP/s and memory bandwidth)")
