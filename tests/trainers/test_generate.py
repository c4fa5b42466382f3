"""Generate mode: labelled MNE epochs + npz from a GAN run; load_generator; error paths."""
import json

import mne
import numpy as np
import pytest

import main
import trainers.gan as gan
from trainers.generate import load_generator

TINY = ["model_name=gpt2cgan", "data.subjects=[1]", "epochs=1", "batch_size=16", "n_embd=16", "n_layer=1",
        "n_head=2", "gan.patch_size=32", "gan.critic_width=8", "gan.critic_steps=1", "gan.figure_every=10", "training.num_threads=1"]


@pytest.fixture(scope="module")
def gan_run(data_path, cache_dir, tmp_path_factory):
    from config.schema import apply_overrides, validate

    folder = tmp_path_factory.mktemp("gen")
    base = {"data_path": str(data_path), "cache_dir": str(cache_dir), "output_dir": str(folder / "checkpoints"),
            "data": {"download": False}}
    path = folder / "cfg.json"
    path.write_text(json.dumps(validate(apply_overrides(base, TINY))))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gan, "_evaluate", lambda *a, **k: {})
        assert main.main(["--mode", "training", "--config", str(path)]) == 0
    return folder / "checkpoints" / "gpt2cgan" / "latest"


def test_generate_writes_labelled_epochs_loadable_by_mne(gan_run, tmp_path):
    assert main.main(["--mode", "generate", "--checkpoint", str(gan_run), "--n", "3"]) == 0
    out = gan_run / "generated"
    ep = mne.read_epochs(out / "generated-epo.fif", verbose="error")
    assert ep.event_id == {"left": 0, "right": 1}
    assert sorted(ep.events[:, 2].tolist()) == [0, 0, 0, 1, 1, 1]
    meta = json.loads((gan_run / "gan.json").read_text())
    assert ep.ch_names == meta["ch_names"] and len(ep.ch_names) == 21 and ep.info["sfreq"] == 160.0
    assert ep.get_montage() is not None
    X = ep.get_data(copy=True)
    assert X.shape == (6, 21, 640)
    # Volts, at the scale of the real recordings (per-channel std of the training data).
    real_std = np.asarray(meta["standardizer"]["std"])
    ratio = X.std(axis=(0, 2)) / real_std
    assert np.all(ratio > 0.05) and np.all(ratio < 20), ratio
    npz = np.load(out / "generated.npz")
    assert npz["X"].shape == (6, 21, 640) and npz["y"].tolist() == [0, 0, 0, 1, 1, 1]
    assert float(npz["sfreq"]) == 160.0 and list(npz["ch_names"]) == meta["ch_names"]
    np.testing.assert_allclose(npz["X"], X, rtol=1e-5, atol=1e-12)

    target = tmp_path / "elsewhere" / "mine-epo.fif"
    assert main.main(["--mode", "generate", "--checkpoint", str(gan_run), "--n", "1", "--out", str(target)]) == 0
    assert target.is_file() and (tmp_path / "elsewhere" / "mine.npz").is_file()


def test_load_generator_bundle(gan_run):
    b = load_generator(gan_run)
    assert (b.n_chans, b.n_times, b.sfreq, b.representation) == (21, 640, 160.0, "sensor")
    assert b.cfg["model_name"] == "gpt2cgan" and b.ch_names[8] == "C3"
    X, y = b.sample(4, seed=5)
    assert X.dtype == np.float32 and X.shape == (8, 21, 640) and y.dtype == np.int64
    assert y.tolist() == [0] * 4 + [1] * 4
    X2, _ = b.sample(4, seed=5)
    X3, _ = b.sample(4, seed=6)
    assert np.array_equal(X, X2) and not np.array_equal(X, X3)


def test_generate_error_paths(gan_run, tmp_path, capsys):
    import shutil

    assert main.main(["--mode", "generate", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main.main(["--mode", "generate"]) == 2
    assert main.main(["--mode", "generate", "--checkpoint", str(gan_run), "--n", "0"]) == 2
    capsys.readouterr()
    broken = tmp_path / "broken"
    shutil.copytree(gan_run.resolve(), broken)
    (broken / "generator.safetensors").write_bytes(b"not a safetensors file")
    assert main.main(["--mode", "generate", "--checkpoint", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "safetensors" in err
    (broken / "gan.json").unlink()
    assert main.main(["--mode", "generate", "--checkpoint", str(broken)]) == 2
    assert "gan.json" in capsys.readouterr().err
