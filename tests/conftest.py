"""Shared fixtures. Real-data tests read EEGMMIDB_PATH (CI: ../shared/data/eegmmidb) and fail,
never skip, when it is missing."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("EEGMMIDB_PATH", ROOT.parent / "shared" / "data" / "eegmmidb"))


@pytest.fixture(scope="session")
def data_path() -> Path:
    if not (DATA / "S001" / "S001R04.edf").is_file():
        pytest.fail(f"real EEGMMIDB recordings not found at {DATA}; set EEGMMIDB_PATH")
    return DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One epoch cache for the whole session, inside pytest's temp dir (never beside the data)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(data_path, cache_dir, tmp_path):
    """Validated config with test-friendly defaults; pass --set style overrides."""
    from config.schema import apply_overrides, validate

    def make(*overrides, **sections):
        base = {"data_path": str(data_path), "cache_dir": str(cache_dir), "output_dir": str(tmp_path / "checkpoints"),
                "data": {"download": False}}
        for k, v in sections.items():
            base[k] = v
        return validate(apply_overrides(base, list(overrides)))

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small CNN steps on a shared 2-core machine: a second thread mostly waits and slows them ~10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
