"""Counting a model: parameters and forward FLOPs, on a copy or on the meta device.

FLOPs come from torch's own ``torch.utils.flop_counter`` (one multiply-add = 2 FLOPs), with the CPU
attention kernel registered (torch counts only the CUDA ones). Used by ``reproscope models``, the
budget and plan tools, the profiler and the report's parameter column.
"""

from __future__ import annotations

import copy

import torch


def count_params(model: torch.nn.Module) -> int:
    """Number of parameter elements (every parameter, trainable or frozen)."""
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
    return count_flops(copy.deepcopy(model).float().cpu(), img_size)


def register_cpu_attention_flops() -> None:
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
    attention kernel counted too (``register_cpu_attention_flops``)."""
    from torch.utils.flop_counter import FlopCounterMode
    register_cpu_attention_flops()
    x = torch.zeros(1, 3, img_size, img_size)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return float(fc.get_total_flops())
