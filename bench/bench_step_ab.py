"""Interleaved A/B of the default GAN training step in two checkouts of this project.

    python bench/bench_step_ab.py OTHER_CHECKOUT [THIS_CHECKOUT] [--steps 40] [--threads 1] [--set KEY=VALUE ...]

On a machine shared with other work, two benchmark runs minutes apart differ by 10-20% with the
same code, which hides the effect of most changes. Here each checkout builds the default gpt2cgan
step (`bench_gan.default_step`, the step `bench_gan.py speed` times) from its own code, in its own process,
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

from report import write_results  # bench/ is the script's folder

HERE = Path(__file__).resolve().parents[1]


def worker(me: str, other: str, root: str, token: Path, out: Path, steps: int, threads: int, sets: list[str]) -> None:
    import torch

    sys.path.insert(0, str(HERE / "bench"))
    import bench_gan  # inserts this checkout's root on sys.path ...

    sys.path.insert(0, root)  # ... so the checkout measured goes in front of it
    os.chdir(root)
    torch.set_num_threads(threads)
    try:  # what training does in that checkout, if it does
        from utils.runtime import tune_allocator
        tune_allocator()
    except ImportError:
        pass
    _, _, _, step = bench_gan.default_step(Path(root), sets, n_subjects=10)
    step(True)
    times = []
    for _ in range(steps + 1):  # the first timed step of each side is a warm-up, dropped below
        while token.read_text().strip() != me:
            time.sleep(0.0005)
        t = time.perf_counter()
        step(True)  # critic and generator update, as every step of the default (critic_steps 1)
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
    write_results(res, "step_ab.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
