"""Fuzzed malformed configs: every one ends in exit code 2 with one line, or is a valid config.

Training itself is replaced by a recorder (the configs, not the trainers, are under test), so
100+ cases run in-process in about a second; a few more go through a real subprocess.
"""
import copy
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

import main as cli
from config.schema import SCHEMA, Spec, defaults, validate

ROOT = Path(__file__).resolve().parents[2]
N_CASES = 160


def _leaves(schema, prefix=()):
    for k, v in schema.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


LEAVES = list(_leaves(SCHEMA))
SECTIONS = [k for k, v in SCHEMA.items() if isinstance(v, dict)]
ODD_VALUES = [None, True, False, 0, -1, 1, 2**63, -2**63, 1e308, -1e308, 0.5, -0.0, "", "x", "motor", "1",
              [], [1], ["a"], [None], {}, {"a": 1}, [[1]], 1e-320, "NaN", 3.0, 10000000]


def _get_parent(cfg, path):
    node = cfg
    for p in path[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):  # an earlier mutation replaced the section: mutate nothing
            return {}
    return node


def _mutate_value(rng, spec: Spec):
    kind = rng.randrange(5)
    if kind == 0:  # out of range
        if spec.lo is not None:
            return spec.lo - rng.choice([1, 0.5, 1e6])
        if spec.hi is not None:
            return spec.hi + rng.choice([1, 0.5, 1e6])
    if kind == 1 and spec.choices:
        return rng.choice(spec.choices).upper() + "_"
    if kind == 2:  # type swap of the default
        d = spec.default
        return rng.choice([str(d), [d], {"v": d}, (d is None) or None, 1 if isinstance(d, bool) else True])
    if kind == 3 and spec.item is not None:
        return rng.choice([[0], [1, "2"], [True], [-5], [1.5], [[1]], [200]])
    return rng.choice(ODD_VALUES)


def make_case(i: int) -> tuple[str, list[str]]:
    """(config file text, --set overrides) for fuzz case i; deterministic in i."""
    rng = random.Random(1000 + i)
    cfg = defaults()
    sets: list[str] = []
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        path, spec = rng.choice(LEAVES)
        if op == 0:  # delete a key (defaults fill it: still valid)
            _get_parent(cfg, path).pop(path[-1], None)
        elif op in (1, 2, 3):
            _get_parent(cfg, path)[path[-1]] = _mutate_value(rng, spec)
        elif op == 4:  # unknown key, top level or nested
            target = cfg if rng.random() < 0.5 else cfg.get(rng.choice(SECTIONS))
            target = target if isinstance(target, dict) else cfg
            target[rng.choice(["epoch", "lr", "n_embed", "Batch_size", "ünïcode", ""])] = 1
        elif op == 5:  # a section of the wrong type
            cfg[rng.choice(SECTIONS)] = rng.choice([[], 1, "data", None, True])
        elif op == 6:  # bad --set override
            key = ".".join(path)
            sets.append(rng.choice([f"{key}={json.dumps(_mutate_value(rng, spec))}", key, f"{key}.x=1",
                                    f"={1}", f"nope.{key}=1", f"{path[0]}={{", f"{key}=[1,"]))
        else:  # a NaN / infinity sneaks in through JSON's extensions
            _get_parent(cfg, path)[path[-1]] = rng.choice([math.nan, math.inf, -math.inf])
    text = json.dumps(cfg, allow_nan=True)
    garbage = rng.random()
    if garbage < 0.08:
        text = text[: rng.randrange(len(text))]  # truncated file
    elif garbage < 0.12:
        text = rng.choice(["", "[]", "null", "42", '"config"', "{'gpu': true}", "\ufeff{}", "{}{}",
                           '{"gpu": tru}', '{"data": {"tmax": 1e999}}'])
    return text, sets


@pytest.fixture
def recorder(monkeypatch):
    """Stand-in for training: remember the config main.py would train with."""
    import trainers.common
    import utils.runtime

    seen = []

    def fake_run_training(cfg, trainer, device, run_dir=None, resume=False, is_main=True):
        seen.append(cfg)
        return Path("unused"), {}

    monkeypatch.setattr(trainers.common, "run_training", fake_run_training)
    monkeypatch.setattr(utils.runtime, "set_threads", lambda cfg: 1)
    for name in cli.TRAINERS:
        monkeypatch.setitem(cli.TRAINERS, name, "trainers.common")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    return seen


def test_fuzzed_configs_exit_2_or_validate(tmp_path, capsys, recorder):
    codes = {0: 0, 2: 0}
    for i in range(N_CASES):
        text, sets = make_case(i)
        f = tmp_path / f"case{i}.json"
        f.write_text(text, encoding="utf-8")
        argv = ["--mode", "training", "--config", str(f)] + [a for s in sets for a in ("--set", s)]
        n_before = len(recorder)
        rc = cli.main(argv)  # any exception escaping fails the test
        out = capsys.readouterr()
        assert rc in (0, 2), (i, rc, out.err)
        codes[rc] += 1
        if rc == 2:
            lines = out.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (i, out.err)
            assert len(recorder) == n_before
        else:
            cfg = recorder[-1]
            assert validate(copy.deepcopy(cfg)) == cfg  # what would train is a valid, complete config
            assert all(math.isfinite(v) for v in _numbers(cfg)), (i, cfg)
    assert codes[2] >= 100, codes  # the target: at least 100 malformed configs refused cleanly
    assert codes[0] >= 1, codes  # deletions only: defaults fill in, so some cases are valid


def _numbers(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _numbers(v)
    elif isinstance(node, list):
        for v in node:
            yield from _numbers(v)
    elif isinstance(node, float):
        yield node


@pytest.mark.parametrize("i", [3, 42, 120])
def test_fuzzed_configs_in_a_real_process_have_no_traceback(tmp_path, i):
    text, sets = make_case(i)
    # keep only cases that must be refused before any training starts
    try:
        from config.schema import apply_overrides

        validate(apply_overrides(json.loads(text), sets))
        pytest.skip("this case is a valid config")  # pragma: no cover - the chosen cases are all malformed
    except Exception:
        pass
    f = tmp_path / "bad.json"
    f.write_text(text, encoding="utf-8")
    argv = [sys.executable, "main.py", "--mode", "training", "--config", str(f)]
    argv += [a for s in sets for a in ("--set", s)]
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
