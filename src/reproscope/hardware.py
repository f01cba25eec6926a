"""Known accelerators: dense peak throughput per precision and memory bandwidth (vendor datasheets,
no sparsity).

Used for MFU (model FLOPs utilisation) and for the budget planner's L4 estimate
(``reproscope.diagnostics.budget``), which scales throughput measured on one GPU to another by peak
and bandwidth. The RTX 3090 is here because timm's published training benchmark was run on it; its
tensor peak is the FP16/BF16 rate with FP32 accumulation (71 TFLOP/s, NVIDIA GA102 whitepaper), what
mixed precision uses, not the 142 TFLOP/s of FP16 accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    bf16: float  # dense FLOP/s
    tf32: float
    fp32: float
    memory_gib: float
    bandwidth: float  # memory bandwidth, bytes/s


KNOWN_GPUS = {
    "L4": GPU("NVIDIA L4", 121e12, 60e12, 30.3e12, 24, 300e9),
    "A100": GPU("NVIDIA A100 SXM4", 312e12, 156e12, 19.5e12, 80, 2039e9),
    "H100": GPU("NVIDIA H100 SXM5", 989e12, 494e12, 67e12, 80, 3350e9),
    "H200": GPU("NVIDIA H200 SXM", 989e12, 494e12, 67e12, 141, 4800e9),
    "RTX 3090": GPU("NVIDIA GeForce RTX 3090", 71e12, 35.6e12, 35.6e12, 24, 936e9),
}


def lookup(device_name: str) -> GPU | None:
    """The table entry whose key appears in a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3')."""
    up = device_name.upper()
    for key in ("H200", "H100", "A100", "L4", "RTX 3090"):
        if key in up.replace("-", " ").split() or f" {key}" in f" {up}":
            return KNOWN_GPUS[key]
    return None


def peak_flops(gpu: GPU, amp: str, tf32: bool = True) -> float:
    """Dense peak FLOP/s of ``gpu`` for ``amp`` ("bf16"/"fp16"; "auto" means bf16 on a GPU; "fp32" is the
    TF32 tensor-core peak when ``tf32``, else plain FP32)."""
    if amp in ("bf16", "fp16", "auto"):
        return gpu.bf16
    return gpu.tf32 if tf32 else gpu.fp32


def mfu(device_name: str, flops_per_step: float, step_s: float, amp: str, tf32: bool = True
        ) -> tuple[float, float] | tuple[None, None]:
    """(model FLOP utilisation, the peak it is measured against) for ``flops_per_step`` training FLOPs
    (3 x forward) done in ``step_s`` seconds on the GPU named ``device_name``; (None, None) when the
    name is not in ``KNOWN_GPUS``."""
    gpu = lookup(device_name)
    if gpu is None or step_s <= 0:
        return None, None
    peak = peak_flops(gpu, amp, tf32)
    return flops_per_step / step_s / peak, peak
