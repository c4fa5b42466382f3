"""torch.distributed glue: who am I, which trials are mine, wrap models for DDP.

Trainers call these unconditionally; without `torchrun` (world size 1) they are no-ops, so one
code path serves single- and multi-process training. Launch: `torchrun --nproc_per_node=N main.py
--mode training --set parallel=true`.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_slice(global_batch: int) -> slice:
    """This rank's share of a global batch drawn identically on every rank."""
    w, r = world_size(), rank()
    per = global_batch // w
    return slice(r * per, (r + 1) * per)


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(x: float) -> float:
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / world_size())


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation `torch.utils.data.DistributedSampler(shuffle=True, seed=seed)` uses after
    `set_epoch(epoch)`, before it deals indices out to ranks."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).numpy()
