"""Bad input ends with one line on stderr and exit code 2, never a traceback; the last good
checkpoint survives a full disk and a diverging run."""
import errno
import json
from pathlib import Path

import mne
import numpy as np
import pytest

import main as cli
from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys, argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = cli.main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    # progress bars may precede it on stderr; the error itself is one line, the last one
    assert [ln for ln in err if "error" in ln.lower()] == err[-1:] and err[-1].startswith("error: "), err
    assert not any("Traceback" in ln for ln in err)
    for n in needles:
        assert n in err[-1], err[-1]


def base_args(data_path, cache_dir, out, *extra):
    args = ["--mode", "training", "--set", f"data_path={data_path}", "--set", f"cache_dir={cache_dir}",
            "--set", f"output_dir={out}", "--set", "data.download=false", "--set", "training.num_threads=1"]
    for e in extra:
        args += ["--set", e]
    return args


@pytest.fixture(scope="module")
def real_raw(data_path):
    return mne.io.read_raw_edf(data_path / "S001" / "S001R04.edf", preload=True, verbose="error")


def write_edf(raw, folder: Path) -> Path:
    """A recording S001R04.edf in a fresh PhysioNet-layout folder, exported with MNE (edfio)."""
    (folder / "S001").mkdir(parents=True, exist_ok=True)
    path = folder / "S001" / "S001R04.edf"
    mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    return path


def one_recording(tmp_path, cache_dir, *extra):
    return base_args(tmp_path / "data", cache_dir, tmp_path / "out", "data.subjects=[1]", "data.runs=[4]",
                     "epochs=1", *extra)


def test_truncated_edf(tmp_path, cache_dir, data_path, capsys):
    src = (data_path / "S001" / "S001R04.edf").read_bytes()
    (tmp_path / "data" / "S001").mkdir(parents=True)
    (tmp_path / "data" / "S001" / "S001R04.edf").write_bytes(src[: len(src) // 2])  # a download cut off halfway
    rc, err = run_cli(capsys, one_recording(tmp_path, cache_dir))
    assert_one_line_error(rc, err, "S001R04.edf", "truncated")


def test_random_bytes_named_edf(tmp_path, cache_dir, capsys):
    (tmp_path / "data" / "S001").mkdir(parents=True)
    (tmp_path / "data" / "S001" / "S001R04.edf").write_bytes(np.random.default_rng(0).bytes(5000))
    rc, err = run_cli(capsys, one_recording(tmp_path, cache_dir))
    assert_one_line_error(rc, err, "S001R04.edf", "not a readable EEG recording")


def test_recording_without_t1_t2_events(tmp_path, cache_dir, real_raw, capsys):
    raw = real_raw.copy().crop(0, 30)
    keep = [i for i, d in enumerate(raw.annotations.description) if d == "T0"]
    raw.set_annotations(raw.annotations[keep])
    write_edf(raw, tmp_path / "data")
    rc, err = run_cli(capsys, one_recording(tmp_path, cache_dir))
    assert_one_line_error(rc, err, "no T1/T2")


def test_window_longer_than_the_recording(tmp_path, cache_dir, real_raw, capsys):
    # 6 s of recording: its only task cue (T2 at 4.2 s) has no full 0-4 s window after it
    write_edf(real_raw.copy().crop(0, 6), tmp_path / "data")
    rc, err = run_cli(capsys, one_recording(tmp_path, cache_dir))
    assert_one_line_error(rc, err, "window", "fits around no T1/T2 event")


def test_empty_selection_after_filtering(tmp_path, cache_dir, data_path, capsys):
    # a subject-wise split of a single subject leaves no training subject
    rc, err = run_cli(capsys, base_args(data_path, cache_dir, tmp_path / "out", "data.subjects=[1]",
                                        "data.runs=[4]", "data.split=subject", "epochs=1"))
    assert_one_line_error(rc, err, "empty")


def test_unwritable_checkpoint_directory(tmp_path, cache_dir, data_path, capsys):
    # we run as root, so permissions do not stop us: put the output folder "inside" a regular file
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file, not a folder")
    rc, err = run_cli(capsys, base_args(data_path, cache_dir, blocker / "inner", "data.subjects=[1]", "epochs=1"))
    assert_one_line_error(rc, err, "not writable")


def test_full_disk_at_checkpoint_time_keeps_previous_checkpoint(tmp_path, cache_dir, data_path, capsys,
                                                                monkeypatch):
    import utils.checkpoint as ckpt

    real_save = ckpt.save_file
    calls = {"n": 0}

    def save_file_until_disk_full(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] > 4:  # the first checkpoint (model, best, optimiser, rng) fits; then the disk is full
            Path(filename).write_bytes(b"\0" * 100)  # half-written file
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_file_until_disk_full)
    out = tmp_path / "out"
    rc, err = run_cli(capsys, base_args(data_path, cache_dir, out, "data.subjects=[1]", "epochs=2",
                                        "classifier.architecture=eegnet", "batch_size=16"))
    assert_one_line_error(rc, err, "No space left on device", "previous checkpoint is kept")
    run = next((out / "classifier").glob("2*"))
    tensors, state = load_checkpoint(run / "checkpoint")
    assert state["counters"]["epoch"] == 1 and set(tensors) >= {"model", "optim_model", "rng"}
    assert not [p for p in run.iterdir() if p.name.startswith(".checkpoint")]  # no temporary leftovers
    # space freed: the run resumes from that checkpoint and finishes
    monkeypatch.setattr(ckpt, "save_file", real_save)
    rc, err = run_cli(capsys, ["--mode", "training", "--resume", str(run)])
    assert rc == 0, err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_diverging_gan_names_epoch_and_step_and_keeps_checkpoint(tmp_path, cache_dir, data_path, capsys,
                                                                 monkeypatch):
    import torch

    import trainers.gan as gan

    real_gp = gan.gradient_penalty
    calls = {"n": 0}

    def gp_that_explodes(*a, **k):
        calls["n"] += 1
        out = real_gp(*a, **k)
        return out * float("nan") if calls["n"] == 9 else out  # 30 training trials, batch 8: epoch 3, step 0

    monkeypatch.setattr(gan, "gradient_penalty", gp_that_explodes)
    out = tmp_path / "out"
    rc, err = run_cli(capsys, base_args(data_path, cache_dir, out, "model_name=gpt2cgan", "data.subjects=[1]",
                                        "epochs=4", "n_embd=16", "n_layer=1", "n_head=2", "batch_size=8",
                                        "gan.critic_steps=1", "gan.critic_width=8", "gan.figure_every=1000"))
    assert_one_line_error(rc, err, "diverged", "critic loss is nan", "epoch 3, step 0", "last good checkpoint")
    run = next((out / "gpt2cgan").glob("2*"))
    tensors, state = load_checkpoint(run / "checkpoint")
    assert state["counters"]["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in tensors["generator"].values())
    assert not (run / "generator.safetensors").exists()  # no final weights from a diverged run


CHEAP_EVALUATION = ["evaluation.augment_trials=[5]", "evaluation.augment_seeds=1", "evaluation.classifier_steps=2",
                    "evaluation.figures=false", "evaluation.augment_per_class=5", "evaluation.n_per_class=5",
                    "evaluation.fd_dims=2", "evaluation.csp_components=2"]


def test_finetune_target_channels_must_match_pretrained_gan(tmp_path, cache_dir, data_path, capsys):
    out = tmp_path / "out"
    tiny = ["data.subjects=[1]", "epochs=1", "batch_size=8"]
    rc, err = run_cli(capsys, base_args(data_path, cache_dir, out, "model_name=classifier",
                                        "classifier.architecture=eegnet", *tiny))
    assert rc == 0, err
    # the GAN is pretrained on three channels only
    rc, err = run_cli(capsys, base_args(data_path, cache_dir, out, "model_name=gpt2cgan", 'data.channels=["C3","Cz","C4"]',
                                        "n_embd=16", "n_layer=1", "n_head=2", "gan.critic_steps=1",
                                        "gan.critic_width=8", "gan.figure_every=1000", *tiny, *CHEAP_EVALUATION))
    assert rc == 0, err
    rc, err = run_cli(capsys, base_args(data_path, cache_dir, out, "model_name=gpt2xcnn",
                                        f"pretrained_finetune_path={out}/gpt2cgan/latest",
                                        f"pretrained_classifier_path={out}/classifier/latest", *tiny))
    assert_one_line_error(rc, err, "pretrained GAN", "3 channels", "21", "data.channels")
