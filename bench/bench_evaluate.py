"""Evaluation references and timing on the default split.

    python bench/bench_evaluate.py --set data_path=../shared/data/eegmmidb [--checkpoint RUN_DIR] [--threads 1]

Prints (and writes to bench/results/bench_evaluate.json) every metric for the floor (two disjoint
halves of the real held-out trials) and for the phase-randomised baseline, with the time the
GAN-independent references take. With --checkpoint it also times `evaluate_round` on that GAN
run, once with an empty reference cache (cold) and once with it filled (warm). Torch uses
--threads intra-op threads; BLAS is limited to one thread (threadpoolctl) throughout.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import write_results  # noqa: E402  (bench/ is the script's folder)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "config" / "config.json"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--checkpoint", default=None, help="a GAN run folder to time evaluate_round on")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from config.schema import apply_overrides, load_config, validate
    from trainers.evaluate import Evaluator, RealData, augmentation_markdown, augmentation_table, evaluate_round, metric_table
    from utils.runs import read_run_config, resolve_run_dir

    torch.set_num_threads(args.threads)
    threadpool_limits(1, user_api="blas")
    cfg = load_config(args.config, args.overrides)
    t0 = time.time()
    real = RealData(cfg, progress=False)
    t_load = time.time() - t0
    ev = Evaluator(cfg, "cpu", progress=True, real=real)
    t0 = time.time()
    refs = ev.references()
    t_refs = time.time() - t0
    result = {"candidates": {"gan": {}, "phase_random": refs["phase_random"], "real": refs["real"]},
              "references": {"real_only": refs["real_only"]}}
    aug = augmentation_table(result)
    out = {"config": {"subjects": real.info.get("subjects"), "split": real.info, "evaluation": ev.s},
           "torch_threads": args.threads, "blas_threads": 1, "n_pool": int(len(real.y_pool)),
           "n_test": int(len(real.y_test)), "load_s": round(t_load, 2), "references_s": round(t_refs, 2),
           "references": refs, "augmentation": aug}
    print(f"data: {len(real.y_pool)} real training trials, {len(real.y_test)} held-out; torch threads "
          f"{args.threads}, BLAS threads 1")
    print(f"load {t_load:.1f} s, GAN-independent references {t_refs:.1f} s (cold)\n")
    print(metric_table(result["candidates"]))
    print()
    print(augmentation_markdown(aug))

    if args.checkpoint:
        run = resolve_run_dir(args.checkpoint, "GAN run folder")
        run_cfg = validate(apply_overrides(read_run_config(run), args.overrides))
        times = {}
        with tempfile.TemporaryDirectory() as cache:
            run_cfg["cache_dir"] = cache  # empty: the cold run recomputes every reference
            for label in ("cold", "warm"):
                t0 = time.time()
                head = evaluate_round(run, run_cfg, "cpu", progress=False)
                times[label] = round(time.time() - t0, 2)
        out["evaluate_round_s"] = times
        out["evaluate_headline"] = head
        print(f"\nevaluate_round on {run}: cold {times['cold']:.1f} s, warm {times['warm']:.1f} s "
              f"(torch threads {args.threads})")
    write_results(out, "bench_evaluate.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
