"""What every trainer shares: rounds, run folders, resumable checkpoints, metrics logging.

A trainer module exposes `train_round(cfg, round_dir, device, seed, resume) -> dict` that trains
one round in `round_dir` and returns that round's summary numbers. `run_training` calls it once per
round (seeds seed, seed+1, ...), writes the run folder's `config.json` and `summary.json` (with
mean and std over rounds), and points `<output_dir>/<model_name>/latest` at the run.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import (flatten_state, load_checkpoint, restore_interrupted, save_checkpoint,
                              unflatten_state, write_json)
from utils.distributed import unwrap
from utils.errors import UserError
from utils.runs import mark_latest, new_run_dir

CKPT = "checkpoint"  # resumable state inside a round folder


def round_dirs(run_dir: Path, rounds: int) -> list[Path]:
    """Round folders: the run folder itself for one round, `round-<i>/` for several."""
    return [Path(run_dir)] if rounds == 1 else [Path(run_dir) / f"round-{i}" for i in range(rounds)]


def aggregate(results: list[dict]) -> dict:
    """Per-round values plus mean and std of every numeric summary entry."""
    out: dict = {"rounds": len(results), "per_round": results}
    keys = [k for k, v in results[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for k in keys:
        vals = [r[k] for r in results if isinstance(r.get(k), (int, float))]
        if vals:
            out[k + "_mean"] = float(np.mean(vals))
            out[k + "_std"] = float(np.std(vals))
    return out


def run_training(cfg: dict, trainer, device: torch.device, run_dir: Path | None = None,
                 resume: bool = False, is_main: bool = True) -> tuple[Path, dict]:
    t0 = time.time()
    fresh = run_dir is None
    if fresh:
        run_dir = new_run_dir(cfg) if is_main else None
    try:
        return _run_rounds(cfg, trainer, device, run_dir, resume, is_main, t0)
    except UserError:
        # Bad input found before anything was trained (a missing pretrained path, mismatched
        # channels): no run happened, so no run folder holding only its config is left behind.
        if fresh and is_main:
            _remove_if_untrained(Path(run_dir))
        raise


def _remove_if_untrained(run_dir: Path) -> None:
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    if all(f == run_dir / "config.json" for f in files):
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_rounds(cfg, trainer, device, run_dir, resume, is_main, t0) -> tuple[Path, dict]:
    if resume and (Path(run_dir) / "config.json").is_file():
        check_compatible(json.loads((Path(run_dir) / "config.json").read_text()), cfg)
    if is_main:
        write_json(Path(run_dir) / "config.json", cfg)
    results = []
    for i, rd in enumerate(round_dirs(run_dir, cfg["rounds"])):
        if is_main:
            rd.mkdir(parents=True, exist_ok=True)
        done = rd / "round_summary.json"
        if resume and done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        res = trainer.train_round(cfg, rd, device, cfg["seed"] + i, resume and has_checkpoint(rd))
        res = {"round": i, "seed": cfg["seed"] + i, **res}
        if is_main:
            write_json(done, res)
        results.append(res)
    summary = {"model_name": cfg["model_name"], "run_dir": str(run_dir), **results[0]}
    if cfg["rounds"] > 1:
        summary.update(aggregate(results))
    finish = getattr(trainer, "finish_run", None)  # a trainer's run-level step after every round (GAN: report)
    if is_main and finish is not None and cfg["rounds"] > 1:
        finish(Path(run_dir), round_dirs(run_dir, cfg["rounds"]))
    summary["wall_time_s"] = round(time.time() - t0, 2)
    if is_main:
        write_json(Path(run_dir) / "summary.json", summary)
        mark_latest(run_dir)
    return Path(run_dir), summary


# --- RNG state --------------------------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": _to_json(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if states:
            torch.cuda.set_rng_state_all(states)
    random.setstate(_from_json(meta["python"]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _to_json(x):
    return [_to_json(v) for v in x] if isinstance(x, (tuple, list)) else x


def _from_json(x):
    return tuple(_from_json(v) for v in x) if isinstance(x, list) else x


# --- resumable training checkpoints ----------------------------------------------------------

def has_checkpoint(round_dir: Path) -> bool:
    """A resumable checkpoint exists (one caught between its two renames by a kill is put back)."""
    folder = Path(round_dir) / CKPT
    restore_interrupted(folder)
    return folder.is_dir()


def save_training_state(round_dir: Path, models: dict[str, torch.nn.Module],
                        optims: dict[str, torch.optim.Optimizer], counters: dict, extra: dict | None = None,
                        cfg: dict | None = None) -> None:
    """Everything needed to continue bit-identically: models, optimisers, RNGs, counters, config."""
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    skeletons = {}
    for name, m in models.items():
        tensors[name] = {k: v for k, v in unwrap(m).state_dict().items()}
    for name, opt in optims.items():
        flat, skel = flatten_state(opt.state_dict())
        tensors["optim_" + name] = flat
        skeletons[name] = skel
    rng_t, rng_meta = rng_state()
    tensors["rng"] = rng_t
    state = {"counters": counters, "optimizers": skeletons, "rng": rng_meta, "extra": extra or {},
             "config": cfg}
    save_checkpoint(Path(round_dir) / CKPT, tensors, state)


def load_training_state(round_dir: Path, models: dict[str, torch.nn.Module],
                        optims: dict[str, torch.optim.Optimizer], cfg: dict | None = None) -> tuple[dict, dict]:
    """Restore what `save_training_state` wrote; returns (counters, extra)."""
    tensors, state = load_checkpoint(Path(round_dir) / CKPT)
    if cfg is not None and state.get("config") is not None:
        check_compatible(state["config"], cfg)
    for name, m in models.items():
        if name not in tensors:
            raise UserError(f"checkpoint {round_dir}: no weights for '{name}'")
        try:
            unwrap(m).load_state_dict(tensors[name])
        except RuntimeError as e:
            raise UserError(f"checkpoint {round_dir}: '{name}' does not match the configured model "
                            f"({str(e).splitlines()[0][:120]})") from None
    for name, opt in optims.items():
        opt.load_state_dict(unflatten_state(state["optimizers"][name], tensors["optim_" + name]))
    set_rng_state(tensors["rng"], state["rng"])
    return state["counters"], state.get("extra", {})


# Keys that may differ between an interrupted run and its resumption.
RESUME_FREE_KEYS = {"epochs", "gpu", "gpu_id", "training", "data_path", "cache_dir", "output_dir"}


def check_compatible(saved: dict, cfg: dict) -> None:
    for k in sorted(set(saved) | set(cfg)):
        if k in RESUME_FREE_KEYS:
            continue
        if saved.get(k) != cfg.get(k):
            raise UserError(f"cannot resume: config key '{k}' differs from the interrupted run "
                            f"({json.dumps(saved.get(k))[:60]} vs {json.dumps(cfg.get(k))[:60]})")


# --- metrics ------------------------------------------------------------------------------------

class MetricsLog:
    """`metrics.jsonl`: one JSON object per line; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, keep_until: int | None = None, key: str = "epoch"):
        self.path = Path(path)
        if keep_until is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get(key, 0) <= keep_until]
            self.path.write_text("".join(ln + "\n" for ln in kept))

    def append(self, row: dict) -> None:
        for k, v in row.items():
            if isinstance(v, float) and not math.isfinite(v):
                row[k] = None
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


def check_finite(value: float, what: str, epoch: int, step: int) -> None:
    """Divergence guard: a NaN/inf loss stops the run; the last checkpoint stays as it was.

    Under DDP the value is summed over ranks first, so every rank stops at the same step instead
    of one rank raising while the others wait in the next all-reduce.
    """
    from utils.distributed import all_reduce_sum

    value = all_reduce_sum(value)
    if not math.isfinite(value):
        raise UserError(f"training diverged: {what} is {value} at epoch {epoch}, step {step}; "
                        "the last good checkpoint is kept (lower learning_rate and resume)")


# --- Ctrl-C ---------------------------------------------------------------------------------------

class GracefulInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM becomes a request that `check()` honours at the next step
    boundary, so the checkpoint written on the way out holds a consistent state and resumes
    exactly. A second Ctrl-C stops at once without saving (exit code 130; the previous checkpoint
    is kept). Under DDP the request is shared, so all ranks stop after the same step.

        stop = GracefulInterrupt().start()
        try:
            for step ...:
                ...
                stop.check()      # raises KeyboardInterrupt when asked to stop
        except KeyboardInterrupt:
            save the checkpoint; raise
        finally:
            stop.close()
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def __enter__(self) -> "GracefulInterrupt":
        return self.start()

    def start(self) -> "GracefulInterrupt":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        import sys

        if self.requested:
            self._restore()
            raise SystemExit(130)
        self.requested = True
        print("\ninterrupted: finishing the current step, then saving a checkpoint (Ctrl-C again: stop "
              "without saving)", file=sys.stderr, flush=True)

    def check(self) -> None:
        from utils.distributed import all_reduce_sum

        if all_reduce_sum(float(self.requested)) > 0:
            self.requested = True
            raise KeyboardInterrupt

    def _restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def close(self) -> None:
        self._restore()

    def __exit__(self, *exc) -> None:
        self._restore()
