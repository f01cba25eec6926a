"""Your own model and your own 40-line loop, watched by reproscope.

    python examples/own_loop.py            # ~20 s on 2 CPU cores; writes runs/own-loop/

A small CNN written here (not a reproscope model) trains on the built-in shapes10 data with a plain
PyTorch loop. ``reproscope.watch`` adds the Trainer's probes (stats.jsonl, TensorBoard), loss-spike
events and the NaN/Inf tripwire with a replayable reproducer, without changing the loop.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import reproscope
from reproscope.train.shapes import generate_shapes


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
    torch.manual_seed(0)
    xtr, ytr = generate_shapes(4000, 32, seed=0)
    xva, yva = generate_shapes(1000, 32, seed=1)
    norm = lambda x: (x.float() / 255 - 0.5) / 0.25  # noqa: E731
    model = SmallCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    hparams = {"lr": 2e-3, "weight_decay": 0.05, "batch": 64, "epochs": 3}
    with reproscope.watch(model, opt, run_dir="runs/own-loop", config=hparams) as w:
        for epoch in range(hparams["epochs"]):
            model.train()
            for idx in torch.randperm(len(ytr)).split(hparams["batch"]):
                x, y = norm(xtr[idx]), ytr[idx]
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                if w.step(loss, targets=y):  # False: non-finite; located and a reproducer written
                    opt.step()
                opt.zero_grad()
            model.eval()
            with torch.no_grad():
                top1 = (model(norm(xva)).argmax(1) == yva).float().mean().item() * 100
            w.evaluate(top1=top1)
            print(f"epoch {epoch + 1}: val top-1 {top1:.1f}%")
    print("run directory: runs/own-loop (stats.jsonl, metrics.jsonl, tb/)")


if __name__ == "__main__":
    main()
