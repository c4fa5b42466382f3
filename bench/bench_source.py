"""Source-space benchmark: operator build time, round trip per subject, ROI trade-off, and
classifier accuracy with sensor vs source input on the same split.

    python bench/bench_source.py --set data_path=../shared/data/eegmmidb [--epochs 30] [--skip-classifier]

Runs with 1 torch thread and 1 BLAS thread (threadpoolctl); prints tables and writes
bench/results/source.json. The epoch cache is the configured cache_dir; operators are timed in a
fresh folder under it (removed afterwards) and then again on a cache hit.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import write_results  # noqa: E402  (bench/ is the script's folder)


def explained(ref: np.ndarray, rec: np.ndarray) -> float:
    return float(1 - ((ref - rec) ** 2).sum() / (ref ** 2).sum())


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    w = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    out = ["  ".join(c.rjust(w[c]) for c in cols)]
    out += ["  ".join(fmt(r.get(c, "")).rjust(w[c]) for c in cols) for r in rows]
    return "\n".join(out)


def gan_diagnostics(run_dir: str) -> dict:
    """Why a source GAN's scalp trials are small: per-source amplitude vs cross-source correlation."""
    from config.schema import validate
    from data.dataset import load_splits
    from trainers.generate import load_generator

    bundle = load_generator(run_dir)
    if bundle.projection is None:
        raise SystemExit(f"--gan-run {run_dir}: not a representation=source run")
    splits = load_splits(validate(bundle.cfg), progress=False)
    S, _ = bundle.sample_native(60, 0)
    X = bundle.projection.to_sensors(S)
    real_S, real_X = splits.train.X, splits.sensor.train.X

    def ratio(a, b):
        return float(np.median(a.std(axis=(0, 2)) / b.std(axis=(0, 2))))

    def corr(A):
        return np.corrcoef(A.transpose(1, 0, 2).reshape(A.shape[1], -1))

    cg, cr = corr(S), corr(real_S)
    iu = np.triu_indices_from(cg, 1)
    out = {"run": str(run_dir), "source_std_ratio": ratio(S, real_S), "scalp_std_ratio": ratio(X, real_X),
           "scalp_std_ratio_projected_real": ratio(splits.source.to_sensors(real_S), real_X),
           "source_corr_match": float(np.corrcoef(cg[iu], cr[iu])[0, 1]),
           "mean_abs_source_corr_generated": float(np.abs(cg[iu]).mean()),
           "mean_abs_source_corr_real": float(np.abs(cr[iu]).mean())}
    print("\nsource GAN diagnostics (channel medians; 120 generated vs the real training trials):")
    for k, v in out.items():
        print(f"  {k}: {v if isinstance(v, str) else round(v, 3)}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "config/config.json"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--epochs", type=int, default=30, help="classifier epochs per representation")
    p.add_argument("--skip-classifier", action="store_true")
    p.add_argument("--architecture", default="shallow", choices=("eegnet", "shallow"),
                   help="classifier for both inputs (stft needs C3/Cz/C4, absent from source input)")
    p.add_argument("--gan-run", default=None, metavar="RUN_DIR",
                   help="also diagnose a representation=source GAN run: amplitudes and source correlations")
    p.add_argument("--out", default=str(ROOT / "bench/results/source.json"))
    args = p.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    from config.schema import load_config
    from data.dataset import load_recordings, split
    from data.eegbci import MOTOR_CHANNELS
    from data.sources import SourceModel, SourceParams, build_forward, build_inverse, roi_mask

    cfg = load_config(args.config, ["representation=source"] + args.overrides)
    command = " ".join(["python bench/bench_source.py"] + [f"--set {o}" for o in args.overrides]
                       + [f"--epochs {args.epochs} --architecture {args.architecture}"])
    results: dict = {"command": command, "threads": {"torch": 1, "blas": 1}, "source": cfg["source"],
                     "data": cfg["data"]}

    # --- operators: cold build and cache hit --------------------------------------------------
    t0 = time.perf_counter()
    full = split(load_recordings(cfg, {**cfg["data"], "channels": "all"}, progress=False), cfg)
    t_load = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="bench-source-", dir=Path(cfg["cache_dir"]).resolve()))
    try:
        tcfg = {**cfg, "cache_dir": str(tmp)}
        t0 = time.perf_counter()
        model = SourceModel.fit(full.train, tcfg)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        hit = SourceModel.fit(full.train, tcfg)
        t_hit = time.perf_counter() - t0
        assert hit.info["cache_hit"] and not model.info["cache_hit"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_subj = len(np.unique(full.train.subject))
    results["operators"] = {"subjects": n_subj, "n_rest_epochs": model.info["n_rest_epochs"],
                            "n_sources_total": model.info["n_sources_total"], "n_roi": model.n_sources,
                            "head_model": model.info["head_model"], "cold_build_s": round(t_cold, 2),
                            "cache_hit_s": round(t_hit, 3), "load_epochs_s": round(t_load, 2)}
    print(f"operators for {n_subj} subjects ({model.info['n_rest_epochs']} training rest epochs, "
          f"{model.info['head_model']} head model, {model.info['n_sources_total']} sources, ROI {model.n_sources}): "
          f"cold {t_cold:.1f} s, cache hit {t_hit:.3f} s")

    # --- round trip per subject -----------------------------------------------------------------
    params = SourceParams.from_config(cfg)
    tr = full.train
    fwd = build_forward(tr.ch_names, tr.ch_pos, tr.sfreq, params, Path(cfg["cache_dir"]))
    inv = build_inverse(fwd, tr.ch_names, tr.ch_pos, tr.sfreq, tr.rest, params, Path(cfg["cache_dir"]))
    gain = fwd["gain"] - fwd["gain"].mean(axis=0)
    current = inv["kernel"] / inv["noise_norm"][:, None]
    out_idx = [tr.ch_names.index(c) for c in MOTOR_CHANNELS]
    full_map = gain[out_idx] @ current  # every source: what the regularisation alone loses
    rows = []
    for part in ("train", "test"):
        es = getattr(full, part)
        ref = model.reference(es.X)
        rec_roi = model.to_sensors(model.to_sources(es.X))
        rec_all = np.einsum("ck,nkt->nct", full_map, es.X, optimize=True)
        for s in np.unique(es.subject):
            k = es.subject == s
            rows.append({"part": part, "subject": int(s), "roi": explained(ref[k], rec_roi[k]),
                         "all_sources": explained(ref[k], rec_all[k])})
    results["round_trip"] = rows
    print("\nround trip EEG(64) -> sources -> leadfield -> EEG on the 21 motor channels (average reference):"
          " share of variance explained")
    print(table([r for r in rows if r["part"] == "test"], ["part", "subject", "roi", "all_sources"]))
    for part in ("train", "test"):
        v = [r["roi"] for r in rows if r["part"] == part]
        a = [r["all_sources"] for r in rows if r["part"] == part]
        print(f"{part}: ROI mean {np.mean(v):.3f} (min {np.min(v):.3f}, max {np.max(v):.3f}); "
              f"all sources mean {np.mean(a):.3f}")

    # --- ROI radius and SNR trade-off (test run, all subjects pooled) ----------------------------
    te = full.test
    ref = model.reference(te.X)
    trade = []
    for radius in (6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 30.0):
        m, _ = roi_mask(fwd["src_pos"], tr.ch_names, tr.ch_pos, params.roi_channels, radius)
        M = gain[np.ix_(out_idx, np.flatnonzero(m))] @ current[m]
        trade.append({"roi_radius_mm": radius, "snr": params.snr, "n_roi": int(m.sum()),
                      "explained": explained(ref, np.einsum("ck,nkt->nct", M, te.X, optimize=True))})
    for snr in (1.0, 10.0):
        p2 = dataclasses.replace(params, snr=snr)
        inv2 = build_inverse(fwd, tr.ch_names, tr.ch_pos, tr.sfreq, tr.rest, p2, Path(cfg["cache_dir"]))
        cur2 = inv2["kernel"] / inv2["noise_norm"][:, None]
        m, _ = roi_mask(fwd["src_pos"], tr.ch_names, tr.ch_pos, params.roi_channels, params.roi_radius_mm)
        M = gain[np.ix_(out_idx, np.flatnonzero(m))] @ cur2[m]
        trade.append({"roi_radius_mm": params.roi_radius_mm, "snr": snr, "n_roi": int(m.sum()),
                      "explained": explained(ref, np.einsum("ck,nkt->nct", M, te.X, optimize=True)),
                      "all_sources": explained(ref, np.einsum("ck,nkt->nct", gain[out_idx] @ cur2, te.X,
                                                              optimize=True))})
    trade[[t["roi_radius_mm"] for t in trade].index(params.roi_radius_mm)]["all_sources"] = explained(
        ref, np.einsum("ck,nkt->nct", full_map, te.X, optimize=True))
    results["trade_off"] = trade
    print("\nROI size and SNR vs round trip (test run, pooled):")
    print(table(trade, ["roi_radius_mm", "snr", "n_roi", "explained", "all_sources"]))

    # --- CSP+LDA per subject: sensor vs source input (a linear decoder, no training budget) ---------
    from utils.metrics import csp_lda_accuracy as csp_acc  # CSP(6, Ledoit-Wolf) + LDA, BLAS single-threaded

    trX_src, teX_src = model.to_sources(full.train.X), model.to_sources(full.test.X)
    motor = [tr.ch_names.index(c) for c in MOTOR_CHANNELS]
    csp_rows = []
    for s in np.unique(full.test.subject):
        a, b = full.train.subject == s, full.test.subject == s
        ya, yb = full.train.y[a], full.test.y[b]
        csp_rows.append({"subject": int(s),
                         "sensor_21": csp_acc(full.train.X[a][:, motor], ya, full.test.X[b][:, motor], yb),
                         "sensor_64": csp_acc(full.train.X[a], ya, full.test.X[b], yb),
                         "source_roi": csp_acc(trX_src[a], ya, teX_src[b], yb)})
    mean = {k: float(np.mean([r[k] for r in csp_rows])) for k in ("sensor_21", "sensor_64", "source_roi")}
    csp_rows.append({"subject": "mean", **mean})
    results["csp_lda"] = csp_rows
    print("\nCSP(6, Ledoit-Wolf)+LDA within subject, train runs -> test run 12 (chance 0.5):")
    print(table(csp_rows, ["subject", "sensor_21", "sensor_64", "source_roi"]))

    # --- classifier: sensor vs source input on the same split ------------------------------------
    if not args.skip_classifier:
        import trainers.classifier as clf
        from trainers.common import run_training

        out_dir = Path(tempfile.mkdtemp(prefix="bench-source-runs-", dir=ROOT / "checkpoints"))
        acc = []
        try:
            for rep in ("sensor", "source"):
                c = {**cfg, "representation": rep, "epochs": args.epochs, "model_name": "classifier",
                     "output_dir": str(out_dir), "classifier": {**cfg["classifier"], "architecture": args.architecture}}
                t0 = time.perf_counter()
                _, summary = run_training(c, clf, torch.device("cpu"))
                acc.append({"representation": rep, "architecture": summary["architecture"],
                            "n_chans": (len(MOTOR_CHANNELS) if rep == "sensor" else model.n_sources),
                            "test_accuracy": float(summary["test_accuracy"]),
                            "best_val_accuracy": summary.get("best_val_accuracy"),
                            "epochs": summary["epochs_completed"], "wall_s": round(time.perf_counter() - t0, 1),
                            "per_subject": summary["test_accuracy_per_subject"]})
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        results["classifier"] = acc
        print(f"\nclassifier ({args.architecture}, {args.epochs} epochs, same split, seed "
              f"{cfg['seed']}):")
        print(table(acc, ["representation", "n_chans", "test_accuracy", "best_val_accuracy", "epochs", "wall_s"]))

    if args.gan_run:
        results["gan_diagnostics"] = gan_diagnostics(args.gan_run)

    write_results(results, Path(args.out).resolve())  # as given, relative to the working folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
