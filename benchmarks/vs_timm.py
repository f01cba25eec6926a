"""Speed side by side with timm: model + optimizer step on synthetic data, and end to end on Imagenette.

    python benchmarks/vs_timm.py [--models vit_small,vit_base,convnext_tiny,mambaout_femto,vit_tiny_p8_64]
                                 [--batch 128] [--steps 20] [--rounds 5] [--compile both|on|off]
                                 [--end-to-end] [--max-batch] [--json out.json]
    python benchmarks/vs_timm.py --tiny      # CPU smoke test: tiny models, a few steps (tests/test_benchmarks.py)

Step benchmark, one process, A/B alternating: for each model, timm's model (``timm.create_model``),
timm's optimizer factory and the step timm's train.py performs (zero_grad, bf16 autocast forward and
loss, backward, optimizer step; channels_last for conv nets), against reproscope's Trainer.train_step
on our model with the same recipe settings; each with compile off and on. Synthetic data already on
the device. The configurations run in ``--rounds`` rounds of ``--steps`` steps, interleaved so that
machine drift hits all alike; img/s is the median over rounds. MFU = training FLOPs (3 x forward,
torch's FLOP counter) x img/s / the device's dense peak (``reproscope/hardware.py``).

End to end (``--end-to-end``): timm's own pipeline (ImageDataset, create_loader with JPEG decoding
in worker processes and its RandAugment/RandomErasing transforms) feeding timm's step, against
reproscope's cached uint8 path with augmentation on the device feeding our step; epoch time and the
fraction of time spent waiting for data.

Prints tables and writes the raw numbers as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import torch
import torch.nn as nn

from reproscope.config import apply_overrides
from reproscope.model.counting import count_flops_of_copy
from reproscope.hardware import lookup, peak_flops
from reproscope.model import create_model
from reproscope.recipes import get_recipe
from reproscope.data.datasets import ArrayDataset
from reproscope.runtime import synchronize
from reproscope.instrument import standard_callbacks
from reproscope.train.trainer import Trainer

# name -> (our model, timm model, img size, constructor kwargs shared by both)
MODELS = {
    "vit_small": ("vit_small", "vit_small_patch16_224", 224, {}),
    "vit_base": ("vit_base", "vit_base_patch16_224", 224, {}),
    "convnext_tiny": ("convnext_tiny", "convnext_tiny", 224, {}),
    "mambaout_femto": ("mambaout_femto", "mambaout_femto", 224, {}),
    "vit_tiny_p8_64": ("vit_tiny", "vit_tiny_patch16_224", 64, {"patch_size": 8, "img_size": 64}),
}
TINY = {"vit_tiny_p8_32": ("vit_tiny", "vit_tiny_patch16_224", 32, {"patch_size": 8, "img_size": 32})}


def is_conv(m: nn.Module) -> bool:
    return sum(isinstance(x, nn.Conv2d) for x in m.modules()) > 1


class TimmStep:
    """The step of timm's train.py: zero_grad, autocast forward + loss, backward, optimizer step."""

    def __init__(self, timm_name: str, kw: dict, num_classes: int, device, amp, compile_: bool, lr: float):
        import timm
        import timm.optim
        kw = dict(kw)
        if "patch_size" in kw and "vit" not in timm_name:
            kw.pop("patch_size")
        self.model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kw).to(device)
        self.channels_last = device.type == "cuda" and is_conv(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = timm.optim.create_optimizer_v2(self.model, "adamw", lr=lr, weight_decay=0.05)
        self.loss = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.fwd = torch.compile(self.model) if compile_ else self.model
        self.amp = amp
        self.device = device

    def step(self, x, y) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext():
            loss = self.loss(self.fwd(x), y)
        loss.backward()
        self.opt.step()


class OurStep:
    """reproscope's Trainer.train_step on our model, instrumentation off (its overhead is measured apart)."""

    def __init__(self, ours: str, kw: dict, img: int, batch: int, num_classes: int, device, compile_: bool,
                 lr: float):
        r = apply_overrides(get_recipe("quickstart"), {
            "model.name": ours, "model.patch_size": kw.get("patch_size", 0), "data.img_size": img,
            "data.batch_size": batch, "data.num_classes": num_classes, "optim.lr": lr,
            "precision.device": device.type, "precision.amp": "auto", "precision.compile": compile_,
            "instrument.enabled": False, "run.progress": False, "reg.label_smoothing": 0.1})
        # a placeholder the Trainer is built on (the timed steps get their own batches); not constant, so
        # its channel std is not 0
        tiny = ArrayDataset(torch.randint(0, 256, (batch, 3, img, img), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(0)),
                            torch.zeros(batch, dtype=torch.long),
                            tuple(str(i) for i in range(num_classes)), "synthetic")
        self._tmp = tempfile.TemporaryDirectory()
        self.tr = Trainer(r, self._tmp.name, tensorboard=False, datasets=(tiny, tiny), callbacks=standard_callbacks(r))
        self.tr.start()  # precision.compile is set above
        self.model = self.tr.orig_model
        self.channels_last = self.tr.channels_last

    def step(self, x, y) -> None:
        self.tr.train_step([(x, y)])


def synthetic(batch, img, num_classes, device, channels_last):
    x = torch.randn(batch, 3, img, img, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, num_classes, (batch,), device=device)


def bench_steps(name: str, spec, batch: int, steps: int, rounds: int, compiles: list[bool], device, amp) -> list[dict]:
    ours, timm_name, img, kw = spec
    k = 1000
    runners = {}
    for c in compiles:
        runners[("timm", c)] = TimmStep(timm_name, kw, k, device, amp, c, 1e-3)
        runners[("ours", c)] = OurStep(ours, kw, img, batch, k, device, c, 1e-3)
    data = {key: synthetic(batch, img, k, device, r.channels_last) for key, r in runners.items()}
    for key, r in runners.items():  # warm-up (and compile)
        for _ in range(3):
            r.step(*data[key])
    synchronize(device)
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, r in runners.items():
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                r.step(*data[key])
            synchronize(device)
            times[key].append(time.perf_counter() - t0)
    flops = 3 * count_flops_of_copy(create_model(ours, num_classes=k, **kw), img)
    gpu = lookup(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    peak = peak_flops(gpu, "bf16") if gpu else None
    rows = []
    for (side, c), ts in times.items():
        ips = batch * steps / statistics.median(ts)
        rows.append({"model": name, "side": side, "compile": c, "batch": batch, "img_per_s": ips,
                     "mfu": flops * ips / peak if peak else None, "train_flops_per_img": flops})
    for c in compiles:
        t = next(r for r in rows if r["side"] == "timm" and r["compile"] == c)
        o = next(r for r in rows if r["side"] == "ours" and r["compile"] == c)
        o["ratio_vs_timm_same_compile"] = o["img_per_s"] / t["img_per_s"]
        eager = next((r for r in rows if r["side"] == "timm" and not r["compile"]), None)
        if eager:
            o["ratio_vs_timm_eager"] = o["img_per_s"] / eager["img_per_s"]
    return rows


def largest_batch(make, img: int, device, start: int = 64, limit: int = 4096) -> int:
    """Largest power-of-two batch whose step runs without running out of memory."""
    best, b = 0, start
    while b <= limit:
        try:
            r = make(b)
            r.step(*synthetic(b, img, 1000, device, r.channels_last))
            synchronize(device)
            best = b
            del r
            b *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return best


def end_to_end(root: str, img: int, batch: int, steps: int, workers: int, device, amp) -> list[dict]:
    """timm's loader + timm's step vs our cached device path + our step, ViT-S at ``img`` px."""
    import timm.data
    rows = []
    ds = timm.data.ImageDataset(f"{root}/train")
    loader = timm.data.create_loader(ds, input_size=(3, img, img), batch_size=batch, is_training=True,
                                     use_prefetcher=device.type == "cuda", num_workers=workers, device=device,
                                     auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, interpolation="bicubic",
                                     persistent_workers=False)
    t = TimmStep("vit_small_patch16_224", {"img_size": img}, 10, device, amp, False, 1e-3)
    rows.append(_timed_loop("timm pipeline", iter(loader), t, steps, device))
    r = apply_overrides(get_recipe("dyt-vit_tiny_ln-imagenette-quick"), {
        "model.name": "vit_small", "data.root": root, "data.img_size": img, "data.batch_size": batch,
        "instrument.enabled": False, "run.progress": False, "precision.device": device.type})
    if device.type != "cuda":
        r = apply_overrides(r, {"precision.amp": "fp32"})
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(r, d, tensorboard=False)

        class _S:
            def step(self, x, y):
                tr.train_step([(x, y)])
        rows.append(_timed_loop("reproscope cached device path", tr.train_loader.epoch(0), _S(), steps, device))
    rows[1]["ratio_vs_timm"] = rows[0]["s_per_step"] / rows[1]["s_per_step"]
    return rows


def _timed_loop(label, batches, stepper, steps, device) -> dict:
    x, y = next(batches)
    stepper.step(x.to(device), y.to(device))  # warm-up
    synchronize(device)
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        tw = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        synchronize(device)
        wait += time.perf_counter() - tw
        stepper.step(x, y)
    synchronize(device)
    total = time.perf_counter() - t0
    return {"pipeline": label, "s_per_step": total / steps, "data_wait_frac": wait / total,
            "img_per_s": steps * x.shape[0] / total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", default="both", choices=("both", "on", "off"))
    ap.add_argument("--max-batch", action="store_true", help="also find the largest batch that fits, per side")
    ap.add_argument("--end-to-end", action="store_true")
    ap.add_argument("--data-root", default="../shared/datasets/imagenette")
    ap.add_argument("--e2e-img", type=int, default=160)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, few steps")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    models = TINY if args.tiny else {m: MODELS[m] for m in args.models.split(",")}
    if args.tiny:
        args.batch, args.steps, args.rounds = 8, 2, 2
    compiles = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    if args.tiny and args.compile == "both":
        compiles = [False]
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "timm": __import__("timm").__version__, "argv": sys.argv}
    out = {"env": env, "steps": [], "max_batch": [], "end_to_end": []}
    print(f"device {env['device']}, torch {env['torch']}, timm {env['timm']}")
    for name, spec in models.items():
        out["steps"] += bench_steps(name, spec, args.batch, args.steps, args.rounds, compiles, device, amp)
        if args.max_batch:
            ours, timm_name, img, kw = spec
            out["max_batch"].append({
                "model": name,
                "timm": largest_batch(lambda b: TimmStep(timm_name, kw, 1000, device, amp, False, 1e-3), img, device),
                "ours": largest_batch(lambda b: OurStep(ours, kw, img, b, 1000, device, False, 1e-3), img, device)})
    print("\n| model | side | compile | batch | img/s | MFU | ours / timm (same compile) | ours / timm eager |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out["steps"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        same = f"{r['ratio_vs_timm_same_compile']:.2f}x" if "ratio_vs_timm_same_compile" in r else "-"
        eager = f"{r['ratio_vs_timm_eager']:.2f}x" if "ratio_vs_timm_eager" in r else "-"
        print(f"| {r['model']} | {r['side']} | {'on' if r['compile'] else 'off'} | {r['batch']} "
              f"| {r['img_per_s']:,.0f} | {mfu} | {same} | {eager} |")
    for m in out["max_batch"]:
        print(f"largest batch {m['model']}: timm {m['timm']}, ours {m['ours']}")
    if args.end_to_end:
        out["end_to_end"] = end_to_end(args.data_root, args.e2e_img, args.batch, args.steps, args.workers, device, amp)
        print("\n| pipeline | s/step | img/s | data wait | speed-up |\n|---|---|---|---|---|")
        for r in out["end_to_end"]:
            speed = f"{r['ratio_vs_timm']:.2f}x" if "ratio_vs_timm" in r else "-"
            print(f"| {r['pipeline']} | {r['s_per_step']:.4f} | {r['img_per_s']:,.0f} "
                  f"| {100 * r['data_wait_frac']:.1f}% | {speed} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
