"""Several processes (torchrun) as the trainer sees them: the rank, DistributedDataParallel, and the few collectives a
run needs. Alone (no process group) every call is a no-op, so the trainer never asks which case it is in.

    rank, world_size, device = setup("auto")   # under torchrun: join the process group (NCCL on GPUs, gloo on CPUs)
    ranks = Ranks()                             # then, in the trainer
    model = ranks.wrap(model, device)           # DDP broadcasts rank 0's weights and averages gradients
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def setup(device: str) -> tuple[int, int, str]:
    """Under torchrun (RANK and WORLD_SIZE set) join the process group: NCCL on GPUs, gloo on CPUs.

    Returns (rank, world_size, device); each rank takes the GPU of its LOCAL_RANK. Without torchrun: (0, 1, device).
    Under torchrun the model is trained with DistributedDataParallel even by a single process.
    """
    if "RANK" not in os.environ:
        return 0, 1, device
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():  # a collective waits at most TIMEOUT for a peer (torch's default: 30 minutes)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_seconds()))
    return dist.get_rank(), dist.get_world_size(), device


def timeout_seconds() -> int:
    """How long a collective waits for a peer before it fails: CONSISTENCY_DIST_TIMEOUT seconds, default 300 (a dead
    process then stops the others within minutes, not torch's 30; raise it for very slow checkpoints or evaluations)."""
    value = os.environ.get("CONSISTENCY_DIST_TIMEOUT", "300")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"CONSISTENCY_DIST_TIMEOUT must be a positive number of seconds, got {value!r}")
    return int(value)


class Ranks:
    """This process's place in the process group (rank 0 of 1 without one) and the collectives the trainer uses."""

    def __init__(self):
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1
        self.is_main = self.rank == 0  # rank 0 alone logs, samples and writes files

    def check_sharded(self, loader: Any) -> None:
        """Refuse a loader whose resumable sampler was built for another rank or world size."""
        from .data import EpochSampler

        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, EpochSampler) and (sampler.world_size, sampler.rank) != (self.world_size, self.rank):
            raise ValueError(f"the loader is not sharded for rank {self.rank} of {self.world_size}: build it with "
                             "rank= and world_size= (consistency.data loaders take both)")

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around `model` (it broadcasts rank 0's weights, so every rank starts, and by
        averaging gradients stays, identical); the model itself when alone."""
        if not self.active:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda"
                                                   else None)

    def broadcast_(self, params: list[torch.Tensor]) -> None:
        """Rank 0's values everywhere (a method's own parameters, which DDP does not see)."""
        for p in params if self.active else ():
            dist.broadcast(p.data, 0)

    def average_gradients_(self, params: list[torch.Tensor]) -> None:
        """Average the gradients of parameters DDP does not see (a method's own) over the ranks."""
        for p in params if self.active else ():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world_size

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise maximum over the ranks, in place (a skip flag: one rank's bad step stops every rank's)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def agree(self, values: list[int], device: torch.device) -> list[int]:
        """The maximum over the ranks of a few integers (stop flags, a proposed step count): one collective."""
        if not self.active:
            return values
        return self.max_(torch.tensor(values, dtype=torch.int64, device=device)).tolist()

    def agreement(self, device: torch.device):
        """agree() on `device` as a one-argument function, or None when alone (runtime.TimeBudget's `sync`)."""
        return (lambda values: self.agree(values, device)) if self.active else None

    def gather(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of `state` (its RNG state, for a checkpoint), in rank order."""
        if not self.active:
            return [state]
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def set_rng_states(self, cpu: list[torch.Tensor], cuda: list[torch.Tensor], device: torch.device) -> bool:
        """Restore this rank's RNG states from a checkpoint's per-rank lists; False if it had another world size."""
        if len(cpu) != self.world_size:
            return False
        torch.set_rng_state(cpu[self.rank])
        if device.type == "cuda" and len(cuda) == self.world_size:
            torch.cuda.set_rng_state(cuda[self.rank], device)
        return True

    def barrier(self) -> None:
        if self.active:
            dist.barrier()
