"""Classifier trainer on real EEG: learns above chance (and not on shuffled labels), writes the
run folder, loads back, repeats rounds, resumes bit-identically, falls back from a missing GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import trainers.classifier as clf
from data.dataset import load_splits
from trainers.common import run_training

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are small: one thread is fastest and immune to oversubscribed CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
# Small and fast: the STFT CNN on four subjects with Euclidean alignment, pooled training on runs
# 4+8, test on run 12 (60 trials). Seeds 0-5 gave 0.77-0.82 with true labels and 0.27-0.57 with
# labels made independent of the truth.
SMALL = ("classifier.architecture=stft", "data.subjects=[1,2,4,7]", "epochs=15", "batch_size=16",
         "classifier.alignment=euclidean")


def test_learns_above_chance_and_not_from_shuffled_labels(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*SMALL)
    real = clf.train_round(cfg, tmp_path / "real", CPU, seed=0)
    assert real["test_accuracy"] >= 0.7, real

    def shuffled(*a, **k):
        # Half of each class relabelled: training labels carry no information about the truth
        # (a plain permutation can agree with it by chance, which a strong model then learns).
        sp = load_splits(*a, **k)
        rng = np.random.default_rng(123)
        for es in (sp.train, sp.val):
            y = es.y.copy()
            for c in (0, 1):
                idx = rng.permutation(np.flatnonzero(es.y == c))
                y[idx[: len(idx) // 2]] = 1 - c
            es.y = y
        return sp

    monkeypatch.setattr(clf, "load_splits", shuffled)
    shuf = clf.train_round(cfg, tmp_path / "shuf", CPU, seed=0)
    assert shuf["test_accuracy"] <= 0.65, shuf
    assert real["test_accuracy"] - shuf["test_accuracy"] >= 0.15


def test_run_folder_contents_and_load_classifier(make_cfg):
    cfg = make_cfg("classifier.architecture=stft", "data.subjects=[1]", "epochs=3")
    run_dir, summary = run_training(cfg, clf, CPU)
    for f in ("config.json", "summary.json", "metrics.jsonl", "classifier.safetensors", "classifier.json",
              "curves.png", "checkpoint/state.json", "checkpoint/model.safetensors", "checkpoint/best.safetensors",
              "checkpoint/optim_model.safetensors"):
        assert (run_dir / f).is_file(), f
    s = json.loads((run_dir / "summary.json").read_text())
    for k in ("model_name", "epochs_completed", "test_accuracy", "wall_time_s", "best_val_accuracy", "n_train",
              "n_val", "n_test", "train_samples_per_s", "s_per_epoch", "test_accuracy_per_subject"):
        assert k in s, k
    assert s["model_name"] == "classifier" and s["epochs_completed"] == 3
    assert (s["n_train"], s["n_val"], s["n_test"]) == (24, 6, 15)
    assert json.loads((run_dir / "config.json").read_text()) == cfg
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"} <= set(rows[0])
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_file(str(run_dir / "classifier.safetensors"))
    latest = Path(cfg["output_dir"]) / "classifier" / "latest"
    assert latest.resolve() == run_dir.resolve()

    model, meta = clf.load_classifier(latest)
    assert "ensemble" not in clf.load_classifier(latest, all_rounds=True)[1]  # one round: the model itself
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert meta["architecture"] == "stft" and meta["n_chans"] == 21 and meta["n_times"] == 640
    # The reloaded model reproduces the reported test accuracy on the untouched test split.
    sp = load_splits(cfg, progress=False)
    logits = model(torch.from_numpy(meta["standardizer"].transform(sp.test.X)))
    acc = float((logits.argmax(1).numpy() == sp.test.y).mean())
    assert acc == pytest.approx(s["test_accuracy"])


def test_rounds_give_per_round_values_and_mean_std(make_cfg):
    cfg = make_cfg("classifier.architecture=stft", "data.subjects=[1]", "epochs=2", "rounds=2")
    run_dir, s = run_training(cfg, clf, CPU)
    assert [r["seed"] for r in s["per_round"]] == [cfg["seed"], cfg["seed"] + 1]
    accs = [r["test_accuracy"] for r in s["per_round"]]
    assert s["test_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert s["test_accuracy_std"] == pytest.approx(np.std(accs))
    assert (run_dir / "round-0" / "classifier.safetensors").is_file()
    assert (run_dir / "round-1" / "metrics.jsonl").is_file()
    model, meta = clf.load_classifier(run_dir)  # a multi-round run loads round-0
    assert "ensemble" not in meta
    # finetune.classifier_rounds=all: every round's model read as one, taking round-0's units; each member
    # sees the trials in its own units (the rounds' training splits, so their standardizers, differ).
    ens, emeta = clf.load_classifier(run_dir, all_rounds=True)
    assert emeta["ensemble"] == 2 and not any(p.requires_grad for p in ens.parameters())
    X = load_splits(cfg, progress=False).test.X
    members = [clf._load_one_classifier(run_dir, run_dir / f"round-{i}", CPU) for i in (0, 1)]
    assert not np.allclose(members[0][1]["standardizer"].mean, members[1][1]["standardizer"].mean)
    expected = torch.stack([torch.log_softmax(m(torch.from_numpy(mt["standardizer"].transform(X))), -1)
                            for m, mt in members]).mean(0)
    got = ens(torch.from_numpy(meta["standardizer"].transform(X)))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)



def test_aligned_rounds_read_as_one_whiten_each_trial_by_its_subject(make_cfg):
    """A classifier trained with Euclidean alignment, read for trials of known subjects (what fine-tuning a
    subject-conditioned generator needs): each round whitens every trial with its own whitener of the
    trial's subject, then standardizes it as its training trials were; the ensemble's output is the mean of
    the rounds' log-probabilities on the trials so fed. Without subjects, or for a subject the run never
    saw, it cannot be read as one."""
    from utils.errors import UserError

    cfg = make_cfg("classifier.architecture=stft", 'data.channels=["C3","Cz","C4"]', "data.subjects=[1,2]",
                   "classifier.alignment=euclidean", "epochs=2", "rounds=2")
    run_dir, _ = run_training(cfg, clf, CPU)
    members = [clf._load_one_classifier(run_dir, run_dir / f"round-{i}", CPU) for i in (0, 1)]
    test = load_splits(cfg, progress=False).test
    expected = []
    for model, mt in members:
        W = {k: np.asarray(w, np.float32) for k, w in mt["alignment_whiteners"].items()}
        Xw = np.stack([W[f"S{int(s):03d}"] @ x for x, s in zip(test.X, test.subject)])
        expected.append(torch.log_softmax(model(torch.from_numpy(mt["standardizer"].transform(Xw))), -1))
    assert not np.allclose(members[0][1]["alignment_whiteners"]["S001"], members[1][1]["alignment_whiteners"]["S001"])
    ens, meta = clf.load_classifier(run_dir, all_rounds=True, subjects=[2, 1])  # indices into [2, 1]
    assert meta["ensemble"] == 2 and ens.aligned
    index = torch.as_tensor([0 if s == 2 else 1 for s in test.subject])
    got = ens(torch.from_numpy(meta["standardizer"].transform(test.X)), index)
    torch.testing.assert_close(got, torch.stack(expected).mean(0), rtol=1e-4, atol=1e-4)
    one, one_meta = clf.load_classifier(run_dir, subjects=[1, 2])  # round-0 alone, whitening itself
    assert one_meta["ensemble"] == 1 and one.aligned
    with pytest.raises(UserError, match="known subjects"):
        clf.load_classifier(run_dir, all_rounds=True)
    with pytest.raises(UserError, match="S003"):
        clf.load_classifier(run_dir, all_rounds=True, subjects=[1, 3])

def test_interrupt_then_resume_continues_bit_identically(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("classifier.architecture=stft", "data.subjects=[1]", "classifier.augment_shift_s=0.2",
                   "classifier.augment_scale=0.1", "classifier.augment_noise=0.5", "epochs=4")
    straight = clf.train_round(cfg, tmp_path / "a", CPU, seed=3)
    real_lr = clf._lr_at

    def interrupt_at_third_epoch(c, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_lr(c, epoch)

    monkeypatch.setattr(clf, "_lr_at", interrupt_at_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        clf.train_round(cfg, tmp_path / "b", CPU, seed=3)
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["counters"]["epoch"] == 2
    monkeypatch.setattr(clf, "_lr_at", real_lr)
    resumed = clf.train_round(cfg, tmp_path / "b", CPU, seed=3, resume=True)
    assert resumed["epochs_completed"] == 4
    a = load_file(str(tmp_path / "a" / "classifier.safetensors"))
    b = load_file(str(tmp_path / "b" / "classifier.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if k != "epoch_time_s"} for r in rows_a]
    assert strip == [{k: v for k, v in json.loads(r).items() if k != "epoch_time_s"} for r in rows_b]
    assert straight["test_accuracy"] == resumed["test_accuracy"]
    # The noise augmentation is part of what was trained: without it the weights differ.
    clf.train_round({**cfg, "classifier": {**cfg["classifier"], "augment_noise": 0.0}}, tmp_path / "c", CPU, seed=3)
    c = load_file(str(tmp_path / "c" / "classifier.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_select_keeps_the_last_epoch_or_the_best_validation_epoch(make_cfg, tmp_path):
    """classifier.select: which weights are written. Selection never changes the training itself."""
    runs = {}
    for sel in ("last", "val_accuracy", "val_loss"):
        s = clf.train_round(make_cfg("classifier.architecture=stft", "data.subjects=[1]", "epochs=8",
                                     f"classifier.select={sel}"), tmp_path / sel, CPU, seed=0)
        rows = [json.loads(ln) for ln in (tmp_path / sel / "metrics.jsonl").read_text().splitlines()]
        kept = load_file(str(tmp_path / sel / "classifier.safetensors"))
        runs[sel] = (s, [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows], kept)
    s, rows, kept = runs["last"]
    assert s["kept_epoch"] == 8 and s["val_accuracy"] == rows[-1]["val_accuracy"]
    final = load_file(str(tmp_path / "last" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(kept[k], final[k]) for k in kept)
    for sel, key in (("val_accuracy", lambda r: (r["val_accuracy"], -r["val_loss"])),
                     ("val_loss", lambda r: -r["val_loss"])):
        s, rows_sel, kept_sel = runs[sel]
        assert rows_sel == rows                                  # the same training, epoch by epoch
        best = max(rows, key=key)["epoch"]
        assert s["kept_epoch"] == s["best_epoch"] == best
        assert s["val_accuracy"] == rows[best - 1]["val_accuracy"]
        assert all(torch.equal(kept_sel[k], kept[k]) for k in kept) == (best == 8)


def test_patience_stops_early(make_cfg, tmp_path):
    s = clf.train_round(make_cfg("classifier.architecture=stft", "data.subjects=[1]", "epochs=30",
                                 "classifier.patience=2"), tmp_path, CPU, seed=0)
    assert s["stopped_early"] and s["epochs_completed"] == s["best_epoch"] + 2 < 30


def test_gpu_requested_without_cuda_warns_once_and_runs(data_path, cache_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the fallback path is not reachable")
    proc = subprocess.run(
        [sys.executable, "main.py", "--mode", "training", "--set", "gpu=true", "--set", f"data_path={data_path}",
         "--set", f"cache_dir={cache_dir}", "--set", f"output_dir={tmp_path}", "--set", "data.download=false",
         "--set", "data.subjects=[1]", "--set", "epochs=1", "--set", "classifier.architecture=stft",
         "--set", "training.num_threads=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    out = proc.stdout + proc.stderr
    assert out.count("CUDA is not available") in (1, 2)  # the warnings module line and the printed line
    assert proc.stdout.count("warning: gpu is true but CUDA is not available") == 1
    assert (tmp_path / "classifier" / "latest" / "classifier.safetensors").is_file()


def test_euclidean_alignment_uses_training_trials_only():
    from data.dataset import EpochSet

    rng = np.random.default_rng(0)

    def es(n, subject, scale):
        X = (rng.normal(size=(n, 4, 200)) * scale[None, :, None]).astype(np.float32)
        return EpochSet(X, rng.integers(0, 2, n), np.full(n, subject), np.full(n, 4), 160.0, ["a", "b", "c", "d"])

    scale = np.array([1.0, 2.0, 3.0, 4.0])
    sets = {"train": es(40, 1, scale), "val": es(10, 1, scale), "test": es(20, 1, scale * 10)}
    out, W = clf.align(sets, "euclidean")
    cov = np.einsum("nct,ndt->cd", out["train"].X.astype(np.float64), out["train"].X) / (40 * 200)
    assert np.allclose(cov, np.eye(4), atol=1e-4)
    # Test trials are whitened with the training reference, not their own statistics.
    sets["test"].X *= 3
    out2, W2 = clf.align(sets, "euclidean")
    assert np.allclose(W["S001"], W2["S001"]) and np.allclose(out2["test"].X, 3 * out["test"].X, rtol=1e-4)
    assert clf.align(sets, "none") == (sets, {})
