"""Your own model and your own 50-line loop, watched by reproscope and audited against a recipe.

    python examples/own_loop.py            # ~30 s on 2 CPU cores; writes runs/own-loop/
    reproscope audit runs/own-loop         # the loop against the recipe, as a table
    python examples/own_loop.py --mistakes # the same loop with three classic loop mistakes planted:
                                           # decay on every parameter, no warmup, evaluation in train mode

A small CNN written here (not a reproscope model) trains on the built-in shapes10 data with a plain
PyTorch loop that follows the ``quickstart`` recipe's optimizer (AdamW, no weight decay on 1-D
parameters), schedule (linear warmup for one epoch, then cosine per step) and batch, for 3 of its 20
epochs. ``reproscope.watch`` adds the Trainer's probes (stats.jsonl, TensorBoard), loss-spike events
and the NaN/Inf tripwire with a replayable reproducer, and with ``against="quickstart"`` reads the loop
(optimizer groups, the lr curve, targets, evaluation mode) and writes every deviation from the
recipe to ``deviations.json``: here the 3 epochs, declared with their reason (``deviations=``), so the
audit logs them as a choice, not a mistake; the augmentation and sampler it never saw (no ``data=``)
are listed as not observed.
"""

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import reproscope
from reproscope.data.shapes import generate_shapes


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128))
        self.head = nn.Linear(128, num_classes)

    def forward(self, x):  # [B, 3, 32, 32] -> [B, num_classes]
        return self.head(self.features(x).mean((2, 3)))


def main() -> None:
    ap = argparse.ArgumentParser(description="your own loop, watched and audited against the quickstart recipe")
    ap.add_argument("--mistakes", action="store_true", help="plant three classic loop mistakes")
    ap.add_argument("--run-dir", default="runs/own-loop")
    args = ap.parse_args()
    torch.manual_seed(0)
    xtr, ytr = generate_shapes(4000, 32, seed=0)
    xva, yva = generate_shapes(1000, 32, seed=1)
    norm = lambda x: (x.float() / 255 - 0.5) / 0.25  # noqa: E731
    # the recipe warms up for 1 of its 20 epochs; a 3-epoch run keeps that share (5 %), not the epoch
    hparams = {"lr": 2e-3, "weight_decay": 0.05, "batch": 128, "epochs": 3, "warmup_share": 1 / 20, "min_lr": 1e-5}
    model = SmallCNN()
    decay = [p for p in model.parameters() if p.ndim > 1]  # no decay on biases and BatchNorm (1-D)
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    if args.mistakes:  # mistake 1: every parameter decayed, BatchNorm and biases included
        decay, no_decay = list(model.parameters()), []
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hparams["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hparams["lr"])
    steps_per_epoch = math.ceil(len(ytr) / hparams["batch"])
    total = hparams["epochs"] * steps_per_epoch
    warmup = 1 if args.mistakes else round(hparams["warmup_share"] * total)  # mistake 2: no warmup
    floor = hparams["min_lr"] / hparams["lr"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
    reasons = {"sched.epochs": "3 of the recipe's 20 epochs: a 30-second example on 2 CPU cores"}
    with reproscope.watch(model, opt, run_dir=args.run_dir, config=hparams, against="quickstart",
                          deviations=reasons) as w:
        for epoch in range(hparams["epochs"]):
            model.train()
            for idx in torch.randperm(len(ytr)).split(hparams["batch"]):
                x, y = norm(xtr[idx]), ytr[idx]
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                if w.step(loss, targets=y):  # False: non-finite; located and a reproducer written
                    opt.step()
                opt.zero_grad()
                sched.step()
            model.train(args.mistakes)  # mistake 3: evaluation in train mode (BatchNorm on batch statistics)
            with torch.no_grad():
                top1 = (model(norm(xva)).argmax(1) == yva).float().mean().item() * 100
            w.evaluate(top1=top1)
            print(f"epoch {epoch + 1}: val top-1 {top1:.1f}%")
    print(f"run directory: {args.run_dir} (stats.jsonl, metrics.jsonl, tb/, loop.json, deviations.json)")


if __name__ == "__main__":
    main()
