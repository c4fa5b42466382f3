"""On-disk cache of preprocessed epochs, one file per recording.

The key hashes the preprocessing parameters and the source file's identity (resolved path, size,
mtime), so a changed parameter or a touched file misses. Entries are plain `.npz` (no pickle)
written atomically, and live in the project's own `cache_dir`, never beside the data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

CACHE_VERSION = 1


def cache_key(path: Path, params) -> str:
    st = path.stat()
    ident = {"v": CACHE_VERSION, "path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "params": dataclasses.asdict(params) if dataclasses.is_dataclass(params) else params}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load(cache_dir: Path, key: str) -> dict | None:
    f = Path(cache_dir) / f"{key}.npz"
    if not f.is_file():
        return None
    try:
        with np.load(f, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except Exception:  # a damaged entry is a miss, rebuilt below
        return None
    out["sfreq"] = float(out["sfreq"])
    out["ch_names"] = [str(c) for c in out["ch_names"]]
    return out


def save(cache_dir: Path, key: str, item: dict) -> None:
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{k: (np.array(v) if k != "ch_names" else np.array(v, dtype=str)) for k, v in item.items()})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, cache_dir / f"{key}.npz")
    except OSError:
        # A cache that cannot be written only costs speed.
        try:
            os.unlink(tmp)
        except Exception:
            pass
