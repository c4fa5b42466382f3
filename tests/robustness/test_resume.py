"""Exact resume: SIGKILL at random moments, Ctrl-C, incompatible configs.

A tiny run is killed (SIGKILL: no handler runs) at seeded random moments and resumed with
`--resume` each time; its final weights must equal, bit for bit, those of an uninterrupted run.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import main as cli

ROOT = Path(__file__).resolve().parents[2]


def tiny_gan(data_path, cache_dir, out, epochs=12):
    return ["--set", f"data_path={data_path}", "--set", f"cache_dir={cache_dir}", "--set", f"output_dir={out}",
            "--set", "data.download=false", "--set", "model_name=gpt2cgan", "--set", "data.subjects=[1]",
            "--set", f"epochs={epochs}", "--set", "n_embd=16", "--set", "n_layer=1", "--set", "n_head=2",
            "--set", "batch_size=4", "--set", "gan.critic_steps=2", "--set", "gan.critic_width=8",
            "--set", "gan.figure_every=1000", "--set", "training.num_threads=1"] + CHEAP_EVALUATION


# The end-of-round evaluation is not under test here: the smallest settings it accepts.
CHEAP_EVALUATION = [a for kv in ("evaluation.augment_trials=[5]", "evaluation.augment_seeds=1",
                                 "evaluation.classifier_steps=2", "evaluation.figures=false",
                                 "evaluation.augment_per_class=5", "evaluation.n_per_class=5",
                                 "evaluation.fd_dims=2", "evaluation.csp_components=2") for a in ("--set", kv)]


def tiny_classifier(data_path, cache_dir, out, epochs=5):
    return ["--set", f"data_path={data_path}", "--set", f"cache_dir={cache_dir}", "--set", f"output_dir={out}",
            "--set", "data.download=false", "--set", "model_name=classifier", "--set", "data.subjects=[1]",
            "--set", f"epochs={epochs}", "--set", "batch_size=8", "--set", "classifier.architecture=eegnet",
            "--set", "training.num_threads=1"]


def _run_dir(out: Path, model: str) -> Path | None:
    runs = [p for p in (out / model).glob("2*") if (p / "config.json").is_file()]
    return runs[0] if runs else None


def _start(argv) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "main.py", "--mode", "training"] + argv, cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _n_rows(run: Path | None) -> int:
    f = None if run is None else run / "metrics.jsonl"
    return 0 if f is None or not f.is_file() else len(f.read_text().splitlines())


def _interrupt_and_resume(out: Path, model: str, argv: list[str], kills: int, seed: int, sigint: bool):
    """Ctrl-C the run once (if sigint) while it trains, then kill it `kills` times at random moments,
    resuming each time, and let it finish.

    Returns (number of SIGKILLs that landed mid-run, exit code of the Ctrl-C'd process or None)."""
    rng = random.Random(seed)
    landed, sigint_rc = 0, None
    for attempt in range(kills + 6):
        run = _run_dir(out, model)
        p = _start(["--resume", str(run)] if run else argv)
        want_sigint = sigint
        if landed < kills or want_sigint:
            # Random moment: sometimes during start-up/data loading, mostly once epochs are running.
            t_end = time.time() + 120
            if rng.random() < 0.8 or want_sigint:
                rows0 = _n_rows(run)
                while p.poll() is None and _n_rows(_run_dir(out, model)) <= rows0 and time.time() < t_end:
                    time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            if p.poll() is None:
                p.send_signal(signal.SIGINT if want_sigint else signal.SIGKILL)
                rc = p.wait(60)
                err = p.stderr.read()
                if want_sigint:
                    sigint_rc = rc
                    assert "Traceback" not in err, err
                    sigint = False
                else:
                    assert rc == -signal.SIGKILL
                    landed += 1
                continue
        rc = p.wait(300)
        err = p.stderr.read()
        assert rc == 0, err
        assert "Traceback" not in err
        return landed, sigint_rc  # finished
    raise AssertionError("the run never finished")


def _assert_same_tensors(a: Path, b: Path):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{a.name}: {k} differs"


def _metric_rows(run: Path, drop=("epoch_time_s", "time_s")):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop and not k.endswith("_s")} for r in rows]


def test_gan_sigkill_five_times_resumes_bit_identical(data_path, cache_dir, tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    assert cli.main(["--mode", "training"] + tiny_gan(data_path, cache_dir, ref_out)) == 0
    landed, sigint_rc = _interrupt_and_resume(out, "gpt2cgan", tiny_gan(data_path, cache_dir, out), kills=5,
                                              seed=1234, sigint=True)
    assert landed == 5
    assert sigint_rc == 130
    ref, run = _run_dir(ref_out, "gpt2cgan"), _run_dir(out, "gpt2cgan")
    for name in ("generator.safetensors", "critic.safetensors"):
        _assert_same_tensors(ref / name, run / name)
    # every epoch logged exactly once, with the same losses as the uninterrupted run
    assert _metric_rows(run) == _metric_rows(ref)


def test_classifier_sigkill_resumes_bit_identical(data_path, cache_dir, tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    assert cli.main(["--mode", "training"] + tiny_classifier(data_path, cache_dir, ref_out)) == 0
    landed, _ = _interrupt_and_resume(out, "classifier", tiny_classifier(data_path, cache_dir, out), kills=1,
                                      seed=99, sigint=False)
    assert landed == 1
    ref, run = _run_dir(ref_out, "classifier"), _run_dir(out, "classifier")
    _assert_same_tensors(ref / "classifier.safetensors", run / "classifier.safetensors")
    assert _metric_rows(run) == _metric_rows(ref)


def test_resume_with_incompatible_config_is_one_line_error(data_path, cache_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--mode", "training"] + tiny_gan(data_path, cache_dir, out, epochs=1)) == 0
    run = _run_dir(out, "gpt2cgan")
    before = (run / "config.json").read_text()
    capsys.readouterr()
    assert cli.main(["--mode", "training", "--resume", str(run), "--set", "n_embd=32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [ln for ln in err if "error" in ln] == err[-1:] and "cannot resume" in err[-1] and "n_embd" in err[-1]
    assert (run / "config.json").read_text() == before  # the run's config is not overwritten
    # an unfinished run with a compatible change (more epochs) continues from its checkpoint
    for f in ("round_summary.json", "generator.safetensors", "summary.json"):
        (run / f).unlink()
    assert cli.main(["--mode", "training", "--resume", str(run), "--set", "epochs=2"]) == 0
    assert [r["epoch"] for r in _metric_rows(run)] == [1, 2]
