"""Several GPUs or machines: each torchrun rank renders its share of a batch.

Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the items of a batch are split between
the ranks before anything loads: the same deterministic assignment on every rank, balanced by planned frame
count (longest first, each to the least loaded rank). Every rank renders its items with its own Renderer
on `cuda:LOCAL_RANK` (or the CPU, with the gloo backend), writing its outputs atomically; no two ranks own
one item, so no two ranks write one file. Rank 0 gathers every rank's results and prints the summary.
torch.distributed is only used to gather those small results; the renders never talk to each other.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(environ=os.environ) -> World | None:
    """The torchrun world, or None for a plain single process (also for a world of one)."""
    try:
        size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return None
    if size <= 1 or not 0 <= rank < size:
        return None
    return World(rank, size, local)


def rank_device(world: World, requested: str | None) -> str:
    """`cuda:LOCAL_RANK` when CUDA is there (unless the user chose), else the CPU."""
    if requested not in (None, "auto", "cuda"):
        return requested
    if torch.cuda.is_available():
        return f"cuda:{world.local_rank % torch.cuda.device_count()}"
    return "cpu" if requested in (None, "auto") else requested


def init(world: World, device: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)


def assign(frames: Sequence[int], size: int) -> list[int]:
    """Rank of each item: longest first, each to the least loaded rank (ties: the lower rank). The same on
    every rank, since it depends only on the planned frame counts and their order."""
    order = sorted(range(len(frames)), key=lambda i: (-frames[i], i))
    loads = [(0, r) for r in range(size)]
    owner = [0] * len(frames)
    for i in order:
        load, rank = heapq.heappop(loads)
        owner[i] = rank
        heapq.heappush(loads, (load + max(frames[i], 0), rank))
    return owner


def gather(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
