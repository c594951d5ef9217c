"""Data-parallel training under ``torchrun``: every rank samples its own windows, gradients are averaged.

    torchrun --nproc-per-node 4 -m robocl.cli train co-rft --data STORE --run-dir DIR --device cuda

:func:`init_from_env` joins the process group ``torchrun`` describes (NCCL on CUDA, gloo on the CPU).
:func:`robocl.run.loop.guarded_step` averages the gradients of every parameter it steps across ranks
before clipping, which is what ``DistributedDataParallel`` computes (without overlapping the all-reduce
with the backward pass: robocl's networks are small, and this works for any algorithm, whatever its number
of networks and optimisers). Each rank draws ``batch_size / world`` windows from its own generator
(:func:`shard`), so the global batch is the configured one; only rank 0 writes checkpoints, TensorBoard and
evaluations. Online sources step one env and do not shard.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as td


def init_from_env(device: str) -> None:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or td.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    td.init_process_group(backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def world_size() -> int:
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_batch_size(batch_size: int) -> int:
    """This rank's share of the global batch."""
    world = world_size()
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be divisible by the {world} data-parallel ranks")
    return batch_size // world


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce the gradients of ``params`` to their mean over ranks (one flat buffer, one call)."""
    world = world_size()
    if world == 1 or not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    td.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def shard(source: Any) -> None:
    """Give this rank its own stream of batches: the source's generator is reseeded from (seed, rank)."""
    world = world_size()
    if world == 1:
        return
    reseed = getattr(source, "reseed", None)
    if reseed is None:
        raise ValueError(f"{type(source).__name__} cannot be sharded across data-parallel ranks")
    reseed(int(np.random.SeedSequence([getattr(source, "seed", 0), rank()]).generate_state(1)[0]))
