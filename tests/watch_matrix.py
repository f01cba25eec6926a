"""A generated matrix of user-written training loops for ``reproscope.watch`` (not hand-picked cases).

Eight dimensions (optimizer, schedule, evaluation, ending, precision, accumulation, EMA, ``data=``); loop
``i`` of a matrix seeded ``seed`` takes, per dimension, the ``i``-th value of a sequence of shuffled
copies of that dimension's values, so any ``len(values)`` consecutive loops cover every value of it.
Each loop is written the way a user writes one (its own model, its own schedule code, its own ending),
and returns what it really did (``Truth``) for the readers' statements to be checked against.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import reproscope
from reproscope.data.shapes import generate_shapes

DIMS = {
    "optimizer": ("sgd", "adam", "adamw", "adamw-groups"),
    "schedule": ("none", "warmup-cosine", "onecycle", "by-hand"),
    "evaluation": ("none", "eval-mode", "train-mode"),
    "ending": ("finished", "nan-skipped", "nan-stop", "interrupt"),
    "precision": ("fp32", "bf16"),
    "accum": (1, 2),
    "ema": ("none", "averaged"),
    "data": ("none", "loader"),
}
EPOCHS, BATCH, N_TRAIN, SIZE = 2, 32, 128, 16
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def matrix(n: int, seed: int = 0) -> list[dict]:
    """``n`` loop specs, balanced per dimension (see the module docstring)."""
    rng = random.Random(seed)
    seqs = {}
    for d, values in DIMS.items():
        seq: list = []
        while len(seq) < n:
            block = list(values)
            rng.shuffle(block)
            seq += block
        seqs[d] = seq
    return [{d: seqs[d][i] for d in DIMS} | {"index": i} for i in range(n)]


class Net(nn.Module):
    """A user's small CNN with BatchNorm and dropout (random draws a replay must restore)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):  # [B, 3, H, W] -> [B, num_classes]
        return self.fc(self.drop(F.relu(self.bn(self.conv(x))).mean((2, 3))))


@dataclass
class Truth:
    """What the loop really did."""

    steps: int = 0  # w.step calls
    evaluations: int = 0
    ending: str = "finished"  # finished | stopped-nonfinite | interrupted
    ending_step: int = 0
    nonfinite_steps: list = field(default_factory=list)
    steps_per_epoch: int = 0


def _optimizer(kind: str, model: nn.Module, lr: float):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr)


def _scheduler(kind: str, opt, total: int, lr: float):
    if kind == "warmup-cosine":
        warm = max(1, total // 10)
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total + 1)
    return None


def run_loop(spec: dict, run_dir, against: str | None = "quickstart", deviations: dict | None = None) -> Truth:
    """Train one loop of the matrix under ``reproscope.watch`` into ``run_dir``; returns its ``Truth``.
    A ``KeyboardInterrupt`` ending is caught here, outside the ``with`` block, as a user's script would."""
    torch.manual_seed(spec["index"])
    x8, y = generate_shapes(N_TRAIN, SIZE, seed=spec["index"])
    xv8, yv = generate_shapes(64, SIZE, seed=1000 + spec["index"])
    model, lr, accum = Net(), 3e-3, spec["accum"]
    opt = _optimizer(spec["optimizer"], model, lr)
    micro = BATCH // accum
    spe = N_TRAIN // BATCH
    total = EPOCHS * spe
    sched = _scheduler(spec["schedule"], opt, total, lr)
    ema = None
    if spec["ema"] == "averaged":
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    data = None
    if spec["data"] == "loader":
        import torchvision.transforms.v2 as T
        tf = T.Compose([T.ToDtype(torch.float32, scale=True), T.RandomHorizontalFlip(), T.Normalize(MEAN, STD)])
        ds = _TensorImages(x8, y, tf)
        data = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)
    norm = (lambda t: (t.float() / 255 - 0.5) / 0.25)  # noqa: E731  the loop's own normalisation without data=
    truth = Truth(steps_per_epoch=spe)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if spec["precision"] == "bf16" else _Null()
    nan_at = 3 if spec["ending"] in ("nan-skipped", "nan-stop") else None
    try:
        with reproscope.watch(model, opt, run_dir=run_dir, config={"lr": lr, "seed": spec["index"], **spec},
                              against=against, deviations=deviations, ema=ema, data=data, tensorboard=False,
                              log_every=2) as w:
            for epoch in range(EPOCHS):
                model.train()
                batches = (iter(data) if data is not None else
                           ((norm(x8[i]), y[i]) for i in torch.randperm(N_TRAIN).split(BATCH)))
                for xb, yb in batches:
                    step = truth.steps + 1
                    if spec["ending"] == "interrupt" and step == 5:
                        raise KeyboardInterrupt
                    if step == nan_at:
                        xb = xb.clone()
                        xb[0] = float("nan")
                    for k in range(accum):
                        with amp:
                            loss = F.cross_entropy(model(xb[k * micro:(k + 1) * micro]), yb[k * micro:(k + 1) * micro])
                        (loss / accum).backward()
                    ok = w.step(loss, targets=yb[(accum - 1) * micro:])
                    truth.steps += 1
                    if ok:
                        opt.step()
                        if ema is not None:
                            ema.update_parameters(model)
                    else:
                        truth.nonfinite_steps.append(step)
                    opt.zero_grad()
                    if sched is not None:
                        sched.step()
                    elif spec["schedule"] == "by-hand":
                        for g in opt.param_groups:
                            g["lr"] = lr * (1 - truth.steps / (total + 1))
                    if not ok and spec["ending"] == "nan-stop":
                        truth.ending, truth.ending_step = "stopped-nonfinite", truth.steps
                        return truth
                if spec["evaluation"] != "none":
                    evaluated = ema.module if ema is not None else model
                    evaluated.train(spec["evaluation"] == "train-mode")
                    with torch.no_grad():
                        top1 = (evaluated(norm(xv8)).argmax(1) == yv).float().mean().item() * 100
                    w.evaluate(top1=top1)
                    truth.evaluations += 1
    except KeyboardInterrupt:
        truth.ending, truth.ending_step = "interrupted", truth.steps
        return truth
    truth.ending_step = truth.steps
    return truth


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _TensorImages(torch.utils.data.Dataset):
    """uint8 images with a torchvision transform, as a user's Dataset holds them."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]
