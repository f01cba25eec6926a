"""Multi-process training under torchrun (DistributedDataParallel).

Semantics: ``data.batch_size`` is the *global* micro-batch; each of the ``world_size`` ranks takes
``batch_size / world_size`` samples of it (so the lr and the schedule mean the same thing on 1 or N
GPUs). Every rank draws the same epoch permutation and takes its strided share of each global batch.
Rank 0 alone writes logs, TensorBoard, checkpoints and reports; the others wait at a barrier.
One all-reduce per step carries the loss, the grad norm and a stop flag, so the NaN tripwire, the
spike detector and signal handling agree on every rank. Probe statistics are reduced across ranks
(sums and counts added, abs-max maxed) before rank 0 logs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
