"""trainers.common: the run-level step a trainer may add after its rounds."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from trainers.common import run_training


def _trainer(calls):
    def train_round(cfg, rd, device, seed, resume=False):
        rd.mkdir(parents=True, exist_ok=True)
        return {"score": float(seed)}

    return SimpleNamespace(train_round=train_round, finish_run=lambda run_dir, rds: calls.append((run_dir, rds)))


def test_finish_run_is_called_once_after_all_rounds_of_a_multi_round_run(make_cfg):
    calls = []
    run_dir, summary = run_training(make_cfg("rounds=3"), _trainer(calls), torch.device("cpu"))
    assert calls == [(run_dir, [run_dir / f"round-{i}" for i in range(3)])]
    assert summary["score_mean"] == summary["per_round"][1]["score"]  # seeds s, s+1, s+2

    single = []
    run_training(make_cfg("rounds=1"), _trainer(single), torch.device("cpu"))
    assert single == []  # one round: its own report is the run's
