"""Source space: offline forward/inverse, the ROI rule, the round trip on real data, operator cache."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from config.schema import validate
from data.dataset import load_recordings, load_splits, split
from data.eegbci import MOTOR_CHANNELS
from data.sources import (SourceModel, SourceParams, SourceProjection, build_forward, build_inverse,
                          load_projection, plot_roi, roi_mask, write_run_files)
from utils.errors import UserError

# Measured with these settings (operators fitted on subjects 1-2, test run 12): the ROI explains
# 0.30 (S001) and 0.44 (S002) of the average-referenced motor-channel variance (10 subjects:
# 0.29-0.53, bench/bench_source.py). Sign errors or a wrong scale give <= 0; the floor is below both.
ROUND_TRIP_FLOOR = 0.2


@pytest.fixture(scope="module")
def cfg(data_path, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return validate({"data_path": str(data_path), "cache_dir": str(cache_dir), "output_dir": str(out),
                     "representation": "source", "data": {"download": False, "subjects": [1, 2]},
                     "source": {"head_model": "sphere"}})


@pytest.fixture(scope="module")
def full(cfg):
    """Sensor splits with every channel, as the source model sees them."""
    return split(load_recordings(cfg, {**cfg["data"], "channels": "all"}, progress=False), cfg)


@pytest.fixture(scope="module")
def operators(cfg, full):
    params = SourceParams.from_config(cfg)
    tr = full.train
    fwd = build_forward(tr.ch_names, tr.ch_pos, tr.sfreq, params)
    inv = build_inverse(fwd, tr.ch_names, tr.ch_pos, tr.sfreq, tr.rest, params)
    return params, fwd, inv


def test_forward_is_a_radial_shell_under_the_cap(full, operators):
    params, fwd, inv = operators
    geo = fwd["geometry"]
    assert fwd["kind"] == "sphere"
    n_src = len(fwd["src_pos"])
    assert fwd["gain"].shape == (64, n_src) and np.isfinite(fwd["gain"]).all()
    assert 400 < n_src < 2000
    rel = fwd["src_pos"] - np.asarray(geo["r0"])
    assert np.allclose(np.linalg.norm(rel, axis=1), geo["shell_radius"], rtol=1e-6)
    # radial normals: one signed time course per location
    assert np.allclose(np.einsum("ij,ij->i", rel / geo["shell_radius"], fwd["src_nn"]), 1.0, atol=1e-6)
    assert 0.07 < geo["head_radius"] < 0.12
    # only the part of the shell under the electrode cap: every source within ~20 deg of an electrode
    elec = full.train.ch_pos - np.asarray(geo["r0"])
    elec /= np.linalg.norm(elec, axis=1, keepdims=True)
    cos = (rel / geo["shell_radius"]) @ elec.T
    assert np.degrees(np.arccos(cos.max(axis=1).clip(-1, 1))).max() <= 20.5
    assert cos.max(axis=0).min() > np.cos(np.radians(10))  # and a source under every electrode


def test_inverse_kernel_and_noise_normalisation(full, operators):
    params, fwd, inv = operators
    n_src = len(fwd["src_pos"])
    assert inv["kernel"].shape == (n_src, 64) and np.isfinite(inv["kernel"]).all()
    # the average reference is part of the kernel: a common offset on every channel maps to nothing
    assert np.abs(inv["kernel"].sum(axis=1)).max() < 1e-6 * np.abs(inv["kernel"]).max()
    assert (inv["noise_norm"] > 0).all()
    # noiseless single dipoles: sLORETA puts the maximum at (or right next to) the true source
    rng = np.random.default_rng(0)
    errs = []
    for j in rng.choice(n_src, 40, replace=False):
        est = np.abs(inv["kernel"] @ fwd["gain"][:, j])
        errs.append(np.linalg.norm(fwd["src_pos"][est.argmax()] - fwd["src_pos"][j]))
    assert np.median(errs) < 1e-9 and np.max(errs) < 2.5 * params.spacing_mm / 1000


def test_mne_method_has_unit_normalisation(full, operators):
    params, fwd, _ = operators
    tr = full.train
    inv = build_inverse(fwd, tr.ch_names, tr.ch_pos, tr.sfreq, tr.rest[:40], dataclasses.replace(params, method="MNE"))
    assert np.allclose(inv["noise_norm"], 1.0)


def test_roi_rule(full, operators):
    _, fwd, _ = operators
    tr = full.train
    pos, names, ch_pos = fwd["src_pos"], tr.ch_names, tr.ch_pos
    small, anchors = roi_mask(pos, names, ch_pos, ["C3", "Cz", "C4"], 15)
    large, _ = roi_mask(pos, names, ch_pos, ["C3", "Cz", "C4"], 30)
    assert small.sum() < large.sum() and not (small & ~large).any()  # a larger radius is a superset
    assert small[anchors].all() and len(anchors) == 3

    def nearest(ch):
        return int(np.argmin(np.linalg.norm(pos - ch_pos[names.index(ch)], axis=1)))

    assert nearest("C3") in anchors
    strip, _ = roi_mask(pos, names, ch_pos, list(MOTOR_CHANNELS), 10)
    for ch in ("O1", "Oz", "O2", "Fp1", "Fpz", "T7", "T8"):
        assert not strip[nearest(ch)], ch
    left, _ = roi_mask(pos, names, ch_pos, ["C3"], 20)
    assert (np.linalg.norm(pos[left] - pos[nearest("C3")], axis=1) <= 0.020 + 1e-12).all()
    with pytest.raises(UserError, match="roi_channels"):
        roi_mask(pos, names, ch_pos, ["C3", "XX9"], 10)


def test_round_trip_on_real_data(cfg, tmp_path):
    splits = load_splits(cfg, progress=False)
    model = splits.source
    assert splits.train.n_chans == model.n_sources == splits.info["n_sources"]
    assert splits.sensor.train.ch_names == list(MOTOR_CHANNELS)
    # the noise covariance saw only training rest epochs: 2 subjects x 2 training runs x 15
    assert splits.info["source_model"]["n_rest_epochs"] == 60
    test, ref = splits.test, splits.sensor.test.X
    rec = model.to_sensors(test.X)
    for s in np.unique(test.subject):
        k = test.subject == s
        ev = 1 - ((ref[k] - rec[k]) ** 2).sum() / (ref[k] ** 2).sum()
        assert ROUND_TRIP_FLOOR < ev < 1, (s, ev)
    # the saved projection reproduces the model's
    write_run_files(model, tmp_path)
    proj = load_projection(tmp_path)
    assert isinstance(proj, SourceProjection)
    assert np.allclose(proj.to_sensors(test.X[:3]), rec[:3], rtol=1e-5, atol=1e-12)
    assert (tmp_path / "roi.png").stat().st_size > 5000
    assert load_projection(tmp_path / "nowhere") is None


def test_operator_cache_invalidation(full, operators, tmp_path):
    params, _, _ = operators
    tr = full.train
    rest = tr.rest[:30]
    args = (tr.ch_names, tr.ch_pos, tr.sfreq)
    f1 = build_forward(*args, params, tmp_path)
    assert not f1["cached"] and build_forward(*args, params, tmp_path)["cached"]
    assert list((tmp_path / "sources").glob("*-fwd.fif"))  # MNE's own file, for MNE users
    i1 = build_inverse(f1, *args, rest, params, tmp_path)
    f_hit = build_forward(*args, params, tmp_path)
    i_hit = build_inverse(f_hit, *args, rest, params, tmp_path)
    assert not i1["cached"] and i_hit["cached"] and np.array_equal(i1["kernel"], i_hit["kernel"])
    for change in ({"method": "dSPM"}, {"snr": 1.0}, {"noise_cov": "empirical"}):
        assert not build_inverse(f_hit, *args, rest, dataclasses.replace(params, **change), tmp_path)["cached"], change
    # dividing out the noise normalisation gives the same currents whatever the method
    d = build_inverse(f_hit, *args, rest, dataclasses.replace(params, method="dSPM"), tmp_path)
    assert d["cached"]
    j_slor, j_dspm = i1["kernel"] / i1["noise_norm"][:, None], d["kernel"] / d["noise_norm"][:, None]
    assert np.allclose(j_slor, j_dspm, rtol=1e-4, atol=1e-6 * np.abs(j_slor).max())
    # the kernel applied as a matrix is what MNE's apply_inverse_epochs gives, from MNE's own -inv.fif
    import mne

    from data.sources import _eeg_info

    inv = mne.minimum_norm.read_inverse_operator(tmp_path / "sources" / f"{i1['key']}-inv.fif", verbose="error")
    ep = mne.EpochsArray(tr.X[:2].astype(np.float64), _eeg_info(*args), verbose="error")
    stcs = mne.minimum_norm.apply_inverse_epochs(ep, inv, params.lambda2, params.method, verbose="error")
    for stc, x in zip(stcs, tr.X[:2]):
        assert np.allclose(stc.data, i1["kernel"] @ x, rtol=1e-5, atol=1e-6 * np.abs(stc.data).max())
    assert not build_inverse(f_hit, *args, tr.rest[:31], params, tmp_path)["cached"]  # other training data
    f2 = build_forward(*args, dataclasses.replace(params, spacing_mm=12.0), tmp_path)
    assert not f2["cached"] and len(f2["src_pos"]) < len(f1["src_pos"])
    # an inverse from a forward restored from the npz re-reads MNE's -fwd.fif
    i2 = build_inverse(f2, *args, rest, dataclasses.replace(params, spacing_mm=12.0), tmp_path)
    f2_hit = build_forward(*args, dataclasses.replace(params, spacing_mm=12.0), tmp_path)
    assert f2_hit["cached"] and "fwd" not in f2_hit
    # the ROI is not part of any operator: a new radius is free and changes only the selection
    sub = tr.subset(np.isin(tr.subject, [1]))
    c10, c20 = (validate({"cache_dir": str(tmp_path / "c2"), "representation": "source",
                          "source": {"head_model": "sphere", "roi_radius_mm": r}}) for r in (10, 20))
    m10 = SourceModel.fit(sub, c10)
    m20 = SourceModel.fit(sub, c20)
    assert not m10.info["cache_hit"] and m20.info["cache_hit"] and m20.n_sources > m10.n_sources
    assert i2["kernel"].shape[0] == len(f2["src_pos"])


def test_bad_source_configs(full):
    with pytest.raises(UserError, match="source.method"):
        validate({"source": {"method": "beamformer"}})
    with pytest.raises(UserError, match="source.roi_radius_mm"):
        validate({"source": {"roi_radius_mm": 0}})
    tr = full.train
    params = SourceParams.from_config(validate({"source": {"head_model": "sphere"}}))
    pos = tr.ch_pos.copy()
    pos[3] = 0.0
    with pytest.raises(UserError, match="no montage position"):
        build_forward(tr.ch_names, pos, tr.sfreq, params)
    fwd = build_forward(tr.ch_names, tr.ch_pos, tr.sfreq, params)
    with pytest.raises(UserError, match="rest"):
        build_inverse(fwd, tr.ch_names, tr.ch_pos, tr.sfreq, tr.rest[:1], params)


def test_plot_roi_from_projection(cfg, full, tmp_path):
    model = SourceModel.fit(full.train, cfg)
    path = plot_roi(SourceProjection(model.state()), tmp_path / "roi.png")
    assert path.stat().st_size > 5000
