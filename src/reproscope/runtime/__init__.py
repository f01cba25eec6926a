"""What every layer above needs from the machine: device, autocast, seeding, RNG state, synchronize.

This package sits between ``model`` and ``train`` (``distributed`` is beside it): the trainer, the
instruments, the checks and the user's own loop (``reproscope.watch``) all take the device, the
autocast context and the RNG state from here, so none of them imports the trainer for it.
"""

from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn

from ..config import ConfigError
from . import distributed


def resolve_device(name: str) -> torch.device:
    """``precision.device`` ("auto", "cpu", "cuda", "cuda:N") as a torch.device.

    Raises:
        ConfigError: "cuda" asked for on a machine without a usable CUDA device.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("precision.device='cuda' but this machine has no usable CUDA device "
                          f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                          "use --set precision.device=cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(name: str, device: torch.device) -> torch.dtype | None:
    """``precision.amp`` as an autocast dtype; None means fp32 (no autocast). "auto" is bf16 on CUDA."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]


def prepare_process(precision, run) -> tuple:
    """Set this process up for training from a recipe's ``precision`` and ``run`` sections: threads,
    deterministic algorithms, the device (``cuda:<local rank>`` under torchrun), the process group,
    TF32 and the seed. Returns ``(dist, device, amp_dtype)``; ``dist`` is ``distributed.from_env()``.

    Raises:
        ConfigError: a device this machine does not have.
    """
    if run.threads:
        torch.set_num_threads(run.threads)
    if run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist = distributed.from_env()
    device = resolve_device(precision.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    distributed.init(dist, device.type)
    amp_dtype = resolve_amp(precision.amp, device)
    if device.type == "cuda" and precision.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(run.seed)
    return dist, device, amp_dtype


def place_model(model: nn.Module, device: torch.device, channels_last: str, dist,
                ddp=None) -> tuple[nn.Module, nn.Module, bool]:
    """Put ``model`` on ``device``: ``(orig_model, eager_model, channels_last)``. ``channels_last``
    (``precision.channels_last``): "on", "off", or "auto" = on for a conv model on CUDA. ``eager_model``
    is what the steps run: DDP-wrapped under torchrun (gradients averaged across ranks), else
    ``orig_model`` itself, which stays the unwrapped module for hooks and checkpoints. ``ddp``: the recipe's
    ``dist`` section (``config.DistConfig``; None = its defaults): under torchrun, ``sync_bn`` converts
    BatchNorm to ``nn.SyncBatchNorm`` first (``orig_model`` is then the converted module) and
    ``find_unused_parameters`` goes to DDP.

    Raises:
        ConfigError: ``sync_bn`` with several processes off CUDA (``distributed.sync_batchnorm``).
    """
    orig = model.to(device)
    cl = channels_last == "on" or (channels_last == "auto" and device.type == "cuda" and is_conv_model(orig))
    if cl:
        orig = orig.to(memory_format=torch.channels_last)
    eager = orig
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        if ddp is not None and ddp.sync_bn:
            orig = distributed.sync_batchnorm(orig, dist, device.type)
        eager = DistributedDataParallel(orig, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=ddp is not None and ddp.find_unused_parameters)
    return orig, eager, cl


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context when dtype is None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (for timing); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state as tensors, lists and numbers only (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    s = {"python": random.getstate(), "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(cached)),
         "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    """Restore what :func:`rng_state` returned (the CUDA part only where CUDA is available)."""
    random.setstate(s["python"])
    kind, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def is_conv_model(model: nn.Module) -> bool:
    """More than one Conv2d: channels_last pays off (a ViT's single patch-embedding conv does not count)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1
