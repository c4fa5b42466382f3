"""Device choice, seeding, thread counts and the memory allocator."""
from __future__ import annotations

import ctypes
import os
import random
import sys
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


def tune_allocator() -> bool:
    """glibc: serve every block up to 32 MB from the heap and keep freed memory there. By default
    glibc maps the GAN step's multi-megabyte activations with mmap and hands them back when freed,
    so every step faults the same pages in again; kept, the step is about 7% faster (README,
    "Performance"). True when glibc took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) & bool(mallopt(m_trim_threshold, 1 << 30))


def set_threads(cfg: dict) -> int:
    """Torch threads from `training.num_threads` (BLAS pools at 1), and `tune_allocator`."""
    tune_allocator()
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
