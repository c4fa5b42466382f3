"""Loader on the real EEGBCI files: shapes, labels, event mapping, leak-free splits, the cache, bad data."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mne
import numpy as np
import pytest

import data.dataset as dataset
from data.dataset import Standardizer, load_recordings, load_splits
from data.eegbci import MOTOR_CHANNELS
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
# SOURCE.md: trials per subject over imagery runs 4+8+12 (T1 left / T2 right).
IMAGERY_COUNTS = {1: (23, 22), 5: (21, 24), 9: (24, 21)}


@pytest.mark.parametrize("subject", sorted(IMAGERY_COUNTS))
def test_shapes_and_class_counts_match_source(make_cfg, subject):
    es = load_recordings(make_cfg(f"data.subjects=[{subject}]"), progress=False)
    assert es.X.shape == (45, 21, 640) and es.X.dtype == np.float32
    assert es.ch_names == list(MOTOR_CHANNELS) and es.sfreq == 160.0
    assert (int((es.y == 0).sum()), int((es.y == 1).sum())) == IMAGERY_COUNTS[subject]
    assert sorted(set(es.run.tolist())) == [4, 8, 12] and set(es.subject.tolist()) == {subject}
    # Volts, band-passed: tens of microvolts, zero-mean.
    assert 5e-6 < es.X.std() < 2e-4 and abs(es.X.mean()) < 1e-6
    assert es.ch_pos.shape == (21, 3) and np.isfinite(es.ch_pos).all()


def test_event_mapping_t1_left_t2_right(make_cfg, data_path):
    es = load_recordings(make_cfg("data.subjects=[1]", "data.runs=[4]"), progress=False)
    raw = mne.io.read_raw_edf(data_path / "S001" / "S001R04.edf", verbose="error")
    desc = [d for d in raw.annotations.description if d in ("T1", "T2")]
    assert es.y.tolist() == [0 if d == "T1" else 1 for d in desc]


def test_all_channels_and_execution_task(make_cfg):
    es = load_recordings(make_cfg("data.subjects=[2]", "data.task=execution", "data.channels=\"all\""), progress=False)
    assert es.X.shape == (45, 64, 640) and sorted(set(es.run.tolist())) == [3, 7, 11]


def test_run_split_has_no_leak(make_cfg):
    cfg = make_cfg("data.subjects=[1,2]")
    sp = load_splits(cfg, progress=False)
    assert set(sp.train.run.tolist()) | set(sp.val.run.tolist()) <= {4, 8}
    assert set(sp.test.run.tolist()) == {12}
    assert len(sp.train) + len(sp.val) + len(sp.test) == 90 and len(sp.test) == 30
    # Validation is carved out of the training runs: no trial is in both.
    train_keys = {(s, r, x.tobytes()) for s, r, x in zip(sp.train.subject, sp.train.run, sp.train.X[:, 0, :8])}
    val_keys = {(s, r, x.tobytes()) for s, r, x in zip(sp.val.subject, sp.val.run, sp.val.X[:, 0, :8])}
    assert not train_keys & val_keys and len(val_keys) == len(sp.val) == 12
    assert sp.info["train_runs"] == [4, 8] and sp.info["test_runs"] == [12]


def test_pooled_splits_train_on_validation_trials_too(make_cfg):
    cfg = make_cfg("data.subjects=[1,2]")
    sp = load_splits(cfg, progress=False)
    po = sp.pooled()
    assert len(po.train) == len(sp.train) + len(sp.val) and len(po.val) == 0 and po.test is sp.test
    np.testing.assert_array_equal(po.train.X, np.concatenate([sp.train.X, sp.val.X]))
    for k in ("y", "subject", "run"):
        np.testing.assert_array_equal(getattr(po.train, k), np.concatenate([getattr(sp.train, k), getattr(sp.val, k)]))
    # The rest epochs of each (subject, run) recording are there once, as in the unsplit training runs.
    data = load_recordings(cfg, cfg["data"], progress=False)
    unsplit = data.subset(np.isin(data.run, [4, 8]))
    assert unsplit.rest is not None and len(sp.val.rest) > 0
    assert len(po.train.rest) == len(unsplit.rest) < len(sp.train.rest) + len(sp.val.rest)
    assert po.info["n_train"] == len(po.train) and po.info["n_val"] == 0 and sp.info["n_val"] == len(sp.val)
    assert po.pooled() is po


def test_subject_split_has_no_leak(make_cfg):
    sp = load_splits(make_cfg("data.subjects=[1,2,3]", "data.split=subject", "data.test_subjects=[3]"),
                     progress=False)
    assert set(sp.train.subject.tolist()) | set(sp.val.subject.tolist()) == {1, 2}
    assert set(sp.test.subject.tolist()) == {3} and len(sp.test) == 45
    with pytest.raises(UserError, match="also training subjects"):
        make_cfg("data.split=subject", "data.train_subjects=[1,3]", "data.test_subjects=[3]")


def test_standardizer_uses_training_statistics_only(make_cfg):
    sp = load_splits(make_cfg("data.subjects=[1]"), progress=False)
    std = Standardizer.fit(sp.train.X)
    Z = std.transform(sp.train.X)
    assert np.allclose(Z.mean(axis=(0, 2)), 0, atol=1e-3) and np.allclose(Z.std(axis=(0, 2)), 1, atol=1e-3)
    assert not np.allclose(std.transform(sp.test.X).std(axis=(0, 2)), 1, atol=1e-3)
    assert np.allclose(std.inverse(Z), sp.train.X, atol=1e-9)


def test_cache_hit_skips_mne_and_is_faster(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("data.subjects=[4]", f"cache_dir=\"{tmp_path / 'c'}\"")
    t = time.perf_counter()
    cold = load_recordings(cfg, progress=False)
    t_cold = time.perf_counter() - t

    def no_mne(*a, **k):
        raise AssertionError("cache miss: MNE read a recording")

    monkeypatch.setattr(dataset, "read_epochs", no_mne)
    t = time.perf_counter()
    warm = load_recordings(cfg, progress=False)
    t_warm = time.perf_counter() - t
    assert np.array_equal(cold.X, warm.X) and np.array_equal(cold.y, warm.y) and cold.ch_names == warm.ch_names
    assert t_warm * 3 < t_cold
    # A changed preprocessing parameter misses.
    with pytest.raises(AssertionError, match="cache miss"):
        load_recordings(make_cfg("data.subjects=[4]", f"cache_dir=\"{tmp_path / 'c'}\"", "data.l_freq=8"),
                        progress=False)


def test_cache_invalidated_by_touched_file(make_cfg, data_path, tmp_path, monkeypatch):
    (tmp_path / "d" / "S001").mkdir(parents=True)
    edf = tmp_path / "d" / "S001" / "S001R04.edf"
    shutil.copy(data_path / "S001" / "S001R04.edf", edf)
    cfg = make_cfg("data.subjects=[1]", "data.runs=[4]", f"data_path=\"{tmp_path / 'd'}\"",
                   f"cache_dir=\"{tmp_path / 'c'}\"")
    load_recordings(cfg, progress=False)
    calls = []
    real = dataset.read_epochs
    monkeypatch.setattr(dataset, "read_epochs", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_recordings(cfg, progress=False)
    assert calls == []
    st = edf.stat()
    os.utime(edf, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    load_recordings(cfg, progress=False)
    assert calls == [1]


# --- bad data: exit code 2, one line, through the CLI -----------------------------------------------

def run_main(*sets):
    args = [sys.executable, "main.py", "--mode", "training", "--set", "data.download=false"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=120)
    # Decoded by hand: text=True would turn a progress bar's '\r' into a newline.
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def assert_one_line(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-800:]
    # What a terminal shows: a progress bar cleared with '\r' before the error is not a line.
    lines = [ln.split("\r")[-1] for ln in proc.stderr.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_data_directory(tmp_path):
    assert_one_line(run_main(f"data_path={tmp_path / 'nowhere'}", f"cache_dir={tmp_path / 'c'}"),
                    "S001R04", "not found", str(tmp_path / "nowhere"))


def test_file_that_is_not_edf(tmp_path):
    (tmp_path / "S001").mkdir()
    (tmp_path / "S001" / "S001R04.edf").write_bytes(b"this is not an EDF file\x00" * 100)
    assert_one_line(run_main(f"data_path={tmp_path}", "data.subjects=[1]", "data.runs=[4]",
                             f"cache_dir={tmp_path / 'c'}"), "S001R04.edf", "not a readable EEG recording")


def _write_edf(path: Path, sfreq: float, seed: int, seconds: float = 40.0,
               events=((2.0, "T1"), (10.0, "T2"), (18.0, "T1"), (26.0, "T2"))) -> None:
    """A 3-channel (C3, Cz, C4) EDF+ of noise with 4 s annotations at the given (onset, code) pairs."""
    rng = np.random.default_rng(seed)
    raw = mne.io.RawArray(rng.normal(0, 2e-5, (3, int(seconds * sfreq))), mne.create_info(["C3", "Cz", "C4"], sfreq, "eeg"),
                          verbose="error")
    raw.set_annotations(mne.Annotations([t for t, _ in events], [4.0] * len(events), [c for _, c in events]))
    path.parent.mkdir(parents=True, exist_ok=True)
    mne.export.export_raw(path, raw, fmt="edf", verbose="error")


def test_recording_without_t1_t2_events(tmp_path):
    _write_edf(tmp_path / "S001" / "S001R04.edf", 160.0, 0, seconds=30.0,
               events=((0.0, "T0"), (10.0, "T0"), (20.0, "T0")))
    assert_one_line(run_main(f"data_path={tmp_path}", "data.subjects=[1]", "data.runs=[4]",
                             'data.channels=["C3","Cz","C4"]', f"cache_dir={tmp_path / 'c'}"),
                    "S001R04.edf", "no T1/T2")


def test_recordings_at_another_rate_are_resampled_to_the_common_one(make_cfg, tmp_path, capsys):
    for s, sfreq in ((1, 160.0), (2, 160.0), (3, 128.0)):
        _write_edf(tmp_path / f"S{s:03d}" / f"S{s:03d}R04.edf", sfreq, s)
    cfg = make_cfg(f"data_path={tmp_path}", "data.subjects=[1,2,3]", "data.runs=[4]", 'data.channels=["C3","Cz","C4"]',
                   f"cache_dir={tmp_path / 'c'}")
    ep = load_recordings(cfg, progress=False)
    assert ep.sfreq == 160.0 and ep.X.shape == (12, 3, 640)
    assert "S003" in capsys.readouterr().err
    # The resampled recording keeps its signal: same power per channel as read at its own rate.
    own = dataset.read_epochs(tmp_path / "S003" / "S003R04.edf", dataset.Preprocessing.from_config(cfg["data"]))
    np.testing.assert_allclose(ep.X[ep.subject == 3].var(-1).mean(), own["X"].var(-1).mean(), rtol=0.05)
    # An explicit rate applies to every recording.
    cfg = make_cfg(f"data_path={tmp_path}", "data.subjects=[1,2,3]", "data.runs=[4]", 'data.channels=["C3","Cz","C4"]',
                   f"cache_dir={tmp_path / 'c'}", "data.resample=128")
    assert load_recordings(cfg, progress=False).X.shape == (12, 3, 512)
