"""Device choice, seeding and thread counts."""
from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

from utils.errors import UserError

_warned = False


def pick_device(cfg: dict) -> torch.device:
    """`gpu` true: CUDA device `gpu_id` when present (bad id -> error); absent -> warn once, CPU."""
    global _warned
    if not cfg["gpu"]:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if not _warned:
            warnings.warn("gpu is true but CUDA is not available; running on CPU", stacklevel=2)
            print("warning: gpu is true but CUDA is not available; running on CPU", flush=True)
            _warned = True
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if cfg["gpu_id"] >= n:
        raise UserError(f"config key 'gpu_id': {cfg['gpu_id']} is not a CUDA device (found {n}: 0..{n - 1})")
    return torch.device("cuda", cfg["gpu_id"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(cfg: dict) -> int:
    n = cfg["training"]["num_threads"] or os.cpu_count() or 1
    torch.set_num_threads(n)
    try:  # keep BLAS from oversubscribing small eigendecompositions (CSP, covariance)
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except Exception:
        pass
    return n


def autocast(cfg: dict, device: torch.device):
    """bf16 autocast on CUDA when `training.bf16` is true; a no-op context on CPU (CPU runs stay exact)."""
    enabled = bool(cfg["training"]["bf16"]) and device.type == "cuda"
    return torch.autocast("cuda" if device.type == "cuda" else "cpu", dtype=torch.bfloat16, enabled=enabled)
