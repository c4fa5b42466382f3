"""A short representation=source GAN run end to end: train on ROI sources, evaluate and generate on the scalp."""
from __future__ import annotations

import json

import numpy as np
import torch

import main as cli
import trainers.gan as gan
from data.eegbci import MOTOR_CHANNELS
from trainers.common import run_training
from trainers.generate import load_generator

TINY = ["representation=source", "source.roi_radius_mm=6", "model_name=gpt2cgan", "data.subjects=[1]", "epochs=1",
        "n_embd=16", "n_layer=1", "n_head=2", "batch_size=8", "gan.critic_steps=1", "gan.critic_width=8",
        "gan.figure_every=1000", "training.num_threads=1", "evaluation.augment_trials=[5]",
        "evaluation.augment_seeds=1", "evaluation.augment_per_class=5", "evaluation.classifier_steps=2",
        "evaluation.n_per_class=8", "evaluation.figures=false"]


def test_source_gan_run_generates_scalp_eeg(make_cfg, tmp_path):
    cfg = make_cfg(*TINY)
    run_dir, summary = run_training(cfg, gan, torch.device("cpu"))
    assert (run_dir / "source.json").is_file() and (run_dir / "roi.png").stat().st_size > 5000
    meta = json.loads((run_dir / "gan.json").read_text())
    n_roi = meta["n_chans"]
    assert meta["representation"] == "source" and meta["ch_names"][0].startswith("src") and n_roi >= 3
    # evaluation ran on the scalp: generated trials projected to the 21 motor channels
    ev = json.loads((run_dir / "evaluation.json").read_text())
    assert ev["n_generated_per_class"] >= 5 and np.isfinite(ev["headline"]["eval_tstr_cnn"])

    bundle = load_generator(run_dir)
    X, y = bundle.sample(3, seed=0)
    S, y2 = bundle.sample_native(3, seed=0)
    assert X.shape == (6, 21, 640) and S.shape == (6, n_roi, 640) and np.array_equal(y, y2)
    assert bundle.ch_names == list(MOTOR_CHANNELS) and bundle.n_chans == 21
    assert np.allclose(X, bundle.projection.to_sensors(S))
    # scalp-like amplitudes (volts, tens of microvolts at most), not source units
    assert 1e-8 < X.std() < 1e-3

    out = tmp_path / "gen"
    assert cli.main(["--mode", "generate", "--checkpoint", str(run_dir), "--n", "2", "--out", str(out)]) == 0
    with np.load(out / "generated.npz", allow_pickle=False) as z:
        assert z["X"].shape == (4, 21, 640) and z["sources"].shape == (4, n_roi, 640)
        assert list(z["ch_names"]) == list(MOTOR_CHANNELS) and len(z["source_names"]) == n_roi
    import mne

    ep = mne.read_epochs(out / "generated-epo.fif", verbose="error")
    assert ep.get_channel_types(unique=True) == ["eeg"] and ep.get_montage() is not None
