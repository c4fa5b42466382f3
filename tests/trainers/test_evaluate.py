"""evaluate_round and `--mode evaluate` on small GAN run folders built with the GAN trainer's code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import main as cli
from utils.errors import UserError

TINY = ("subject_count=2", "model_name=gpt2cgan", "n_layer=1", "n_embd=16", "n_head=2",
        "evaluation.classifier_steps=4", "evaluation.augment_trials=[5]", "evaluation.augment_seeds=1",
        "evaluation.augment_per_class=8", "evaluation.fd_dims=8")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_gan_run(cfg: dict, run_dir: Path, conditioned: bool = False) -> Path:
    """A finished (randomly initialised) GAN run folder: config.json, gan.json, weights, metrics.jsonl;
    `conditioned`: the generator conditioned on the training subjects, as the GAN trainer builds it."""
    from data.dataset import Standardizer, load_splits, pretrain_data_cfg
    from trainers.common import round_dirs
    from trainers.gan import build_models, gan_meta, save_weights
    from utils.checkpoint import write_json
    from utils.runtime import seed_everything

    run_dir.mkdir(parents=True)
    write_json(run_dir / "config.json", cfg)
    splits = load_splits(cfg, pretrain_data_cfg(cfg), progress=False)
    std = Standardizer.fit(splits.train.X)
    for i, rd in enumerate(round_dirs(run_dir, cfg["rounds"])):
        rd.mkdir(exist_ok=True)
        seed_everything(cfg["seed"] + i)
        G, D = build_models(cfg, splits.train.n_chans, splits.train.n_times, splits.train.sfreq,
                            subjects=splits.train.subject if conditioned else None)
        if conditioned:
            G.set_subject_weights(G.subject_index(splits.train.subject))
        save_weights(G, rd / "generator.safetensors")
        save_weights(D, rd / "critic.safetensors")
        write_json(rd / "gan.json", gan_meta(cfg, G.config, D.config, splits.train, std))
        (rd / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "critic_loss": 1.0 / e, "wasserstein": 0.1 * e})
                                                  + "\n" for e in (1, 2, 3)))
    return run_dir


class CopyingBundle:
    """A "generator" that replays real training trials: the known answer for the copying check."""

    def __init__(self, cfg):
        from data.dataset import load_splits

        sp = load_splits(cfg, progress=False)
        self.X, self.y, self.subject = sp.train.X, sp.train.y, sp.train.subject
        self.ch_names, self.sfreq, self.n_times, self.n_chans = sp.train.ch_names, sp.train.sfreq, sp.train.n_times, sp.train.n_chans

    def sample_subjects(self, n_per_class, seed):
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.choice(np.flatnonzero(self.y == c), n_per_class) for c in (0, 1)])
        return self.X[idx], self.y[idx], self.subject[idx]


def test_evaluate_round_writes_report_figures_and_headline(make_cfg, tmp_path):
    from trainers.evaluate import evaluate_round

    cfg = make_cfg(*TINY)
    run = make_gan_run(cfg, tmp_path / "run")
    head = evaluate_round(run, cfg, "cpu", progress=False)
    for k in ("eval_tstr_cnn", "eval_tstr_cnn_phase", "eval_tstr_cnn_floor", "eval_tstr_band", "eval_tstr_band_floor",
              "eval_frechet", "eval_frechet_phase",
              "eval_frechet_floor", "eval_swd", "eval_psd_db", "eval_nn_ratio", "eval_aug_gain_5", "eval_time_s"):
        assert k in head and np.isfinite(head[k]), k
    assert 0 <= head["eval_tstr_cnn"] <= 1
    # Each train-on-synthetic accuracy comes with its interval, and the target check with a paired one.
    for k in ("cnn", "csp", "band"):
        assert head[f"eval_tstr_{k}_ci_lo"] <= head[f"eval_tstr_{k}"] <= head[f"eval_tstr_{k}_ci_hi"]
        assert head[f"eval_tstr_{k}_bar_diff_lo"] <= head[f"eval_tstr_{k}_bar_diff_hi"]
    # The references behave as their definitions say: real halves are close, phase-randomised copies
    # keep the spectrum (small dB difference) and the amplitude.
    assert head["eval_psd_db_floor"] < 3 and head["eval_psd_db_phase"] < 3
    assert 0.7 < head["eval_std_ratio_phase"] < 1.3 and 0.7 < head["eval_nn_ratio_floor"] < 1.4
    res = json.loads((run / "evaluation.json").read_text())
    assert set(res["candidates"]) == {"gan", "phase_random", "real"}
    real_cnn = res["candidates"]["real"]["decoding"]
    assert len(real_cnn["correct"]["cnn"]) == res["n_test"]
    assert np.mean(real_cnn["correct"]["cnn"]) == pytest.approx(real_cnn["cnn"])
    # The train-on-real CNN reference is the mean of evaluation.reference_seeds (default 3) trained CNNs.
    assert len(real_cnn["cnn_per_seed"]) == 3 and real_cnn["cnn"] == pytest.approx(np.mean(real_cnn["cnn_per_seed"]))
    gan_dec = res["candidates"]["gan"]["decoding"]
    # So is the train-on-synthetic CNN: evaluation.tstr_seeds (default 3) CNNs on the generated set, each
    # held-out trial counted by the share of them that got it right.
    assert len(gan_dec["cnn_per_seed"]) == 3 and gan_dec["cnn"] == pytest.approx(np.mean(gan_dec["cnn_per_seed"]))
    assert set(np.round(np.asarray(gan_dec["correct"]["cnn"]) * 3, 6)) <= {0, 1, 2, 3}
    u = res["tstr_uncertainty"]["cnn"]  # the bootstrap's point value is the plain accuracy difference to the bar
    assert u["difference"] == pytest.approx(gan_dec["cnn"] - (0.5 + 0.8 * (real_cnn["cnn"] - 0.5)))
    report = (run / "report.md").read_text()
    assert "| metric | GAN | phase-randomised | real (floor) |" in report and "## Targets" in report
    for name in ("trials", "psd", "topomap_mu", "tfr", "curves", "embedding"):
        png = run / "evaluation" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
        assert f"evaluation/{name}.png" in report
    # The GAN-independent references come from the cache the second time, with the same numbers.
    cfg_again = {**cfg, "evaluation": {**cfg["evaluation"], "figures": False}}  # figures do not enter the cache key
    again = evaluate_round(run, cfg_again, "cpu", progress=False)
    assert again["eval_frechet_phase"] == head["eval_frechet_phase"]
    assert again["eval_tstr_cnn_floor"] == head["eval_tstr_cnn_floor"]


def test_copying_generator_is_caught_and_matches_the_real_decoder(make_cfg, tmp_path, monkeypatch):
    import trainers.generate
    from trainers.evaluate import evaluate_round

    cfg = make_cfg(*TINY, "evaluation.figures=false")
    run = make_gan_run(cfg, tmp_path / "run")
    monkeypatch.setattr(trainers.generate, "load_generator", lambda *a, **k: CopyingBundle(cfg))
    head = evaluate_round(run, cfg, "cpu", progress=False)
    assert head["eval_nn_ratio"] < 0.01 < 0.5 < head["eval_nn_ratio_floor"]
    assert head["eval_std_ratio"] == pytest.approx(1.0, abs=0.25)
    assert not (run / "evaluation").exists()


def test_cli_evaluates_every_round_and_aggregates(make_cfg, tmp_path, capsys):
    cfg = make_cfg(*TINY, "rounds=2", "evaluation.figures=false")
    run = make_gan_run(cfg, tmp_path / "run")
    assert cli.main(["--mode", "evaluate", "--checkpoint", str(run), "--set", "training.num_threads=1"]) == 0
    for i in (0, 1):
        assert (run / f"round-{i}" / "evaluation.json").is_file() and (run / f"round-{i}" / "report.md").is_file()
    agg = json.loads((run / "evaluation.json").read_text())
    assert agg["rounds"] == 2 and len(agg["per_round"]) == 2
    assert "eval_frechet_mean" in agg and "eval_frechet_std" in agg
    assert agg["per_round"][0]["eval_frechet"] != agg["per_round"][1]["eval_frechet"]  # different generators
    assert "round-1/report.md" in (run / "report.md").read_text()
    # The run-level target check carries the interval of the mean over rounds (decoders averaged trial by
    # trial over the shared held-out set), not a mean of the rounds' own intervals.
    u = agg["tstr_uncertainty"]["cnn"]
    assert u["difference"] == pytest.approx(np.mean([h["eval_tstr_cnn_bar_diff"] for h in agg["per_round"]]))
    assert u["lo"] <= u["difference"] <= u["hi"] and "eval_tstr_cnn_ci_lo_mean" not in agg
    assert "paired bootstrap interval" in (run / "report.md").read_text()
    # A multi-round GAN training writes the same run-level report after its last round.
    from trainers import finetune, gan

    (run / "report.md").unlink()
    (run / "evaluation.json").unlink()
    assert finetune.finish_run is gan.finish_run
    gan.finish_run(run, [run / "round-0", run / "round-1"])
    assert json.loads((run / "evaluation.json").read_text())["tstr_uncertainty"] == agg["tstr_uncertainty"]
    assert "paired bootstrap interval" in (run / "report.md").read_text()
    assert "evaluation:" in capsys.readouterr().out


def test_evaluation_on_some_subjects_judges_their_trials_with_trials_generated_for_them(make_cfg, tmp_path, capsys):
    """evaluation.subjects: a generator trained on a larger pool, conditioned on subject, judged on some of
    its subjects: their real training and held-out trials, and generated trials drawn for them alone."""
    from trainers.evaluate import RealData, evaluate_round
    from trainers.generate import load_generator

    cfg = make_cfg(*TINY, "evaluation.figures=false", "evaluation.subjects=[2]")
    run = make_gan_run(cfg, tmp_path / "run", conditioned=True)
    everyone = RealData(make_cfg(*TINY), progress=False)
    evaluate_round(run, cfg, "cpu", progress=False)
    ev = json.loads((run / "evaluation.json").read_text())
    assert set(ev["test_subject"]) == {2}
    assert ev["n_test"] == int((everyone.subject_test == 2).sum()) < len(everyone.y_test)
    assert ev["n_pool"] == int((everyone.subject_pool == 2).sum()) < len(everyone.y_pool)
    # The same real trials, in the same order, as a run on subject 2 alone: the same yardsticks.
    alone, judged = RealData(make_cfg(*TINY, "data.subjects=[2]"), progress=False), RealData(cfg, progress=False)
    assert np.array_equal(alone.X_pool, judged.X_pool) and np.array_equal(alone.X_test, judged.X_test)
    assert np.array_equal(alone.y_a, judged.y_a)
    b = load_generator(run)
    assert set(b.sample_subjects(6, 0)[2].tolist()) == {1, 2}
    b.only_subjects([2])
    X, y, s = b.sample_subjects(6, 0)
    assert set(s.tolist()) == {2} and X.shape[0] == 12
    # A subject the data or the generator lacks, or a generator not conditioned on subject: one-line errors.
    with pytest.raises(UserError, match=r"evaluation.subjects.*\[3\] are not among the data's subjects \[1, 2\]"):
        make_cfg(*TINY, "evaluation.subjects=[3]")  # caught with the config, before anything runs
    with pytest.raises(UserError, match=r"evaluation.subjects.*held-out trials hold no trials of subject"):
        RealData(make_cfg(*TINY, "evaluation.subjects=[2]", "data.split=subject", "data.test_subjects=[1]"),
                 progress=False)
    with pytest.raises(UserError, match="not on S003"):
        b.only_subjects([2, 3])
    plain = make_gan_run(cfg, tmp_path / "plain")
    assert cli.main(["--mode", "evaluate", "--checkpoint", str(plain), "--set", "training.num_threads=1"]) == 2
    assert "not conditioned on subject" in capsys.readouterr().err
    assert cli.main(["--mode", "generate", "--checkpoint", str(run), "--subjects", "2", "--n", "3",
                      "--out", str(tmp_path / "gen")]) == 0
    assert set(np.load(tmp_path / "gen" / "generated.npz")["subject"].tolist()) == {2}


def test_cli_evaluate_rejects_bad_folders(make_cfg, tmp_path, capsys):
    assert cli.main(["--mode", "evaluate", "--checkpoint", str(tmp_path / "nope")]) == 2
    cfg = make_cfg("subject_count=2", "model_name=gpt2cgan")
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["--mode", "evaluate", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err)


def test_targets_check_each_decoder_against_80_percent_of_the_real_margin():
    """report.md's targets: train-on-synthetic of each decoder against 80% of what the same decoder
    trained on real trials gains over chance (real 0.65 -> at least 0.62)."""
    from trainers.evaluate import targets_status

    lines = targets_status({"eval_tstr_cnn": 0.62, "eval_tstr_cnn_floor": 0.65,
                            "eval_tstr_band": 0.61, "eval_tstr_band_floor": 0.65,
                            "eval_tstr_csp": 0.55, "eval_tstr_csp_floor": 0.48})
    cnn, csp, band = (next(ln for ln in lines if f"({name})" in ln) for name in ("CNN", "CSP+LDA", "band-power LDA"))
    assert "0.620: **met**" in cnn and "0.620: **not met**" in band
    assert "at chance" in csp and "met" not in csp


def test_targets_say_whether_a_miss_is_beyond_the_noise_of_the_held_out_set():
    from trainers.evaluate import targets_status

    base = {"eval_tstr_cnn": 0.51, "eval_tstr_cnn_floor": 0.66, "eval_tstr_cnn_ci_lo": 0.40, "eval_tstr_cnn_ci_hi": 0.62,
            "eval_tstr_cnn_bar_diff": -0.118}
    within = targets_status({**base, "eval_tstr_cnn_bar_diff_lo": -0.25, "eval_tstr_cnn_bar_diff_hi": 0.01}, n_test=75)
    beyond = targets_status({**base, "eval_tstr_cnn_bar_diff_lo": -0.20, "eval_tstr_cnn_bar_diff_hi": -0.03}, n_test=75)
    assert "**not met**" in within[0] and "within the noise of 75 held-out trials" in within[0]
    assert "0.400-0.620" in within[0] and "[-0.250, +0.010]" in within[0]
    assert "missed beyond the noise of 75 held-out trials" in beyond[0]
    met = targets_status({"eval_tstr_band": 0.70, "eval_tstr_band_floor": 0.60, "eval_tstr_band_bar_diff": 0.12,
                          "eval_tstr_band_bar_diff_lo": 0.02, "eval_tstr_band_bar_diff_hi": 0.2})
    assert "**met**. " in met[0] and "beyond the noise of the held-out trials" in met[0]


def test_candidate_subsets_take_the_real_halfs_subject_and_class_mix():
    from trainers.evaluate import _subset_like

    rng = np.random.default_rng(0)
    # 200 candidate trials over subjects 3 and 7 (subject 7 has only 2 right-hand trials), each trial's value
    # its own index, so the chosen trials can be traced back.
    subject = np.repeat([3, 7], 100)
    y = np.concatenate([np.repeat([0, 1], 50), np.r_[np.zeros(98, int), np.ones(2, int)]])
    X = np.arange(200, dtype=float)[:, None, None]
    ref_y, ref_subject = np.array([0, 0, 0, 1, 1, 0, 1, 1, 1]), np.array([3, 3, 3, 3, 3, 7, 7, 7, 7])
    Xs, ys = _subset_like(X, y, subject, ref_y, ref_subject, rng)
    picked = Xs[:, 0, 0].astype(int)
    assert len(set(picked)) == len(picked) == 9 and np.all(y[picked] == ys)
    got = {(u, c): int(np.sum((subject[picked] == u) & (ys == c))) for u in (3, 7) for c in (0, 1)}
    # Subject 7's third right-hand trial is short: it comes from the rest of the right-hand trials (subject 3).
    assert got == {(3, 0): 3, (3, 1): 3, (7, 0): 1, (7, 1): 2}
    # Without subjects (a generator not conditioned on subject) only the class counts are kept.
    Xs, ys = _subset_like(X, y, None, ref_y, ref_subject, rng)
    assert np.bincount(ys).tolist() == [4, 5]
