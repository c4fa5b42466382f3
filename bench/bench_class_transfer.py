"""Which parts of the real left/right difference carry over from the training runs (4, 8) to the
held-out run (12)? The statistics are the GAN's class targets (`trainers.gan.SpectralTargets.features`:
log band power and whitened band covariance per STAT_BANDS band).

    python bench/bench_class_transfer.py [--subjects 6,7,8,9,10] [--set KEY=VALUE ...]

Per band: the cosine between the training trials' class-mean difference and run 12's (for log band
power and for the whitened covariance, what CSP uses); and, to judge weighting the difference by how
well the two training runs agree, the cosine after weighting each element by
clamp(d4 * d8 / d48^2, 0, 1), with the accuracy on run 12 of a nearest-mean rule along the raw and
the weighted difference. Also: per subject, whether a subject's own difference predicts its run-12
difference better than the pooled one does. The trials are the GAN's (training and validation,
`Splits.pooled`). Writes bench/results/class_transfer.json. Single-threaded torch and BLAS.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from report import write_results  # noqa: E402  (bench/ is the script's folder)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm() + 1e-30))


def diff(F: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F[y == 1].mean(0) - F[y == 0].mean(0)


def nearest_mean_accuracy(Ftr, Fte, yte, direction) -> float:
    """Project on direction / variance, threshold at the training median."""
    mu, var = Ftr.mean(0), Ftr.var(0) + 1e-12
    thr = (((Ftr - mu) / var).flatten(1) @ direction.flatten()).median()
    proj = ((Fte - mu) / var).flatten(1) @ direction.flatten()
    return float(((proj > thr).long() == yte).double().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", default="6,7,8,9,10", help="comma-separated subject numbers")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    torch.set_num_threads(1)
    import mne

    from config.schema import load_config
    from data.dataset import Standardizer, load_splits
    from trainers.gan import STAT_BANDS, SpectralTargets

    mne.set_log_level("ERROR")
    sets = list(args.set)
    if not any(s.startswith("data_path=") for s in sets):
        sets.append(f"data_path={ROOT.parent / 'shared' / 'data' / 'eegmmidb'}")
    cfg = load_config(ROOT / "config" / "config.json", sets + [f"data.subjects=[{args.subjects}]"])
    sp = load_splits(cfg, cfg["data"], seed=cfg["seed"], progress=False).pooled()
    tr, te = sp.train, sp.test
    std = Standardizer.fit(tr.X, cfg["data"]["normalize"])
    Xtr, Xte = torch.from_numpy(std.transform(tr.X)), torch.from_numpy(std.transform(te.X))
    ytr, yte = torch.from_numpy(tr.y).long(), torch.from_numpy(te.y).long()
    runs = sorted(set(tr.run.tolist()))
    if len(runs) != 2:
        sys.exit(f"bench_class_transfer: needs two training runs, the data has {runs}")
    run = torch.from_numpy(tr.run)
    T = SpectralTargets(Xtr, ytr, tr.sfreq, band_classifier=False, envelope=False)
    with torch.no_grad():
        ftr, fte = T.features(Xtr), T.features(Xte)
    stats = {"log_band_power": (ftr["logbp"].double(), fte["logbp"].double()),
             "whitened_covariance": (T._whitened(ftr["cov"]).double(), T._whitened(fte["cov"]).double())}
    res = {"subjects": args.subjects, "trials": [len(ytr), len(yte)], "training_runs": runs, "threads": 1,
           "bands": {}, "all_bands": {}}
    for name, (A, B) in stats.items():
        d, d12 = diff(A, ytr), diff(B, yte)
        d_a, d_b = diff(A[run == runs[0]], ytr[run == runs[0]]), diff(A[run == runs[1]], ytr[run == runs[1]])
        w = (d_a * d_b / (((d_a + d_b) / 2) ** 2 + 1e-30)).clamp(0, 1)
        res["all_bands"][name] = {
            "cos_train_test": cos(d, d12), "cos_weighted_train_test": cos(w * d, d12),
            "weighted_norm_kept": float((w * d).norm() / d.norm()),
            "nearest_mean_acc": nearest_mean_accuracy(A, B, yte, d),
            "nearest_mean_acc_weighted": nearest_mean_accuracy(A, B, yte, w * d)}
        for b, band in enumerate(STAT_BANDS):
            res["bands"].setdefault(band, {})[name] = {"cos_train_test": cos(d[b], d12[b]),
                                                       "cos_run_a_run_b": cos(d_a[b], d_b[b])}
    # Per subject: its own difference against the pooled one as a predictor of its run-12 difference.
    lb, lb12 = stats["log_band_power"]
    subs = sorted(set(tr.subject.tolist()) & set(te.subject.tolist()))
    s_tr, s_te = torch.from_numpy(tr.subject), torch.from_numpy(te.subject)
    own = torch.cat([diff(lb[s_tr == s], ytr[s_tr == s]) for s in subs])
    target = torch.cat([diff(lb12[s_te == s], yte[s_te == s]) for s in subs])
    pooled = diff(lb, ytr).repeat(len(subs), 1, 1)
    res["per_subject_log_band_power"] = {"cos_own": cos(own, target), "cos_pooled": cos(pooled, target)}

    print(f"subjects {args.subjects}: {len(ytr)} training trials (runs {runs}), {len(yte)} held-out; "
          f"torch and BLAS threads 1")
    print(f"{'band':8s} {'logbp cos(train,12)':>20s} {'cos(run a,b)':>13s} {'wcov cos(train,12)':>19s} "
          f"{'cos(run a,b)':>13s}")
    for band, r in res["bands"].items():
        lbr, wc = r["log_band_power"], r["whitened_covariance"]
        print(f"{band:8s} {lbr['cos_train_test']:+20.3f} {lbr['cos_run_a_run_b']:+13.3f} "
              f"{wc['cos_train_test']:+19.3f} {wc['cos_run_a_run_b']:+13.3f}")
    for name, r in res["all_bands"].items():
        print(f"{name}, all bands: cos(train, 12) {r['cos_train_test']:+.3f}, run-agreement weighted "
              f"{r['cos_weighted_train_test']:+.3f} (norm kept {r['weighted_norm_kept']:.2f}); nearest-mean "
              f"accuracy on run 12 {r['nearest_mean_acc']:.3f}, weighted {r['nearest_mean_acc_weighted']:.3f}")
    ps = res["per_subject_log_band_power"]
    print(f"per subject, log band power: cos(own difference, run 12) {ps['cos_own']:+.3f}, "
          f"cos(pooled difference, run 12) {ps['cos_pooled']:+.3f}")
    write_results(res, "class_transfer.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
