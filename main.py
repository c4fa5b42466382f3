"""Command line: `python main.py --mode training|generate|evaluate|compare`.

Bad configs, bad data and bad paths end with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# model_name -> trainer module (each exposes train_round).
TRAINERS = {"classifier": "trainers.classifier", "gpt2cgan": "trainers.gan",
            "gpt2xcnn": "trainers.finetune", "gpt2scnn": "trainers.finetune"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Synthetic motor-imagery EEG: GPT-2 GAN, CNN classifiers, transfer.")
    p.add_argument("--mode", choices=("training", "generate", "evaluate", "compare"), default="training")
    p.add_argument("--config", default="config/config.json", help="config file (default config/config.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable; dotted keys for sections, e.g. data.tmax=3)")
    p.add_argument("--resume", metavar="RUN_DIR", help="training: continue an interrupted run")
    p.add_argument("--checkpoint", metavar="RUN_DIR", help="generate/evaluate: the GAN run to use")
    p.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="compare: run folders side by side")
    p.add_argument("--n", type=int, default=None, help="generate: trials per class")
    p.add_argument("--out", default=None, help="generate/compare: output path")
    p.add_argument("--subjects", nargs="+", type=int, metavar="S", default=None,
                   help="generate: trials for these subjects only (a subject-conditioned generator)")
    return p


def _training(args) -> int:
    from config.schema import load_config
    from utils.runs import read_run_config, resolve_run_dir

    if args.resume:
        from config.schema import apply_overrides, validate

        run_dir = resolve_run_dir(args.resume)
        cfg = validate(apply_overrides(read_run_config(run_dir), args.overrides))
    else:
        run_dir = None
        cfg = load_config(args.config, args.overrides)
    # torch is imported only once the config is valid: a bad key fails in a fraction of a second.
    from trainers.common import run_training
    from utils.runtime import pick_device, set_threads

    set_threads(cfg)
    if cfg["parallel"]:
        from utils.distributed import run_parallel

        return run_parallel(cfg, run_dir, resume=bool(args.resume))
    device = pick_device(cfg)
    trainer = importlib.import_module(TRAINERS[cfg["model_name"]])
    run_dir, summary = run_training(cfg, trainer, device, run_dir=run_dir, resume=bool(args.resume))
    print(f"run folder: {run_dir}")
    keys = [k for k in ("test_accuracy", "test_accuracy_mean", "test_accuracy_std", "epochs_completed",
                        "wall_time_s") if k in summary]
    print("summary: " + ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                                  for k in keys))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from utils.errors import UserError

    try:
        if args.mode == "training":
            return _training(args)
        if args.mode in ("generate", "evaluate"):
            if not args.checkpoint:
                raise UserError(f"--mode {args.mode} needs --checkpoint RUN_DIR")
            mod = importlib.import_module("trainers.generate" if args.mode == "generate" else "trainers.evaluate")
            return mod.main(args)
        if args.mode == "compare":
            if not args.runs:
                raise UserError("--mode compare needs --runs RUN_DIR [RUN_DIR ...]")
            return importlib.import_module("trainers.compare").main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
