"""torch.distributed glue: launch under torchrun, who am I, which trials are mine, wrap models.

Trainers call these unconditionally; without `torchrun` (world size 1) they are no-ops, so one
code path serves single- and multi-process training. Launch on one machine with
`torchrun --standalone --nproc_per_node=N main.py --mode training --set parallel=true`.

Sharding follows `torch.utils.data.DistributedSampler(shuffle=True, seed=seed, drop_last=True)`
after `set_epoch(epoch)`: rank r gets every world-th trial of the epoch's permutation, starting
at r. Everything random in a step (noise, labels, gradient-penalty weights) is drawn for the
GLOBAL batch from the shared torch RNG and cut with the same stride (`local_slice`), so trial i
of a global batch meets the same noise row whatever the number of processes, and a W-process run
follows the single-process run with the same global batch up to float reduction order.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from utils.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = ("torchrun --standalone --nproc_per_node=N main.py --mode training --set parallel=true "
               "(several machines: torchrun --nnodes=M --nproc_per_node=N --node_rank=I "
               "--rdzv_backend=c10d --rdzv_endpoint=HOST:29500 main.py ...)")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_slice(global_batch: int, rank_: int | None = None, world: int | None = None) -> slice:
    """This rank's share of a global batch drawn identically on every rank.

    Strided like DistributedSampler deals indices, and trimmed to a multiple of the world size
    (DistributedSampler's drop_last) so every rank holds the same number of trials and DDP's
    mean of per-rank gradient means equals the gradient of the global-batch mean.
    """
    w = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    return slice(r, global_batch - global_batch % w, w)


def epoch_batches(n: int, batch_size: int, buffer_size: int, seed: int, epoch: int,
                  rank_: int | None = None, world: int | None = None):
    """Yield `(global_size, local_idx)` for one epoch: this rank's trials, batch by batch.

    The rank's indices come from a `DistributedSampler` after `set_epoch(epoch)`; with a shuffle
    buffer smaller than the data the sampler deals out the buffer's order instead of shuffling.
    `local_idx` equals `global_batch[local_slice(global_size)]` of
    `batches(epoch_order(n, buffer_size, seed, epoch), batch_size)`; draw per-step randomness for
    `global_size` rows and cut it with `local_slice(global_size)`.
    """
    from torch.utils.data import DistributedSampler

    from data.dataset import epoch_order

    w = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    if batch_size % w:
        raise UserError(f"config key 'batch_size': {batch_size} is not divisible by the {w} processes")
    if buffer_size >= n:
        sampler = DistributedSampler(range(n), num_replicas=w, rank=r, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        local = np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
    else:
        order = epoch_order(n, buffer_size, seed, epoch)
        sampler = DistributedSampler(order, num_replicas=w, rank=r, shuffle=False, drop_last=True)
        local = order[np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))]
    total, per = len(local) * w, batch_size // w
    for k, i in enumerate(range(0, len(local), per)):
        yield min(batch_size, total - k * batch_size), local[i:i + per]


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # find_unused_parameters: GPT-2's token embedding is never used (inputs come through
    # inputs_embeds), and a GAN's critic takes no gradient in some steps.
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper. Only DDP: an AveragedModel (gan.generator_ema) also has a
    `.module`, and its own state (the average's step count) must be saved with it."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(x: float) -> float:
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item() / world_size())


def all_reduce_sum(x: float) -> float:
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item())


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation `torch.utils.data.DistributedSampler(shuffle=True, seed=seed)` uses after
    `set_epoch(epoch)`, before it deals indices out to ranks."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).numpy()


# --- launching under torchrun -------------------------------------------------------------------

def _comm_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_str(text: str | None) -> str:
    """Rank 0's string on every rank, sent as bytes (no pickle, unlike broadcast_object_list)."""
    dev = _comm_device()
    data = (text or "").encode("utf-8") if is_main() else b""
    n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    dist.broadcast(n, src=0)
    buf = torch.zeros(int(n.item()), dtype=torch.uint8, device=dev)
    if is_main() and len(data):
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if len(buf):
        dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode("utf-8")


def parallel_device(cfg: dict) -> tuple[torch.device, str]:
    """One device per process: CUDA device LOCAL_RANK with nccl when gpu is true and CUDA exists,
    else CPU with gloo. (`gpu_id` picks the device of a single-process run; under torchrun pick
    the GPUs with CUDA_VISIBLE_DEVICES.)"""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg["gpu"] and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise UserError(f"parallel: process with LOCAL_RANK {local_rank} has no GPU (this machine shows {n}); "
                            f"use --nproc_per_node={n} or fewer")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    if cfg["gpu"]:
        from utils.runtime import pick_device

        pick_device(cfg)  # warns once that CUDA is absent
    return torch.device("cpu"), "gloo"


def run_parallel(cfg: dict, run_dir: Path | None, resume: bool) -> int:
    """`parallel = true`: DistributedDataParallel training in the processes torchrun started.

    Every rank trains on its share of each global batch with the same seed; rank 0 creates the run
    folder and sends its path to the others, and alone writes checkpoints, metrics and figures.
    """
    import importlib

    from trainers.common import run_training
    from utils.runs import new_run_dir

    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise UserError(f"parallel=true needs the torchrun launcher ({', '.join(missing)} not set); run: {LAUNCH_HINT}")
    world = int(os.environ["WORLD_SIZE"])
    if cfg["batch_size"] % world:
        raise UserError(f"config key 'batch_size': {cfg['batch_size']} is the global batch and must be divisible "
                        f"by the {world} processes")
    device, backend = parallel_device(cfg)
    if cfg["training"]["num_threads"] is None and device.type == "cpu":
        # N processes on one machine share its cores; all of them each would oversubscribe.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    try:
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
    except Exception as e:
        raise UserError(f"parallel: cannot join the process group ({str(e).splitlines()[0][:160]})") from None
    try:
        path = None
        if is_main():
            try:
                path = str(run_dir if run_dir is not None else new_run_dir(cfg))
            except UserError:
                broadcast_str("")  # let the other ranks stop too
                raise
        path = broadcast_str(path)
        if not path:
            raise UserError("parallel: rank 0 could not create the run folder")
        from main import TRAINERS

        trainer = importlib.import_module(TRAINERS[cfg["model_name"]])
        run_dir, summary = run_training(cfg, trainer, device, run_dir=Path(path), resume=resume,
                                        is_main=is_main())
        barrier()
        if is_main():
            print(f"run folder: {run_dir} ({world} processes, backend {backend})")
            keys = [k for k in ("test_accuracy", "test_accuracy_mean", "epochs_completed", "wall_time_s")
                    if k in summary]
            print("summary: " + ", ".join(f"{k}={summary[k]}" for k in keys))
    finally:
        dist.destroy_process_group()
    return 0
