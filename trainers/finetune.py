"""gpt2xcnn / gpt2scnn: fine-tune a pretrained GPT-2 GAN on the target data through a frozen classifier.

The generator and critic come from `pretrained_finetune_path` (a gpt2cgan run folder or
`checkpoints/gpt2cgan/latest`); the classifier from `pretrained_classifier_path` (a classifier
run). gpt2xcnn needs a temporal CNN (eegnet or shallow), gpt2scnn the C3/Cz/C4 spectrogram CNN
(stft). Training runs the gpt2cgan loop (WGAN-GP + moment/spectrum terms) on the target data
(`data` section), with the generator loss

    finetune.adv_weight * adversarial + moment/psd terms + finetune.cls_weight * CE(classifier(G(z, y)), y)

so generated trials stay realistic and decode as their class. `fine_tune = false` trains the same
objective from freshly initialised networks (the ablation); `finetune.reinit` restarts the parts of
the pretrained GAN that describe the source data (see `restart_on_target`). The classifier has its own
Standardizer: generated trials are mapped generator units -> volts -> classifier units.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.dataset import Standardizer, load_splits
from trainers.gan import build_models, finish_run, fit_gan  # noqa: F401  (finish_run: run-level report)
from utils import distributed as dist
from utils.errors import UserError
from utils.runtime import seed_everything

CLASSIFIER_KINDS = {"gpt2xcnn": ("eegnet", "shallow"), "gpt2scnn": ("stft",)}


def check_matches(what: str, meta: dict, train, representation: str) -> None:
    """A checkpoint must have been trained on trials shaped like the configured target data."""
    if list(meta["ch_names"]) != list(train.ch_names):
        theirs, ours = list(meta["ch_names"]), list(train.ch_names)
        diff = sorted(set(theirs) ^ set(ours))[:5] or ["(same names, other order)"]
        raise UserError(f"{what}: trained on {len(theirs)} channels, the configured data has {len(ours)} "
                        f"(differing: {', '.join(diff)}); match data.channels")
    if int(meta["n_times"]) != train.n_times:
        raise UserError(f"{what}: trained on {meta['n_times']}-sample trials, the configured data gives "
                        f"{train.n_times}; match data.tmin/data.tmax/data.resample")
    if abs(float(meta["sfreq"]) - float(train.sfreq)) > 1e-6:
        raise UserError(f"{what}: trained at {meta['sfreq']} Hz, the configured data is at {train.sfreq} Hz; "
                        "match data.resample")
    if meta.get("representation", "sensor") != representation:
        raise UserError(f"{what}: trained on representation {meta.get('representation')!r}, the config asks "
                        f"for {representation!r}")


REINIT_PARTS = ("critic", "output", "class")


def training_subjects(info: dict) -> list | None:
    """The subjects whose trials a run trained on, from its data info (gan.json "data")."""
    subjects = info.get("train_subjects") if info.get("split") == "subject" else info.get("subjects")
    return sorted(subjects) if subjects is not None else None


def resolve_reinit(setting, pretrained_info: dict, target_info: dict) -> list[str]:
    """`finetune.reinit` as parts to restart. "auto": restart the critic, the output stages and the class
    embedding when the pretrained GAN was trained on other subjects than the target (or its subjects are
    unknown), keep everything when only the task differs. Measured (bench/RESULTS.md, "Transfer, session 4"): on a
    new subject the kept parts cost class structure; on the same subjects, restarting bought nothing."""
    if setting == "auto":
        source, target = training_subjects(pretrained_info), training_subjects(target_info)
        return [] if source is not None and source == target else list(REINIT_PARTS)
    return list(setting or [])


def restart_on_target(generator, critic, parts, X_target_std: np.ndarray, gain_spread: float) -> None:
    """Restart the parts of a pretrained GAN that describe the source data rather than EEG in general
    (`finetune.reinit`), before fine-tuning on the target trials X_target_std (generator units).

    "critic": a fresh critic of the same architecture. The pretrained one has learned to tell the
    source's real trials from generated ones; on another subject its first, large gradients pull the
    generator back towards the source. "output": the generator's data-dependent output stages
    (spatial mixing, per-trial gain, subject covariance and spectral calibration) re-initialised from the target trials, as
    a fresh generator's are. "class": a fresh class embedding; the pretrained one encodes the source
    subjects' left/right difference, which is not the target's, and the target's has to be learned
    from its own trials either way. GPT-2 and the head (the temporal model) are always kept.
    """
    parts = set(parts or ())
    with torch.no_grad():
        if "output" in parts:
            generator.init_from_data(torch.as_tensor(X_target_std), gain_spread)
            generator.calibration.fill_(1.0)
            generator.subject_mixing.copy_(torch.eye(generator.config.n_chans).expand_as(generator.subject_mixing))
            generator.subject_calibration.fill_(1.0)
        if "class" in parts:
            generator.class_embedding.reset_parameters()
            if hasattr(generator, "class_gain"):
                generator.class_gain.zero_()
        if "critic" in parts:
            critic.load_state_dict(type(critic)(critic.config).state_dict())


def _subject_rows(generator, critic) -> list[torch.Tensor]:
    """The tensors that hold a row per conditioned subject, in a fixed order."""
    return [generator.subject_mixing, generator.subject_calibration] + [
        net.subject_embedding.weight for net in (generator, critic) if hasattr(net, "subject_embedding")]


def condition_on_subjects(generator, critic, subjects) -> bool:
    """Make pretrained networks conditioned on the target's training subjects (`subjects`, or None when
    gan.subject_condition is off). Subject embeddings of other subjects describe nobody in the target
    data, so they are replaced by fresh ones; a subject the pretrained GAN was also conditioned on (a pool
    that holds the target's subjects, e.g. ten subjects -> five of them) keeps its rows: its generator and
    critic embedding, its spatial mixing and its spectrum calibration. True if anything was replaced."""
    subjects = None if subjects is None else sorted({int(s) for s in subjects})
    if generator.config.subjects == subjects and critic.config.subject_count == len(subjects or ()):
        return False
    old = list(generator.config.subjects or ())
    before = [t.detach().clone() for t in _subject_rows(generator, critic)]
    generator.set_subjects(subjects)
    critic.set_subject_count(len(subjects or ()))
    shared = [(old.index(s), i) for i, s in enumerate(subjects or ()) if s in old]
    if shared:  # both conditioned on subjects: the same tensors, now with the target's rows
        with torch.no_grad():
            for now, was in zip(_subject_rows(generator, critic), before):
                now[[i for _, i in shared]] = was[[j for j, _ in shared]]
    return True


def target_subjects(cfg: dict, train) -> list[int] | None:
    """The subjects a fine-tuned GAN is conditioned on: the target's training subjects, if asked to
    and there are several (trainers.gan.conditioned_subjects)."""
    from trainers.gan import conditioned_subjects

    return conditioned_subjects(cfg, train.subject)


def adapt_to_target(generator, critic, cfg: dict, pretrained_info: dict, target_info: dict, train,
                    standardizer: Standardizer) -> list[str]:
    """What fine-tuning does to pretrained networks before training on the target trials `train`: the
    `finetune.reinit` restarts, then subject embeddings for the target's subjects. Returns the parts
    restarted (recorded as `finetune_reinit`)."""
    reinit = resolve_reinit(cfg["finetune"]["reinit"], pretrained_info, target_info)
    generator.set_class_effect(cfg["gan"]["class_effect"])
    generator.set_token_gain(cfg["gan"]["token_gain"])
    critic.set_batch_std(cfg["gan"]["critic_batch_std"])
    restart_on_target(generator, critic, reinit, standardizer.transform(train.X), cfg["gan"]["gain_spread"])
    condition_on_subjects(generator, critic, target_subjects(cfg, train))
    return reinit


def frozen_classifier_meta(cfg: dict) -> dict:
    """The metadata of the classifier at `pretrained_classifier_path` (no weights read), checked to be of the
    kind this trainer needs: called before any data is loaded, so a wrong path or kind fails at once."""
    from trainers.classifier import classifier_meta

    path = cfg["pretrained_classifier_path"]
    meta = classifier_meta(path)
    kinds = CLASSIFIER_KINDS[cfg["model_name"]]
    if meta["architecture"] not in kinds:
        raise UserError(f"config key 'pretrained_classifier_path': {cfg['model_name']} needs a "
                        f"{' or '.join(kinds)} classifier, {path} is {meta['architecture']!r}")
    return meta


def load_frozen_classifier(cfg: dict, device, meta: dict, subjects: list[int] | None = None):
    """The frozen classifier (meta: `frozen_classifier_meta`), as `finetune.classifier_rounds` asks. One trained
    with `classifier.alignment` whitens each trial by its subject's real training trials, which needs the
    subject of every generated trial: `subjects` are the generator's (trials give their index into it)."""
    from trainers.classifier import load_classifier

    if meta.get("alignment", "none") != "none" and subjects is None:
        raise UserError(f"config key 'pretrained_classifier_path': the classifier was trained with "
                        f"classifier.alignment={meta['alignment']!r}, which whitens each subject's trials; only a "
                        "subject-conditioned generator's trials have a subject (gan.subject_condition true, and "
                        "several target subjects)")
    return load_classifier(cfg["pretrained_classifier_path"], device,
                           all_rounds=cfg["finetune"]["classifier_rounds"] == "all", subjects=subjects)


def classifier_loss(classifier, gen_std: Standardizer, cls_std: Standardizer, weight: float, device,
                    target: float = 1.0, noise: float = 0.0):
    """Frozen-classifier cross-entropy on generated trials, as a generator-loss term. `target`
    (finetune.cls_target) is the soft label of the right class: the loss is lowest where the
    classifier gives it that probability, so trials are not pushed beyond it. `noise`
    (finetune.cls_noise) adds Gaussian noise of that many real-data standard deviations per channel to
    the trials the classifier sees: the generator then follows the gradient of the classifier
    smoothed over a neighbourhood, not its exact one, which on a classifier that fits its few
    training trials perfectly points along their idiosyncrasies. The loss takes the trials' subject
    indices too, which a classifier trained with alignment needs (a ClassifierEnsemble that whitens)."""
    # generator units -> volts -> classifier units, folded into one per-channel affine map.
    scale = torch.from_numpy(gen_std.std / cls_std.std).float().to(device)[:, None]
    shift = torch.from_numpy((gen_std.mean - cls_std.mean) / cls_std.std).float().to(device)[:, None]
    whitens = bool(getattr(classifier, "aligned", False))

    def loss(fake: torch.Tensor, y: torch.Tensor, subject: torch.Tensor | None = None):
        x = fake * scale + shift
        if noise > 0:
            x = x + noise * torch.randn_like(x)
        logits = classifier(x, subject) if whitens else classifier(x)
        # Label smoothing eps over K classes puts 1 - eps + eps / K on the right one.
        k = logits.shape[1]
        ce = F.cross_entropy(logits, y, label_smoothing=(1 - target) * k / (k - 1))
        acc = (logits.argmax(1) == y).float().mean()
        return weight * ce, {"classifier_loss": ce.item(), "classifier_accuracy": acc.item()}

    return loss


def train_round(cfg: dict, round_dir: Path, device: torch.device, seed: int, resume: bool = False) -> dict:
    from trainers.generate import load_generator

    seed_everything(seed)
    cmeta = frozen_classifier_meta(cfg)
    splits = load_splits(cfg, seed=seed, progress=dist.is_main()).pooled()  # nothing is selected on validation
    train = splits.train
    # The generator is conditioned on the target's training subjects (adapt_to_target, build_models).
    classifier, cmeta = load_frozen_classifier(cfg, device, cmeta, target_subjects(cfg, train))
    bundle = load_generator(cfg["pretrained_finetune_path"], device, with_critic=True) if cfg["fine_tune"] else None
    reinit = None
    check_matches(f"classifier {cfg['pretrained_classifier_path']}", cmeta, train, cfg["representation"])
    if bundle is not None:
        check_matches(f"pretrained GAN {cfg['pretrained_finetune_path']}", bundle.meta, train, cfg["representation"])
        # Keep the pretrained networks' architecture and output units (its Standardizer).
        generator, critic, standardizer = bundle.generator, bundle.critic, bundle.standardizer
        generator.train().requires_grad_(True)
        critic.train().requires_grad_(True)
        reinit = adapt_to_target(generator, critic, cfg, bundle.meta.get("data", {}), splits.info, train, standardizer)
    else:
        standardizer = Standardizer.fit(train.X, cfg["data"]["normalize"])
        generator, critic = build_models(cfg, train.n_chans, train.n_times, train.sfreq,
                                         X_init=standardizer.transform(train.X), subjects=train.subject)
    extra = classifier_loss(classifier, standardizer, cmeta["standardizer"], cfg["finetune"]["cls_weight"], device,
                            cfg["finetune"]["cls_target"], cfg["finetune"]["cls_noise"])
    meta_extra = {"fine_tune": cfg["fine_tune"], "data": splits.info,
                  "pretrained_from": str(bundle.folder) if bundle is not None else None,
                  "classifier_from": str(cfg["pretrained_classifier_path"]),
                  "classifier_architecture": cmeta["architecture"],
                  "classifier_members": cmeta.get("ensemble", 1),
                  "finetune_reinit": reinit}
    summary = fit_gan(cfg, round_dir, device, seed, resume, splits, standardizer, generator, critic,
                      extra_loss=extra, meta_extra=meta_extra, adv_weight=cfg["finetune"]["adv_weight"])
    if dist.is_main():
        summary.update(_classifier_on_generated(classifier, splits, standardizer, cmeta["standardizer"],
                                                generator, seed, device))
    return summary


def _classifier_on_generated(classifier, splits, gen_std, cls_std, generator, seed, device) -> dict:
    """Frozen classifier's accuracy on fresh generated trials vs on the real test trials. A classifier that
    whitens per subject reads only the test trials of subjects the generator is conditioned on."""
    from trainers.gan import generate

    n = max(int(np.bincount(splits.test.y, minlength=2).max()), 2)
    fake, y, subj = generate(generator, n, seed + 2, device, return_subjects=True)
    test = splits.test
    keep = np.ones(len(test.y), bool)
    gen_subject = real_subject = None
    if getattr(classifier, "aligned", False):
        gen = dist.unwrap(generator)
        gen_subject = gen.subject_index(subj.tolist()).to(device)
        keep = np.isin(test.subject, gen.config.subjects)
        real_subject = gen.subject_index(test.subject[keep].tolist()).to(device)

    def accuracy(volts: np.ndarray, labels: torch.Tensor, subject) -> float | None:
        if len(labels) == 0:
            return None
        x = torch.from_numpy(cls_std.transform(volts)).to(device)
        logits = classifier(x, subject) if subject is not None else classifier(x)
        return (logits.argmax(1).cpu() == labels).float().mean().item()

    with torch.no_grad():
        acc_gen = accuracy(gen_std.inverse(fake.numpy()), y, gen_subject)
        acc_real = accuracy(test.X[keep], torch.from_numpy(test.y[keep]), real_subject)
    return {"classifier_accuracy_generated": acc_gen, "classifier_accuracy_real_test": acc_real}
