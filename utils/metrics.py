"""How real is generated EEG? Pure metric functions over trial arrays.

Every function takes trials `X` (n, n_chans, n_times) in volts, labels `y` (0 left, 1 right),
`sfreq` and `ch_names` as numpy values and returns plain floats or dicts, so the same code
scores a GAN, the floor (two disjoint halves of real data) and the phase-randomised baseline.

Multi-threaded OpenBLAS makes the small eigendecompositions of CSP and of the Frechet distance
~100x slower on a 2-core machine, so those run under `blas_single_thread()`.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

# The EEG bands the generator's targets (trainers.gan) and the band-power decoder below work in, Hz.
BANDS = {"theta": (4.0, 8.0), "mu": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 40.0)}
MU_BAND = (8.0, 13.0)
BETA_BAND = (13.0, 30.0)
PSD_BAND = (4.0, 40.0)
MOTOR_TRIO = ("C3", "Cz", "C4")
CLASS_NAMES = ("left", "right")


@contextlib.contextmanager
def blas_single_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without threadpoolctl the computation is only slower
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


# --- the trivial baseline -----------------------------------------------------------------------

def phase_randomize(X: np.ndarray, seed: int) -> np.ndarray:
    """Fourier phase-randomised copies: same amplitude spectrum per channel, random phases.

    One random phase per frequency is shared by all channels of a trial, so every cross-spectrum
    keeps its magnitude and relative phase: the spatial covariance is kept and only the temporal
    structure (events, ERD timing, non-Gaussianity) is destroyed.
    """
    X = np.asarray(X)
    n, _, n_times = X.shape
    spec = np.fft.rfft(X.astype(np.float64), axis=-1)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1, spec.shape[-1]))
    phase[..., 0] = 0.0  # the DC and Nyquist bins are real; a phase there would make the signal complex
    if n_times % 2 == 0:
        phase[..., -1] = 0.0
    return np.fft.irfft(spec * np.exp(1j * phase), n=n_times, axis=-1).astype(X.dtype)


def split_halves(y: np.ndarray, seed: int, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the real trials, stratified by class (and subject when given)."""
    y = np.asarray(y)
    groups = np.zeros(len(y), int) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    a = np.zeros(len(y), bool)
    flip = 0  # odd-sized cells alternate which half gets the extra trial, keeping sizes balanced
    for g in np.unique(groups):
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero((groups == g) & (y == c)))
            k = len(idx) // 2 + (len(idx) % 2) * flip
            flip ^= len(idx) % 2
            a[idx[:k]] = True
    return np.flatnonzero(a), np.flatnonzero(~a)


# --- amplitude and copying -----------------------------------------------------------------------

def amplitude_sanity(X_gen: np.ndarray, X_real: np.ndarray) -> dict:
    """Overall std ratio (generated / real), per-channel ratio spread and NaN/inf counts."""
    X_gen = np.asarray(X_gen, np.float64)
    finite = np.isfinite(X_gen)
    Xg = np.where(finite, X_gen, 0.0)
    real_std = np.asarray(X_real, np.float64).std(axis=(0, 2))
    gen_std = Xg.std(axis=(0, 2))
    ratio_ch = gen_std / np.maximum(real_std, 1e-30)
    return {"std_ratio": float(Xg.std() / max(float(np.asarray(X_real).std()), 1e-30)),
            "std_ratio_channel_min": float(ratio_ch.min()), "std_ratio_channel_max": float(ratio_ch.max()),
            "nan_count": int(np.isnan(X_gen).sum()), "inf_count": int(np.isinf(X_gen).sum())}


def _flat_scaled(X: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (np.asarray(X, np.float64) / scale[None, :, None]).reshape(len(X), -1)


def _nn_distances(A: np.ndarray, B: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Euclidean distance from every row of A to its nearest row of B."""
    b2 = (B * B).sum(1)
    out = np.empty(len(A))
    for i in range(0, len(A), chunk):
        a = A[i:i + chunk]
        d2 = (a * a).sum(1)[:, None] + b2[None, :] - 2.0 * a @ B.T
        out[i:i + chunk] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def nn_distance_ratio(X_gen: np.ndarray, X_train: np.ndarray, X_real: np.ndarray) -> dict:
    """Copying check: median distance of generated trials to their nearest real TRAINING trial,
    divided by the same median for real trials the generator never saw (`X_real`, held out).

    ~1: as far from the training set as new real data; ~0: the generator replays training trials.
    Distances are taken on signals scaled by the training set's per-channel std.
    """
    scale = np.maximum(np.asarray(X_train, np.float64).std(axis=(0, 2)), 1e-30)
    with blas_single_thread():
        T = _flat_scaled(X_train, scale)
        d_gen = _nn_distances(_flat_scaled(np.nan_to_num(X_gen), scale), T)
        d_real = _nn_distances(_flat_scaled(X_real, scale), T)
    med_gen, med_real = float(np.median(d_gen)), float(np.median(d_real))
    return {"nn_ratio": med_gen / max(med_real, 1e-30), "nn_median_generated": med_gen,
            "nn_median_real": med_real}


# --- distribution distances ----------------------------------------------------------------------

def frechet_distance(F_a: np.ndarray, F_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples).

    tr(sqrtm(S_a S_b)) is computed as the trace of the square root of the symmetric matrix
    S_a^1/2 S_b S_a^1/2, which stays real and stable when the covariances are singular (fewer
    trials than features).
    """
    F_a, F_b = np.asarray(F_a, np.float64), np.asarray(F_b, np.float64)
    mu_a, mu_b = F_a.mean(0), F_b.mean(0)
    S_a = np.atleast_2d(np.cov(F_a, rowvar=False))
    S_b = np.atleast_2d(np.cov(F_b, rowvar=False))
    with blas_single_thread():
        w, V = np.linalg.eigh(S_a)
        root_a = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
        M = root_a @ S_b @ root_a
        tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((M + M.T) / 2), 0, None)).sum())
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(S_a) + np.trace(S_b) - 2.0 * tr_sqrt)
    return max(fd, 0.0)


def sliced_wasserstein(X_a: np.ndarray, X_b: np.ndarray, scale: np.ndarray | None = None,
                       n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two sets of trials seen as flat vectors.

    Signals are divided by `scale` (per channel; default: the std of `X_b`, the real set), so the
    number reads in units of the real data's standard deviation. Unequal set sizes are matched
    through their quantile functions.
    """
    X_b64 = np.asarray(X_b, np.float64)
    scale = np.maximum(X_b64.std(axis=(0, 2)) if scale is None else np.asarray(scale, np.float64), 1e-30)
    A, B = _flat_scaled(np.nan_to_num(X_a), scale), _flat_scaled(X_b64, scale)
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((A.shape[1], n_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    with blas_single_thread():
        pa, pb = np.sort(A @ theta, axis=0), np.sort(B @ theta, axis=0)
    q = (np.arange(max(len(A), len(B))) + 0.5) / max(len(A), len(B))
    qa = _quantiles(pa, q)
    qb = _quantiles(pb, q)
    return float(np.sqrt(((qa - qb) ** 2).mean()))


def _quantiles(sorted_proj: np.ndarray, q: np.ndarray) -> np.ndarray:
    n = len(sorted_proj)
    if n == len(q):
        return sorted_proj
    pos = (np.arange(n) + 0.5) / n
    return np.stack([np.interp(q, pos, sorted_proj[:, j]) for j in range(sorted_proj.shape[1])], axis=1)


# --- spectra ------------------------------------------------------------------------------------

def psd(X: np.ndarray, sfreq: float, fmin: float = PSD_BAND[0], fmax: float = PSD_BAND[1]):
    """Welch PSD per trial and channel (1 s windows, 1 Hz bins): (psd (n, n_chans, n_freqs), freqs)."""
    from mne.time_frequency import psd_array_welch

    X = np.nan_to_num(np.asarray(X, np.float64))
    n_fft = min(int(round(sfreq)), X.shape[-1])
    P, f = psd_array_welch(X, sfreq, fmin=fmin, fmax=fmax, n_fft=n_fft, n_per_seg=n_fft,
                           n_overlap=n_fft // 2, verbose="error")
    return P, f


def psd_db_difference(X_gen: np.ndarray, X_real: np.ndarray, sfreq: float,
                      band: tuple[float, float] = PSD_BAND) -> dict:
    """Mean absolute difference of the trial-mean log-PSDs, dB, over channels and band bins."""
    Pg, _ = psd(X_gen, sfreq, *band)
    Pr, _ = psd(X_real, sfreq, *band)
    diff = 10 * np.log10(np.maximum(Pg.mean(0), 1e-300)) - 10 * np.log10(np.maximum(Pr.mean(0), 1e-300))
    return {"psd_db_abs": float(np.abs(diff).mean()), "psd_db_mean": float(diff.mean())}


def band_power(X: np.ndarray, sfreq: float, band: tuple[float, float]) -> np.ndarray:
    """Mean band power per trial and channel (n, n_chans), V^2/Hz."""
    P, _ = psd(X, sfreq, band[0], band[1])
    return P.mean(-1)


def _trio(ch_names) -> list[str]:
    return [c for c in MOTOR_TRIO if c in list(ch_names)]


def band_power_errors(X_gen, y_gen, X_real, y_real, sfreq: float, ch_names) -> dict:
    """Relative error of class-mean mu and beta power at C3/Cz/C4: P_gen / P_real - 1.

    Returns per (band, class, channel) signed errors and their mean absolute value; empty when
    the channels are not there (e.g. source space).
    """
    trio = _trio(ch_names)
    if not trio:
        return {}
    idx = [list(ch_names).index(c) for c in trio]
    out, errs = {}, []
    for bname, band in (("mu", MU_BAND), ("beta", BETA_BAND)):
        bg = band_power(X_gen[:, idx], sfreq, band)
        br = band_power(X_real[:, idx], sfreq, band)
        for c, cname in enumerate(CLASS_NAMES):
            if not (np.any(y_gen == c) and np.any(y_real == c)):
                continue
            rel = bg[y_gen == c].mean(0) / np.maximum(br[y_real == c].mean(0), 1e-300) - 1.0
            for ch, r in zip(trio, rel):
                out[f"{bname}_{cname}_{ch}"] = float(r)
                errs.append(abs(float(r)))
    out["mean_abs"] = float(np.mean(errs)) if errs else math.nan
    return out


def lateralization(X: np.ndarray, y: np.ndarray, sfreq: float, ch_names) -> dict:
    """Mu desynchronisation lateralisation: right-minus-left class-mean mu power, dB, at C3 and C4.

    Imagining the right fist desynchronises the left motor cortex, so real data should give a
    negative value at C3 and a positive one at C4.
    """
    out = {}
    for ch in ("C3", "C4"):
        if ch not in list(ch_names):
            continue
        i = list(ch_names).index(ch)
        bp = band_power(X[:, [i]], sfreq, MU_BAND)[:, 0]
        right, left = bp[y == 1].mean(), bp[y == 0].mean()
        out[ch] = float(10 * np.log10(max(right, 1e-300)) - 10 * np.log10(max(left, 1e-300)))
    return out


def lateralization_agreement(X_gen, y_gen, X_real, y_real, sfreq: float, ch_names) -> dict:
    """Lateralisation of both sets, their absolute difference and whether the signs agree."""
    g = lateralization(X_gen, y_gen, sfreq, ch_names)
    r = lateralization(X_real, y_real, sfreq, ch_names)
    out = {}
    for ch in g:
        out[f"{ch}_generated_db"] = g[ch]
        out[f"{ch}_real_db"] = r[ch]
        out[f"{ch}_abs_diff_db"] = abs(g[ch] - r[ch])
        out[f"{ch}_sign_agrees"] = bool(np.sign(g[ch]) == np.sign(r[ch]))
    return out


# --- decoding-based metrics -------------------------------------------------------------------

def csp_lda_predict(X_train, y_train, X_test, n_components: int = 6) -> np.ndarray:
    """Labels CSP (log-variance, Ledoit-Wolf covariances) + LDA trained on one set gives another set's trials."""
    from mne import use_log_level
    from mne.decoding import CSP
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.pipeline import make_pipeline

    n_components = min(n_components, np.asarray(X_train).shape[1])
    clf = make_pipeline(CSP(n_components=n_components, reg="ledoit_wolf", log=True),
                        LinearDiscriminantAnalysis())
    with blas_single_thread(), use_log_level("error"):
        clf.fit(np.nan_to_num(np.asarray(X_train, np.float64)), np.asarray(y_train))
        return clf.predict(np.asarray(X_test, np.float64))


def csp_lda_accuracy(X_train, y_train, X_test, y_test, n_components: int = 6) -> float:
    """Accuracy of CSP + LDA (csp_lda_predict) trained on one set, tested on another."""
    return float((csp_lda_predict(X_train, y_train, X_test, n_components) == np.asarray(y_test)).mean())


def log_band_power_features(X: np.ndarray, sfreq: float) -> np.ndarray:
    """(n, n_chans, n_times) -> (n, 4 * n_chans): log Welch power per channel in theta, mu, beta, gamma
    (one Welch pass; each band's bins as band_power takes them)."""
    lo, hi = min(b[0] for b in BANDS.values()), max(b[1] for b in BANDS.values())
    P, f = psd(X, sfreq, lo, hi)
    bands = [P[..., (f >= a) & (f <= b)].mean(-1) for a, b in BANDS.values()]
    return np.log(np.maximum(np.concatenate(bands, 1), 1e-300))


def shrinkage_lda():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")


def band_lda_predict(X_train, y_train, X_test, sfreq: float) -> np.ndarray:
    """Labels a shrinkage LDA on log band power per channel (the power a lateralisation decoder reads, no
    spatial filtering) trained on one set gives another set's trials."""
    with blas_single_thread():
        clf = shrinkage_lda().fit(log_band_power_features(X_train, sfreq), np.asarray(y_train))
        return clf.predict(log_band_power_features(X_test, sfreq))


def band_lda_accuracy(X_train, y_train, X_test, y_test, sfreq: float) -> float:
    """Accuracy of the band-power LDA (band_lda_predict) trained on one set, tested on another."""
    return float((band_lda_predict(X_train, y_train, X_test, sfreq) == np.asarray(y_test)).mean())


class FittedClassifier:
    """The project's CNN after a short training run, with the standardiser it was trained with."""

    def __init__(self, model, standardizer, device):
        self.model, self.standardizer, self.device = model, standardizer, device

    def _batches(self, X, batch_size=256):
        import torch

        Z = self.standardizer.transform(np.nan_to_num(np.asarray(X, np.float32)))
        for i in range(0, len(Z), batch_size):
            yield torch.from_numpy(Z[i:i + batch_size]).to(self.device)

    def logits(self, X) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.concatenate([self.model(b).cpu().numpy() for b in self._batches(X)])

    def predict(self, X) -> np.ndarray:
        return self.logits(X).argmax(1)

    def features(self, X) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.concatenate([self.model.features(b).cpu().numpy().astype(np.float64)
                                   for b in self._batches(X)])

    def accuracy(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())


def fit_classifier(X, y, sfreq: float, ch_names, architecture: str = "shallow", steps: int = 150,
                   batch_size: int = 32, lr: float = 1e-3, dropout: float = 0.5, seed: int = 0,
                   device="cpu", standardizer=None) -> FittedClassifier:
    """Train `models.build_classifier(architecture, ...)` for a fixed number of Adam steps.

    A fixed step count (not epochs) gives tiny low-data sets and large generated sets the same
    optimisation budget. The standardiser defaults to one fitted on `X` itself.
    """
    import torch

    from data.dataset import Standardizer
    from models import build_classifier

    X = np.nan_to_num(np.asarray(X, np.float32))
    y = np.asarray(y, np.int64)
    std = Standardizer.fit(X) if standardizer is None else standardizer
    Z = torch.from_numpy(std.transform(X))
    Y = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the model's initial weights
    model = build_classifier(architecture, X.shape[1], X.shape[2], sfreq, list(ch_names), n_outputs=2,
                             dropout=dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    bs = min(batch_size, len(Z))
    perm, pos = torch.randperm(len(Z), generator=gen), 0
    for _ in range(steps):
        if pos + bs > len(Z):
            perm, pos = torch.randperm(len(Z), generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        loss = torch.nn.functional.cross_entropy(model(Z[idx].to(device)), Y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FittedClassifier(model, std, device)


def low_data_subset(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k trials per class drawn without replacement (all of a class if it has fewer)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)])


def summarize(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}


# --- how sure is an accuracy on a small held-out set? ------------------------------------------

def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval of a proportion k / n: unlike the normal approximation it stays
    inside [0, 1] and keeps its coverage at the 50-150 held-out trials an EEG test run has."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def margin_shortfall(correct_gen, correct_real, share: float = 0.8, chance: float = 0.5,
                     groups=None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Train-on-synthetic accuracy minus the target bar `chance + share * (real accuracy - chance)`, with a
    95% paired bootstrap interval over the held-out trials.

    `correct_gen` / `correct_real`: per held-out trial, whether the decoder trained on generated / real trials
    got it right. Both decoders are scored on the same trials, so the trials are resampled together (paired):
    that keeps the part of the noise that is shared, the test set's own difficulty, out of the interval.
    With `groups` (e.g. the subject of each trial) every group is resampled within itself, so each bootstrap
    test set has the real one's make-up. An interval entirely above 0 means the target is met beyond the test
    set's noise, entirely below means it is missed beyond it; one that straddles 0 says the held-out set is
    too small to tell.
    """
    g = np.asarray(correct_gen, np.float64)
    r = np.asarray(correct_real, np.float64)
    if g.shape != r.shape or g.ndim != 1 or not len(g):
        raise ValueError("margin_shortfall: the two correctness vectors must be 1-D, non-empty and of one length")
    d = g - share * r  # the bar is chance * (1 - share) + share * acc_real; per-trial terms average to the difference
    offset = chance * (1 - share)
    groups = np.zeros(len(g), int) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    for u in np.unique(groups):
        idx = np.flatnonzero(groups == u)
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        boot += d[idx][draws].sum(1)
    boot = boot / len(g) - offset
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"difference": float(d.mean() - offset), "lo": float(lo), "hi": float(hi), "n": int(len(g))}
