"""What each of the KAT public code's flags changes at initialisation, one flag at a time.

    python experiments/kat_variants.py          # ~1 min on 2 CPU cores

KAT-T at 224 px, 10 classes, seed 0, a fixed batch of 16 N(0, 1) images and random labels: the logit
std, the loss, and the gradient norms of the rational numerators (a) and denominators (b) summed over
every block, for the paper's defaults, each public-code flag alone, and all of them (kat_tiny_public).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reproscope.model import create_model
from reproscope.model.kat import PUBLIC

VARIANTS = [("paper (defaults)", {})] + [(f"{k}={v}", {k: v}) for k, v in PUBLIC.items()] + [
    ("all four (kat_tiny_public)", dict(PUBLIC))]


def measure(kw: dict) -> dict:
    torch.manual_seed(0)
    model = create_model("kat_tiny", num_classes=10, **kw)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 224, 224, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    ga = sum(p.grad.pow(2).sum() for n, p in model.named_parameters() if n.endswith("rational.a")) ** 0.5
    gb = sum(p.grad.pow(2).sum() for n, p in model.named_parameters() if n.endswith("rational.b")) ** 0.5
    return {"logit std": logits.std().item(), "loss": loss.item(), "grad norm, numerators a": ga.item(), "grad norm, denominators b": gb.item()}


def main() -> None:
    rows = [(name, measure(kw)) for name, kw in VARIANTS]
    cols = list(rows[0][1])
    print("| variant | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, m in rows:
        print(f"| {name} | " + " | ".join(f"{m[c]:.4g}" for c in cols) + " |")


if __name__ == "__main__":
    main()
