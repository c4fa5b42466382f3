"""Config validation end to end: every kind of bad input exits 2 with one line naming the key."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config.schema import ALIASES, SCHEMA, apply_overrides, defaults, load_config, reference_rows, validate
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def run_main(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, "main.py", "--mode", "training", *args], cwd=cwd,
                          capture_output=True, timeout=120)
    # Decoded by hand: text=True would turn a progress bar's '\r' into a newline.
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def run_inprocess(capsys, *args):
    """Same CLI path without a new interpreter (torch import) per case: returns (exit code, stderr)."""
    import main

    rc = main.main(["--mode", "training", *args])
    return subprocess.CompletedProcess(args, rc, "", capsys.readouterr().err)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])
    # What a terminal shows: a progress bar cleared with '\r' before the error is not a line.
    lines = [ln.split("\r")[-1] for ln in proc.stderr.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def write(tmp_path, text: str) -> str:
    p = tmp_path / "config.json"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, needles", [
    ('{"epochs": 3,', ("malformed JSON", "line 1")),
    ('{"epochz": 3}', ("'epochz'", "unknown key")),
    ('{"learning_rate": -0.1}', ("'learning_rate'", "minimum")),
])
def test_bad_config_file_exits_2_with_one_line(tmp_path, text, needles):
    """A real process: exit status 2, one stderr line, no traceback."""
    assert_one_line_error(run_main("--config", write(tmp_path, text)), *needles)


@pytest.mark.parametrize("text, needles", [
    ('{"data": {"tmaxx": 3}}', ("'data.tmaxx'", "unknown key")),
    ('{"batch_size": "32"}', ("'batch_size'", "integer")),
    ('{"gpu": 1}', ("'gpu'", "boolean")),
    ('{"classifier": {"dropout": 1.5}}', ("'classifier.dropout'", "maximum")),
    ('{"classifier": {"architecture": "resnet"}}', ("'classifier.architecture'", "not one of")),
    ('{"classifier": {"patience": 0}}', ("'classifier.patience'", "minimum")),
    ('{"finetune": {"reinit": ["critic", "head"]}}', ("'finetune.reinit'", '"head"', "'output' and 'class'")),
    ('{"finetune": {"reinit": "always"}}', ("'finetune.reinit'", "'auto'")),
    ('[1, 2]', ("expected a JSON object",)),
])
def test_bad_config_values_exit_2_with_one_line(tmp_path, capsys, text, needles):
    assert_one_line_error(run_inprocess(capsys, "--config", write(tmp_path, text)), *needles)


def test_bad_set_in_a_real_process():
    assert_one_line_error(run_main("--set", "epochs=abc"), "'epochs'", "integer")


@pytest.mark.parametrize("override, needles", [
    ("epochs=abc", ("'epochs'", "integer")),
    ("nosuchkey=1", ("nosuchkey", "unknown key")),
    ("data.l_freq=50", ("data.l_freq",)),
    ("classifier=1", ("classifier", "section")),
    ("epochs", ("KEY=VALUE",)),
])
def test_bad_set_exits_2_with_one_line(capsys, override, needles):
    assert_one_line_error(run_inprocess(capsys, "--set", override), *needles)


def test_missing_config_file(tmp_path, capsys):
    assert_one_line_error(run_inprocess(capsys, "--config", str(tmp_path / "nope.json")), "not found")


def test_epoches_alias_is_accepted():
    assert validate({"epoches": 7})["epochs"] == 7
    assert validate(apply_overrides({}, ["epoches=5"]))["epochs"] == 5
    with pytest.raises(UserError, match="same setting"):
        validate({"epoches": 7, "epochs": 8})
    assert ALIASES == {"epoches": "epochs"}


def test_set_overrides_use_the_same_checks():
    cfg = validate(apply_overrides({}, ["classifier.architecture=eegnet", "data.subjects=[1,2]", "learning_rate=1"]))
    assert cfg["classifier"]["architecture"] == "eegnet" and cfg["data"]["subjects"] == [1, 2]
    assert isinstance(cfg["learning_rate"], float)
    with pytest.raises(UserError, match="data.subjects\\[1\\]"):
        validate(apply_overrides({}, ["data.subjects=[1,200]"]))


def test_shipped_config_matches_schema_defaults():
    shipped = json.loads((ROOT / "config" / "config.json").read_text())
    d = defaults()
    assert set(shipped) == set(d)
    for k in d:
        if isinstance(d[k], dict):
            assert set(shipped[k]) == set(d[k]), k
    assert load_config(ROOT / "config" / "config.json") == validate(shipped)


def test_reference_covers_every_key():
    rows = reference_rows()
    keys = {r[0] for r in rows}

    def walk(schema, prefix=""):
        for k, v in schema.items():
            if isinstance(v, dict):
                yield from walk(v, prefix + k + ".")
            else:
                yield prefix + k

    assert keys == set(walk(SCHEMA))
    out = subprocess.run([sys.executable, "-m", "config.schema"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    assert "| `classifier.architecture` |" in out.stdout and "| `epochs` |" in out.stdout
    # The README's reference is that table: regenerate it when a key is added.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- section: config -->")[1].split("<!-- /section: config -->")[0]
    missing = [k for k in sorted(keys) if f"| `{k}` |" not in section]
    assert not missing, f"README config reference lacks {missing}; paste `python -m config.schema` into it"
