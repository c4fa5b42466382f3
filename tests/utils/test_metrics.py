"""Each metric against a case with a known answer: identical sets, shifted spectra, swapped
classes, copies, and phase randomisation keeping the amplitude spectrum."""
from __future__ import annotations

import numpy as np
import pytest

from data.eegbci import MOTOR_CHANNELS
from utils import metrics as M

SFREQ = 160.0
CH = list(MOTOR_CHANNELS)


def synthetic_mi(n_per_class: int, seed: int, n_times: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """Motor-imagery-like trials: 1/f-ish noise on every channel plus a 10 Hz mu rhythm that is
    weaker over the hemisphere opposite the imagined hand (right fist: C3 side desynchronised)."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_class
    y = np.repeat([0, 1], n_per_class)
    noise = np.cumsum(rng.standard_normal((n, len(CH), n_times)), axis=-1)
    noise -= noise.mean(-1, keepdims=True)
    noise = 0.2 * noise / noise.std() + rng.standard_normal((n, len(CH), n_times))
    t = np.arange(n_times) / SFREQ
    mu = np.sin(2 * np.pi * 10 * t[None, :] + rng.uniform(0, 2 * np.pi, (n, 1)))
    left_side = np.array([c.endswith(("3", "5", "1")) for c in CH], float)   # odd: left hemisphere
    right_side = np.array([c.endswith(("4", "6", "2")) for c in CH], float)
    gain = np.where(y[:, None] == 1, 1.0 + 2.5 * right_side, 1.0 + 2.5 * left_side)  # ERD on the contralateral side
    X = noise + 1.5 * gain[:, :, None] * mu[:, None, :]
    return (1e-5 * X).astype(np.float32), y.astype(np.int64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sets():
    Xa, ya = synthetic_mi(30, 0)
    Xb, yb = synthetic_mi(30, 1)
    return Xa, ya, Xb, yb


def test_phase_randomisation_keeps_amplitude_spectrum_and_spatial_covariance(sets):
    X = sets[0][:6]
    Z = M.phase_randomize(X, seed=3)
    assert Z.shape == X.shape and Z.dtype == X.dtype
    A, B = np.abs(np.fft.rfft(X.astype(np.float64))), np.abs(np.fft.rfft(Z.astype(np.float64)))
    np.testing.assert_allclose(B, A, rtol=1e-4, atol=1e-6 * A.max())
    # One phase per frequency shared by all channels: the zero-lag channel covariance is unchanged.
    for i in range(len(X)):
        np.testing.assert_allclose(np.cov(Z[i]), np.cov(X[i]), rtol=1e-3, atol=1e-4 * np.abs(np.cov(X[i])).max())
    assert np.abs(Z - X).mean() > 0.5 * np.abs(X).mean()  # the waveforms themselves changed
    np.testing.assert_array_equal(M.phase_randomize(X, seed=3), Z)  # seeded


def test_identical_sets_give_zero_distance_and_unit_ratios(sets):
    Xa, ya, _, _ = sets
    F = np.random.default_rng(0).standard_normal((80, 5))
    assert M.frechet_distance(F, F) == pytest.approx(0.0, abs=1e-8)
    assert M.sliced_wasserstein(Xa, Xa) == pytest.approx(0.0, abs=1e-12)
    d = M.psd_db_difference(Xa, Xa, SFREQ)
    assert d["psd_db_abs"] == pytest.approx(0.0, abs=1e-9)
    bp = M.band_power_errors(Xa, ya, Xa, ya, SFREQ, CH)
    assert bp["mean_abs"] == pytest.approx(0.0, abs=1e-9) and len(bp) == 2 * 2 * 3 + 1
    lat = M.lateralization_agreement(Xa, ya, Xa, ya, SFREQ, CH)
    assert lat["C3_abs_diff_db"] == pytest.approx(0.0) and lat["C3_sign_agrees"] and lat["C4_sign_agrees"]
    amp = M.amplitude_sanity(Xa, Xa)
    assert amp["std_ratio"] == pytest.approx(1.0) and amp["nan_count"] == 0 and amp["inf_count"] == 0
    # A generated set drawn like the real held-out set sits as far from the training set as real data.
    Xtr, _ = synthetic_mi(30, 5)
    assert M.nn_distance_ratio(Xa, Xtr, Xa)["nn_ratio"] == pytest.approx(1.0)


def test_frechet_distance_of_a_mean_shift_is_its_squared_norm():
    F = np.random.default_rng(1).standard_normal((200, 6))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert M.frechet_distance(F, F + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-6)
    # Fewer samples than dimensions (singular covariances) stays finite and non-negative.
    G = np.random.default_rng(2).standard_normal((10, 40))
    assert np.isfinite(M.frechet_distance(G, G[::-1] + 1.0)) and M.frechet_distance(G, G + 1.0) == pytest.approx(40.0)


def test_sliced_wasserstein_grows_with_distance(sets):
    Xa, _, Xb, _ = sets
    near = M.sliced_wasserstein(Xb, Xa)
    far = M.sliced_wasserstein(Xb * 3.0, Xa)
    assert 0 < near < far
    assert M.sliced_wasserstein(Xb[:25], Xa) > 0  # unequal sizes go through quantiles


@pytest.mark.parametrize("gain", [2.0, 0.5])
def test_scaled_signal_shifts_the_spectrum_by_the_known_db(sets, gain):
    Xa, ya, _, _ = sets
    d = M.psd_db_difference(Xa * gain, Xa, SFREQ)
    assert d["psd_db_mean"] == pytest.approx(20 * np.log10(gain), abs=1e-4)
    assert d["psd_db_abs"] == pytest.approx(abs(20 * np.log10(gain)), abs=1e-4)
    bp = M.band_power_errors(Xa * gain, ya, Xa, ya, SFREQ, CH)
    assert bp["mu_left_C3"] == pytest.approx(gain ** 2 - 1, rel=1e-4)
    assert M.amplitude_sanity(Xa * gain, Xa)["std_ratio"] == pytest.approx(gain, rel=1e-5)


def test_lateralisation_has_the_motor_imagery_sign_and_flips_with_swapped_classes(sets):
    Xa, ya, _, _ = sets
    lat = M.lateralization(Xa, ya, SFREQ, CH)
    assert lat["C3"] < -1.0 and lat["C4"] > 1.0  # right imagery: less mu at C3, more at C4
    flipped = M.lateralization(Xa, 1 - ya, SFREQ, CH)
    assert flipped["C3"] == pytest.approx(-lat["C3"]) and flipped["C4"] == pytest.approx(-lat["C4"])
    agree = M.lateralization_agreement(Xa, 1 - ya, Xa, ya, SFREQ, CH)
    assert not agree["C3_sign_agrees"] and not agree["C4_sign_agrees"]


def test_csp_tstr_matches_trtr_on_identical_sets_and_falls_below_chance_on_swapped_classes(sets):
    Xa, ya, Xb, yb = sets
    trtr = M.csp_lda_accuracy(Xa, ya, Xb, yb)
    assert trtr > 0.9
    assert M.csp_lda_accuracy(Xa.copy(), ya.copy(), Xb, yb) == trtr  # "generated" = real: TSTR == TRTR
    assert M.csp_lda_accuracy(Xa, 1 - ya, Xb, yb) < 0.1


def test_band_lda_reads_the_lateralised_power_and_falls_below_chance_on_swapped_classes(sets):
    Xa, ya, Xb, yb = sets
    trtr = M.band_lda_accuracy(Xa, ya, Xb, yb, SFREQ)
    assert trtr > 0.9
    assert M.band_lda_accuracy(Xa, 1 - ya, Xb, yb, SFREQ) < 0.1
    assert M.log_band_power_features(Xa, SFREQ).shape == (len(Xa), 4 * Xa.shape[1])


def test_copies_of_training_trials_give_nn_ratio_near_zero(sets):
    Xa, _, Xb, _ = sets
    Xtr = Xa
    copies = M.nn_distance_ratio(Xtr[::2], Xtr, Xb)
    assert copies["nn_ratio"] < 1e-3
    new = M.nn_distance_ratio(synthetic_mi(20, 9)[0], Xtr, Xb)
    assert 0.8 < new["nn_ratio"] < 1.25


def test_amplitude_sanity_counts_non_finite_samples(sets):
    Xa = sets[0].copy()
    Xa[0, 0, :3] = np.nan
    Xa[1, 2, 5] = np.inf
    amp = M.amplitude_sanity(Xa, sets[2])
    assert amp["nan_count"] == 3 and amp["inf_count"] == 1 and np.isfinite(amp["std_ratio"])


def test_split_halves_are_disjoint_and_stratified():
    y = np.repeat([0, 1, 0, 1], [7, 8, 8, 7])
    subj = np.repeat([1, 1, 2, 2], [7, 8, 8, 7])
    a, b = M.split_halves(y, 0, subj)
    assert not set(a) & set(b) and len(a) + len(b) == len(y)
    assert abs(len(a) - len(b)) <= 1
    for s in (1, 2):
        for c in (0, 1):
            na, nb = ((subj[a] == s) & (y[a] == c)).sum(), ((subj[b] == s) & (y[b] == c)).sum()
            assert abs(na - nb) <= 1


def test_project_classifier_tstr_equals_trtr_for_identical_sets_and_swapped_classes_fail(sets):
    # Six channels around C3/C4 and 1 s trials keep three CNN trainings to a few seconds.
    keep = [CH.index(c) for c in ("FC3", "C3", "CP3", "FC4", "C4", "CP4")]
    Xa, ya, Xb, yb = sets[0][:, keep, :160], sets[1], sets[2][:, keep, :160], sets[3]
    ch = [CH[i] for i in keep]
    kw = dict(architecture="shallow", steps=25, lr=3e-3, seed=0)
    real = M.fit_classifier(Xa, ya, SFREQ, ch, **kw)
    same = M.fit_classifier(Xa.copy(), ya.copy(), SFREQ, ch, **kw)
    trtr, tstr = real.accuracy(Xb, yb), same.accuracy(Xb, yb)
    assert trtr > 0.85 and tstr == trtr  # a seed makes a CPU run repeat exactly
    assert M.fit_classifier(Xa, 1 - ya, SFREQ, ch, **kw).accuracy(Xb, yb) < 0.15
    F = real.features(Xb)
    assert F.ndim == 2 and len(F) == len(Xb)
    assert M.frechet_distance(F, real.features(Xb.copy())) == pytest.approx(0.0, abs=1e-6 * max(1.0, float(np.abs(F).max()) ** 2))


def test_wilson_interval_matches_hand_computed_values_and_is_symmetric():
    # k = 0 of n = 10: the upper end is z^2 / (n + z^2) = 3.8416 / 13.8416.
    lo, hi = M.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.8416 / 13.8416, abs=1e-4)
    # 47 of 75 (a 63% decoder on a 75-trial test run): centre 0.6204, half-width 0.1070.
    assert M.wilson_interval(47, 75) == pytest.approx((0.5135, 0.7274), abs=1e-4)
    lo2, hi2 = M.wilson_interval(75 - 47, 75)
    assert (lo2, hi2) == pytest.approx((1 - 0.7274, 1 - 0.5135), abs=1e-4)
    assert np.isnan(M.wilson_interval(0, 0)[0])


def test_margin_shortfall_is_the_difference_to_the_80_percent_bar_with_a_paired_interval():
    ones = np.ones(40, int)
    # Both decoders right on every trial: 1 - (0.5 + 0.8 * 0.5) = +0.1, and no resample can change that.
    r = M.margin_shortfall(ones, ones)
    assert r["difference"] == pytest.approx(0.1) and r["lo"] == pytest.approx(0.1) and r["hi"] == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    real = (rng.random(2000) < 0.65).astype(int)
    gen = (rng.random(2000) < 0.52).astype(int)  # bar 0.62: missed by about 0.1
    big = M.margin_shortfall(gen, real, seed=1)
    assert big["difference"] == pytest.approx(gen.mean() - 0.8 * real.mean() - 0.1)
    assert big["hi"] < 0  # 2000 trials tell
    small = M.margin_shortfall(gen[:40], real[:40], seed=1)
    assert small["lo"] < small["difference"] < small["hi"] and small["hi"] - small["lo"] > 3 * (big["hi"] - big["lo"])
    # Resampling within groups keeps each group's share: a group that is all right and one that is all wrong
    # give the same test-set accuracy in every resample.
    half = np.r_[np.ones(20, int), np.zeros(20, int)]
    strat = M.margin_shortfall(half, np.zeros(40, int), groups=np.r_[np.zeros(20), np.ones(20)])
    assert strat["lo"] == pytest.approx(strat["hi"]) == pytest.approx(0.5 - 0.1)
    assert M.margin_shortfall(half, np.zeros(40, int))["hi"] > strat["hi"]
    with pytest.raises(ValueError):
        M.margin_shortfall(ones, ones[:10])
