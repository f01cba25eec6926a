"""`reproscope models`: one row per registered model, our numbers beside the paper's."""

from __future__ import annotations

import torch

from ..model import list_models, model_info


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_for_counting(build):
    """``build()`` on the meta device (no memory, no init time), or on the CPU when its init reads
    values (KAT's rational fit calls ``.item()``, which the meta device refuses)."""
    try:
        with torch.device("meta"):
            return build()
    except RuntimeError:
        return build()


def count_flops_of_copy(model: torch.nn.Module, img_size: int) -> float:
    """``count_flops`` on a CPU fp32 copy, leaving a live (GPU, bf16, training) model untouched."""
    import copy
    return count_flops(copy.deepcopy(model).float().cpu(), img_size)


def _register_cpu_attention_flops() -> None:
    """torch's FLOP counter knows the CUDA attention kernels but not the CPU one that
    ``scaled_dot_product_attention`` dispatches to here (``_scaled_dot_product_flash_attention_for_cpu``),
    so it counted 0 for attention on CPU. Count its two matmuls: q [B, H, N, D] k^T [B, H, D, M] and
    scores [B, H, N, M] v [B, H, M, Dv], 2 FLOPs per multiply-add."""
    from torch.utils import flop_counter
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        b, h, n, d = query_shape
        m, dv = key_shape[-2], value_shape[-1]
        return 2 * b * h * n * m * d + 2 * b * h * n * m * dv


def count_flops(model: torch.nn.Module, img_size: int) -> float:
    """Forward FLOPs of one image, from torch's own FLOP counter (a multiply-add counts 2), with the CPU
    attention kernel counted too (``_register_cpu_attention_flops``)."""
    from torch.utils.flop_counter import FlopCounterMode
    _register_cpu_attention_flops()
    x = torch.zeros(1, 3, img_size, img_size)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return float(fc.get_total_flops())


def model_rows(flops: bool = True) -> list[dict]:
    from tqdm.auto import tqdm
    rows = []
    for name in tqdm(list_models(), desc="counting", leave=False, disable=not flops):
        info = model_info(name)
        model = info.fn() if flops else build_for_counting(info.fn)
        row = {"name": name, "paper": info.paper, "params_m": count_params(model) / 1e6,
               "paper_params_m": info.paper_params_m, "paper_top1": info.paper_top1,
               "img_size": info.default_img_size}
        row["gflops"] = count_flops(model, info.default_img_size) / 1e9 if flops else None
        rows.append(row)
    return rows


def print_models_table(flops: bool = True) -> None:
    rows = model_rows(flops)
    print(f"{'model':<19} {'params (paper)':<19} {'GFLOPs':>7} {'GMACs':>7} {'px':>4} {'IN-1k top-1':>11}  paper")
    for r in rows:
        pp = f"({r['paper_params_m']:.1f}M)" if r["paper_params_m"] else "(-)"
        gf = f"{r['gflops']:.2f}" if r["gflops"] is not None else "-"
        gm = f"{r['gflops'] / 2:.2f}" if r["gflops"] is not None else "-"
        t1 = f"{r['paper_top1']:.1f}" if r["paper_top1"] else "-"
        print(f"{r['name']:<19} {r['params_m']:>7.2f}M {pp:<10} {gf:>7} {gm:>7} {r['img_size']:>4} {t1:>11}  {r['paper']}")
    print("GFLOPs: forward pass of one image at the default resolution, torch.utils.flop_counter "
          "(one multiply-add = 2 FLOPs; papers' 'FLOPs' columns are usually MACs). The counter "
          "sees matmuls and convolutions only, so KAT's rational functions are not counted.")
