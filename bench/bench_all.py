"""One command for the numbers that matter at scale; prints a table, writes bench/results/all.json.

    python bench/bench_all.py --set data_path=../shared/data/eegmmidb [--threads N] [--quick | --tiny]
                              [--skip-workflow]

Measures, in this order:
  edf_load        cold EDF read + preprocessing (MNE) vs cached load (.npz), per recording
  classifier      training trials/s of the default classifier on the default data (a few epochs)
  gan_step        GAN training trials/s, FLOPs of a training step (torch's FlopCounterMode), achieved
                  GFLOP/s and its fraction of the dense float32 matmul GFLOP/s measured in the same
                  process with the same threads (bench/bench_gan.py's `speed`)
  workflow        wall time and peak resident memory (getrusage ru_maxrss of the child process) of
                  classifier -> gpt2cgan -> gpt2xcnn -> generate, each `python main.py ...` as users
                  run it. Default epochs unless --quick (classifier 5, GAN 2, fine-tune 1 epochs) or
                  --tiny (also 2 subjects and the cheapest evaluation settings); the table says which.
  gpu             when CUDA is present: the GAN step and matmul again on the GPU (and bf16 autocast)

Thread counts used are printed and stored: torch intra-op threads (--threads, default all cores)
and BLAS threads (threadpoolctl).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from report import write_results  # noqa: E402  (bench/ is the script's folder)

QUICK = {"classifier": ["epochs=5"], "gpt2cgan": ["epochs=2"], "gpt2xcnn": ["epochs=1"]}
TINY_EXTRA = ["data.subjects=[1,2]", "evaluation.augment_trials=[5]", "evaluation.augment_seeds=1",
              "evaluation.classifier_steps=5", "evaluation.figures=false"]


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info

        return ", ".join(f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()) or "none"
    except Exception:
        return "unknown"


def bench_edf_load(cfg: dict, n_files: int) -> dict:
    from data import cache
    from data.eegbci import recording_paths, select_runs, select_subjects
    from data.recording import Preprocessing, read_epochs

    paths = list(recording_paths(cfg["data_path"], select_subjects(cfg), select_runs(cfg["data"]),
                                 download=False).values())[:n_files]
    prep = Preprocessing.from_config(cfg["data"])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        items = [read_epochs(p, prep) for p in paths]
        cold = (time.perf_counter() - t) / len(paths)
        for p, it in zip(paths, items):
            cache.save(Path(tmp), cache.cache_key(p, prep), it)
        t = time.perf_counter()
        for p in paths:
            assert cache.load(Path(tmp), cache.cache_key(p, prep)) is not None
        warm = (time.perf_counter() - t) / len(paths)
    return {"files": len(paths), "cold_s_per_file": cold, "cached_s_per_file": warm, "speedup": cold / warm}


def bench_classifier(cfg_overrides: list[str], epochs: int) -> dict:
    from config.schema import load_config
    from trainers import classifier
    from trainers.common import run_training

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "config" / "config.json",
                          cfg_overrides + [f"epochs={epochs}", f"output_dir={tmp}", "data.download=false"])
        _, summary = run_training(cfg, classifier, torch.device("cpu"))
    return {"architecture": summary["architecture"], "epochs": epochs, "n_train": summary["n_train"],
            "train_samples_per_s": summary["train_samples_per_s"], "s_per_epoch": summary["s_per_epoch"]}


def bench_gan_step(steps: int, overrides: list[str]) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_gan

    return bench_gan.speed(argparse.Namespace(steps=steps, subjects=10,
                                              set=[o for o in overrides if not o.startswith("data")]))


def run_workflow(overrides: list[str], mode: str) -> dict:
    """Each step as its own `python main.py` process; peak RSS from getrusage of that child."""
    out = Path(tempfile.mkdtemp(prefix="bench-workflow-"))
    base = overrides + [f"output_dir={out}", "data.download=false"]
    if mode == "tiny":
        base += TINY_EXTRA
    steps = [
        ("classifier", ["model_name=classifier", "classifier.architecture=eegnet"]),
        ("gpt2cgan", ["model_name=gpt2cgan"]),
        ("gpt2xcnn", ["model_name=gpt2xcnn", f"pretrained_finetune_path={out}/gpt2cgan/latest",
                      f"pretrained_classifier_path={out}/classifier/latest"]),
    ]
    rows = []
    for name, extra in steps:
        sets = base + extra + (QUICK[name] if mode in ("quick", "tiny") else [])
        argv = [sys.executable, "main.py", "--mode", "training"] + [a for s in sets for a in ("--set", s)]
        rows.append(_child(name, argv))
    argv = [sys.executable, "main.py", "--mode", "generate", "--checkpoint", f"{out}/gpt2xcnn/latest",
            "--out", str(out / "generated.npz")]
    rows.append(_child("generate", argv))
    total = sum(r["wall_s"] for r in rows)
    return {"mode": mode, "steps": rows, "total_wall_s": total,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows), "output_dir": str(out)}


def _child(name: str, argv: list[str]) -> dict:
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # a fresh process per step, so ru_maxrss is that step's own peak
        os.chdir(ROOT)
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execv(argv[0], argv)
    _, status, usage = os.wait4(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    row = {"step": name, "rc": rc, "wall_s": time.perf_counter() - t, "peak_rss_mb": usage.ru_maxrss / 1024}
    if rc != 0:
        print(f"warning: workflow step {name} exited with {rc}: {' '.join(argv)}", file=sys.stderr)
    return row


def bench_gpu(cpu_gan: dict, steps: int, overrides: list[str]) -> dict:
    """The GAN step on CUDA (FLOPs are the CPU count of the same step: the arithmetic is identical)."""
    import numpy as np

    from config.schema import load_config
    from trainers.gan import SpectralTargets, _train_step, build_models

    dev = torch.device("cuda", 0)
    n = 4096
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    out = {"device": torch.cuda.get_device_name(0)}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = a.to(dtype), b.to(dtype)
        for _ in range(3):
            x @ w
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            x @ w
        torch.cuda.synchronize()
        out[f"matmul_gflops_{str(dtype).split('.')[-1]}"] = 2 * n ** 3 * 20 / (time.perf_counter() - t) / 1e9
    cfg = load_config(ROOT / "config" / "config.json",
                      ["model_name=gpt2cgan"] + [o for o in overrides if not o.startswith("data")])
    bs, k = cfg["batch_size"], cfg["gan"]["critic_steps"]
    torch.manual_seed(0)
    G, D = build_models(cfg, 21, 640, 160.0)
    G, D = G.to(dev), D.to(dev)
    X, y = torch.randn(4 * bs, 21, 640), torch.arange(4 * bs) % 2
    targets = SpectralTargets(X, y, 160.0, envelope=cfg["gan"]["envelope_weight"] > 0).to(dev)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    idx = np.arange(bs)
    for bf16 in (False, True):
        def step(gen_step):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                _train_step(cfg, G, D, opt_g, opt_d, targets, X, y, None, idx, slice(0, bs), dev, None, 0, 0, gen_step)
        for g in (False, True):
            step(g)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(steps * k):
            step((i + 1) % k == 0)
        torch.cuda.synchronize()
        cycle_s = (time.perf_counter() - t) / steps
        tag = "bf16" if bf16 else "fp32"
        flops = (k - 1) * cpu_gan["critic_step_gflop"] + cpu_gan["critic_plus_generator_step_gflop"]
        out[f"gan_samples_per_s_{tag}"] = k * bs / cycle_s
        out[f"gan_achieved_gflops_{tag}"] = flops / cycle_s
    out["gan_fraction_of_matmul_fp32"] = out["gan_achieved_gflops_fp32"] / out["matmul_gflops_float32"]
    return out


def table(res: dict) -> str:
    rows = [("threads", f"torch {res['threads']['torch']}, BLAS {res['threads']['blas']}")]
    e = res.get("edf_load")
    if e:
        rows += [("EDF load, cold (MNE read+filter+epoch)", f"{e['cold_s_per_file']:.3f} s/file"),
                 ("EDF load, cached (.npz)", f"{e['cached_s_per_file']:.4f} s/file ({e['speedup']:.0f}x faster)")]
    c = res.get("classifier")
    if c:
        rows.append((f"classifier training ({c['architecture']}, {c['n_train']} trials)",
                     f"{c['train_samples_per_s']:.0f} trials/s ({c['s_per_epoch']:.2f} s/epoch)"))
    g = res.get("gan_step")
    if g:
        rows += [("GAN training (default model, batch %d)" % g["batch_size"], f"{g['samples_per_s']:.1f} trials/s"),
                 ("GAN step achieved", f"{g['achieved_gflops']:.1f} GFLOP/s"),
                 ("dense fp32 matmul, same threads", f"{g['matmul_gflops']:.1f} GFLOP/s"),
                 ("GAN step / matmul", f"{100 * g['fraction_of_matmul']:.0f}%")]
    w = res.get("workflow")
    if w:
        for s in w["steps"]:
            rows.append((f"workflow [{w['mode']}] {s['step']}",
                         f"{s['wall_s']:.1f} s, peak RSS {s['peak_rss_mb']:.0f} MB" + ("" if s["rc"] == 0 else
                                                                                      f" (exit {s['rc']})")))
        rows.append((f"workflow [{w['mode']}] total", f"{w['total_wall_s']:.1f} s, peak RSS {w['peak_rss_mb']:.0f} MB"))
    u = res.get("gpu")
    rows.append(("GPU", "not present" if not u else u["device"]))
    if u:
        rows += [("GPU matmul fp32 / bf16", f"{u['matmul_gflops_float32']:.0f} / {u['matmul_gflops_bfloat16']:.0f} GFLOP/s"),
                 ("GPU GAN trials/s fp32 / bf16", f"{u['gan_samples_per_s_fp32']:.0f} / {u['gan_samples_per_s_bf16']:.0f}"),
                 ("GPU GAN step / matmul (fp32)", f"{100 * u['gan_fraction_of_matmul_fp32']:.1f}%")]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="workflow with reduced epochs (labelled)")
    p.add_argument("--tiny", action="store_true", help="workflow with reduced epochs, 2 subjects, cheap evaluation")
    p.add_argument("--skip-workflow", action="store_true")
    p.add_argument("--parts", default="edf,classifier,gan,workflow,gpu",
                   help="comma-separated subset of edf,classifier,gan,workflow,gpu")
    p.add_argument("--edf-files", type=int, default=6)
    p.add_argument("--classifier-epochs", type=int, default=3)
    p.add_argument("--gan-steps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from utils.runtime import tune_allocator

    print(f"glibc allocator tuned as in training: {tune_allocator()}")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads, user_api="blas")
    except Exception:
        pass
    from config.schema import load_config

    cfg = load_config(ROOT / "config" / "config.json", args.set)
    res = {"threads": {"torch": torch.get_num_threads(), "blas": blas_threads()}, "cpu_count": os.cpu_count(),
           "overrides": args.set}
    parts = set(args.parts.split(","))
    if "edf" in parts:
        res["edf_load"] = bench_edf_load(cfg, args.edf_files)
    if "classifier" in parts:
        res["classifier"] = bench_classifier(args.set, args.classifier_epochs)
    if "gan" in parts or "gpu" in parts:
        res["gan_step"] = bench_gan_step(args.gan_steps, args.set)
    if "workflow" in parts and not args.skip_workflow:
        mode = "tiny" if args.tiny else "quick" if args.quick else "default"
        res["workflow"] = run_workflow(args.set + [f"training.num_threads={args.threads}"], mode)
    if "gpu" in parts and torch.cuda.is_available():
        res["gpu"] = bench_gpu(res["gan_step"], args.gan_steps, args.set)
    print(table(res))
    write_results(res, "all.json" if parts >= {"edf", "classifier", "gan", "workflow"}
                  else f"all-{'-'.join(sorted(parts))}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
