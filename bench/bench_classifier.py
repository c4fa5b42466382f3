"""Classifier targets of issue 2, measured side by side in one run.

* within-subject imagery S001-S010 (train runs 4+8, test run 12, 21 motor channels): per-subject test
  accuracy of each CNN (one network trained on the training runs of all ten subjects, the
  trainer's default; run 12 of every subject stays unseen) and of a Riemannian tangent-space +
  logistic-regression pipeline (pyriemann) fitted per subject on runs 4+8;
* cross-subject imagery: train on S001-S008, test on S009-S010 (CNNs and the Riemannian pipeline);
* cold EDF load vs cached load of the 30 imagery recordings;
* classifier training throughput (samples/s) and seconds per epoch.

BLAS is limited to 1 thread (threadpoolctl) and torch to 1 thread (`--threads`), so numbers are
comparable on a shared 2-core machine. Prints a table; writes bench/results/classifier.json.

    python bench/bench_classifier.py --set data_path=../shared/data/eegmmidb
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from config.schema import apply_overrides, read_json, validate  # noqa: E402
from data.dataset import load_recordings  # noqa: E402
from report import write_results  # noqa: E402  (bench/ is the script's folder)


def riemann_pipeline():
    from pyriemann.estimation import Covariances
    from pyriemann.tangentspace import TangentSpace
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(Covariances("oas"), TangentSpace(metric="riemann"), LogisticRegression(max_iter=1000))


def riemann_scores(es, train_mask, test_mask) -> float:
    p = riemann_pipeline().fit(es.X[train_mask].astype(np.float64), es.y[train_mask])
    return float((p.predict(es.X[test_mask].astype(np.float64)) == es.y[test_mask]).mean())


def train(cfg: dict, seed: int, quiet: bool) -> dict:
    from trainers.classifier import train_round

    out = Path(tempfile.mkdtemp(prefix="bench-clf-"))
    try:
        with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
            return train_round(cfg, out, torch.device("cpu"), seed)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--methods", nargs="+", default=["stft", "shallow", "eegnet", "stft+EA", "shallow+EA"],
                    help="architecture, or architecture+EA for classifier.alignment=euclidean")
    ap.add_argument("--cross-methods", nargs="+", default=["stft", "shallow", "stft+EA"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--slow", nargs="*", default=["eegnet"], help="methods trained with the first seed only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-cross", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "classifier.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def seeds_of(method):
        return args.seeds[:1] if method in args.slow else args.seeds

    def method_overrides(method):
        arch, _, ea = method.partition("+")
        return [f"classifier.architecture=\"{arch}\""] + (["classifier.alignment=\"euclidean\""] if ea == "EA" else [])

    threadpool_limits(1)
    print(f"threads: torch {args.threads}, BLAS 1 (threadpoolctl); {platform.processor() or platform.machine()}")
    # config.json is read once: the run is unaffected by edits made while it trains.
    user = read_json(ROOT / "config" / "config.json")

    def load_config(_path, overrides):
        return validate(apply_overrides(user, overrides))

    cfg = load_config(None, ["data.download=false"] + args.overrides)
    subjects = list(range(1, 11))
    base = ["data.split=\"run\"", f"data.subjects={json.dumps(subjects)}", "data.task=\"imagery\"",
            "data.train_runs=[4,8]", "data.test_runs=[12]"]
    res: dict = {"config": {k: cfg[k] for k in ("epochs", "batch_size", "learning_rate")} | {"classifier": cfg["classifier"]},
                 "seeds": args.seeds, "slow_methods_seeds": args.seeds[:1], "threads": {"torch": args.threads, "blas": 1}}

    # --- cold vs cached load ------------------------------------------------------------------
    tmp_cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    lcfg = load_config(ROOT / "config" / "config.json", ["data.download=false"] + args.overrides + base
                       + [f"cache_dir=\"{tmp_cache}\""])
    t = time.perf_counter()
    es = load_recordings(lcfg, progress=False)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        load_recordings(lcfg, progress=False)
        warm.append(time.perf_counter() - t)
    shutil.rmtree(tmp_cache, ignore_errors=True)
    res["load"] = {"files": 30, "cold_s": cold, "cached_s": min(warm), "speedup": cold / min(warm)}
    print(f"load 30 EDF files: cold {cold:.2f} s, cached {min(warm):.3f} s -> {cold / min(warm):.0f}x")

    # --- within-subject -----------------------------------------------------------------------
    rie = {}
    for s in subjects:
        rie[f"S{s:03d}"] = riemann_scores(es, (es.subject == s) & np.isin(es.run, [4, 8]),
                                          (es.subject == s) & (es.run == 12))
    within = {"riemann": {"per_subject": rie, "mean": float(np.mean(list(rie.values())))}}
    speed = {}
    for arch in args.methods:
        per_seed = []
        for seed in seeds_of(arch):
            c = load_config(ROOT / "config" / "config.json", ["data.download=false"] + args.overrides + base
                            + method_overrides(arch) + [f"seed={seed}"])
            t = time.perf_counter()
            r = train(c, seed, not args.verbose)
            per_seed.append(r)
            val, best = r["val_accuracy"] or float("nan"), r["best_val_accuracy"] or float("nan")
            print(f"  within {arch:8s} seed {seed}: test {r['test_accuracy']:.3f} (kept epoch {r['kept_epoch']}, "
                  f"val {val:.3f}; best val {best:.3f} at epoch {r['best_epoch']}; {r['epochs_completed']} epochs, "
                  f"{time.perf_counter() - t:.0f} s)", flush=True)
        per_subject = {k: float(np.mean([r["test_accuracy_per_subject"][k] for r in per_seed])) for k in rie}
        within[arch] = {"per_subject": per_subject, "mean": float(np.mean(list(per_subject.values()))),
                        "seed_means": [float(np.mean(list(r["test_accuracy_per_subject"].values()))) for r in per_seed]}
        speed[arch] = {"train_samples_per_s": float(np.mean([r["train_samples_per_s"] for r in per_seed])),
                       "s_per_epoch": float(np.mean([r["s_per_epoch"] for r in per_seed])),
                       "n_train": per_seed[0]["n_train"], "n_params": per_seed[0]["n_params"]}
    res["within_subject"], res["throughput"] = within, speed

    # --- cross-subject ------------------------------------------------------------------------
    if not args.skip_cross:
        tr, te = np.isin(es.subject, range(1, 9)), np.isin(es.subject, [9, 10])
        cross = {"riemann": riemann_scores(es, tr, te)}
        cbase = ["data.split=\"subject\"", f"data.subjects={json.dumps(subjects)}", "data.task=\"imagery\"",
                 "data.train_subjects=[1,2,3,4,5,6,7,8]", "data.test_subjects=[9,10]"]
        for arch in args.cross_methods:
            accs = []
            for seed in seeds_of(arch):
                c = load_config(ROOT / "config" / "config.json", ["data.download=false"] + args.overrides + cbase
                                + method_overrides(arch) + [f"seed={seed}"])
                accs.append(train(c, seed, not args.verbose)["test_accuracy"])
            cross[arch] = float(np.mean(accs))
            print(f"  cross {arch:8s}: {cross[arch]:.3f} (seeds {np.round(accs, 3).tolist()})", flush=True)
        res["cross_subject"] = cross

    # --- table --------------------------------------------------------------------------------
    methods = ["riemann"] + list(args.methods)
    print("\nwithin-subject imagery, train runs 4+8 / test run 12 (15 trials per subject); "
          f"CNN numbers are means over seeds {args.seeds}")
    print("| subject | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for k in rie:
        print(f"| {k} | " + " | ".join(f"{within[m]['per_subject'][k]:.3f}" for m in methods) + " |")
    print("| **mean** | " + " | ".join(f"**{within[m]['mean']:.3f}**" for m in methods) + " |")
    if "cross_subject" in res:
        print("| cross-subject S001-S008 -> S009-S010 | "
              + " | ".join(f"{res['cross_subject'][m]:.3f}" if m in res["cross_subject"] else "-"
                           for m in methods) + " |")
    print(f"(methods in --slow, {args.slow}, use seed {args.seeds[0]} only)")
    print("\n| architecture | params | train trials | samples/s | s/epoch |\n|---|---:|---:|---:|---:|")
    for a, v in speed.items():
        print(f"| {a} | {v['n_params']} | {v['n_train']} | {v['train_samples_per_s']:.0f} | {v['s_per_epoch']:.2f} |")
    best = max(args.methods, key=lambda a: within[a]["mean"])
    res["best_architecture"] = best
    res["best_minus_riemann"] = within[best]["mean"] - within["riemann"]["mean"]
    print(f"\nbest CNN: {best} {within[best]['mean']:.3f} vs Riemannian {within['riemann']['mean']:.3f} "
          f"({100 * res['best_minus_riemann']:+.1f} points)")
    write_results(res, Path(args.out).resolve())  # as given, relative to the working folder


if __name__ == "__main__":
    main()
