"""`--mode compare` reads several run folders (single- and multi-round GAN runs, a classifier run)."""
from __future__ import annotations

import json
from pathlib import Path

import main as cli
from trainers.evaluate import aggregate_rounds
from utils.checkpoint import write_json


def _gan_run(root: Path, name: str, model: str, heads: list[dict], **cfg) -> Path:
    run = root / model / name
    run.mkdir(parents=True)
    write_json(run / "config.json", {"model_name": model, "rounds": len(heads), "representation": "sensor",
                                     "fine_tune": True, **cfg})
    if len(heads) == 1:
        write_json(run / "evaluation.json", {"headline": heads[0], "candidates": {}})
    else:
        rds = [run / f"round-{i}" for i in range(len(heads))]
        write_json(run / "evaluation.json", aggregate_rounds(run, heads, rds))
    return run


def head(tstr, fd, gain):
    return {"eval_tstr_cnn": tstr, "eval_tstr_cnn_phase": 0.52, "eval_tstr_cnn_floor": 0.6, "eval_frechet": fd,
            "eval_frechet_phase": 9.0, "eval_frechet_floor": 2.0, "eval_aug_gain_10": gain}


def test_compare_reads_runs_and_writes_table_json_and_figure(tmp_path, capsys):
    scratch = _gan_run(tmp_path, "a", "gpt2xcnn", [head(0.55, 12.0, 0.01)], fine_tune=False)
    tuned = _gan_run(tmp_path, "b", "gpt2xcnn", [head(0.58, 6.0, 0.03), head(0.62, 4.0, 0.05)])
    clf = tmp_path / "classifier" / "c"
    clf.mkdir(parents=True)
    write_json(clf / "config.json", {"model_name": "classifier", "rounds": 1})
    write_json(clf / "summary.json", {"model_name": "classifier", "test_accuracy": 0.61})
    out = tmp_path / "cmp"
    assert cli.main(["--mode", "compare", "--runs", str(scratch), str(tuned), str(clf), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "a (gpt2xcnn, scratch, sensor)" in md and "b (gpt2xcnn, fine-tuned, sensor, 2 rounds)" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| eval_tstr_cnn |"))
    assert "| 0.55 |" in row and "0.6 +- 0.02" in row  # rounds: mean +- std
    assert "0.61" in next(ln for ln in md.splitlines() if ln.startswith("| test_accuracy |"))
    res = json.loads((out / "compare.json").read_text())
    assert [r["model_name"] for r in res["runs"]] == ["gpt2xcnn", "gpt2xcnn", "classifier"]
    assert abs(res["runs"][1]["values"]["eval_frechet"]["mean"] - 5.0) < 1e-9
    assert res["runs"][1]["values"]["eval_frechet"]["std"] == 1.0
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "comparison:" in capsys.readouterr().out


def test_compare_names_a_gan_run_without_evaluation(tmp_path, capsys):
    run = tmp_path / "gpt2cgan" / "x"
    run.mkdir(parents=True)
    write_json(run / "config.json", {"model_name": "gpt2cgan", "rounds": 1})
    write_json(run / "summary.json", {"model_name": "gpt2cgan"})
    assert cli.main(["--mode", "compare", "--runs", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--mode evaluate" in err and len(err.splitlines()) == 1


def test_compare_reads_eval_numbers_from_a_training_summary(tmp_path):
    run = tmp_path / "gpt2cgan" / "y"
    run.mkdir(parents=True)
    write_json(run / "config.json", {"model_name": "gpt2cgan", "rounds": 2})
    write_json(run / "summary.json", {"model_name": "gpt2cgan", "eval_frechet": 3.0, "eval_frechet_mean": 4.0,
                                      "eval_frechet_std": 1.0, "eval_frechet_phase_mean": 9.0})
    assert cli.main(["--mode", "compare", "--runs", str(run), "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert res["runs"][0]["values"]["eval_frechet"] == {"mean": 4.0, "std": 1.0}


def _scored_run(root: Path, name: str, cnn_correct: list[int], subjects: list[int]) -> Path:
    """A single-round GAN run whose evaluation kept which held-out trials each decoder got right."""
    run = root / "gpt2xcnn" / name
    run.mkdir(parents=True)
    write_json(run / "config.json", {"model_name": "gpt2xcnn", "rounds": 1, "representation": "sensor"})
    acc = sum(cnn_correct) / len(cnn_correct)
    dec = {"cnn": acc, "correct": {"cnn": cnn_correct, "csp_lda": [1] * len(cnn_correct)}}
    write_json(run / "evaluation.json", {"headline": {"eval_tstr_cnn": acc}, "test_subject": subjects,
                                         "candidates": {"gan": {"decoding": dec}}})
    return run


def test_compare_gives_paired_train_on_synthetic_differences_to_the_first_run(tmp_path):
    subjects = [1] * 40 + [2] * 40
    base = _scored_run(tmp_path, "base", [1, 0] * 40, subjects)           # 0.50
    better = _scored_run(tmp_path, "better", [1] * 80, subjects)          # 1.00: right wherever base was, and more
    same = _scored_run(tmp_path, "same", [0, 1] * 40, subjects)           # 0.50 on other trials
    elsewhere = _scored_run(tmp_path, "elsewhere", [1] * 80, [3] * 80)    # another subject's held-out trials
    old = _gan_run(tmp_path, "old", "gpt2xcnn", [head(0.6, 5.0, 0.0)])    # evaluated before per-trial results
    out = tmp_path / "cmp"
    assert cli.main(["--mode", "compare", "--runs", *map(str, (base, better, same, elsewhere, old)),
                     "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["paired_tstr"]
    cnn = {r["label"].split()[0]: r for r in rows if r.get("decoder") == "CNN"}
    assert cnn["better"]["difference"] == 0.5 and cnn["better"]["lo"] > 0.3
    assert cnn["same"]["difference"] == 0.0 and cnn["same"]["lo"] < 0 < cnn["same"]["hi"]
    csp = next(r for r in rows if r.get("decoder") == "CSP+LDA" and r["label"].startswith("better"))
    assert csp["difference"] == 0.0 and csp["lo"] == csp["hi"] == 0.0  # identical correctness: no spread at all
    skipped = {r["label"].split()[0]: r["skipped"] for r in rows if "skipped" in r}
    assert "other held-out trials" in skipped["elsewhere"] and "session 22" in skipped["old"]
    md = (out / "compare.md").read_text()
    assert "higher beyond the noise" in md and "within the noise of 80 trials" in md
