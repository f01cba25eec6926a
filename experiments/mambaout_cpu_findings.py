"""Reprint the numbers that docs/reproductions/mambaout.md quotes, from the committed runs of the
MambaOut CPU campaign (docs/reproductions/mambaout-cpu/runs/, written by experiments/mambaout_cpu.py):

    python experiments/mambaout_cpu_findings.py

- final val top-1 per run, and the mean val top-1 of each variant after epochs 1, 2, 4, 8 and 15;
- the gate probe: per stage the share of |GELU(g)| < 0.01 on the first 64 validation images at
  initialisation and after the last epoch (paper_probes.jsonl);
- the token mixer's share of the parameters (the depthwise convolutions) in mambaout_quick (7x7, and
  3x3 as in the kernel ablation) and MambaOut-Femto, and the feature-map side each stage's kernel
  sees at 32 px;
- the training throughput of MambaOut against the ViT (summary.json, both on one thread);
- the kernel ablation: 3x3 minus 7x7, and 3x3 minus the ViT, final top-1 with 95 % Welch intervals.
"""

from __future__ import annotations

from pathlib import Path

from cpu_campaign import jsonl, print_curves, print_final_top1, print_throughput, run_dirs, val_top1

RUNS = Path("docs/reproductions/mambaout-cpu/runs")


def token_mixer_share() -> None:
    import torch
    from reproscope.model import create_model
    from reproscope.model.mambaout import GatedCNNBlock
    for name, k, res, kernel in (("mambaout_quick", 10, 32, 7), ("mambaout_quick", 10, 32, 3),
                                 ("mambaout_femto", 1000, 224, 7)):
        m = create_model(name, num_classes=k, kernel_size=kernel)
        blocks = [(n, b) for n, b in m.named_modules() if isinstance(b, GatedCNNBlock)]
        total = sum(p.numel() for p in m.parameters())
        conv = sum(p.numel() for _, b in blocks for p in b.conv.parameters())
        sides: dict[str, int] = {}

        def record(stage):
            def hook(mod, inputs, output):
                sides.setdefault(stage, output.shape[-1])  # [B, C, H, W]: the map the kernel slides over
            return hook
        hooks = [b.conv.register_forward_hook(record(n.split(".")[1])) for n, b in blocks]
        with torch.no_grad():
            m.eval()(torch.zeros(1, 3, res, res))
        for h in hooks:
            h.remove()
        print(f"{name}: {kernel}x{kernel} depthwise convs hold {conv:,} of {total:,} parameters ({conv / total:.1%}); "
              f"feature-map side per stage at {res} px: {', '.join(str(v) for v in sides.values())}")


def kernel_ablation() -> None:
    from reproscope.report.runs import welch
    final: dict[str, list[float]] = {}
    for run in run_dirs(RUNS):
        kind = "ViT" if "vit_quick" in run.name else "3x3" if "-k3-" in run.name else "7x7"
        final.setdefault(kind, []).append(val_top1(run)[-1])
    for a, b in (("3x3", "7x7"), ("3x3", "ViT")):
        d, lo, hi = welch(final[a], final[b])
        print(f"kernel ablation, {a} minus {b} final val top-1: {d:+.2f} points, 95% Welch interval "
              f"[{lo:+.2f}, {hi:+.2f}] (n = {len(final[a])} + {len(final[b])})")


def main() -> None:
    print_final_top1(RUNS)
    for run in run_dirs(RUNS):
        probes = jsonl(run / "paper_probes.jsonl")
        if probes and "mambaout_gates" in probes[0]:
            first, last = probes[0]["mambaout_gates"], probes[-1]["mambaout_gates"]
            print(f"{run.name}: gates near zero, init -> after epoch {probes[-1]['epoch'] + 1}: " +
                  ", ".join(f"{s} {first[s]:.1%} -> {last[s]:.1%}" for s in first))
    print_curves(RUNS)
    print_throughput(RUNS, "mambaout_quick", "vit_quick")
    token_mixer_share()
    kernel_ablation()


if __name__ == "__main__":
    main()
