"""Figures a neuroscientist expects when comparing generated EEG with real EEG.

Every function takes numpy trials (n, n_chans, n_times) in volts, writes one PNG and returns its
path. Matplotlib runs on the Agg backend: no display is needed.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.metrics import BETA_BAND, CLASS_NAMES, MOTOR_TRIO, MU_BAND, band_power, psd  # noqa: E402

REAL_COLOR, GEN_COLOR = "#1f77b4", "#d62728"


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _picks(ch_names, wanted=MOTOR_TRIO) -> list[int]:
    """Indices of C3/Cz/C4, or the first three channels when they are absent (source space)."""
    names = list(ch_names)
    idx = [names.index(c) for c in wanted if c in names]
    return idx or list(range(min(3, len(names))))


def plot_trials(X_real, y_real, X_gen, y_gen, sfreq: float, ch_names, path, n_per_class: int = 2) -> Path:
    """A few real and generated trials per class at C3/Cz/C4 (microvolts)."""
    picks = _picks(ch_names)
    t = np.arange(X_real.shape[-1]) / sfreq
    fig, axes = plt.subplots(len(picks), 4, figsize=(14, 2.2 * len(picks)), sharex=True, squeeze=False)
    for col, (name, X, y, color) in enumerate([("real", X_real, y_real, REAL_COLOR), ("real", X_real, y_real, REAL_COLOR),
                                               ("generated", X_gen, y_gen, GEN_COLOR),
                                               ("generated", X_gen, y_gen, GEN_COLOR)]):
        c = col % 2
        trials = np.flatnonzero(y == c)[:n_per_class]
        for row, ch in enumerate(picks):
            ax = axes[row, col]
            for k, i in enumerate(trials):
                ax.plot(t, X[i, ch] * 1e6, color=color, lw=0.7, alpha=1.0 - 0.4 * k)
            if row == 0:
                ax.set_title(f"{name}, {CLASS_NAMES[c]} fist")
            if col == 0:
                ax.set_ylabel(f"{ch_names[ch]} (uV)")
    for ax in axes[-1]:
        ax.set_xlabel("time after cue (s)")
    fig.suptitle("Real vs generated trials")
    return _save(fig, path)


def plot_psd(X_real, y_real, X_gen, y_gen, sfreq: float, ch_names, path) -> Path:
    """Class-mean PSD (dB) at C3/Cz/C4 with the mu and beta bands shaded."""
    picks = _picks(ch_names)
    Pr, f = psd(X_real[:, picks], sfreq)
    Pg, _ = psd(X_gen[:, picks], sfreq)
    fig, axes = plt.subplots(2, len(picks), figsize=(4.5 * len(picks), 6), sharex=True, squeeze=False)
    for c in (0, 1):
        for j, ch in enumerate(picks):
            ax = axes[c, j]
            ax.axvspan(*MU_BAND, color="orange", alpha=0.15, label="mu 8-13 Hz")
            ax.axvspan(*BETA_BAND, color="green", alpha=0.08, label="beta 13-30 Hz")
            for P, yy, color, name in ((Pr, y_real, REAL_COLOR, "real"), (Pg, y_gen, GEN_COLOR, "generated")):
                if np.any(yy == c):
                    ax.plot(f, 10 * np.log10(np.maximum(P[yy == c, j].mean(0), 1e-300) * 1e12), color=color, label=name)
            ax.set_title(f"{ch_names[ch]}, {CLASS_NAMES[c]} fist")
            if j == 0:
                ax.set_ylabel("PSD (dB re 1 uV^2/Hz)")
            if c == 1:
                ax.set_xlabel("frequency (Hz)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Class-mean power spectra")
    return _save(fig, path)


def _info(ch_names, sfreq: float):
    import mne

    from data.recording import standard_montage

    info = mne.create_info(list(ch_names), sfreq, "eeg")
    info.set_montage(standard_montage(), match_case=False, on_missing="ignore", verbose="error")
    return info


def plot_mu_topomaps(X_real, y_real, X_gen, y_gen, sfreq: float, ch_names, path) -> Path | None:
    """Mu-band log power, right minus left fist (dB), real and generated, on the scalp.

    Returns None when the channels have no scalp positions (source space).
    """
    import mne

    info = _info(ch_names, sfreq)
    pos = np.array([ch["loc"][:3] for ch in info["chs"]])
    if not np.isfinite(pos).all() or np.allclose(pos, 0):
        return None
    maps = []
    for X, y in ((X_real, y_real), (X_gen, y_gen)):
        bp = band_power(X, sfreq, MU_BAND)
        maps.append(10 * np.log10(np.maximum(bp[y == 1].mean(0), 1e-300))
                    - 10 * np.log10(np.maximum(bp[y == 0].mean(0), 1e-300)))
    lim = max(float(np.abs(np.concatenate(maps)).max()), 1e-3)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, m, title in zip(axes, maps, ("real", "generated")):
        im, _ = mne.viz.plot_topomap(m, info, axes=ax, show=False, cmap="RdBu_r", vlim=(-lim, lim),
                                     names=list(ch_names))
        ax.set_title(title)
    fig.colorbar(im, ax=axes, shrink=0.7, label="mu power, right - left (dB)")
    fig.suptitle("Mu desynchronisation lateralisation")
    return _save(fig, path)


def plot_tfr(X_real, y_real, X_gen, y_gen, sfreq: float, ch_names, path, rest=None) -> Path:
    """Time-frequency ERD/ERS (%) at C3 and C4 per class, real vs generated (Morlet wavelets).

    The baseline is the real rest (T0) power per frequency when `rest` trials are given (the
    epochs start at the cue, so they hold no pre-cue baseline); otherwise the time-mean power of
    all real trials. The same real baseline is used for both rows so colours compare directly.
    """
    from mne.time_frequency import tfr_array_morlet

    picks = _picks(ch_names, ("C3", "C4"))
    freqs = np.arange(6.0, 36.0, 2.0)
    n_cycles = freqs / 2.0

    def power(X):
        P = tfr_array_morlet(np.nan_to_num(np.asarray(X[:, picks], np.float64)), sfreq, freqs,
                             n_cycles=n_cycles, output="power", decim=4, n_jobs=1, verbose="error")
        return P  # (n, len(picks), n_freqs, n_times)

    Pr, Pg = power(X_real), power(X_gen)
    if rest is not None and len(rest):
        base = power(rest[: min(len(rest), 200)]).mean(axis=(0, 3))
    else:
        base = Pr.mean(axis=(0, 3))
    t = np.arange(Pr.shape[-1]) * 4 / sfreq
    fig, axes = plt.subplots(2, 2 * len(picks), figsize=(4 * 2 * len(picks), 6), sharex=True, sharey=True,
                             squeeze=False)
    im = None
    for r, (P, y, name) in enumerate(((Pr, y_real, "real"), (Pg, y_gen, "generated"))):
        for j, ch in enumerate(picks):
            for c in (0, 1):
                ax = axes[r, 2 * j + c]
                erd = 100 * (P[y == c, j].mean(0) / base[j][:, None] - 1.0) if np.any(y == c) else np.zeros((len(freqs), len(t)))
                im = ax.imshow(erd, cmap="RdBu_r", vmin=-60, vmax=60, aspect="auto", origin="lower",
                               extent=(t[0], t[-1], freqs[0] - 1, freqs[-1] + 1), interpolation="nearest")
                ax.set_title(f"{name} {ch_names[ch]}, {CLASS_NAMES[c]}")
                if 2 * j + c == 0:
                    ax.set_ylabel("frequency (Hz)")
                if r == 1:
                    ax.set_xlabel("time (s)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="ERD/ERS (% of baseline power)")
    fig.suptitle("Time-frequency maps (negative = desynchronisation)")
    return _save(fig, path)


def plot_curves(metrics_path, path) -> Path | None:
    """Training curves from a run's metrics.jsonl: every numeric column against the epoch."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    xkey = "epoch" if "epoch" in rows[0] else None
    keys = sorted({k for r in rows for k, v in r.items()
                   if k != xkey and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not keys:
        return None
    n = len(keys)
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.5 * cols, 3 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, k in zip(axes.flat, keys):
        xs = [r.get(xkey, i) if xkey else i for i, r in enumerate(rows) if isinstance(r.get(k), (int, float))]
        ys = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        ax.plot(xs, ys, marker="." if len(xs) < 40 else None)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(xkey or "row")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Training curves")
    fig.tight_layout()
    return _save(fig, path)


def plot_embedding(X_real, y_real, X_gen, y_gen, sfreq: float, path, extra: dict | None = None) -> Path:
    """2-D PCA of per-trial log-PSD (4-40 Hz, all channels), fitted on real trials.

    Log spectra rather than raw samples: two trials with the same rhythm but shifted phase are
    far apart sample by sample and close spectrally, which is what "looks like real EEG" means.
    `extra` adds more generated-like sets (e.g. the phase-randomised baseline) by name.
    """
    from sklearn.decomposition import PCA

    def feats(X):
        P, _ = psd(X, sfreq)
        return np.log10(np.maximum(P, 1e-300)).reshape(len(X), -1)

    Fr = feats(X_real)
    pca = PCA(n_components=2, random_state=0).fit(Fr)
    fig, ax = plt.subplots(figsize=(6, 5))
    sets = [("real", X_real, y_real, REAL_COLOR, Fr), ("generated", X_gen, y_gen, GEN_COLOR, None)]
    for i, (name, (X, y)) in enumerate((extra or {}).items()):
        sets.append((name, X, y, ["#2ca02c", "#9467bd", "#8c564b"][i % 3], None))
    for name, X, y, color, F in sets:
        Z = pca.transform(feats(X) if F is None else F)
        for c, marker in ((0, "o"), (1, "^")):
            m = y == c
            ax.scatter(Z[m, 0], Z[m, 1], s=14, c=color, marker=marker, alpha=0.6,
                       label=f"{name} {CLASS_NAMES[c]}")
    ax.set_xlabel("PC 1 (log-PSD)")
    ax.set_ylabel("PC 2 (log-PSD)")
    ax.legend(fontsize=7)
    ax.set_title("Embedding of real vs generated trials")
    return _save(fig, path)
