"""Atomic, code-free checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint is a folder `<run_dir>/<name>/` holding `<part>.safetensors` for every model and
optimiser tensor group plus `state.json` (step counters, RNG states, config). It is assembled in
a temporary sibling folder, fsynced, and renamed over the old one, so a crash or a full disk at
any moment leaves the previous checkpoint whole. Nothing here can execute code on load.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from utils.errors import UserError


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file, flush, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _unlink(p) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def flatten_state(state, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested state (e.g. an optimiser state_dict) into tensors and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, path):
        if isinstance(node, torch.Tensor):
            key = prefix + path
            tensors[key] = node.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[walk(k, path + "/k" + str(i)), walk(v, path + "/" + str(i))]
                                 for i, (k, v) in enumerate(node.items())]}
        if isinstance(node, (list, tuple)):
            return {"__list__" if isinstance(node, list) else "__tuple__":
                    [walk(v, path + "/" + str(i)) for i, v in enumerate(node)]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot checkpoint a {type(node).__name__}")

    return tensors, walk(state, "")


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor]):
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    return skeleton


def save_checkpoint(folder: Path, tensors: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
    """Write `folder/` atomically: one safetensors file per entry of `tensors`, plus state.json.

    `tensors` maps a part name (e.g. "generator", "optim_generator") to a flat tensor dict; use
    `flatten_state` for nested optimiser states and put the skeleton in `state`.
    """
    folder = Path(folder)
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix="." + folder.name + "."))
    except OSError as e:
        raise UserError(f"cannot write checkpoint in {parent}: {e.strerror or e}") from None
    try:
        for part, group in tensors.items():
            group = {k: v.detach().cpu().contiguous() for k, v in group.items()}
            save_file(group, str(tmp / f"{part}.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "state.json", state)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if folder.exists():
            old = parent / ("." + folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _restore_old(folder)
        raise UserError(f"cannot write checkpoint {folder}: {e.strerror or e}; the previous checkpoint is kept") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _restore_old(folder)
        raise


def _restore_old(folder: Path) -> None:
    old = folder.parent / ("." + folder.name + ".old")
    if old.exists() and not folder.exists():
        os.replace(old, folder)


restore_interrupted = _restore_old  # public name: put back a checkpoint a kill left between renames


def load_checkpoint(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a checkpoint folder. Only safetensors and JSON are read; a pickle file is refused."""
    folder = Path(folder)
    _restore_old(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoint {folder}: not found")
    for f in folder.iterdir():
        if f.suffix in (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"):
            raise UserError(f"checkpoint {folder}: refusing {f.name}: pickle-based files can execute code on "
                            "load; only .safetensors and .json are read")
    state_file = folder / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"checkpoint {folder}: state.json missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"checkpoint {folder}: state.json unreadable ({e.__class__.__name__})") from None
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        try:
            tensors[f.stem] = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"checkpoint {folder}: {f.name} is not a valid safetensors file ({e})") from None
    return tensors, state
