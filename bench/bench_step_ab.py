"""Interleaved A/B of the default GAN training step in two checkouts of this project.

    python bench/bench_step_ab.py OTHER_CHECKOUT [THIS_CHECKOUT] [--steps 40] [--threads 1] [--set KEY=VALUE ...]

On a machine shared with other work, two benchmark runs minutes apart differ by 10-20% with the
same code, which hides the effect of most changes. Here each checkout builds the default gpt2cgan
step (as `bench_gan.py speed` does, on random trials of the default data shape) in its own process,
and the two take turns, one step each, so both see the same machine. Prints each side's median,
quartiles and the ratio, and writes bench/results/step_ab.json. A checkout is any folder holding
this project (e.g. `git worktree add ../old HEAD~3`); the --set overrides apply to both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def worker(me: str, other: str, root: str, token: Path, out: Path, steps: int, threads: int, sets: list[str]) -> None:
    sys.path.insert(0, root)
    os.chdir(root)
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    try:  # what training does in that checkout, if it does
        from utils.runtime import tune_allocator
        tune_allocator()
    except ImportError:
        pass
    from config.schema import load_config
    from trainers.gan import SpectralTargets, _train_step, build_models

    cfg = load_config(Path(root) / "config" / "config.json", ["model_name=gpt2cgan"] + sets)
    bs = cfg["batch_size"]
    torch.manual_seed(0)
    X, y = torch.randn(4 * bs, 21, 640), torch.arange(4 * bs) % 2
    subjects = (np.arange(4 * bs) // 2) % 10 + 1
    G, D = build_models(cfg, 21, 640, 160.0, subjects=subjects)
    s_tr = G.subject_index(subjects) if G.config.subject_count else None
    targets = SpectralTargets(X, y, 160.0, subject=s_tr, subject_count=G.config.subject_count,
                              envelope=cfg["gan"]["envelope_weight"] > 0)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), lr=1e-4), torch.optim.Adam(D.parameters(), lr=1e-4)
    idx = np.arange(bs)

    def step():
        _train_step(cfg, G, D, opt_g, opt_d, targets, X, y, s_tr, idx, slice(0, bs), "cpu", None, 0, 0, True)

    step()
    times = []
    for _ in range(steps + 1):  # the first timed step of each side is a warm-up, dropped below
        while token.read_text().strip() != me:
            time.sleep(0.0005)
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        token.write_text(other)
    out.write_text(json.dumps(times[1:]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", nargs="?", help="the other checkout")
    p.add_argument("b", nargs="?", default=str(HERE), help="this checkout (default: the one this script is in)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        me, other, root, token, out = args.worker
        worker(me, other, root, Path(token), Path(out), args.steps, args.threads, args.set)
        return 0
    if not args.a:
        p.error("name the other checkout")
    import numpy as np

    roots = {"A": str(Path(args.a).resolve()), "B": str(Path(args.b).resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "turn"
        token.write_text("A")
        common = ["--steps", str(args.steps), "--threads", str(args.threads)] + [x for s in args.set for x in ("--set", s)]
        procs = [subprocess.Popen([sys.executable, __file__, *common, "--worker", me, other, roots[me], str(token),
                                   str(Path(tmp) / f"{me}.json")])
                 for me, other in (("A", "B"), ("B", "A"))]
        if any(proc.wait() for proc in procs):
            print("a worker failed", file=sys.stderr)
            return 1
        times = {k: np.array(json.loads((Path(tmp) / f"{k}.json").read_text())) for k in roots}
    res = {"threads": args.threads, "steps": args.steps, "overrides": args.set}
    for k, t in times.items():
        res[k] = {"checkout": roots[k], "median_ms": float(np.median(t) * 1e3),
                  "p25_ms": float(np.percentile(t, 25) * 1e3), "p75_ms": float(np.percentile(t, 75) * 1e3)}
        print(f"{k}  {roots[k]:50s} median {res[k]['median_ms']:7.1f} ms  (quartiles {res[k]['p25_ms']:.1f}, "
              f"{res[k]['p75_ms']:.1f})")
    res["b_over_a"] = res["B"]["median_ms"] / res["A"]["median_ms"]
    print(f"B / A = {res['b_over_a']:.3f}  (torch threads {args.threads})")
    out = HERE / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_ab.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
