"""Data path vs training step: is the accelerator waiting for data?

    python benchmarks/data_throughput.py [--recipe dyt-vit_tiny-imagenette-quick] [--set KEY=VALUE ...]
                                         [--steps 20] [--decode-images 2000]

Prints, for the same device, model and batch:
  - img/s of the data path alone (cached uint8 -> batched augmentation on the device);
  - img/s of the training step alone (one pre-made batch, repeated);
  - img/s of training fed by the data path, and the fraction of step time spent waiting for data;
  - an epoch of uint8 images gathered from the cache vs decoded from every JPEG (PIL with draft
    mode, resize, crop) with as many threads as cores, as a per-epoch JPEG loader would; no
    augmentation on either side, so the row compares loading alone.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from reproscope.config import apply_overrides
from reproscope.recipes import get_recipe
from reproscope.data.folders import decode_image
from reproscope.train.trainer import Trainer
from reproscope.runtime import synchronize as sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="dyt-vit_tiny-imagenette-quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--decode-images", type=int, default=2000, help="JPEGs decoded for the per-epoch-decode baseline")
    args = ap.parse_args()
    # probes off: this measures the data path and the bare step (instrument_overhead.py measures probes)
    r = apply_overrides(get_recipe(args.recipe), ["run.progress=false", "instrument.enabled=false"] + args.overrides)
    if not torch.cuda.is_available() and r.precision.amp in ("bf16", "fp16"):
        r = apply_overrides(r, {"precision.amp": "fp32"})  # CPU autocast is emulated: time fp32
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(r, d, tensorboard=False)
    dev, L, steps = tr.device, tr.train_loader, args.steps
    bs = r.data.batch_size
    it = L.epoch(0)
    next(it)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
    sync(dev)
    data_s = (time.perf_counter() - t0) / steps

    batch = L.make_batch(torch.arange(bs), 0)
    for _ in range(2):
        tr.train_step([batch])
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step([batch])
    sync(dev)
    step_s = (time.perf_counter() - t0) / steps

    wait = 0.0
    it = L.epoch(1)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        tw = time.perf_counter()
        b = next(it)
        sync(dev)
        wait += time.perf_counter() - tw
        tr.train_step([b])
    sync(dev)
    fed_s = (time.perf_counter() - t0) / steps

    # one epoch of uint8 images: gathered from the cache vs decoded from JPEG (no augmentation either way)
    from reproscope.data.datasets import batch_indices
    t0 = time.perf_counter()
    n = 0
    for idx in batch_indices(len(L.ds), bs, 0, 2):
        xb, _ = L.raw_batch(idx)
        n += xb.shape[0]
    sync(dev)
    cache_img_s = n / (time.perf_counter() - t0)
    decode_img_s = None
    from reproscope.data import folders
    if r.data.dataset != "shapes10":
        root = folders.Path(r.data.root)
        files = folders.imagenette(root) if r.data.dataset == "imagenette" else folders.imagefolder(root, r.data.dataset)
        paths = files[0].paths[: args.decode_images]
        res = r.data.cache_res or round(r.data.img_size / r.data.eval_crop_pct)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(lambda p: decode_image(p, res), paths))
        decode_img_s = len(paths) / (time.perf_counter() - t0)

    # RandAugment alone on one cached uint8 batch: batched (ours) vs torchvision's per-sample loop
    from reproscope.data.augment import rand_augment, rand_augment_reference
    raw, _ = L.raw_batch(torch.arange(bs))
    ra_rows = []
    for label, fn in (("batched", rand_augment), ("per-sample torchvision loop", rand_augment_reference)):
        fn(raw, 2, 9, 0.5)
        sync(dev)
        t0 = time.perf_counter()
        reps = max(1, steps // 4)
        for _ in range(reps):
            fn(raw, 2, 9, 0.5)
        sync(dev)
        ra_rows.append((f"RandAugment m9 alone, {label} (img/s)", reps * bs / (time.perf_counter() - t0)))

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = [("device", name), ("recipe", f"{r.name}, {r.model.name} at {r.data.img_size} px, batch {bs}, "
                                         f"amp {r.precision.amp}"),
            ("data path alone, with the recipe's augmentation (img/s)", f"{bs / data_s:,.0f}"),
            ("training step alone (img/s)", f"{bs / step_s:,.0f}"),
            ("training fed by the data path (img/s)", f"{bs / fed_s:,.0f}"),
            ("data wait (% of step time)", f"{100 * wait / (fed_s * steps):.1f}"),
            ("epoch of uint8 images from the cache (img/s)", f"{cache_img_s:,.0f}")]
    rows += [(k, f"{v:,.0f}") for k, v in ra_rows]
    rows.append(("RandAugment speed-up, batched vs loop", f"{ra_rows[0][1] / ra_rows[1][1]:.1f}x"))
    if decode_img_s:
        rows += [(f"epoch of uint8 images decoding JPEGs, {os.cpu_count()} threads (img/s)", f"{decode_img_s:,.0f}"),
                 ("cache speed-up per epoch", f"{cache_img_s / decode_img_s:.1f}x")]
    print("\n| quantity | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
