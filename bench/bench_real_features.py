"""Which per-trial features of the real recordings carry a left/right difference that transfers
from the training runs (4, 8) to the held-out run (12)?

    python bench/bench_real_features.py [--subjects 6,7,8,9,10] [--set KEY=VALUE ...]

For each feature family, per channel of the configured data (MNE-filtered epochs as the trainers
see them): the cosine between the training runs' and the held-out run's class-mean difference, and
the accuracy on run 12 of a shrinkage LDA trained on runs 4 and 8 (z-scored by the training trials).
Families: log band power (mu 8-13, beta 13-30, 8-30 Hz; Butterworth band-pass, mean power over the
trial); the time course of that power (0.5 s windows, log, minus the trial's mean: the ERD curve of
each trial); higher-order statistics of the waveform (kurtosis, skew, skew and kurtosis of the first
difference; envelope coefficient of variation and skew, Hilbert envelope). A generator objective
on a family that does not transfer teaches a decoder nothing about held-out trials. Writes
bench/results/real_features.json. Single-threaded BLAS (scipy/sklearn).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from report import write_results  # noqa: E402  (bench/ is the script's folder)

WINDOW_S = 0.5


def families(X: np.ndarray, sfreq: float) -> dict[str, np.ndarray]:
    """(n, C, T) -> {family: (n, features)}."""
    from scipy.signal import butter, hilbert, sosfiltfilt
    from scipy.stats import kurtosis, skew

    X = X - X.mean(-1, keepdims=True)
    d = np.diff(X, axis=-1)
    out = {"kurtosis": kurtosis(X, axis=-1), "skew": skew(X, axis=-1), "diff_skew": skew(d, axis=-1),
           "diff_kurtosis": kurtosis(d, axis=-1)}
    win = int(round(WINDOW_S * sfreq))
    for name, band in (("mu", (8, 13)), ("beta", (13, 30)), ("mu_beta", (8, 30))):
        xb = sosfiltfilt(butter(4, band, btype="band", fs=sfreq, output="sos"), X, axis=-1)
        p = xb ** 2
        n_win = p.shape[-1] // win
        logw = np.log(p[..., :n_win * win].reshape(*p.shape[:-1], n_win, win).mean(-1) + 1e-30)
        out[f"log_power_{name}"] = np.log(p.mean(-1) + 1e-30)
        out[f"power_time_course_{name}"] = (logw - logw.mean(-1, keepdims=True)).reshape(len(X), -1)
        if name != "mu_beta":
            env = np.abs(hilbert(xb, axis=-1))[..., win // 2:-(win // 2)]
            out[f"envelope_cv_{name}"] = env.std(-1) / env.mean(-1)
            out[f"envelope_skew_{name}"] = skew(env, axis=-1)
    return {k: v.reshape(len(X), -1) for k, v in out.items()}


def score(A: np.ndarray, ya: np.ndarray, B: np.ndarray, yb: np.ndarray) -> dict:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    mu, sd = A.mean(0), A.std(0) + 1e-12
    da = A[ya == 1].mean(0) - A[ya == 0].mean(0)
    db = B[yb == 1].mean(0) - B[yb == 0].mean(0)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit((A - mu) / sd, ya)
    return {"cosine_train_test_difference": float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db) + 1e-30)),
            "lda_train_to_test": float(lda.score((B - mu) / sd, yb)), "features": int(A.shape[1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", default="6,7,8,9,10", help="comma-separated subject numbers")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")  # small eigendecompositions: see the developers' notes
    import mne

    from config.schema import load_config
    from data.dataset import load_splits

    mne.set_log_level("ERROR")
    sets = list(args.set)
    if not any(s.startswith("data_path=") for s in sets):
        sets.append(f"data_path={ROOT.parent / 'shared' / 'data' / 'eegmmidb'}")
    cfg = load_config(ROOT / "config" / "config.json", sets + [f"data.subjects=[{args.subjects}]"])
    sp = load_splits(cfg, cfg["data"], seed=cfg["seed"], progress=False)
    ftr, fte = families(sp.train.X, sp.train.sfreq), families(sp.test.X, sp.test.sfreq)
    res = {"subjects": args.subjects, "train_trials": len(sp.train.y), "test_trials": len(sp.test.y),
           "blas_threads": 1, "families": {k: score(ftr[k], sp.train.y, fte[k], sp.test.y) for k in ftr}}
    print(f"subjects {args.subjects}: {res['train_trials']} training trials (runs 4, 8), {res['test_trials']} "
          f"held-out (run 12); BLAS threads 1")
    print(f"{'family':28s} {'features':>8s} {'cos(train, test) diff':>22s} {'LDA train->test':>16s}")
    for k, r in res["families"].items():
        print(f"{k:28s} {r['features']:8d} {r['cosine_train_test_difference']:+22.2f} {r['lda_train_to_test']:16.3f}")
    write_results(res, "real_features.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
