"""gpt2xcnn / gpt2scnn: fine-tuning through a frozen classifier, the scratch ablation, every error path."""
import json

import numpy as np
import pytest

import main
import trainers.gan as gan

COMMON = ["data.subjects=[1]", "epochs=1", "batch_size=16", "training.num_threads=1"]
GAN = ["n_embd=16", "n_layer=1", "n_head=2", "gan.patch_size=32", "gan.critic_width=8", "gan.critic_steps=1",
       "gan.figure_every=10"]
TRIO = 'data.channels=["C3","Cz","C4"]'


@pytest.fixture(scope="module")
def assets(data_path, cache_dir, tmp_path_factory):
    """A pretrained GAN (executed runs), a shallow classifier (21 channels), an stft classifier (C3/Cz/C4,
    two rounds), a shallow classifier trained with Euclidean alignment on subjects 1 and 2 (two rounds)."""
    from config.schema import apply_overrides, validate

    folder = tmp_path_factory.mktemp("ft")
    base = {"data_path": str(data_path), "cache_dir": str(cache_dir), "output_dir": str(folder / "checkpoints"),
            "data": {"download": False}}

    def train(name, *overrides):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(validate(apply_overrides(base, COMMON + list(overrides)))))
        assert main.main(["--mode", "training", "--config", str(path)]) == 0
        latest = folder / "checkpoints" / overrides[0].split("=")[1] / "latest"
        return latest.resolve()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gan, "_evaluate", lambda *a, **k: {})
        runs = {"gan": train("gan", "model_name=gpt2cgan", "pretrain_data.task=execution", *GAN),
                "shallow": train("shallow", "model_name=classifier", "classifier.architecture=shallow"),
                "stft": train("stft", "model_name=classifier", "classifier.architecture=stft", TRIO, "rounds=2"),
                "aligned": train("aligned", "model_name=classifier", "classifier.architecture=shallow", "data.subjects=[1,2]",
                                 "classifier.alignment=euclidean", "rounds=2")}
    return base, folder, runs


def finetune(assets, tmp_path, monkeypatch, *overrides):
    from config.schema import apply_overrides, validate

    monkeypatch.setattr(gan, "_evaluate", lambda *a, **k: {})
    base, _, _ = assets
    base = {**base, "output_dir": str(tmp_path / "checkpoints")}
    path = tmp_path / "ft.json"
    path.write_text(json.dumps(validate(apply_overrides(base, COMMON + GAN + list(overrides)))))
    return main.main(["--mode", "training", "--config", str(path)])


def test_gpt2xcnn_fine_tunes_the_pretrained_gan_on_imagery(assets, tmp_path, monkeypatch):
    _, _, runs = assets
    assert finetune(assets, tmp_path, monkeypatch, "model_name=gpt2xcnn", f"pretrained_finetune_path={runs['gan']}",
                    f"pretrained_classifier_path={runs['shallow']}", "finetune.cls_weight=2.0") == 0
    run = tmp_path / "checkpoints" / "gpt2xcnn" / "latest"
    meta = json.loads((run / "gan.json").read_text())
    assert meta["fine_tune"] is True and meta["pretrained_from"] == str(runs["gan"])
    assert meta["data"]["train_runs"] == [4, 8]  # target: imagery; the GAN was pretrained on 3/7/11
    assert meta["finetune_reinit"] == []  # "auto": same subject, other task -> nothing restarted
    pre = json.loads((runs["gan"] / "gan.json").read_text())
    assert meta["standardizer"] == pre["standardizer"]  # output units stay those of the pretrained generator
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= rows[0]["classifier_accuracy"] <= 1.0 and np.isfinite(rows[0]["classifier_loss"])
    summary = json.loads((run / "summary.json").read_text())
    assert "classifier_accuracy_generated" in summary and "classifier_accuracy_real_test" in summary
    # The fine-tuned generator differs from the one it started from.
    from safetensors.torch import load_file

    a, b = load_file(str(runs["gan"] / "generator.safetensors")), load_file(str(run / "generator.safetensors"))
    assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_fine_tuning_can_move_the_class_into_the_spectral_gain(assets, tmp_path, monkeypatch):
    """An embedding-pretrained GAN fine-tuned with gan.class_effect=spectral: the class acts only through
    the learned band gain, which training moves, and the run loads back with it (generate mode)."""
    _, _, runs = assets
    assert finetune(assets, tmp_path, monkeypatch, "model_name=gpt2xcnn", f"pretrained_finetune_path={runs['gan']}",
                    f"pretrained_classifier_path={runs['shallow']}", "gan.class_effect=spectral") == 0
    run = (tmp_path / "checkpoints" / "gpt2xcnn" / "latest").resolve()
    assert json.loads((run / "gan.json").read_text())["generator"]["class_effect"] == "spectral"
    from safetensors.torch import load_file

    assert np.abs(load_file(str(run / "generator.safetensors"))["class_gain"].numpy()).max() > 0
    from trainers.generate import load_generator

    g = load_generator(run).generator
    assert g.config.class_effect == "spectral" and g.class_gain.abs().max() > 0


def test_gpt2scnn_from_scratch_is_the_ablation(assets, tmp_path, monkeypatch):
    _, _, runs = assets
    assert finetune(assets, tmp_path, monkeypatch, "model_name=gpt2scnn", "fine_tune=false", TRIO,
                    "pretrained_finetune_path=/does/not/matter",
                    f"pretrained_classifier_path={runs['stft']}", "finetune.classifier_rounds=all") == 0
    meta = json.loads((tmp_path / "checkpoints" / "gpt2scnn" / "latest" / "gan.json").read_text())
    assert meta["fine_tune"] is False and meta["pretrained_from"] is None and meta["n_chans"] == 3
    assert meta["classifier_members"] == 2  # both rounds of the classifier run, as one ensemble



def test_a_classifier_trained_with_alignment_teaches_a_subject_conditioned_generator(assets, tmp_path, monkeypatch,
                                                                                     capsys):
    """Generated trials of a subject-conditioned generator belong to a subject, so a classifier trained on
    trials whitened per subject (classifier.alignment) can score them whitened as that subject's real trials;
    a generator without subjects has none to whiten by, and is refused."""
    _, _, runs = assets
    args = ["model_name=gpt2xcnn", "fine_tune=false", "pretrained_finetune_path=/not/used", "data.subjects=[1,2]",
            f"pretrained_classifier_path={runs['aligned']}", "gan.subject_condition=true"]
    assert finetune(assets, tmp_path, monkeypatch, *args) == 0
    run = tmp_path / "checkpoints" / "gpt2xcnn" / "latest"
    assert json.loads((run / "gan.json").read_text())["classifier_members"] == 2
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(rows[0]["classifier_loss"])
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["classifier_accuracy_real_test"] <= 1.0
    (tmp_path / "off").mkdir()
    capsys.readouterr()
    assert finetune(assets, tmp_path / "off", monkeypatch, *args[:-1], "gan.subject_condition=false") == 2
    assert "only a subject-conditioned generator's trials have a subject" in capsys.readouterr().err

@pytest.mark.parametrize("case, overrides, message", [
    ("missing GAN", ["model_name=gpt2xcnn", "pretrained_finetune_path={tmp}/none", "pretrained_classifier_path={shallow}"],
     "not found"),
    ("missing classifier", ["model_name=gpt2xcnn", "pretrained_finetune_path={gan}",
                            "pretrained_classifier_path={tmp}/none"], "not found"),
    ("scnn needs stft", ["model_name=gpt2scnn", "pretrained_finetune_path={gan}",
                         "pretrained_classifier_path={shallow}"], "needs a stft classifier"),
    ("xcnn needs temporal CNN", ["model_name=gpt2xcnn", "pretrained_finetune_path={gan}", TRIO,
                                 "pretrained_classifier_path={stft}"], "eegnet or shallow"),
    ("classifier channels", ["model_name=gpt2xcnn", "pretrained_finetune_path={gan}", TRIO,
                             "pretrained_classifier_path={shallow}"], "channels"),
    ("GAN channels", ["model_name=gpt2scnn", "pretrained_finetune_path={gan}", TRIO,
                      "pretrained_classifier_path={stft}"], "pretrained GAN"),
    ("trial length", ["model_name=gpt2xcnn", "pretrained_finetune_path={gan}", "data.tmax=3.0",
                    "pretrained_classifier_path={shallow}"], "sample trials"),
    ("GAN path is a classifier", ["model_name=gpt2xcnn", "pretrained_finetune_path={shallow}",
                                  "pretrained_classifier_path={shallow}"], "gan.json"),
])
def test_error_paths_exit_2_with_one_line(assets, tmp_path, monkeypatch, capsys, case, overrides, message):
    _, _, runs = assets
    fill = {"tmp": tmp_path, **runs}
    assert finetune(assets, tmp_path, monkeypatch, *[o.format(**fill) for o in overrides]) == 2, case
    err = capsys.readouterr().err  # may also hold progress bars (\r-separated)
    line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert err.count("error:") == 1 and line.startswith("error:") and message in line, err
    # Nothing was trained, so no run folder is left behind to be mistaken for a run.
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").rglob("config.json")), case


def test_reinit_restarts_the_critic_and_the_output_stages_on_the_target():
    import torch

    from config.schema import apply_overrides, validate
    from trainers.finetune import restart_on_target

    cfg = validate(apply_overrides({}, GAN + ["data.l_freq=null", "data.h_freq=null"]))
    torch.manual_seed(0)
    src = torch.randn(40, 5, 64)
    tgt = torch.randn(40, 5, 64) * torch.tensor([3.0, 1.0, 1.0, 0.5, 2.0])[:, None]  # other channel scales
    g, d = gan.build_models(cfg, 5, 64, 160.0, X_init=src)
    g.calibration.mul_(2.0)  # as a calibrated pretrained generator has
    body = {k: v.clone() for k, v in g.transformer.state_dict().items()}
    critic_before = {k: v.clone() for k, v in d.state_dict().items()}
    spatial_before = g.spatial.detach().clone()

    restart_on_target(g, d, None, tgt.numpy(), 0.5)  # null: the pretrained networks as they are
    assert torch.equal(g.spatial, spatial_before) and torch.all(g.calibration == 2.0)
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in critic_before.items())

    rng = torch.get_rng_state()
    embedding_before = g.class_embedding.weight.detach().clone()
    restart_on_target(g, d, ["critic", "output"], tgt.numpy(), 0.5)
    fresh, _ = gan.build_models(cfg, 5, 64, 160.0, X_init=tgt)
    assert torch.allclose(g.spatial, fresh.spatial) and torch.allclose(g.gain.weight, fresh.gain.weight)
    assert torch.all(g.calibration == 1.0)
    assert all(torch.equal(v, g.transformer.state_dict()[k]) for k, v in body.items())  # the temporal model stays
    torch.set_rng_state(rng)
    new_critic = type(d)(d.config).state_dict()  # what a fresh critic is, from the same RNG state
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in new_critic.items())
    assert not all(torch.equal(v, d.state_dict()[k]) for k, v in critic_before.items())
    assert torch.equal(g.class_embedding.weight, embedding_before)  # only the parts asked for
    restart_on_target(g, d, ["class"], tgt.numpy(), 0.5)
    assert not torch.equal(g.class_embedding.weight, embedding_before)
    assert all(torch.equal(v, g.transformer.state_dict()[k]) for k, v in body.items())
    assert torch.isfinite(d(tgt[:4], torch.tensor([0, 1, 0, 1]))).all()


def test_auto_reinit_restarts_only_for_other_subjects():
    from trainers.finetune import resolve_reinit

    run = {"split": "run", "subjects": [1, 2, 3]}
    assert resolve_reinit("auto", run, {"split": "run", "subjects": [3, 2, 1]}) == []
    assert resolve_reinit("auto", run, {"split": "run", "subjects": [9]}) == ["critic", "output", "class"]
    assert resolve_reinit("auto", {"split": "subject", "train_subjects": [1, 2], "test_subjects": [3]},
                          {"split": "run", "subjects": [1, 2]}) == []
    assert resolve_reinit("auto", {}, run) == ["critic", "output", "class"]  # unknown source: restart
    assert resolve_reinit(["critic"], run, run) == ["critic"] and resolve_reinit(None, run, {}) == []


def test_fine_tuning_on_another_subject_restarts_and_resumes_exactly(assets, tmp_path, monkeypatch):
    """auto on a GAN pretrained on subject 1, fine-tuned on subject 2: critic, output stages and class
    embedding restarted, recorded, and a resumed run still ends bit-identical to a straight one."""
    import torch
    from safetensors.torch import load_file

    _, _, runs = assets
    args = ["model_name=gpt2xcnn", f"pretrained_finetune_path={runs['gan']}",
            f"pretrained_classifier_path={runs['shallow']}", "data.subjects=[2]"]
    for sub in ("a", "c"):
        (tmp_path / sub).mkdir()
    assert finetune(assets, tmp_path / "a", monkeypatch, *args, "epochs=2") == 0
    a = tmp_path / "a" / "checkpoints" / "gpt2xcnn" / "latest"
    assert json.loads((a / "gan.json").read_text())["finetune_reinit"] == ["critic", "output", "class"]
    assert finetune(assets, tmp_path / "c", monkeypatch, *args, "epochs=1") == 0
    c = (tmp_path / "c" / "checkpoints" / "gpt2xcnn" / "latest").resolve()
    (c / "round_summary.json").unlink()  # as if the run had stopped after its epoch-1 checkpoint
    assert main.main(["--mode", "training", "--resume", str(c), "--set", "epochs=2"]) == 0
    for name in ("generator", "critic"):
        wa, wc = load_file(str(a / f"{name}.safetensors")), load_file(str(c / f"{name}.safetensors"))
        assert all(torch.equal(wa[k], wc[k]) for k in wa), name


def test_subject_conditioned_fine_tuning_conditions_on_the_target_subjects():
    import torch

    from config.schema import apply_overrides, validate
    from trainers.finetune import condition_on_subjects

    cfg = validate(apply_overrides({}, GAN + ["gan.subject_condition=true", "data.l_freq=null", "data.h_freq=null"]))
    torch.manual_seed(0)
    g, d = gan.build_models(cfg, 5, 64, 160.0, subjects=[1, 1, 2, 3])
    assert g.config.subjects == [1, 2, 3] and d.config.subject_count == 3
    kept = g.subject_embedding.weight.detach().clone()
    assert condition_on_subjects(g, d, [3, 2, 1]) is False  # same subjects: the embedding stays
    assert torch.equal(g.subject_embedding.weight, kept)
    with torch.no_grad():
        g.subject_mixing[2] *= 2.0  # as after gan.calibrate_subject
        g.subject_calibration[1] *= 1.5
    mix, crit = g.subject_mixing.clone(), d.subject_embedding.weight.detach().clone()
    spec = g.subject_calibration.clone()
    # Subjects 2 and 3 were in the pretrained pool: their rows carry over; subject 9 is new.
    assert condition_on_subjects(g, d, [3, 9, 2]) is True
    assert g.config.subjects == [2, 3, 9]
    assert torch.equal(g.subject_embedding.weight[:2], kept[1:]) and torch.equal(g.subject_mixing[:2], mix[1:])
    assert torch.equal(d.subject_embedding.weight[:2], crit[1:]) and torch.equal(g.subject_calibration[:2], spec[1:])
    assert torch.equal(g.subject_calibration[2], torch.ones_like(spec[0]))
    assert not torch.equal(g.subject_embedding.weight[2], kept[0]) and torch.equal(g.subject_mixing[2], torch.eye(5))
    assert condition_on_subjects(g, d, [9]) is True  # a new subject: fresh embeddings for it alone
    assert g.config.subjects == [9] and g.subject_embedding.weight.shape[0] == 1
    assert d.subject_embedding.weight.shape[0] == 1
    z, y = g.sample_noise(2), torch.tensor([0, 1])
    assert torch.isfinite(d(g(z, y, torch.zeros(2, dtype=torch.long)), y, torch.zeros(2, dtype=torch.long))).all()
    assert condition_on_subjects(g, d, None) is True and g.config.subjects is None  # config off: class only
    assert torch.isfinite(g(z, y)).all()


def test_classifier_target_stops_pushing_at_the_asked_probability():
    """finetune.cls_target: below 1 the frozen-classifier loss is lowest where the classifier gives the
    right class that probability, so generated trials are not pushed to be decoded with certainty; at 1
    (the plain cross-entropy) more certainty always lowers it."""
    import torch

    from data.dataset import Standardizer
    from trainers.finetune import classifier_loss

    unit = Standardizer(np.zeros(2, np.float32), np.ones(2, np.float32))

    def classifier(x):  # right-minus-left logit = the trial's mean value
        return torch.stack([torch.zeros(len(x)), x.mean((1, 2))], 1)

    margins = torch.linspace(0.0, 6.0, 61)
    y = torch.ones(len(margins), dtype=torch.long)
    x = margins[:, None, None].expand(-1, 2, 8)

    def per_trial(target):
        loss = classifier_loss(classifier, unit, unit, 1.0, "cpu", target)
        return torch.stack([loss(x[i:i + 1], y[i:i + 1])[0] for i in range(len(y))])

    best = margins[per_trial(0.75).argmin()].item()
    assert abs(torch.sigmoid(torch.tensor(best)).item() - 0.75) < 0.02
    plain = per_trial(1.0)
    assert bool((plain[1:] < plain[:-1]).all())


def test_classifier_noise_takes_away_the_reward_for_a_perturbation_too_small_to_survive_it():
    """finetune.cls_noise: the classifier scores trials with noise of that many real-data standard
    deviations added, so a perturbation far smaller than the noise no longer lowers the loss, while a
    class feature larger than it still does; without noise the loss is deterministic."""
    import torch

    from data.dataset import Standardizer
    from trainers.finetune import classifier_loss

    unit = Standardizer(np.zeros(2, np.float32), np.ones(2, np.float32))

    def classifier(x):  # a sharp detector of one sample: what an over-fitted classifier can key on
        return torch.stack([torch.zeros(len(x)), 5 * torch.tanh(50 * x[:, 0, 0])], 1)

    y = torch.ones(400, dtype=torch.long)
    tiny, large = torch.zeros(400, 2, 8), torch.zeros(400, 2, 8)
    tiny[:, 0, 0], large[:, 0, 0] = 0.05, 2.0
    plain = classifier_loss(classifier, unit, unit, 1.0, "cpu", noise=0.0)
    noisy = classifier_loss(classifier, unit, unit, 1.0, "cpu", noise=1.0)
    torch.manual_seed(0)
    assert plain(tiny, y)[0].item() < 0.05
    assert plain(tiny, y)[0].item() == plain(tiny, y)[0].item()
    assert noisy(tiny, y)[0].item() > 0.5
    assert noisy(large, y)[0].item() < 0.2
