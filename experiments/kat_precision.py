"""How KAT's rational functions fare in reduced precision (the KAT note's fp16/bf16 gotcha).

    python experiments/kat_precision.py     # seconds

The Swish-fitted rational (the paper's F2 init, each denominator form) evaluated the way the model
does under autocast, with input and coefficients in the autocast dtype (``GroupRational.forward``), on
4001 points of [-3, 3] and of [-8, 8]; the table gives the max error against Swish computed in
float64, per dtype.
"""

from __future__ import annotations

import torch

from reproscope.model.kat import DENOMINATORS, fit_coefficients, rational


def main() -> None:
    print("| denominator | range | float32 | bfloat16 | float16 |")
    print("|---|---|---|---|---|")
    for den in DENOMINATORS:
        a, b = fit_coefficients("swish", den)
        a64, b64 = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
        for lo in (3.0, 8.0):
            x = torch.linspace(-lo, lo, 4001, dtype=torch.float64)[None, :]  # [1 group, N] as [..., C]
            x = x.T.contiguous()  # [N, 1]: one channel, one group
            ref = x * torch.sigmoid(x)
            errs = []
            for dt in (torch.float32, torch.bfloat16, torch.float16):
                y = rational(x.to(dt), a64.to(dt), b64.to(dt), den).double()
                errs.append((y - ref).abs().max().item())
            print(f"| {den} | [-{lo:g}, {lo:g}] | " + " | ".join(f"{e:.2g}" for e in errs) + " |")


if __name__ == "__main__":
    main()
