"""torchrun support: process-group set-up from the environment, shared by prediction and training."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this node (selects the GPU)
    backend: str = ""  # "nccl" on CUDA, "gloo" on CPU, "" when not distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        from models.checkpoints import select_device

        return select_device() if not self.enabled else torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> DistContext:
    """Join the process group torchrun describes in WORLD_SIZE/RANK/LOCAL_RANK; a no-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def shutdown_distributed(context: DistContext) -> None:
    """Leave the process group (after a final barrier) when one was joined."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
