"""Multi-process training under torchrun (DistributedDataParallel).

Semantics: ``data.batch_size`` is the *global* micro-batch; each of the ``world_size`` ranks takes
``batch_size / world_size`` samples of it (so the lr and the schedule mean the same thing on 1 or N
GPUs). Every rank draws the same epoch permutation and takes its strided share of each global batch.
Rank 0 alone writes logs, TensorBoard, checkpoints and reports; the others wait at a barrier.
One all-reduce per step carries the loss, the grad norm and a stop flag, so the NaN tripwire, the
spike detector and signal handling agree on every rank. Probe statistics are reduced across ranks
(sums and counts added, abs-max maxed) before rank 0 logs them.

The DDP faults reproscope names, each with its fix (``dist.*`` recipe keys):

- a trainable parameter that gets no gradient (a head kept in the model but not in the loss): DDP
  raises at the next forward with parameter *indices*; :func:`unused_parameter_names` maps them to
  names, :class:`UnusedParametersError` says them with the two fixes (code ``ddp-unused-parameters``).
  ``train.run.check_unused_parameters`` finds them before the first step;
- BatchNorm statistics computed per process on ``batch_size / world_size`` images:
  :func:`batchnorm_per_rank` says so (code ``bn-per-rank``); ``dist.sync_bn`` converts the model's
  BatchNorm layers to ``nn.SyncBatchNorm`` (CUDA only: torch's ``SyncBatchNorm.forward`` raises for
  CPU tensors).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env() -> Dist:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return SINGLE
    return Dist(int(os.environ["RANK"]), ws, int(os.environ.get("LOCAL_RANK", "0")))


def init(d: Dist, device_type: str) -> None:
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def broadcast_object(obj, d: Dist):
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def step_sync(loss: torch.Tensor, grad_norm: torch.Tensor, stop: bool, d: Dist) -> tuple[torch.Tensor, float, float, bool]:
    """An optimizer step's one device-to-host copy: the loss and grad norm (0-dim tensors) averaged over
    ranks, and whether any rank asked to stop. Returns (mean loss as a 0-dim tensor, mean loss, mean grad
    norm, any rank stopping)."""
    flag = torch.tensor(float(stop), device=loss.device)
    vals = all_reduce_sum(torch.stack([loss, grad_norm.detach().float(), flag]), d)
    vals = vals / torch.tensor([d.world_size, d.world_size, 1.0], device=loss.device)
    loss_v, gn_v, stop_v = vals.tolist()
    return vals[0], loss_v, gn_v, stop_v > 0


def all_reduce_max(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def shard(idx: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's strided share of a global batch of indices."""
    return idx[d.rank::d.world_size] if d.enabled else idx


# ----------------------------------------------------------------------------- faults named

UNUSED_CODE = "ddp-unused-parameters"
BN_PER_RANK_CODE = "bn-per-rank"
# the line of DDP's reducer error (torch/csrc/distributed/c10d/reducer.cpp, ensure_prior_reduction_finished)
_UNUSED_RE = re.compile(r"Parameter indices which did not receive grad for rank \d+:((?:\s+\d+)+)")


class UnusedParametersError(ConfigError):
    """Trainable parameters that got no gradient in a DDP step (``names``), said with the fixes; code
    ``ddp-unused-parameters``."""

    code = UNUSED_CODE

    def __init__(self, names: list[str]):
        self.names = list(names)
        shown = ", ".join(self.names[:6]) + (f" (+{len(self.names) - 6} more)" if len(self.names) > 6 else "")
        super().__init__(
            f"DDP: {len(self.names)} trainable parameter{'s' * (len(self.names) != 1)} of the model "
            f"{'get' if len(self.names) != 1 else 'gets'} no gradient from the loss: {shown}; DDP needs a "
            f"gradient for every one each step. Remove them from the model (or set requires_grad=False), or "
            f"--set dist.find_unused_parameters=true (DDP then walks the autograd graph after every forward: an "
            f"extra pass each step) [{UNUSED_CODE}]")


def unused_parameter_names(error: BaseException, model: nn.Module) -> list[str] | None:
    """The names of the parameters DDP's error ``error`` lists by index ("Parameter indices which did not
    receive grad for rank 0: 8 9"), or None when it is not that error. DDP numbers the parameters as
    ``model.parameters()`` lists those with ``requires_grad`` (``DistributedDataParallel._build_params_for_reducer``:
    modules in order, each one's own parameters, shared ones once)."""
    m = _UNUSED_RE.search(str(error))
    if m is None:
        return None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return [trainable[i] if i < len(trainable) else f"parameter #{i}" for i in map(int, m.group(1).split())]


def forward(model: nn.Module, x, named: nn.Module):
    """``model(x)``, with DDP's error for parameters that got no gradient in the last step said by name
    (``named``: the unwrapped module whose ``named_parameters`` DDP numbered).

    Raises:
        UnusedParametersError: for that error; any other error as it is.
    """
    try:
        return model(x)
    except RuntimeError as e:
        names = unused_parameter_names(e, named)
        if names is None:
            raise
        raise UnusedParametersError(names) from e


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer that normalises with per-process batch statistics in training
    (any ``_BatchNorm`` but ``nn.SyncBatchNorm``)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               for m in model.modules())


def batchnorm_per_rank(model: nn.Module, batch_size: int, world_size: int) -> str:
    """The sentence for a model with BatchNorm that trains on ``world_size`` > 1 processes without
    ``dist.sync_bn``: each process normalises with the statistics of its ``batch_size / world_size``
    images, not of the recipe's ``batch_size``; "" otherwise (one process, no BatchNorm, or SyncBatchNorm).
    Off CUDA (the model's parameters) it adds that the fix needs CUDA."""
    if world_size <= 1 or not has_batchnorm(model):
        return ""
    p = next(model.parameters(), None)
    cuda_only = "" if p is None or p.is_cuda else " (on CUDA: torch's SyncBatchNorm has no CPU path)"
    return (f"BatchNorm statistics per process: {batch_size // world_size} images per rank where the recipe's "
            f"batch is {batch_size}; --set dist.sync_bn=true to sync them{cuda_only}")


def batchnorm_deviations(model: nn.Module, batch_size: int, world_size: int) -> list[dict]:
    """The deviation row (``deviations.json``) for :func:`batchnorm_per_rank`, code ``bn-per-rank``; [] when
    it has nothing to say. ``parent`` is True: the recipe's BatchNorm sees its whole batch, which on several
    processes is ``dist.sync_bn=true`` (the value a campaign that reverts deviations would set)."""
    said = batchnorm_per_rank(model, batch_size, world_size)
    if not said:
        return []
    return [{"key": "dist.sync_bn", "parent": True, "value": False, "reason": said, "code": BN_PER_RANK_CODE}]


def sync_batchnorm(model: nn.Module, d: Dist, device_type: str) -> nn.Module:
    """``model`` with its BatchNorm layers converted to ``nn.SyncBatchNorm`` (``dist.sync_bn``) when ``d``
    has several processes; the same parameters, so an optimizer built after still holds them.

    Raises:
        ConfigError: several processes on a device other than CUDA (torch's ``SyncBatchNorm.forward``
            raises for CPU tensors).
    """
    if not d.enabled:
        return model
    if device_type != "cuda":
        raise ConfigError(f"dist.sync_bn=true: SyncBatchNorm runs on CUDA only (torch's SyncBatchNorm raises for "
                          f"{device_type} tensors); drop dist.sync_bn to train with per-process BatchNorm statistics")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
