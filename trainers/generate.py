"""Generate mode: labelled synthetic trials from a trained GAN run, as MNE Epochs and .npz.

`python main.py --mode generate --checkpoint RUN_DIR [--n N] [--out PATH] [--subjects S ...]` writes N trials per
class to `<out>/generated-epo.fif` (event_id {"left": 0, "right": 1}, the training channels,
sfreq and standard montage, volts) and `<out>/generated.npz` (X, y, sfreq, ch_names, and `subject` for
a subject-conditioned generator). `--out`
defaults to `<run>/generated/`; a path ending in `-epo.fif` names the FIF file itself. `--subjects` draws the
trials of a subject-conditioned generator for those subjects only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from utils.errors import UserError
from utils.runs import resolve_run_dir

EVENT_ID = {"left": 0, "right": 1}
DEFAULT_N = 100


def gan_folder(run_dir, what: str = "GAN run folder") -> Path:
    """The folder holding gan.json: the run folder itself, or round-0 of a multi-round run."""
    direct = Path(run_dir)
    if (direct / "gan.json").is_file() and (direct / "generator.safetensors").is_file():
        return direct  # a round folder: round-<i>/ holds no config.json of its own
    p = resolve_run_dir(run_dir, what)
    for cand in (p, p / "round-0"):
        if (cand / "gan.json").is_file() and (cand / "generator.safetensors").is_file():
            return cand
    raise UserError(f"{what} {run_dir}: no gan.json + generator.safetensors (not a finished gpt2cgan/"
                    "gpt2xcnn/gpt2scnn run)")


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a valid safetensors file ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match gan.json ({str(e).splitlines()[0][:120]})") from None


def read_meta(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "gan.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{folder}/gan.json: unreadable ({e.__class__.__name__})") from None


@dataclass
class GeneratorBundle:
    """A trained generator with what it needs to emit trials in volts."""

    generator: torch.nn.Module
    critic: torch.nn.Module | None
    meta: dict
    folder: Path
    device: torch.device
    projection: object | None = None  # representation=source: data.sources.SourceProjection (source.json)

    @property
    def cfg(self) -> dict:
        return self.meta["config"]

    @property
    def ch_names(self) -> list[str]:
        """Channels of `sample()`'s trials: the sensors a source-space run projects to."""
        if self.projection is not None:
            return list(self.projection.out_names)
        return list(self.meta["ch_names"])

    @property
    def sfreq(self) -> float:
        return float(self.meta["sfreq"])

    @property
    def n_times(self) -> int:
        return int(self.meta["n_times"])

    @property
    def n_chans(self) -> int:
        return len(self.ch_names) if self.projection is not None else int(self.meta["n_chans"])

    @property
    def representation(self) -> str:
        return self.meta.get("representation", "sensor")

    @property
    def standardizer(self):
        from data.dataset import Standardizer

        return Standardizer.from_state(self.meta["standardizer"])

    def only_subjects(self, subjects) -> None:
        """Draw trials for these subject numbers only, each in its share of the training trials
        (`generate --subjects`, `evaluation.subjects`): a generator trained on a larger pool, conditioned on
        subject, generating for some of its subjects. A generator not conditioned on subject can only
        stand for the subjects it trained on, all of them."""
        subjects = sorted({int(s) for s in subjects})
        gen = self.generator
        if not gen.config.subject_count:
            from trainers.finetune import training_subjects

            trained = training_subjects(self.meta.get("data", {}))
            if trained is not None and trained == subjects:
                return
            raise UserError(f"{self.folder}: the generator is not conditioned on subject (gan.subject_condition "
                            f"was off), so it cannot generate for chosen subjects {subjects}")
        index = gen.subject_index(subjects)
        w = torch.zeros_like(gen.subject_weights)
        w[index] = gen.subject_weights[index].clamp_min(1e-12)
        gen.subject_weights.copy_(w / w.sum())

    def sample(self, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(X float32 (2 * n_per_class, n_chans, n_times) in volts, y int64): left trials, then right."""
        X, y, _ = self.sample_subjects(n_per_class, seed)
        return X, y

    def sample_subjects(self, n_per_class: int, seed: int):
        """`sample` plus the subject number of every trial (None unless subject-conditioned)."""
        X, y, s = self.sample_native_subjects(n_per_class, seed)
        if self.projection is not None:  # ROI sources -> scalp EEG through the leadfield
            X = self.projection.to_sensors(X)
        return X, y, s

    def sample_native(self, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Trials in the generator's own space: sensors (volts), or ROI source values for source runs."""
        X, y, _ = self.sample_native_subjects(n_per_class, seed)
        return X, y

    def sample_native_subjects(self, n_per_class: int, seed: int):
        """`sample_native` plus the subject number of every trial (None unless subject-conditioned)."""
        from trainers.gan import generate

        Z, y, s = generate(self.generator, int(n_per_class), int(seed), self.device, return_subjects=True)
        return self.standardizer.inverse(Z.numpy()), y.numpy().astype(np.int64), None if s is None else s.numpy()


def load_generator(run_dir, device="cpu", with_critic: bool = False) -> GeneratorBundle:
    """Rebuild the generator (and optionally the critic) of a GAN run from gan.json + safetensors."""
    from models.critic import Critic, CriticConfig
    from models.gpt2_generator import GPT2Generator, GPT2GeneratorConfig

    folder = gan_folder(run_dir)
    meta = read_meta(folder)
    device = torch.device(device)
    try:
        gen = GPT2Generator(GPT2GeneratorConfig(**meta["generator"]))
        crit = Critic(CriticConfig(**meta["critic"])) if with_critic else None
    except (KeyError, TypeError) as e:
        raise UserError(f"{folder}/gan.json: malformed model description ({e})") from None
    _load_weights(gen, folder / "generator.safetensors")
    gen.to(device).eval().requires_grad_(False)
    if crit is not None:
        if not (folder / "critic.safetensors").is_file():
            raise UserError(f"{folder}: critic.safetensors missing")
        _load_weights(crit, folder / "critic.safetensors")
        crit.to(device)
    from data.sources import load_projection  # source-space runs carry source.json (data/sources.py)

    projection = load_projection(folder) if meta.get("representation", "sensor") == "source" else None
    if meta.get("representation", "sensor") == "source" and projection is None:
        raise UserError(f"{folder}: a representation=source run without source.json; retrain it")
    return GeneratorBundle(gen, crit, meta, folder, device, projection)


def to_epochs(X: np.ndarray, y: np.ndarray, ch_names: list[str], sfreq: float, tmin: float = 0.0,
              sensor: bool = True):
    """MNE EpochsArray of labelled trials in volts with the standard 10-05 montage."""
    import mne

    from data.recording import standard_montage

    info = mne.create_info(list(ch_names), float(sfreq), "eeg" if sensor else "misc")
    events = np.column_stack([np.arange(len(y)) * X.shape[-1], np.zeros(len(y), int), y]).astype(int)
    ep = mne.EpochsArray(X.astype(np.float64), info, events=events, tmin=tmin, event_id=EVENT_ID,
                         baseline=None, verbose="error")
    if sensor:
        ep.set_montage(standard_montage(), match_case=False, on_missing="ignore", verbose="error")
    return ep


def output_paths(out, folder: Path) -> tuple[Path, Path]:
    if out is None:
        base = folder / "generated"
        return base / "generated-epo.fif", base / "generated.npz"
    out = Path(out)
    if out.name.endswith("-epo.fif"):
        return out, out.with_name(out.name[:-len("-epo.fif")] + ".npz")
    return out / "generated-epo.fif", out / "generated.npz"


def main(args) -> int:
    bundle = load_generator(args.checkpoint)
    n = DEFAULT_N if args.n is None else args.n
    if n < 1:
        raise UserError(f"--n {n}: must be at least 1 trial per class")
    fif, npz = output_paths(args.out, bundle.folder)
    try:
        fif.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {fif.parent}: not writable ({e.strerror or e})") from None
    if args.subjects:
        bundle.only_subjects(args.subjects)
    X, y, subject = bundle.sample_native_subjects(n, bundle.cfg["seed"])
    extra = {} if subject is None else {"subject": subject}  # subject-conditioned: whom each trial imitates
    if bundle.projection is not None:  # sensor epochs projected from the ROI sources, plus the sources
        extra = {**extra, "sources": X, "source_names": np.array(bundle.projection.source_names),
                 "source_pos": bundle.projection.source_pos}
        X = bundle.projection.to_sensors(X)
    ep = to_epochs(X, y, bundle.ch_names, bundle.sfreq, bundle.cfg["data"]["tmin"],
                   sensor=bundle.representation == "sensor" or bundle.projection is not None)
    ep.save(fif, overwrite=True, verbose="error")
    np.savez(npz, X=X, y=y, sfreq=bundle.sfreq, ch_names=np.array(bundle.ch_names), **extra)
    print(f"wrote {len(y)} trials ({n} per class): {fif} and {npz}")
    return 0
