"""Two CPU processes (torchrun, gloo) train like one process with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import main as cli

ROOT = Path(__file__).resolve().parents[2]
CHEAP_EVALUATION = ["evaluation.augment_trials=[5]", "evaluation.augment_seeds=1", "evaluation.classifier_steps=2",
                    "evaluation.figures=false", "evaluation.augment_per_class=5", "evaluation.n_per_class=5",
                    "evaluation.fd_dims=2", "evaluation.csp_components=2"]


def gan_args(data_path, cache_dir, out, *extra):
    # subjects 1 and 2 (so the default subject conditioning and paired classes are on): 48 training
    # trials, global batch 8 -> 4 per rank (two left/right pairs), 6 steps per epoch
    sets = [f"data_path={data_path}", f"cache_dir={cache_dir}", f"output_dir={out}", "data.download=false",
            "model_name=gpt2cgan", "data.subjects=[1,2]", "epochs=2", "n_embd=16", "n_layer=1", "n_head=2",
            "batch_size=8", "gan.critic_steps=2", "gan.critic_width=8", "gan.figure_every=1000",
            "training.num_threads=1", "gan.moment_weight=0", "gan.psd_weight=0", "gan.contrast_weight=0",
            "gan.envelope_weight=0",
            *CHEAP_EVALUATION, *extra]
    return ["--mode", "training"] + [a for s in sets for a in ("--set", s)]


@pytest.mark.parametrize("variant", [
    [],
    # the spectral class path (its class gains, GPT-2 seeing no class) and the generator's weight
    # average, whose buffers every rank must update alike
    ["gan.class_effect=spectral", "gan.generator_ema=0.9"],
    # gradient matching: trials rendered outside the DDP wrapper, a probe CNN trained on every rank
    ["gan.grad_match_weight=1", "gan.grad_match_batch=8", "gan.grad_match_reset=2"],
], ids=["default", "spectral-ema", "grad-match"])
def test_two_process_gan_matches_single_process(data_path, cache_dir, tmp_path, variant):
    dump = tmp_path / "dump"
    dump.mkdir()
    env = {**os.environ, "DDP_DUMP": str(dump), "OMP_NUM_THREADS": "1"}
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "robustness" / "ddp_driver.py"),
                        *gan_args(data_path, cache_dir, tmp_path / "ddp", "parallel=true", *variant)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    # one run folder, written by rank 0 only
    runs = list((tmp_path / "ddp" / "gpt2cgan").glob("2*"))
    assert len(runs) == 1 and (runs[0] / "generator.safetensors").is_file()
    assert json.loads((runs[0] / "gan.json").read_text())["generator"]["subjects"] == [1, 2]

    # parameters identical across ranks (generator = model 0, critic = model 1)
    for i in (0, 1):
        a, b = load_file(str(dump / f"rank0-{i}.safetensors")), load_file(str(dump / f"rank1-{i}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k

    # and equal, up to float reduction order, to one process with the same global batch
    assert cli.main(gan_args(data_path, cache_dir, tmp_path / "single", *variant)) == 0
    single = next((tmp_path / "single" / "gpt2cgan").glob("2*"))
    for name, i in (("generator", 0), ("critic", 1)):
        one = load_file(str(single / f"{name}.safetensors"))
        two = load_file(str(dump / f"rank0-{i}.safetensors"))
        saved = load_file(str(runs[0] / f"{name}.safetensors"))
        assert all(torch.equal(two[k], saved[k]) for k in two)  # the run folder holds rank 0's weights
        diff = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
        if name == "generator" and "gan.grad_match_weight=1" in variant:
            # The probe CNN hardly sees a constant offset (its filters feed batch norm, which removes the
            # batch mean), so the gradient-matching term gives the generator's offset (smooth.bias) a
            # gradient at float-noise level, which Adam turns into steps of up to +-lr either way (as for
            # the critic below); every other weight agrees.
            off = [k for k in one if not torch.allclose(one[k], two[k], rtol=0, atol=1e-4)]
            assert off in ([], ["smooth.bias"]), off
            assert (one["smooth.bias"] - two["smooth.bias"]).abs().max() < 4e-3
        elif name == "generator":
            assert diff.max() < 1e-4, (name, float(diff.max()))
        else:
            # Adam divides by sqrt(v): a parameter whose gradient is ~0 (float noise) moves by up to
            # +-lr per step either way, so a few critic entries differ by O(lr); the rest agree.
            assert (diff < 1e-4).float().mean() > 0.98, (name, float((diff < 1e-4).float().mean()))
            assert diff.max() < 4e-3, (name, float(diff.max()))



def test_parallel_without_torchrun_says_how_to_launch(tmp_path, monkeypatch, capsys):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    rc = cli.main(["--mode", "training", "--set", "parallel=true", "--set", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "torchrun --standalone --nproc_per_node=N" in err[0]
    assert not any(tmp_path.iterdir())


def test_global_batch_must_divide_over_processes(tmp_path, monkeypatch, capsys):
    env = {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = cli.main(["--mode", "training", "--set", "parallel=true", "--set", "batch_size=32",
                   "--set", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "batch_size" in err[0] and "3 processes" in err[0]
