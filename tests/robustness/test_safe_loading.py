"""Checkpoints never execute code on load: a pickle payload is refused and never runs.

Every payload here would create a marker file when unpickled; each test asserts the clear
refusal AND that the marker does not exist.
"""
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import main as cli
from trainers.common import load_training_state, save_training_state
from utils.errors import UserError


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_bytes(marker: Path) -> bytes:
    return pickle.dumps({"weight": Payload(marker)})


def test_payload_really_executes_when_unpickled(tmp_path):
    """The payload is live: unpickling it does create the marker (so its absence below means something)."""
    marker = tmp_path / "pwned"
    pickle.loads(evil_bytes(marker))
    assert marker.exists()


def _tiny_state(folder: Path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_training_state(folder, {"model": model}, {"model": opt}, counters={"epoch": 1})
    return model, opt


def test_pt_file_in_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    model, opt = _tiny_state(tmp_path)
    torch.save({"x": Payload(marker)}, tmp_path / "checkpoint" / "extra.pt")
    with pytest.raises(UserError, match=r"refusing extra\.pt: pickle"):
        load_training_state(tmp_path, {"model": model}, {"model": opt})
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_in_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    model, opt = _tiny_state(tmp_path)
    (tmp_path / "checkpoint" / "model.safetensors").write_bytes(evil_bytes(marker))
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_training_state(tmp_path, {"model": model}, {"model": opt})
    assert not marker.exists()


def test_torch_save_disguised_as_safetensors_in_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    model, opt = _tiny_state(tmp_path)
    torch.save({"weight": Payload(marker)}, tmp_path / "checkpoint" / "optim_model.safetensors")
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_training_state(tmp_path, {"model": model}, {"model": opt})
    assert not marker.exists()


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, data_path, cache_dir):
    out = tmp_path_factory.mktemp("safe") / "out"
    rc = cli.main(["--mode", "training", "--set", f"data_path={data_path}", "--set", f"cache_dir={cache_dir}",
                   "--set", f"output_dir={out}", "--set", "data.download=false", "--set", "data.subjects=[1]",
                   "--set", "epochs=1", "--set", "classifier.architecture=eegnet", "--set", "training.num_threads=1"])
    assert rc == 0
    return next((out / "classifier").glob("2*"))


def test_classifier_weights_replaced_by_pickle_are_refused(classifier_run, tmp_path, capsys):
    from trainers.classifier import load_classifier

    run = tmp_path / "run"
    shutil.copytree(classifier_run, run)
    marker = tmp_path / "pwned"
    (run / "classifier.safetensors").write_bytes(evil_bytes(marker))
    with pytest.raises(UserError, match="cannot load the model"):
        load_classifier(run)
    assert not marker.exists()


def test_resume_from_a_poisoned_checkpoint_is_one_line_error(classifier_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(classifier_run, run)
    marker = tmp_path / "pwned"
    (run / "checkpoint" / "model.safetensors").write_bytes(evil_bytes(marker))
    for f in ("round_summary.json", "classifier.safetensors", "summary.json"):  # as if interrupted
        (run / f).unlink()
    capsys.readouterr()
    assert cli.main(["--mode", "training", "--resume", str(run), "--set", "epochs=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # progress bars may precede it on stderr; the error itself is one line, the last one
    assert [ln for ln in err if "error" in ln] == err[-1:] and "not a valid safetensors file" in err[-1]
    assert not any("Traceback" in ln for ln in err)
    assert not marker.exists()
