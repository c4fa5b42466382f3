"""Typed schema for `config/config.json`: defaults, validation, `--set` overrides.

Every key of the original project's table stays at the top level; what the pipeline added is
grouped in sections (`data`, `classifier`, `gan`, `finetune`, `source`, `evaluation`,
`training`). `load_config` returns a plain nested dict with every default filled in, or raises
`UserError` with one line naming the key and what is wrong.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from utils.errors import UserError

MODEL_NAMES = ("classifier", "gpt2cgan", "gpt2xcnn", "gpt2scnn")
# transformers.activations.ACT2FN keys that make sense inside a GPT-2 MLP.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "relu",
               "silu", "swish", "tanh", "mish")
# Original spellings kept working: key -> canonical key.
ALIASES = {"epoches": "epochs"}


@dataclass
class Spec:
    """One config key: accepted types, default, optional range/choices and a help line."""

    types: tuple
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    item: "Spec | None" = None          # for lists: spec of each element
    check: Callable[[Any], str | None] | None = None  # extra rule, returns an error or None
    extra: dict = field(default_factory=dict)


def _int(default, help, lo=None, hi=None, nullable=False):
    return Spec((int,), default, help, lo=lo, hi=hi, nullable=nullable)


def _float(default, help, lo=None, hi=None, nullable=False):
    return Spec((float, int), default, help, lo=lo, hi=hi, nullable=nullable)


def _bool(default, help):
    return Spec((bool,), default, help)


def _str(default, help, choices=None, nullable=False):
    return Spec((str,), default, help, choices=choices, nullable=nullable)


def _int_list(default, help, lo=None, hi=None, nullable=True):
    return Spec((list,), default, help, nullable=nullable, item=_int(None, "", lo=lo, hi=hi))


def _channels_check(v):
    if isinstance(v, str):
        return None if v in ("motor", "all") else "must be 'motor', 'all' or a list of channel names"
    if not v or not all(isinstance(c, str) and c for c in v):
        return "must be 'motor', 'all' or a non-empty list of channel names"
    if len(set(v)) != len(v):
        return "lists a channel twice"
    return None


def _reinit_check(v):
    if isinstance(v, str):
        return None if v == "auto" else "must be 'auto', a list of 'critic' / 'output' / 'class', or null"
    bad = [p for p in v if p not in ("critic", "output", "class")]
    if not v or bad:
        return f"lists {json.dumps(bad[0]) if bad else 'nothing'}; the parts are 'critic', 'output' and 'class'"
    return None


SCHEMA: dict[str, Any] = {
    # --- the original project's keys -------------------------------------------------------
    "gpu": _bool(False, "use CUDA when available; if asked for but absent, warn once and run on CPU"),
    "gpu_id": _int(0, "CUDA device index used when gpu is true", lo=0),
    "parallel": _bool(False, "multi-process DistributedDataParallel training; launch with torchrun"),
    "subject_count": _int(10, "use the first N subjects when data.subjects is null", lo=1, hi=109),
    "data_path": _str("data/eegmmidb", "folder holding SXXX/SXXXRYY.edf (PhysioNet layout)"),
    "model_name": _str("classifier", "which trainer runs", choices=MODEL_NAMES),
    "buffer_size": _int(10000, "shuffle buffer of the training loader, in trials", lo=1),
    "batch_size": _int(32, "trials per optimisation step (global, across processes)", lo=1),
    "epochs": _int(60, "passes over the training data (alias: epoches)", lo=1),
    "rounds": _int(1, "repeat the whole training with seeds seed, seed+1, ...", lo=1),
    "learning_rate": _float(1e-3, "Adam learning rate (GAN: default for both networks)", lo=0, hi=10),
    "random_vector_num": _int(8, "fixed noise vectors used to monitor GAN progress", lo=1),
    "example_to_generate": _int(3, "generated trials per class drawn in GAN figures", lo=1, hi=64),
    "condition_size": _int(16, "dimension of the learned class embedding fed to the generator", lo=1),
    "class_count": _int(2, "number of classes (left/right fist: 2)", lo=2, hi=2),
    "noise_variance": _float(1.0, "variance of the generator's Gaussian input noise", lo=0),
    "fine_tune": _bool(True, "gpt2xcnn/gpt2scnn: start from the pretrained GAN (false: from scratch)"),
    "pretrained_finetune_path": _str("checkpoints/gpt2cgan/latest",
                                     "GAN run folder to fine-tune from"),
    "pretrained_classifier_path": _str("checkpoints/classifier/latest",
                                       "classifier run folder used (frozen) while fine-tuning"),
    "vocab_size": _int(1, "GPT-2 vocab size; inert: inputs are continuous via inputs_embeds", lo=1),
    "n_positions": _int(64, "GPT-2 maximum tokens (must be >= tokens per trial)", lo=1),
    "n_ctx": _int(64, "GPT-2 context length (old name of n_positions; must equal it)", lo=1),
    "n_embd": _int(128, "GPT-2 hidden size", lo=8),
    "n_layer": _int(4, "GPT-2 transformer blocks", lo=1, hi=48),
    "n_head": _int(4, "GPT-2 attention heads (must divide n_embd)", lo=1),
    "n_inner": _int(None, "GPT-2 MLP size (null: 4 * n_embd)", lo=1, nullable=True),
    "activation_function": _str("gelu_pytorch_tanh", "GPT-2 MLP activation", choices=ACTIVATIONS),
    "resid_pdrop": _float(0.0, "GPT-2 residual dropout", lo=0, hi=1),
    "embd_pdrop": _float(0.0, "GPT-2 embedding dropout", lo=0, hi=1),
    "attn_pdrop": _float(0.0, "GPT-2 attention dropout", lo=0, hi=1),
    "layer_norm_epsilon": _float(1e-5, "GPT-2 layer-norm epsilon", lo=0, hi=1),
    "initializer_range": _float(0.02, "GPT-2 weight init std", lo=0, hi=10),
    # --- added by this project --------------------------------------------------------------
    "seed": _int(42, "seed for python, numpy and torch; a CPU run repeats exactly", lo=0),
    "output_dir": _str("checkpoints", "where run folders are written"),
    "cache_dir": _str(".cache", "preprocessed-epoch and operator cache"),
    "representation": _str("sensor", "what the networks see: scalp EEG or motor-area sources",
                           choices=("sensor", "source")),
    "data": {
        "subjects": _int_list(None, "explicit subject numbers (null: first subject_count)", lo=1, hi=109),
        "task": _str("imagery", "imagery = runs 4/8/12, execution = runs 3/7/11, both",
                     choices=("imagery", "execution", "both")),
        "runs": _int_list(None, "explicit run numbers (overrides task)", lo=1, hi=14),
        "split": _str("run", "hold out by run or by subject", choices=("run", "subject")),
        "train_runs": _int_list(None, "split=run: training runs (null: all but the last run)", lo=1, hi=14),
        "test_runs": _int_list(None, "split=run: test runs (null: the last run)", lo=1, hi=14),
        "train_subjects": _int_list(None, "split=subject: training subjects (null: all but the test ones)",
                                    lo=1, hi=109),
        "test_subjects": _int_list(None, "split=subject: test subjects (null: the last 20%, at least 1)",
                                   lo=1, hi=109),
        "val_fraction": _float(0.2, "share of training trials held out for validation", lo=0, hi=0.5),
        "tmin": _float(0.0, "epoch start relative to the T1/T2 cue, s", lo=-2, hi=10),
        "tmax": _float(4.0, "epoch end relative to the cue, s (exclusive)", lo=-2, hi=10),
        "l_freq": _float(4.0, "band-pass low edge, Hz (null: no high-pass)", lo=0, nullable=True),
        "h_freq": _float(40.0, "band-pass high edge, Hz (null: no low-pass)", lo=0, nullable=True),
        "resample": _float(None, "resample to this rate, Hz (null: keep 160 Hz; odd-rate recordings follow the common rate)", lo=1, nullable=True),
        "channels": Spec((str, list), "motor", "'motor' (21 FC/C/CP channels), 'all' (64) or names",
                         check=_channels_check),
        "download": _bool(True, "fetch missing EEGBCI files with MNE's fetcher when online"),
        "normalize": _str("channel", "z-score per channel with training statistics, or none",
                          choices=("channel", "none")),
    },
    "pretrain_data": {
        "task": _str(None, "gpt2cgan source task (null: same as data.task)",
                     choices=("imagery", "execution", "both"), nullable=True),
        "subjects": _int_list(None, "gpt2cgan source subjects (null: same as data)", lo=1, hi=109),
        "runs": _int_list(None, "gpt2cgan source runs (null: from task)", lo=1, hi=14),
    },
    "training": {
        "checkpoint_every": _int(1, "write a resumable checkpoint every N epochs", lo=1),
        "num_threads": _int(None, "torch CPU threads (null: all cores)", lo=1, nullable=True),
        "bf16": _bool(False, "bf16 autocast on CUDA"),
        "tensorboard": _bool(False, "also log scalars and figures to TensorBoard (if installed)"),
    },
    "classifier": {
        "architecture": _str("shallow", "eegnet, shallow (ShallowConvNet) or stft (C3/Cz/C4 spectrogram CNN)",
                             choices=("eegnet", "shallow", "stft")),
        "dropout": _float(0.25, "dropout before the classification layer", lo=0, hi=1),
        "weight_decay": _float(0.0, "AdamW weight decay", lo=0),
        "schedule": _str("cosine", "learning-rate schedule: warm-up then cosine decay to 0, or constant",
                         choices=("cosine", "constant")),
        "warmup_epochs": _int(0, "cosine schedule: epochs of linear warm-up", lo=0),
        "patience": _int(None, "stop after this many epochs without a better validation score (null: never)",
                         lo=1, nullable=True),
        "select": _str("last", "weights kept: the last epoch's, or the epoch with the best validation "
                       "accuracy or loss", choices=("last", "val_accuracy", "val_loss")),
        "label_smoothing": _float(0.0, "label smoothing of the cross-entropy loss", lo=0, hi=0.5),
        "augment_shift_s": _float(0.0, "training augmentation: random circular time shift up to +-this, s",
                                  lo=0, hi=10),
        "augment_scale": _float(0.0, "training augmentation: amplitude scaled by 1 + this * N(0, 1)", lo=0, hi=1),
        "augment_noise": _float(0.0, "training augmentation: white Gaussian noise of this many standard deviations "
                                "per channel added to every sample", lo=0, hi=10),
        "alignment": _str("none", "euclidean: whiten each subject by its training trials' mean covariance",
                          choices=("none", "euclidean")),
    },
    "gan": {
        "patch_size": _int(16, "time samples per GPT-2 token (tokens = n_times / patch_size)", lo=1),
        "critic_steps": _int(1, "critic updates per generator update", lo=1),
        "gp_weight": _float(10.0, "gradient-penalty weight", lo=0),
        "lr_generator": _float(None, "generator learning rate (null: learning_rate)", lo=0, nullable=True),
        "lr_critic": _float(None, "critic learning rate (null: learning_rate)", lo=0, nullable=True),
        "beta1": _float(0.5, "Adam beta1 for both networks", lo=0, hi=1),
        "beta2": _float(0.9, "Adam beta2 for both networks", lo=0, hi=1),
        "schedule": _str("linear", "learning-rate schedule of both networks: constant, or linear decay to 10% "
                         "at the last epoch", choices=("constant", "linear")),
        "critic_width": _int(32, "channels of the critic's first conv layer", lo=1),
        "figure_every": _int(5, "render monitoring figures every N epochs", lo=1),
        "spectral_critic": _bool(True, "critic also sees learned-spatial-filter log band power (4-40 Hz, 2 Hz bins)"),
        "critic_batch_std": _bool(False, "critic also scores how much its features vary within the batch, per class "
                                  "(a minibatch standard deviation per feature), so a generator whose trials vary "
                                  "too little is told apart"),
        "adv_weight": _float(0.02, "weight of the WGAN adversarial term in the generator loss", lo=0),
        "moment_weight": _float(1.0, "class-conditional matching of per-channel log band power (mean, std) and "
                                "band-passed spatial covariance, generated vs real", lo=0),
        "psd_weight": _float(1.0, "class-conditional matching of the log class-mean power spectrum per channel",
                             lo=0),
        "contrast_weight": _float(1.0, "matching of the right-minus-left difference of log band power and whitened "
                                  "band covariance (self-normalised: 1 = no class difference)", lo=0),
        "contrast_ema": _float(0.9, "decay of the moving average of generated class statistics that the contrast "
                               "term is evaluated at (0: batch statistics only)", lo=0, hi=0.999),
        "shrink_contrast": _bool(False, "shrink each element of the real right-minus-left difference (log band "
                                 "power, band covariance, log spectrum) towards 0 by its sampling noise before "
                                 "the generator matches it: max(0, 1 - noise / d^2) of it is kept"),
        "class_bands": Spec((list,), None, "bands (theta, mu, beta, gamma) whose real left/right difference the "
                            "generator's class targets and class calibration keep; in the others both classes get "
                            "the class-averaged statistic (null: all four)", nullable=True,
                            item=_str(None, "", choices=("theta", "mu", "beta", "gamma")),
                            check=lambda v: "names a band twice" if v is not None and len(set(v)) != len(v) else None),
        "subject_shrinkage": _str("global", "how each subject's own left/right difference in the per-subject "
                                  "targets is shrunk towards the pooled one (James-Stein): global (one factor per "
                                  "subject from its log band power) or band (one per band and statistic, log band "
                                  "power and whitened covariance each against its own sampling noise) or none "
                                  "(each subject keeps its own)", choices=("global", "band", "none")),
        "subject_contrast_weight": _float(0.0, "matching of each subject's own right-minus-left difference of log "
                                          "band power and whitened band covariance (its per-subject targets, after "
                                          "gan.subject_shrinkage), self-normalised per subject like the contrast "
                                          "term (0: off)", lo=0),
        "class_covariance": _str("full", "what the generator's class-conditional covariance targets (per class, "
                                 "and per subject and class) keep of the real left/right difference: full (the "
                                 "band covariances as measured) or power (band power only: both classes get the "
                                 "class-averaged channel correlations)", choices=("full", "power")),
        "generator_ema": _float(0.0, "decay of an exponential moving average of the generator's weights, "
                                "updated after every generator step; the averaged weights are what the run "
                                "saves and samples from (0: the last weights)", lo=0, hi=0.9999),
        "envelope_weight": _float(1.0, "class-conditional matching of the time course of theta, mu and beta power "
                                  "within the trial (0.5 s windows, log, relative to its trial mean): the ERD/ERS "
                                  "curve", lo=0),
        "csp_envelope_weight": _float(0.0, "class-conditional matching of the time course of power of the real "
                                      "training trials' CSP components (6 per theta/mu/beta band, 0.5 s windows, "
                                      "log, relative to its trial mean): the envelope term seen through the "
                                      "spatial filters a decoder reads (0: off)", lo=0),
        "trial_cov_weight": _float(0.0, "matching of the trial-to-trial covariance of log band power within a "
                                   "class (channels x bands, Ledoit-Wolf target, in units of the real spread): "
                                   "the feature correlations a decoder's weights depend on", lo=0),
        "trial_cov_form": _str("kl", "how gan.trial_cov_weight compares the covariances: kl (Gaussian KL divergence "
                               "per dimension, every direction weighed by its own variance) or frobenius (squared "
                               "error, the session-7 form)", choices=("kl", "frobenius")),
        "grad_match_weight": _float(0.0, "gradient matching: a probe CNN of the evaluation's architecture, trained "
                                    "on real training trials and restarted every gan.grad_match_reset steps, should "
                                    "get the same cross-entropy gradient (per filter, by cosine) from generated "
                                    "trials as from real ones, so a decoder learns the same from both (0: off)", lo=0),
        "grad_match_batch": _int(128, "generated trials rendered for the gradient-matching term at each generator "
                                 "step (the cosine of a small batch's gradient with the real one is mostly "
                                 "sampling noise)", lo=2),
        "grad_match_ema": _float(0.0, "decay of a moving average of the generated trials' probe gradient over the "
                                 "steps since the probe's last restart; the cosine is taken of the average, not of "
                                 "one batch's noisy gradient (0: one batch)", lo=0, hi=0.999),
        "grad_match_reset": _int(20, "generator steps between restarts of the gradient-matching probe CNN (the "
                                 "length of the training run whose gradients are matched)", lo=1),
        "band_cls_weight": _float(0.0, "cross-entropy of generated trials under a logistic regression fitted on "
                                  "real training trials' log band power (per-trial class signal)", lo=0),
        "gain_spread": _float(0.5, "initial trial-to-trial spread of the generator's per-trial channel gains, as a "
                              "fraction of the real training trials' log-power std (0: gains start at 1)", lo=0),
        "paired_classes": _bool(True, "generator updates render each noise vector as both classes, so the "
                                "class difference the contrast term sees is free of the noise-driven variation "
                                "(false: the real batch's labels, as before session 5)"),
        "subject_condition": _bool(True, "condition generator and critic on the subject too (an embedding per "
                                   "training subject, per-subject band-power and covariance targets) when the "
                                   "training data holds two or more subjects; generated trials are drawn over the "
                                   "subjects in their training proportions"),
        "class_effect": _str("embedding", "where the class acts in the generator: embedding (a class embedding "
                             "fed to GPT-2 with the noise) or spectral (only a learned per-class, per-channel "
                             "gain of the theta/mu/beta/gamma bands on the output; GPT-2 sees no class) or spatial "
                             "(only a per-class gain of 2 learned spatial components per band). Fine-tuning "
                             "uses this value whatever the pretrained run used",
                             choices=("embedding", "spectral", "spatial")),
        "token_gain": _bool(False, "generator: a learned log gain per time token and channel, read from GPT-2's "
                            "output, so power can rise and fall within the trial (fine-tuning uses this value "
                            "whatever the pretrained run used; it starts at gains of 1)"),
        "calibrate": _str("class", "after training, fit a per-channel output magnitude response so the generated "
                          "class-mean power spectra equal the real training data's: per class, pooled over "
                          "classes, band (pooled, plus one factor per class, channel and theta/mu/beta/gamma band), "
                          "or none", choices=("class", "pooled", "band", "none")),
        "calibrate_subject": _str("none", "after training and gan.calibrate, fit per subject (one shared without "
                                  "subject conditioning): spectrum (a per-channel magnitude response, so each subject's "
                                  "generated mean power spectrum, both classes pooled, equals its real one), "
                                  "class_spectrum (the same per class), covariance (a spatial mixing, so each subject's "
                                  "generated mean spatial covariance equals its real one), or none",
                                  choices=("spectrum", "class_spectrum", "covariance", "none")),
    },
    "finetune": {
        "adv_weight": _float(0.02, "weight of the adversarial loss while fine-tuning (replaces gan.adv_weight)", lo=0),
        "cls_weight": _float(1.0, "weight of the frozen-classifier loss on generated trials", lo=0),
        "cls_target": _float(1.0, "probability of the right class the frozen-classifier loss asks for on each "
                             "generated trial (a soft-label cross-entropy, lowest there): 1 pushes every trial "
                             "to be decoded with certainty; below 1 the push stops at that probability", lo=0.5, hi=1.0),
        "cls_noise": _float(0.0, "standard deviation of Gaussian noise, in real-data standard deviations per "
                            "channel, added to generated trials before the frozen classifier scores them (0: none)",
                            lo=0),
        "classifier_rounds": _str("all", "which models of a pretrained_classifier_path run with several rounds "
                                  "the frozen-classifier loss reads: all (their ensemble: the mean of their "
                                  "log-probabilities) or first (round-0, as before session 25)",
                                  choices=("all", "first")),
        "reinit": Spec((str, list), "auto", "parts of the pretrained GAN restarted on the target data before "
                       "fine-tuning: critic (a fresh critic), output (the generator's spatial mixing, per-trial "
                       "gain and calibration, from the target trials), class (a fresh class embedding); auto: all "
                       "three when the pretrained GAN was trained on other subjects than the target, none when "
                       "only the task differs; null: none",
                       nullable=True, check=_reinit_check),
    },
    "source": {
        "head_model": _str("auto", "auto (fsaverage if a local copy exists, else sphere), sphere, or fsaverage "
                           "(fetched when online)", choices=("auto", "sphere", "fsaverage")),
        "spacing_mm": _float(8.0, "sphere model: distance between neighbouring dipoles on the cortical shell, mm",
                             lo=3, hi=30),
        "shell_fraction": _float(0.8, "sphere model: cortical-shell radius as a fraction of the fitted head radius",
                                 lo=0.3, hi=0.89),
        "method": _str("sLORETA", "inverse method", choices=("sLORETA", "dSPM", "MNE")),
        "snr": _float(3.0, "assumed SNR of the data; lambda2 = 1 / snr**2", lo=0.1, hi=100),
        "depth": _float(0.8, "depth-weighting exponent of the minimum-norm prior (0: none)", lo=0, hi=1),
        "noise_cov": _str("ledoit_wolf", "estimator of the noise covariance of the training rest (T0) epochs",
                          choices=("empirical", "ledoit_wolf", "shrunk", "oas")),
        "roi_channels": Spec((list,), ["FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6", "C5", "C3", "C1", "Cz",
                                       "C2", "C4", "C6", "CP5", "CP3", "CP1", "CPz", "CP2", "CP4", "CP6"],
                             "electrodes that anchor the motor ROI (default: the FC/C/CP motor strip)",
                             item=_str(None, "")),
        "roi_radius_mm": _float(10.0, "ROI = sources within this distance of an anchor (the source nearest each "
                                "roi_channels electrode), mm", lo=1, hi=200),
    },
    "evaluation": {
        "n_per_class": _int(None, "generated trials per class for train-on-synthetic (null: as many as real "
                            "training trials)", lo=1, nullable=True),
        "augment_trials": _int_list([5, 10, 20], "augmentation gain: real training trials per class", lo=1,
                                    nullable=False),
        "augment_seeds": _int(3, "augmentation gain: random draws of the real trials per setting", lo=1),
        "augment_per_class": _int(40, "augmentation gain: generated trials added per class", lo=1),
        "classifier_steps": _int(100, "Adam steps of each evaluation classifier (fixed budget, any set size)", lo=1),
        "classifier_batch": _int(32, "trials per step of the evaluation classifiers", lo=1),
        "classifier_lr": _float(0.003, "Adam learning rate of the evaluation classifiers", lo=0, hi=1),
        "architecture": _str(None, "evaluation classifier (null: classifier.architecture)",
                             choices=("eegnet", "shallow", "stft"), nullable=True),
        "fd_dims": _int(32, "Frechet distance: leading principal components of the classifier features", lo=1),
        "csp_components": _int(6, "CSP filters of the CSP+LDA decoder", lo=2),
        "reference_seeds": _int(3, "CNNs (seeds seed, seed+1, ...) trained on the real pool for the train-on-real "
                                   "reference: their accuracy, averaged per held-out trial, sets the target bar", lo=1),
        "tstr_seeds": _int(3, "CNNs (seeds one apart) trained on each generated set (and on the "
                               "phase-randomised pool) for train-on-synthetic: their accuracy, averaged per held-out "
                               "trial, is the one reported and checked against the bar", lo=1),
        "figures": _bool(True, "render the report figures"),
        "subjects": _int_list(None, "judge on these subjects only: their real trials and, from a subject-conditioned "
                              "generator, trials generated for them (null: every subject the run trained on)",
                              lo=1, hi=109),
    },
}


def defaults(schema: dict | None = None) -> dict:
    schema = SCHEMA if schema is None else schema
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def _type_name(spec: Spec) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    types = [t for t in spec.types if not (t is int and float in spec.types)]
    out = " or ".join(dict.fromkeys(names[t] for t in types))
    return out + (" or null" if spec.nullable else "")


def _check_value(key: str, value: Any, spec: Spec) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise UserError(f"config key '{key}': must not be null (expected {_type_name(spec)})")
    # bool is an int subclass in Python: never accept true for a number or 1 for a boolean.
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok:
        raise UserError(f"config key '{key}': expected {_type_name(spec)}, got {json.dumps(value)}")
    if float in spec.types and isinstance(value, int):
        value = float(value)
    if isinstance(value, float) and value != value:
        raise UserError(f"config key '{key}': NaN is not allowed")
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        raise UserError(f"config key '{key}': {value} is not a finite number")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.lo is not None and value < spec.lo:
            raise UserError(f"config key '{key}': {value} is below the minimum {spec.lo}")
        if spec.hi is not None and value > spec.hi:
            raise UserError(f"config key '{key}': {value} is above the maximum {spec.hi}")
    if spec.choices is not None and value not in spec.choices:
        raise UserError(f"config key '{key}': {json.dumps(value)} is not one of {', '.join(spec.choices)}")
    if spec.item is not None and isinstance(value, list):
        if not value:
            raise UserError(f"config key '{key}': the list is empty (use null for the default)")
        value = [_check_value(f"{key}[{i}]", v, spec.item) for i, v in enumerate(value)]
    if spec.check is not None:
        err = spec.check(value)
        if err:
            raise UserError(f"config key '{key}': {err}")
    return value


def _canonical(user: dict) -> dict:
    """Rename the original project's spellings (epoches) to the canonical keys."""
    user = dict(user)
    for alias, canon in ALIASES.items():
        if alias in user:
            if canon in user:
                raise UserError(f"config keys '{alias}' and '{canon}' are the same setting; give one")
            user[canon] = user.pop(alias)
    return user


def _merge(user: Any, schema: dict, prefix: str = "") -> dict:
    where = f"section '{prefix.rstrip('.')}'" if prefix else "file"
    if not isinstance(user, dict):
        raise UserError(f"config {where}: expected a JSON object, got {json.dumps(user)[:40]}")
    out = defaults(schema)
    for key, value in user.items():
        if key not in schema:
            raise UserError(f"config key '{prefix + key}': unknown key")
        spec = schema[key]
        out[key] = (_merge(value, spec, prefix + key + ".") if isinstance(spec, dict)
                    else _check_value(prefix + key, value, spec))
    return out


def _cross_checks(cfg: dict) -> None:
    from data.eegbci import select_subjects

    d = cfg["data"]
    only, chosen = cfg["evaluation"]["subjects"], select_subjects(cfg)
    if only is not None and set(only) - set(chosen):
        raise UserError(f"config key 'evaluation.subjects': subject(s) {sorted(set(only) - set(chosen))} "
                        f"are not among the data's subjects {chosen}")
    if d["tmax"] <= d["tmin"]:
        raise UserError(f"config key 'data.tmax': {d['tmax']} must be greater than data.tmin ({d['tmin']})")
    if d["l_freq"] is not None and d["h_freq"] is not None and d["l_freq"] >= d["h_freq"]:
        raise UserError(f"config key 'data.l_freq': {d['l_freq']} must be below data.h_freq ({d['h_freq']})")
    sfreq = d["resample"] or 160.0
    if d["h_freq"] is not None and d["h_freq"] >= sfreq / 2:
        raise UserError(f"config key 'data.h_freq': {d['h_freq']} Hz must be below Nyquist ({sfreq / 2} Hz)")
    if cfg["n_embd"] % cfg["n_head"]:
        raise UserError(f"config key 'n_head': {cfg['n_head']} does not divide n_embd ({cfg['n_embd']})")
    if cfg["n_ctx"] != cfg["n_positions"]:
        raise UserError(f"config key 'n_ctx': {cfg['n_ctx']} must equal n_positions ({cfg['n_positions']}); "
                        "n_ctx is GPT-2's old name for the same length")
    if d["split"] == "subject":
        tr, te = d["train_subjects"], d["test_subjects"]
        if tr and te and set(tr) & set(te):
            raise UserError(f"config key 'data.test_subjects': subjects {sorted(set(tr) & set(te))} "
                            "are also training subjects")
    else:
        tr, te = d["train_runs"], d["test_runs"]
        if tr and te and set(tr) & set(te):
            raise UserError(f"config key 'data.test_runs': runs {sorted(set(tr) & set(te))} are also training runs")


def validate(user: Any) -> dict:
    """Validate a parsed JSON object and return the full config with defaults filled in."""
    if not isinstance(user, dict):
        raise UserError(f"config file: expected a JSON object, got {json.dumps(user)[:40]}")
    cfg = _merge(_canonical(user), SCHEMA)
    _cross_checks(cfg)
    return cfg


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {item!r}: empty key")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # bare strings: --set model_name=gpt2cgan
    return key.split("."), value


def apply_overrides(user: Any, overrides: list[str]) -> Any:
    """Apply `--set a.b=VALUE` overrides to the raw user dict (validated afterwards)."""
    if not overrides:
        return user
    if not isinstance(user, dict):
        raise UserError(f"config file: expected a JSON object, got {json.dumps(user)[:40]}")
    user = _canonical(copy.deepcopy(user))
    for item in overrides:
        path, value = _parse_override(item)
        if len(path) == 1:
            path[0] = ALIASES.get(path[0], path[0])
        node, schema = user, SCHEMA
        for i, part in enumerate(path):
            if part not in schema:
                raise UserError(f"--set {item!r}: unknown key '{'.'.join(path[:i + 1])}'")
            last = i == len(path) - 1
            if last == isinstance(schema[part], dict):
                kind = "a section; set one of its keys" if last else "not a section"
                raise UserError(f"--set {item!r}: '{'.'.join(path[:i + 1])}' is {kind}")
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UserError(f"--set {item!r}: config section '{part}' is not a JSON object")
                schema = schema[part]
    return user


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path}: cannot be read ({e.__class__.__name__})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"config file {path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def load_config(path: str | Path = "config/config.json", overrides: list[str] | None = None) -> dict:
    return validate(apply_overrides(read_json(path), overrides or []))


def reference_rows(schema: dict | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) rows, for the README's config reference."""
    rows = []
    for k, v in (SCHEMA if schema is None else schema).items():
        if isinstance(v, dict):
            rows += reference_rows(v, prefix + k + ".")
        else:
            rows.append((prefix + k, _type_name(v), json.dumps(v.default), v.help))
    return rows


def reference_markdown() -> str:
    """The config reference as a markdown table (README's config section is generated from it)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, meaning in reference_rows():
        lines.append(f"| `{key}` | {typ} | `{default}` | {meaning.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m config.schema: print the reference table
    print(reference_markdown())
