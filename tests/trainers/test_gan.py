"""gpt2cgan on real recordings with a tiny model: run-folder contents, metrics, transfer source,
determinism, resume, and the spectral objectives."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import main
import trainers.gan as gan
from utils.metrics import band_power

TINY = ["model_name=gpt2cgan", "data.subjects=[1]", "epochs=2", "batch_size=16", "n_embd=16", "n_layer=1",
        "n_head=2", "gan.patch_size=32", "gan.critic_width=8", "gan.critic_steps=2", "gan.figure_every=1",
        "random_vector_num=2", "example_to_generate=1", "training.num_threads=1"]


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch):
    # The evaluation module has its own tests; here it would only add minutes.
    monkeypatch.setattr(gan, "_evaluate", lambda *a, **k: {})


def run(make_cfg, folder, *overrides):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = make_cfg(*TINY, f"output_dir={folder / 'checkpoints'}", *overrides)
    path = folder / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert main.main(["--mode", "training", "--config", str(path)]) == 0
    return cfg, folder / "checkpoints" / "gpt2cgan" / "latest"


def test_pretrain_on_executed_runs_writes_a_complete_run_folder(make_cfg, tmp_path):
    cfg, run_dir = run(make_cfg, tmp_path, "pretrain_data.task=execution")
    for f in ("generator.safetensors", "critic.safetensors", "gan.json", "metrics.jsonl", "summary.json",
              "config.json", "checkpoint/state.json"):
        assert (run_dir / f).is_file(), f
    meta = json.loads((run_dir / "gan.json").read_text())
    assert meta["n_chans"] == 21 and meta["n_times"] == 640 and meta["sfreq"] == 160.0
    assert meta["data"]["source"]["task"] == "execution" and meta["data"]["train_runs"] == [3, 7]
    assert meta["generator"]["patch_size"] == 32 and len(meta["standardizer"]["std"]) == 21
    # The GAN selects nothing on validation trials, so it trains on them too (Splits.pooled).
    from data.dataset import load_splits, pretrain_data_cfg
    sp = load_splits(cfg, pretrain_data_cfg(cfg), seed=cfg["seed"], progress=False)
    assert len(sp.val) > 0 and (meta["data"]["n_train"], meta["data"]["n_val"]) == (len(sp.train) + len(sp.val), 0)
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("critic_loss", "generator_loss", "gradient_penalty", "wasserstein", "moment_loss", "spectrum_loss"):
        assert all(np.isfinite(r[key]) for r in rows), key
    figs = sorted(p.name for p in (run_dir / "figures").iterdir())
    assert figs == ["epoch-001-psd.png", "epoch-001-traces.png", "epoch-002-psd.png", "epoch-002-traces.png"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and "bandpower_mean_rel_err" in summary
    assert summary["calibration_gain_db_mean_abs"] > 0  # gan.calibrate "class" ran after training


@pytest.mark.parametrize("option", ["gan.generator_ema=0", "gan.generator_ema=0.9",
                                    "gan.grad_match_weight=1 gan.grad_match_ema=0.5"])
def test_seeded_cpu_runs_repeat_exactly_and_resume_matches(make_cfg, tmp_path, option):
    from safetensors.torch import load_file

    options = option.split()
    _, a = run(make_cfg, tmp_path / "a", "gan.figure_every=10", *options)
    wa = load_file(str(a / "generator.safetensors"))
    # A separate 1-epoch run continued to 2 epochs with --resume ends bit-identical to the straight
    # 2-epoch run: the seed fixes everything and the checkpoint carries every RNG state (and the
    # generator's weight average, gan.generator_ema; and the gradient-matching probe and its optimiser).
    _, c = run(make_cfg, tmp_path / "c", "gan.figure_every=10", "epochs=1", *options)
    (c / "round_summary.json").unlink()  # as if the run had stopped after its epoch-1 checkpoint
    assert main.main(["--mode", "training", "--resume", str(c), "--set", "epochs=2"]) == 0
    wc = load_file(str(c / "generator.safetensors"))
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    da, dc = load_file(str(a / "critic.safetensors")), load_file(str(c / "critic.safetensors"))
    assert all(torch.equal(da[k], dc[k]) for k in da)
    rows = [json.loads(ln) for ln in (c / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r.get("grad_match_loss", 0) > 0 for r in rows) == ("grad_match" in option)


def test_generator_ema_keeps_the_averaged_weights(make_cfg, tmp_path):
    from safetensors.torch import load_file

    from trainers.common import CKPT
    from utils.checkpoint import load_checkpoint

    _, d = run(make_cfg, tmp_path, "gan.figure_every=10", "gan.generator_ema=0.5", "gan.calibrate=none")
    saved = load_file(str(d / "generator.safetensors"))
    tensors, _ = load_checkpoint(d / CKPT)
    live, avg = tensors["generator"], tensors["generator_ema"]
    assert int(avg["n_averaged"]) == 2  # 24 trials: 2 batches of 16 an epoch, a generator step every 2nd
    params = [k for k in saved if saved[k].is_floating_point() and not torch.equal(live[k], saved[k])]
    assert params, "the saved generator is the last weights, not their average"
    for k in saved:  # the run keeps (saves, samples from) the average, not the last weights
        assert torch.equal(saved[k], avg["module." + k]), k


def test_critic_batch_std_is_trained_saved_and_loaded(make_cfg, tmp_path):
    """gan.critic_batch_std: the run trains the critic's batch-spread weights and the saved critic
    loads with them (what fine-tuning starts from)."""
    from trainers.generate import load_generator

    _, d = run(make_cfg, tmp_path, "gan.figure_every=10", "gan.critic_batch_std=true", "gan.calibrate=none")
    critic = load_generator(d, with_critic=True).critic
    assert critic.config.batch_std and critic.std_out.weight.abs().sum() > 0


def test_csp_envelope_term_is_logged_and_trained(make_cfg, tmp_path):
    """gan.csp_envelope_weight > 0: the run computes the term (logged per epoch in metrics.jsonl); at 0, the
    default, it is 0 throughout."""
    import json

    for weight in (2.0, 0.0):
        _, d = run(make_cfg, tmp_path / str(weight), "gan.figure_every=10", f"gan.csp_envelope_weight={weight}",
                   "gan.calibrate=none")
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        values = [r["csp_envelope_loss"] for r in rows]
        assert all(v > 0 for v in values) if weight else all(v == 0 for v in values)


def test_spectral_targets_are_zero_on_the_real_statistics_and_positive_elsewhere():
    torch.manual_seed(0)
    t = torch.arange(640) / 160.0
    X = torch.randn(40, 3, 640) * 0.1
    X[:20, 0] += torch.sin(2 * torch.pi * 10 * t)   # class 0: 10 Hz rhythm on channel 0
    X[20:, 1] += torch.sin(2 * torch.pi * 20 * t)   # class 1: 20 Hz on channel 1
    y = torch.tensor([0] * 20 + [1] * 20)
    targets = gan.SpectralTargets(X, y, 160.0).eval()  # eval: batch statistics, no moving average
    same = targets.losses(X, y)
    # The batch's own statistics are the targets.
    assert max(same[k].item() for k in ("moment", "spectrum", "contrast")) < 1e-6
    swapped = targets.losses(X, 1 - y)
    assert swapped["moment"].item() > 0.1
    # The band-power logistic regression separates these classes; swapped labels cost more.
    assert same["band_cls"].item() < 0.5 < swapped["band_cls"].item()
    assert swapped["contrast"].item() == pytest.approx(4.0, rel=1e-3)  # difference reversed: (-d - d)^2 / d^2 = 4
    merged = targets.losses(X, torch.zeros_like(y))  # one class only: no contrast to judge
    assert merged["contrast"].item() == 0.0
    # Training mode: the contrast is judged at a moving average of the generated statistics
    # (decay 0.9), so one batch with reversed classes after a matching one moves it only 10%:
    # ((0.9 d - 0.1 d) - d)^2 / d^2 = 0.04 for both the band-power and the covariance part.
    ema = gan.SpectralTargets(X, y, 160.0, ema_decay=0.9).train()
    assert ema.losses(X, y)["contrast"].item() < 1e-6
    Xg = X.clone().requires_grad_(True)
    flipped = ema.losses(Xg, 1 - y)["contrast"]
    assert flipped.item() == pytest.approx(0.04, rel=1e-3)
    flipped.backward()
    assert Xg.grad.abs().sum() > 0  # ...while the gradient still flows through the batch
    # Band covariance via Parseval equals band-passing then x x^T / n_times.
    f = targets.features(X[:2])
    freqs = torch.fft.rfftfreq(640, 1 / 160.0)
    mask = ((freqs >= 8) & (freqs < 13)).float()
    xb = torch.fft.irfft(torch.fft.rfft(X[:2]) * mask, n=640)
    assert torch.allclose(f["cov"][:, 1], xb @ xb.transpose(1, 2) / 640, atol=1e-5)


def test_envelope_target_is_the_time_course_of_band_power():
    """gan.envelope_weight: the class-mean time course of band power (ERD/ERS) is a target; a trial
    whose mu rhythm fades after the first second differs from one with the same power throughout."""
    torch.manual_seed(0)
    t = torch.arange(640) / 160.0
    X = torch.randn(40, 3, 640) * 0.1
    fade = torch.where(t < 1.0, 1.0, 0.4)                        # desynchronisation after 1 s
    X[:, 0] += torch.sin(2 * torch.pi * 10 * t + torch.rand(40, 1) * 6.28) * fade
    y = torch.tensor([0, 1] * 20)
    targets = gan.SpectralTargets(X, y, 160.0).eval()
    env = targets.envelope(X)
    assert env.shape == (40, 3, 3, 8)                            # theta, mu, beta x channels x 0.5 s windows
    mu_c0 = env[:, 1, 0].mean(0)
    assert mu_c0[:2].min() > 3 * mu_c0[3:].max()                 # the fade is in the mu band of channel 0
    assert targets.losses(X, y)["envelope"].item() < 1e-6
    stationary = X.clone()
    stationary[:, 0] = X[:, 0] / fade * fade.pow(2).mean().sqrt()  # same mean power, no time course
    moved = targets.losses(stationary, y)
    assert moved["envelope"].item() > 0.05
    louder = targets.losses(2 * X, y)                            # only the level: the moment term's job
    assert louder["envelope"].item() < 1e-6 and louder["moment"].item() > 0.5
    assert targets.losses(X.flip(-1), y)["envelope"].item() > 0.05   # nor is the time course symmetric
    off = gan.SpectralTargets(X, y, 160.0, envelope=False)           # gan.envelope_weight=0: not computed
    assert off.losses(stationary, y)["envelope"].item() == 0.0 and not hasattr(off, "logenv")


def test_csp_envelope_follows_the_time_course_of_the_discriminative_spatial_component():
    """gan.csp_envelope_weight: right trials carry a mu rhythm on the difference of channels 0 and 1 that
    fades after 1 s. The CSP filters find that spatial component, its class-mean power time course is a
    target, and trials with the same component at constant power are penalised; off, nothing is computed."""
    torch.manual_seed(0)
    t = torch.arange(640) / 160.0
    y = torch.tensor([0, 1] * 30)
    X = torch.randn(60, 4, 640) * 0.3
    fade = torch.where(t < 1.0, 1.0, 0.3)
    burst = torch.sin(2 * torch.pi * 10 * t + torch.rand(60, 1) * 6.28) * (y == 1)[:, None]
    X[:, 0] += burst * fade
    X[:, 1] -= burst * fade
    targets = gan.SpectralTargets(X, y, 160.0, csp_envelope=True).eval()
    w = targets.csp_filters[1]                                       # mu band, (6, 4) filters
    top = w[-1]                                                      # the right-class end of the spectrum
    assert abs(top[0] + top[1]) < 0.2 * abs(top[0] - top[1])         # channel 0 minus channel 1
    assert targets.csp_env(X).shape == (60, 3, 6, 8)
    assert targets.losses(X, y)["csp_envelope"].item() < 1e-6
    flat = X.clone()
    steady = burst * fade.pow(2).mean().sqrt()
    flat[:, 0] += steady - burst * fade
    flat[:, 1] -= steady - burst * fade
    assert targets.losses(flat, y)["csp_envelope"].item() > 0.01   # one of 3 bands x 6 components, one class
    off = gan.SpectralTargets(X, y, 160.0)
    assert off.losses(flat, y)["csp_envelope"].item() == 0.0 and not hasattr(off, "csp_filters")
    alone = gan.SpectralTargets(X, y, 160.0, envelope=False, csp_envelope=True)  # gan.envelope_weight=0
    terms = alone.losses(flat, y)
    assert terms["csp_envelope"].item() > 0.01 and terms["envelope"].item() == 0.0 and not hasattr(alone, "logenv")


@pytest.mark.parametrize("form", ["kl", "frobenius"])
def test_trial_covariance_target_penalises_features_that_move_together(form):
    """gan.trial_cov_weight: real trials' own covariance of log band power scores near 0 once the EMA
    has seen enough batches; the same per-feature spreads with every feature moving together (one
    shared gain per trial) score far higher; weight 0 skips the computation."""
    torch.manual_seed(0)
    spread = torch.exp(0.3 * torch.randn(400, 3, 1))            # independent log-power changes per channel
    X = torch.randn(400, 3, 640) * spread
    y = torch.arange(400) % 2
    targets = gan.SpectralTargets(X, y, 160.0, band_classifier=False, ema_decay=0.9, trial_cov=form)
    same = [targets.losses(X[i:i + 32], y[i:i + 32])["trial_cov"].item() for i in range(0, 384, 32)]
    shared = gan.SpectralTargets(X, y, 160.0, band_classifier=False, ema_decay=0.9, trial_cov=form)
    Xs = torch.randn(400, 3, 640) * spread[torch.arange(400), :1].expand(400, 3, 1)   # one gain for all channels
    moved = [shared.losses(Xs[i:i + 32], y[i:i + 32])["trial_cov"].item() for i in range(0, 384, 32)]
    assert same[-1] < 0.5 and moved[-1] > 5 * same[-1]
    marginal = shared.losses(Xs[:32], y[:32])["moment"].item()   # per-feature spreads alike: no other term sees it
    assert marginal < 0.1
    off = gan.SpectralTargets(X, y, 160.0)                           # gan.trial_cov_weight=0, the default
    assert off.losses(Xs[:32], y[:32])["trial_cov"].item() == 0.0 and not hasattr(off, "tcov")


def test_kl_form_weighs_thin_directions_that_a_frobenius_error_ignores():
    """gan.trial_cov_form=kl: the target varies 100x less along one direction than the other. Generated
    trials with a third of that small variance cost more than trials off by 20% along the big direction,
    though the Frobenius error of the first is 600x smaller; and equal covariances cost 0."""
    target = torch.diag(torch.tensor([1.0, 0.01]))
    thin = torch.diag(torch.tensor([1.0, 0.01 / 3]))
    big = torch.diag(torch.tensor([1.2, 0.01]))
    assert abs(gan.gaussian_kl(target, target, ridge=0.0).item()) < 1e-6
    assert gan.gaussian_kl(thin, target, ridge=0.0) > gan.gaussian_kl(big, target, ridge=0.0)
    assert (thin - target).pow(2).sum() * 600 < (big - target).pow(2).sum()


def test_subject_targets_match_each_subjects_own_statistics():
    """gan.subject_condition: per-(subject, class) targets are zero on each subject's real trials and
    positive when the subjects are swapped, although the pooled class statistics are then the same."""
    torch.manual_seed(0)
    X = torch.randn(48, 3, 640)
    X[:24] *= torch.tensor([3.0, 1.0, 0.5])[:, None]   # subject 0: other channel scales than subject 1
    y = torch.tensor(([0] * 12 + [1] * 12) * 2)
    s = torch.tensor([0] * 24 + [1] * 24)
    targets = gan.SpectralTargets(X, y, 160.0, subject=s, subject_count=2).eval()
    same = targets.losses(X, y, s)
    # Not exactly 0: these subjects' class differences are pure noise and are shrunk to the pooled one.
    assert same["subject_moment"].item() < 0.05 and same["moment"].item() < 1e-6
    swapped = targets.losses(X, y, 1 - s)
    assert swapped["subject_moment"].item() > 0.5 and swapped["moment"].item() < 1e-6
    assert gan.SpectralTargets(X, y, 160.0).losses(X, y)["subject_moment"].item() == 0.0  # off by default


def test_subject_class_difference_is_kept_where_it_is_real_and_shrunk_where_it_is_noise():
    """Per-subject targets: a subject whose left/right difference departs from the pooled one keeps
    its own; where the departure is sampling noise, the cells get the pooled difference. Each
    subject's class-averaged level is its own either way."""
    torch.manual_seed(0)
    y = torch.tensor(([0] * 24 + [1] * 24) * 2)
    s = torch.tensor([0] * 48 + [1] * 48)

    def targets(second_channel: int):
        X = torch.randn(96, 3, 640)
        X[24:48, 0] *= 2.0                             # subject 0: right trials 6 dB louder on channel 0
        X[72:, second_channel] *= 2.0                  # subject 1: the same, on channel 0 or on channel 2
        X[48:] *= 0.5                                  # subject 1 is quieter overall
        return X, gan.SpectralTargets(X, y, 160.0, subject=s, subject_count=2, band_classifier=False,
                                      envelope=False)

    X, alike = targets(0)
    assert max(alike.subject_contrast_kept) < 0.5
    for k in (0, 2):                                   # both cells' difference is mostly the pooled one
        d = alike.cell_logbp[k + 1] - alike.cell_logbp[k]
        assert (d - alike.d_logbp).abs().max() < 0.5 * alike.d_logbp.abs().max()
    raw = lambda sel: alike.features(X[sel])["logbp"].mean(0)           # noqa: E731
    level = (raw((s == 1) & (y == 0)) + raw((s == 1) & (y == 1))) / 2
    assert torch.allclose(alike.cell_logbp[2:4].mean(0), level, atol=1e-5)
    _, differ = targets(2)
    assert min(differ.subject_contrast_kept) > 0.9
    d1 = differ.cell_logbp[3] - differ.cell_logbp[2]
    assert d1[:, 2].mean() > 1.2 and d1[:, 0].abs().max() < 0.3         # ln(4) = 1.39, on channel 2 only


def test_band_subject_shrinkage_keeps_a_correlation_difference_that_global_shrinkage_drops():
    """gan.subject_shrinkage: a subject whose classes differ only in how two channels correlate (same power)
    keeps that difference under "band" (the whitened covariance against its own noise), while "global"
    weighs it by the log band power, which carries only noise, and gives both subjects the pooled one;
    "none" leaves every cell as measured."""
    torch.manual_seed(1)
    y = torch.tensor(([0] * 24 + [1] * 24) * 2)
    s = torch.tensor([0] * 48 + [1] * 48)
    X = torch.randn(96, 3, 640)
    X[72:, 1] = 0.8 * X[72:, 0] + 0.6 * X[72:, 1]      # subject 1, right: channels 0 and 1 correlate, power kept

    def own_difference(mode: str) -> torch.Tensor:  # per subject: right minus left whitened covariance, (0, 1)
        t = gan.SpectralTargets(X, y, 160.0, subject=s, subject_count=2, band_classifier=False, envelope=False,
                                subject_shrinkage=mode)
        d = t.cell_wcov[1::2] - t.cell_wcov[0::2]
        return d[..., 0, 1].mean(-1), t.d_wcov[..., 0, 1].mean()

    (band, pooled), (glob, _), (none, _) = own_difference("band"), own_difference("global"), own_difference("none")
    assert band[1] > 1.6 * pooled and band[0].abs() < 0.3 * pooled   # each subject keeps its own
    assert torch.allclose(glob, pooled.expand(2), rtol=0.2)           # both get the pooled difference
    assert none[1] >= band[1] and torch.allclose(none.mean(), pooled, rtol=1e-4)  # unshrunk: the raw cells


def test_subject_contrast_is_zero_for_the_real_cells_and_one_for_a_subject_whose_classes_agree():
    """gan.subject_contrast_weight: each subject's own right-minus-left difference, self-normalised per
    subject. The real trials themselves score 0; a subject whose generated classes are the same trials
    scores 1, and the term averages over subjects."""
    torch.manual_seed(2)
    y = torch.tensor(([0] * 24 + [1] * 24) * 2)
    s = torch.tensor([0] * 48 + [1] * 48)
    X = torch.randn(96, 3, 640)
    X[24:48, 0] *= 2.0                                 # subject 0: right louder on channel 0
    X[72:, 2] *= 2.0                                   # subject 1: right louder on channel 2
    t = gan.SpectralTargets(X, y, 160.0, subject=s, subject_count=2, band_classifier=False, envelope=False,
                            subject_shrinkage="none").eval()   # eval: batch statistics, no moving average
    assert t.losses(X, y, s)["subject_contrast"].item() < 1e-6
    same = X.clone()
    same[72:] = X[48:72]                               # subject 1's right trials are its left ones
    assert abs(t.losses(same, y, s)["subject_contrast"].item() - 0.5) < 1e-4
    assert abs(t.losses(same[48:], y[48:], s[48:])["subject_contrast"].item() - 1.0) < 1e-4


def test_shrunk_class_contrast_keeps_a_real_difference_and_drops_noise():
    """gan.shrink_contrast: the right-minus-left difference of the targets keeps an effect far above
    its sampling noise and loses most of what is noise; the class-averaged targets do not move."""
    torch.manual_seed(0)
    y = torch.arange(80) % 2
    X = torch.randn(80, 4, 640)
    X[y == 1, 1] *= 2.0                                # right trials 6 dB louder on channel 1 only
    raw = gan.SpectralTargets(X, y, 160.0, band_classifier=False, envelope=False)
    shr = gan.SpectralTargets(X, y, 160.0, band_classifier=False, envelope=False, shrink_contrast=True)
    assert set(shr.class_contrast_kept) == {"logbp_mean", "cov", "logpsd"} and not raw.class_contrast_kept
    d_raw, d_shr = raw.d_logbp, shr.d_logbp                          # (bands, channels)
    assert torch.allclose(d_shr[:, 1], d_raw[:, 1], rtol=0.05)       # ln(4) = 1.39 against noise ~0.1
    noise = [0, 2, 3]
    assert d_shr[:, noise].abs().sum() < 0.5 * d_raw[:, noise].abs().sum()
    for name in ("logbp_mean", "cov", "logpsd"):
        assert torch.allclose(getattr(shr, name).mean(0), getattr(raw, name).mean(0), atol=1e-5), name
    # the class-specific covariance difference off channel 1 is mostly gone as well
    off = lambda t: (t.cov[1] - t.cov[0])[:, [0, 2, 3]][:, :, [0, 2, 3]].abs().sum()  # noqa: E731
    assert off(shr) < 0.5 * off(raw)


def test_class_bands_keep_the_class_difference_of_the_named_bands_only():
    """gan.class_bands=["mu"]: the right-minus-left difference of every target (log band power, band
    covariance, log spectrum, power time course, subject cells) survives in mu and is gone elsewhere;
    the broadband statistics keep mu's share; the class-averaged targets do not move."""
    torch.manual_seed(0)
    y, s = torch.arange(120) % 2, (torch.arange(120) // 2) % 3
    X = torch.randn(120, 4, 640)
    X[y == 1, 1] *= 2.0                                # right trials 6 dB louder on channel 1, all bands
    kw = dict(band_classifier=False, subject=s, subject_count=3)
    raw, mu = gan.SpectralTargets(X, y, 160.0, **kw), gan.SpectralTargets(X, y, 160.0, class_bands=["mu"], **kw)
    b_mu, broad = list(gan.BANDS).index("mu"), len(gan.BANDS)
    others = [i for i in range(broad) if i != b_mu]
    assert torch.allclose(mu.d_logbp[b_mu], raw.d_logbp[b_mu]) and mu.d_logbp[b_mu, 1] > 1.2  # ln 4 = 1.39
    assert mu.d_logbp[others].abs().max() < 1e-6 and raw.d_logbp[others, 1].min() > 1.2
    assert 0.05 < mu.d_logbp[broad, 1] < 0.5 * raw.d_logbp[broad, 1]   # mu is 5 of the ~80 Hz of white noise
    assert mu.d_wcov[others].abs().max() < 1e-6 and torch.allclose(mu.d_wcov[b_mu], raw.d_wcov[b_mu], atol=1e-6)
    cells = lambda t: t.cell_logbp[1::2] - t.cell_logbp[0::2]  # noqa: E731  (subjects, bands, channels)
    assert cells(mu)[:, others].abs().max() < 1e-6 and cells(mu)[:, b_mu, 1].min() > 0.8
    f = torch.arange(mu.logpsd.shape[-1]) + 4.5                       # ~1 Hz bins from 4 Hz
    in_mu = (f >= 8) & (f < 13)
    d_psd = mu.logpsd[1] - mu.logpsd[0]
    assert d_psd[:, ~in_mu].abs().max() < 1e-6 and d_psd[1, in_mu].min() > 1.0
    env = mu.logenv[1] - mu.logenv[0]
    assert env[[0, 2]].abs().max() < 1e-6 and torch.equal(env[1], (raw.logenv[1] - raw.logenv[0])[1])
    for name in ("logbp_mean", "logpsd"):
        assert torch.allclose(getattr(mu, name).mean(0), getattr(raw, name).mean(0), atol=1e-5), name
    assert torch.allclose(mu.cov.mean(0), raw.cov.mean(0), atol=1e-5)


def test_power_class_covariance_keeps_the_class_difference_in_power_and_drops_it_in_correlations():
    """gan.class_covariance="power": right trials are louder on channel 1 and correlate channels 2 and 3;
    the targets (per class and per subject cell) keep the power difference and give both classes the
    same channel correlations; "full" keeps both differences."""
    torch.manual_seed(0)
    y, s = torch.arange(120) % 2, (torch.arange(120) // 2) % 3
    X = torch.randn(120, 4, 640)
    X[y == 1, 1] *= 2.0
    X[y == 1, 3] = 0.8 * X[y == 1, 2] + 0.6 * X[y == 1, 3]
    kw = dict(band_classifier=False, envelope=False, subject=s, subject_count=3)
    full = gan.SpectralTargets(X, y, 160.0, **kw)
    power = gan.SpectralTargets(X, y, 160.0, class_covariance="power", **kw)

    def corr(cov):  # (..., C, C) -> correlation of channels 2 and 3
        return cov[..., 2, 3] / (cov[..., 2, 2] * cov[..., 3, 3]).sqrt()

    assert (corr(full.cov[1]) - corr(full.cov[0])).min() > 0.6          # 0.8 against 0
    assert (corr(power.cov[1]) - corr(power.cov[0])).abs().max() < 1e-5
    assert corr(power.cov[0]).min() > 0.3                              # the class-averaged correlation
    assert torch.allclose(power.logbp_mean, full.logbp_mean)            # band power untouched
    assert (power.d_logbp[:, 1] > 1.2).all()                           # ln 4 = 1.39
    unwhiten = torch.linalg.inv(power.whiten)                         # the cells' targets are whitened
    raw_cells = unwhiten @ power.cell_wcov @ unwhiten
    assert (corr(raw_cells[1::2]) - corr(raw_cells[0::2])).abs().max() < 1e-3
    assert power.losses(X, y, s)["contrast"].item() > full.losses(X, y, s)["contrast"].item()


def test_class_calibration_with_class_bands_keeps_class_differences_inside_them_only():
    gen = _tiny_generator()
    X, y, freqs = _known_response_trials(gen, [(0, 0, 8, 13, 1.5), (1, 1, 18, 25, 0.7)])
    gan.calibrate_spectrum(gen, X, y, 160.0, "class", seed=2, device="cpu", class_bands=["mu"])
    cal = gen.calibration
    inner_mu, inner_beta = (freqs >= 9.5) & (freqs < 11.5), (freqs >= 19.5) & (freqs < 23.5)
    assert cal[0, 0, inner_mu].mean().item() == pytest.approx(1.5, rel=0.1)      # mu: per class, as before
    assert cal[1, 0, inner_mu].mean().item() == pytest.approx(1.0, rel=0.1)
    # beta: the class average of x0.7 and x1 in power, for both classes
    both = ((0.7 ** 2 + 1) / 2) ** 0.5
    assert cal[0, 1, inner_beta].mean().item() == pytest.approx(both, rel=0.1)
    assert cal[1, 1, inner_beta].mean().item() == pytest.approx(both, rel=0.1)


def test_class_bands_key_is_validated():
    from config.schema import load_config
    from utils.errors import UserError

    root = Path(__file__).resolve().parents[2] / "config" / "config.json"
    assert load_config(root, ['gan.class_bands=["mu","beta"]'])["gan"]["class_bands"] == ["mu", "beta"]
    for bad, words in (('["alpha"]', "is not one of"), ('["mu","mu"]', "names a band twice"), ("[]", "empty"),
                       ('"mu"', "expected a list")):
        with pytest.raises(UserError, match=words) as e:
            load_config(root, [f"gan.class_bands={bad}"])
        assert "gan.class_bands" in str(e.value)


def test_subject_conditioning_needs_two_subjects_and_the_key():
    from config.schema import apply_overrides, validate

    on = validate(apply_overrides({}, ["gan.subject_condition=true"]))
    off = validate(apply_overrides({}, ["gan.subject_condition=false"]))
    assert gan.conditioned_subjects(on, np.array([3, 1, 3])) == [1, 3]
    assert gan.conditioned_subjects(on, np.array([7, 7])) is None  # one subject: nothing to condition on
    assert gan.conditioned_subjects(off, np.array([3, 1])) is None


def test_subject_conditioned_run_records_and_generates_its_subjects(make_cfg, tmp_path):
    _, run_dir = run(make_cfg, tmp_path, "data.subjects=[1,2]", "gan.subject_condition=true", "gan.figure_every=10")
    meta = json.loads((run_dir / "gan.json").read_text())
    assert meta["generator"]["subjects"] == [1, 2] and meta["critic"]["subject_count"] == 2
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["subject_moment_loss"]) and r["subject_moment_loss"] > 0 for r in rows)
    assert main.main(["--mode", "generate", "--checkpoint", str(run_dir), "--n", "40",
                      "--out", str(tmp_path / "gen")]) == 0
    d = np.load(tmp_path / "gen" / "generated.npz")
    assert set(d["subject"].tolist()) == {1, 2} and len(d["subject"]) == len(d["y"]) == 80
    assert d["subject"][d["y"] == 0].tolist() == d["subject"][d["y"] == 1].tolist()  # same subject mix per class


@pytest.mark.parametrize("subjects", [False, True])
def test_paired_classes_render_each_noise_vector_as_both_classes(subjects):
    """gan.paired_classes: the generator update sees (z, left), (z, right) pairs with the same noise
    (and subject), so the class difference of its batch statistics is not noise-driven."""
    from config.schema import apply_overrides, validate

    cfg = validate(apply_overrides({}, TINY[1:] + ["gan.critic_steps=1", "gan.paired_classes=true",
                                                   f"gan.subject_condition={str(subjects).lower()}",
                                                   "data.l_freq=null", "data.h_freq=null"]))
    torch.manual_seed(0)
    X, y = torch.randn(10, 3, 64), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    s = torch.tensor([0, 0, 1, 1, 1, 0, 0, 1, 1, 1])
    G, D = gan.build_models(cfg, 3, 64, 160.0, subjects=[5, 6] if subjects else None)
    calls = []
    forward = G.forward
    G.forward = lambda z, yy, ss=None: calls.append((z, yy, ss)) or forward(z, yy, ss)
    targets = gan.SpectralTargets(X, y, 160.0, subject=s if subjects else None, subject_count=2 if subjects else 0)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    out = gan._train_step(cfg, G, D, opt_g, opt_d, targets, X, y, s if subjects else None, np.arange(9),
                          slice(None), "cpu", None, 0, 0, True)
    z, yy, ss = calls[-1]  # the generator update's forward
    assert len(yy) == 9 and yy.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert torch.equal(z[0:8:2], z[1:8:2]) and not torch.equal(z[0], z[2])
    if subjects:
        assert torch.equal(ss[0:8:2], ss[1:8:2])
    assert np.isfinite(out["generator_loss"]) and np.isfinite(out["contrast_loss"])


def test_linear_schedule_decays_both_rates_to_a_tenth_and_constant_keeps_them():
    assert [round(gan.lr_factor("linear", e, 5), 3) for e in range(5)] == [1.0, 0.775, 0.55, 0.325, 0.1]
    assert {gan.lr_factor("constant", e, 5) for e in range(5)} == {1.0}
    assert gan.lr_factor("linear", 0, 1) == 1.0  # a one-epoch run keeps its rate


def _tiny_generator(n_chans=3):
    from models.gpt2_generator import GPT2Generator, GPT2GeneratorConfig

    torch.manual_seed(0)
    return GPT2Generator(GPT2GeneratorConfig(n_chans=n_chans, n_times=640, patch_size=32, n_embd=16, n_layer=1,
                                             n_head=2, sfreq=160.0, l_freq=4.0, h_freq=40.0))


def _known_response_trials(gen, cells):
    """'Real' trials: the generator's own output (400 per class) through a known per-class, per-channel
    amplitude response; cells: (class or slice, channel, lo Hz, hi Hz, factor). Returns X, y, rfft freqs."""
    X, y = gan.generate(gen, 400, seed=1, device="cpu")
    freqs = torch.fft.rfftfreq(640, 1 / 160.0)
    response = torch.ones(2, gen.config.n_chans, len(freqs))
    for cls, ch, lo, hi, factor in cells:
        response[cls, ch, (freqs >= lo) & (freqs < hi)] = factor
    return torch.fft.irfft(torch.fft.rfft(X) * response[y], n=640), y, freqs


def test_spectral_calibration_recovers_a_known_per_class_channel_response():
    gen = _tiny_generator()
    # "Real" trials: the generator's own output with a known class- and channel-specific filter,
    # amplitude x1.5 at 8-13 Hz on channel 0 of class 0 and x0.7 at 18-25 Hz on channel 1 of class 1.
    X, y, freqs = _known_response_trials(gen, [(0, 0, 8, 13, 1.5), (1, 1, 18, 25, 0.7)])
    info = gan.calibrate_spectrum(gen, X, y, 160.0, "class", seed=2, device="cpu")
    assert info["calibration_gain_db_max_abs"] > 2.5  # 20 log10(1.5) = 3.5 dB, smoothed at the band edges
    inner_mu, inner_beta = (freqs >= 9.5) & (freqs < 11.5), (freqs >= 19.5) & (freqs < 23.5)
    cal = gen.calibration
    assert cal[0, 0, inner_mu].mean().item() == pytest.approx(1.5, rel=0.1)
    assert cal[1, 1, inner_beta].mean().item() == pytest.approx(0.7, rel=0.1)
    # Elsewhere (in the pass band) the two sets already agree: the gains stay near 1.
    elsewhere = (freqs >= 28) & (freqs < 36)
    assert (cal[:, :, elsewhere] - 1).abs().mean().item() < 0.1
    assert torch.equal(cal[:, :, freqs > 50], torch.ones_like(cal[:, :, freqs > 50]))  # stop band untouched
    # The generated class-mean power now follows the real one, and the output carries it.
    Xg, yg = gan.generate(gen, 400, seed=3, device="cpu")
    p_real = torch.fft.rfft(X[y == 0, 0]).abs().pow(2)[:, inner_mu].mean()
    p_gen = torch.fft.rfft(Xg[yg == 0, 0]).abs().pow(2)[:, inner_mu].mean()
    assert p_gen.item() == pytest.approx(p_real.item(), rel=0.15)


def test_pooled_calibration_shares_one_response_and_none_leaves_the_generator_alone():
    gen = _tiny_generator()
    X, y = gan.generate(gen, 200, seed=1, device="cpu")
    X = X * 1.3  # every class and channel 30% larger in amplitude
    assert gan.calibrate_spectrum(gen, X, y, 160.0, "none", seed=2, device="cpu") == {}
    assert torch.equal(gen.calibration, torch.ones_like(gen.calibration))
    gan.calibrate_spectrum(gen, X, y, 160.0, "pooled", seed=2, device="cpu")
    assert torch.equal(gen.calibration[0], gen.calibration[1])
    freqs = torch.fft.rfftfreq(640, 1 / 160.0)
    band = (freqs >= 6) & (freqs < 36)
    assert gen.calibration[:, :, band].mean().item() == pytest.approx(1.3, rel=0.05)


def test_band_calibration_keeps_class_band_levels_and_drops_narrow_class_differences():
    gen = _tiny_generator()
    X, y, freqs = _known_response_trials(gen, [
        (0, 0, 8, 13, 1.5),             # a class difference of mu level: kept
        (1, 1, 20, 22, 0.6),            # a 2 Hz class difference inside beta: averaged over 13-30 Hz, nearly gone
        (slice(None), 2, 20, 22, 1.4),  # a narrow feature both classes share: the pooled response keeps it
    ])
    gan.calibrate_spectrum(gen, X, y, 160.0, "band", seed=2, device="cpu")
    cal = gen.calibration
    inner_mu = (freqs >= 9.5) & (freqs < 11.5)
    assert cal[0, 0, inner_mu].mean().item() == pytest.approx(1.5, rel=0.1)
    assert cal[1, 0, inner_mu].mean().item() == pytest.approx(1.0, rel=0.1)
    inner = (freqs >= 20.5) & (freqs < 21.5)
    assert cal[0, 1, inner].mean().item() == pytest.approx(cal[1, 1, inner].mean().item(), rel=0.1)
    assert cal[:, 2, inner].mean().item() == pytest.approx(1.4 * 0.9, rel=0.12)  # 2 Hz smoothing of a 2 Hz bump


def test_a_run_with_too_few_generator_updates_is_warned(make_cfg, tmp_path, capsys):
    run(make_cfg, tmp_path / "w", "gan.figure_every=10", "epochs=1")
    out = capsys.readouterr().out
    assert "warning:" in out and "generator updates over 1 epoch;" in out and "raise epochs" in out


def _subject_generator(subjects=(2, 5), n_chans=4):
    from models.gpt2_generator import GPT2Generator, GPT2GeneratorConfig

    torch.manual_seed(0)
    return GPT2Generator(GPT2GeneratorConfig(n_chans=n_chans, n_times=640, patch_size=32, n_embd=16, n_layer=1,
                                             n_head=2, sfreq=160.0, l_freq=4.0, h_freq=40.0,
                                             subjects=list(subjects))).eval()


def _assert_reloads_without(gen, key, z, y, idx, uncalibrated):
    """gen's state dict reloads into a fresh generator with the same output; without `key` (a run saved
    before that buffer existed) it gives the output from before the calibration that fitted it."""
    fresh = _subject_generator()
    fresh.load_state_dict({k: v for k, v in gen.state_dict().items() if k != key})
    assert torch.equal(fresh(z, y, idx), uncalibrated)
    fresh.load_state_dict(gen.state_dict())
    assert torch.equal(fresh(z, y, idx), gen(z, y, idx))


def test_subject_covariance_calibration_makes_each_subject_mean_covariance_the_real_one():
    gen = _subject_generator()
    # A spectral calibration that differs from channel to channel, as gan.calibrate leaves one: the mixing
    # must act after it, or the fitted covariance is off.
    gen.calibration.mul_(0.5 + torch.rand(gen.calibration.shape, generator=torch.Generator().manual_seed(4)))
    # "Real" trials: the generator's own output, each subject through its own known channel mixing.
    X, _, s = gan.generate(gen, 300, seed=1, device="cpu", return_subjects=True)
    rng = np.random.default_rng(0)
    maps = {u: torch.from_numpy(np.eye(4) + 0.6 * rng.standard_normal((4, 4))).float() for u in (2, 5)}
    X = torch.stack([maps[int(u)] @ x for x, u in zip(X, s)])
    z, y = gen.sample_noise(6, generator=torch.Generator().manual_seed(9)), torch.tensor([0, 1] * 3)
    idx = torch.tensor([0, 1, 0, 1, 1, 0])
    before = gen(z, y, idx)
    assert gan.calibrate_subject_covariance(gen, X, s.numpy(), "none", seed=3, device="cpu") == {}
    assert torch.equal(gen(z, y, idx), before)  # "none", and identity mixing, leave the output as trained
    info = gan.calibrate_subject_covariance(gen, X, s.numpy(), "covariance", seed=3, device="cpu")
    assert info["subject_covariance_distance_before"] > 1.0 > 5 * info["subject_covariance_distance_after"]
    Xg, _, sg = gan.generate(gen, 300, seed=7, device="cpu", return_subjects=True)
    for u in (2, 5):
        real, fake = gan._mean_cov(X[s == u]), gan._mean_cov(Xg[sg == u])
        assert torch.allclose(fake, real, rtol=0.1, atol=0.1 * real.diagonal().mean().item())
    # Saved and reloaded, the mixing is part of the generator; a run saved before it existed loads as identity.
    _assert_reloads_without(gen, "subject_mixing", z, y, idx, before)


def test_subject_spectrum_calibration_gives_each_subject_its_real_mean_spectrum():
    gen = _subject_generator()
    # "Real" trials: the generator's own output, each subject's channels through their own smooth spectral
    # response (a level and a tilt), the same for both classes.
    X, y, s = gan.generate(gen, 300, seed=1, device="cpu", return_subjects=True)
    f = torch.fft.rfftfreq(640, 1 / 160.0)
    # (Inside the calibration's [0.5, 2] amplitude range.)
    shape = {2: torch.tensor([1.5, 1.0, 0.6, 1.3])[:, None] * (1 + 0.25 * torch.sin(f / 6))[None],
             5: torch.tensor([0.7, 1.5, 1.0, 0.8])[:, None] * (1 + 0.3 * torch.cos(f / 9))[None]}
    X = torch.stack([torch.fft.irfft(torch.fft.rfft(x) * shape[int(u)], n=640) for x, u in zip(X, s)])
    z, yy = gen.sample_noise(6, generator=torch.Generator().manual_seed(9)), torch.tensor([0, 1] * 3)
    idx = torch.tensor([0, 1, 0, 1, 1, 0])
    before = gen(z, yy, idx)
    assert gan.calibrate_subjects(gen, X, y, s.numpy(), 160.0, "none", seed=3, device="cpu") == {}
    assert torch.equal(gen(z, yy, idx), before)
    info = gan.calibrate_subjects(gen, X, y, s.numpy(), 160.0, "spectrum", seed=3, device="cpu")
    # From the shaping's 3.4 dB to the sampling noise of the two means (0.3 dB).
    assert info["subject_spectrum_db_before"] > 2.0 > 5 * info["subject_spectrum_db_after"]
    # A fresh draw: every subject's mean mu/beta power per channel is its real one.
    Xg, yg, sg = gan.generate(gen, 300, seed=7, device="cpu", return_subjects=True)
    for u in (2, 5):
        real = band_power(X[s == u].numpy(), 160.0, (8.0, 30.0)).mean(0)
        fake = band_power(Xg[sg == u].numpy(), 160.0, (8.0, 30.0)).mean(0)
        np.testing.assert_allclose(fake, real, rtol=0.12)
    # Saved and reloaded, the response is part of the generator; a run saved before it existed loads as ones.
    _assert_reloads_without(gen, "subject_calibration", z, yy, idx, before)


def test_class_spectrum_calibration_gives_each_subject_and_class_its_real_mean_spectrum():
    gen = _subject_generator()
    X, y, s = gan.generate(gen, 300, seed=1, device="cpu", return_subjects=True)
    # Subject 5's right-hand trials lose 40% of their power at the first two channels; nothing else changes.
    X = X * torch.where(((s == 5) & (y == 1))[:, None, None], torch.tensor([0.6, 0.6, 1.0, 1.0]).sqrt()[:, None], 1.0)
    pooled = _subject_generator()
    pooled.load_state_dict(gen.state_dict())
    gan.calibrate_subjects(pooled, X, y, s.numpy(), 160.0, "spectrum", seed=3, device="cpu")
    gan.calibrate_subjects(gen, X, y, s.numpy(), 160.0, "class_spectrum", seed=3, device="cpu")
    for g, worst in ((gen, 0.12), (pooled, 0.15)):  # pooled: both classes of subject 5 get the mean, 20% off
        Xg, yg, sg = gan.generate(g, 300, seed=7, device="cpu", return_subjects=True)
        real = band_power(X[(s == 5) & (y == 1)].numpy(), 160.0, (8.0, 30.0)).mean(0)
        fake = band_power(Xg[(sg == 5) & (yg == 1)].numpy(), 160.0, (8.0, 30.0)).mean(0)
        err = np.abs(fake / real - 1)[:2].max()
        assert (err < worst) if g is gen else (err > worst)


def test_subject_covariance_calibration_key_is_validated():
    from config.schema import load_config
    from utils.errors import UserError

    root = Path(__file__).resolve().parents[2] / "config" / "config.json"
    assert load_config(root, ["gan.calibrate_subject=covariance"])["gan"]["calibrate_subject"] == "covariance"
    assert load_config(root, ["gan.calibrate_subject=spectrum"])["gan"]["calibrate_subject"] == "spectrum"
    assert load_config(root, ["gan.calibrate_subject=class_spectrum"])["gan"]["calibrate_subject"] == "class_spectrum"
    with pytest.raises(UserError, match="gan.calibrate_subject"):
        load_config(root, ["gan.calibrate_subject=whiten"])
