"""Sharding evaluation over the ranks of ``torch.distributed`` (e.g. under ``torchrun``).

Work comes in numbered batches; rank ``r`` of ``w`` takes the batches ``j`` with ``j % w == r``
(:func:`my_batches`), computes them, and :func:`gather` collects every rank's results on every rank
(``all_gather_object``), in rank order. Without an initialized process group there is one rank and
:func:`gather` returns ``[obj]``, so the same code runs single-process.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from flowlm.errors import ConfigError


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_batches(n_batches: int, rank: int | None = None, world: int | None = None) -> list[int]:
    """The batch indices this rank computes: ``j`` in ``0 ... n_batches - 1`` with ``j % world == rank``."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    return list(range(rank, n_batches, world))


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` without a process group."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written the files the others read next); no-op alone."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def init_from_env(device: str) -> str:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment), once.

    NCCL for CUDA devices, gloo for CPU. Returns the device this rank should use: ``cuda`` becomes
    ``cuda:<LOCAL_RANK>``. Without ``torchrun`` (or with one process) nothing is initialized and
    ``device`` is returned unchanged.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if str(device) == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda under torchrun, but CUDA is not available: use --device cpu")
        device = f"cuda:{local_rank}"
    if str(device).startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return device


def finish() -> None:
    """Leave the process group, if one is initialized (after every rank's last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
