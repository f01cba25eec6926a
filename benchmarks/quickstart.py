"""Time the README quickstart: `reproscope train` with the default recipe, end to end.

    python benchmarks/quickstart.py [--recipe quickstart] [--set KEY=VALUE ...]

Prints wall time (process start to final eval, dataset generation included), final val
top-1, and a linear classifier on raw pixels trained on the same data, for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
import time

T0 = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from reproscope.config import apply_overrides  # noqa: E402
from reproscope.recipes import DEFAULT_RECIPE, get_recipe  # noqa: E402
from reproscope.data.datasets import build_datasets  # noqa: E402
from reproscope.launch import train  # noqa: E402


def linear_probe_on_pixels(recipe, epochs: int = 30, seed: int = 0) -> tuple[float, float]:
    """Multinomial logistic regression on standardised raw pixels: (train, val) top-1 %."""
    torch.manual_seed(seed)
    tr, va = build_datasets(recipe.data)
    xtr, xva = tr.images.flatten(1).float(), va.images.flatten(1).float()
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    lin = torch.nn.Linear(xtr.shape[1], tr.num_classes)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 256):
            b = perm[i:i + 256]
            loss = F.cross_entropy(lin(xtr[b]), tr.labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = lambda x, y: 100.0 * (lin(x).argmax(1) == y).float().mean().item()  # noqa: E731
        return acc(xtr, tr.labels), acc(xva, va.labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-linear", action="store_true", help="skip the linear-probe baseline")
    args = ap.parse_args()
    recipe = apply_overrides(get_recipe(args.recipe), args.overrides + ["run.progress=false"])
    with tempfile.TemporaryDirectory() as d:
        _, metrics = train(recipe, run_dir=f"{d}/run")
    wall = time.perf_counter() - T0
    rows = [("recipe", recipe.name), ("torch threads", str(torch.get_num_threads())),
            ("wall time (s)", f"{wall:.1f}"), ("val top-1 (%)", f"{metrics['top1']:.2f}"),
            ("val top-5 (%)", f"{metrics['top5']:.2f}")]
    if not args.no_linear:
        ltr, lva = linear_probe_on_pixels(recipe)
        rows += [("linear on pixels, train top-1 (%)", f"{ltr:.2f}"),
                 ("linear on pixels, val top-1 (%)", f"{lva:.2f}")]
    w = max(len(k) for k, _ in rows)
    print("\n| quantity | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k:<{w}} | {v} |")


if __name__ == "__main__":
    main()
