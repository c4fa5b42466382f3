"""Epoch sets, leak-free splits, training-only normalisation and the shuffling batch loader."""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import cache
from data.eegbci import recording_paths, select_runs, select_subjects
from data.recording import Preprocessing, read_epochs
from utils.errors import UserError


@dataclass
class EpochSet:
    """Trials `X` (n, n_chans, n_times) in volts, labels `y` (0 left, 1 right), and where each came from."""

    X: np.ndarray
    y: np.ndarray
    subject: np.ndarray
    run: np.ndarray
    sfreq: float
    ch_names: list[str]
    ch_pos: np.ndarray | None = None          # (n_chans, 3) head coordinates, m
    rest: np.ndarray | None = None            # T0 epochs, same shape per trial
    rest_subject: np.ndarray | None = None
    rest_run: np.ndarray | None = None        # so a split keeps only its own runs' rest (noise covariance)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_chans(self) -> int:
        return self.X.shape[1]

    @property
    def n_times(self) -> int:
        return self.X.shape[2]

    def merged(self, other: "EpochSet") -> "EpochSet":
        """These trials followed by `other`'s (the same channels and rate); rest epochs of recordings
        this set already holds are not repeated."""
        rest, rest_subject, rest_run = self.rest, self.rest_subject, self.rest_run
        if other.rest is not None and other.rest_subject is not None:
            if rest is None:
                rest, rest_subject, rest_run = other.rest, other.rest_subject, other.rest_run
            elif self.rest_subject is not None:
                have = set(zip(self.rest_subject.tolist(), (self.rest_run if self.rest_run is not None
                                                            else np.zeros(len(self.rest_subject))).tolist()))
                o_run = other.rest_run if other.rest_run is not None else np.zeros(len(other.rest_subject))
                new = np.array([p not in have for p in zip(other.rest_subject.tolist(), o_run.tolist())], bool)
                rest = np.concatenate([rest, other.rest[new]])
                rest_subject = np.concatenate([rest_subject, other.rest_subject[new]])
                rest_run = None if rest_run is None or other.rest_run is None else \
                    np.concatenate([rest_run, other.rest_run[new]])
        return EpochSet(np.concatenate([self.X, other.X]), np.concatenate([self.y, other.y]),
                        np.concatenate([self.subject, other.subject]), np.concatenate([self.run, other.run]),
                        self.sfreq, list(self.ch_names), self.ch_pos, rest, rest_subject, rest_run)

    def subset(self, mask: np.ndarray) -> "EpochSet":
        keep_rest = None
        if self.rest is not None and self.rest_subject is not None:
            keep_rest = np.isin(self.rest_subject, np.unique(self.subject[mask]))
            if self.rest_run is not None:  # rest of the selected (subject, run) recordings only
                pairs = set(zip(self.subject[mask].tolist(), self.run[mask].tolist()))
                keep_rest &= np.array([p in pairs for p in zip(self.rest_subject.tolist(),
                                                                self.rest_run.tolist())], bool)
        return EpochSet(self.X[mask], self.y[mask], self.subject[mask], self.run[mask], self.sfreq,
                        list(self.ch_names), self.ch_pos,
                        None if keep_rest is None else self.rest[keep_rest],
                        None if keep_rest is None else self.rest_subject[keep_rest],
                        None if keep_rest is None or self.rest_run is None else self.rest_run[keep_rest])


def load_recordings(cfg: dict, data_cfg: dict | None = None, progress: bool = True) -> EpochSet:
    """Load every selected recording (from cache when possible) into one EpochSet."""
    data_cfg = cfg["data"] if data_cfg is None else data_cfg
    subjects, runs = select_subjects(cfg, data_cfg), select_runs(data_cfg)
    paths = recording_paths(cfg["data_path"], subjects, runs, download=data_cfg.get("download", True))
    prep = Preprocessing.from_config(data_cfg)
    cache_dir = Path(cfg["cache_dir"]) / "epochs"

    def read(path: Path, prep: Preprocessing) -> dict:
        key = cache.cache_key(path, prep)
        item = cache.load(cache_dir, key)
        if item is None:
            item = read_epochs(path, prep)
            cache.save(cache_dir, key, item)
        return item

    items = sorted(paths.items())
    # A context manager, so a bad recording's error is not printed onto an open progress bar's line.
    with tqdm(items, desc="loading recordings", unit="file", disable=not progress, leave=False) as bar:
        parts = [(s, r, read(path, prep)) for (s, r), path in bar]
    rates = Counter(it["sfreq"] for _, _, it in parts)
    if len(rates) > 1 and not prep.resample:
        # Public motor-imagery sets mix rates (a few EEGMMIDB subjects were recorded at 128 Hz, not 160):
        # the odd recordings are resampled to the most common rate rather than ending a pooled run.
        target = max(rates, key=lambda f: (rates[f], f))
        odd = sorted({f"S{s:03d}" for s, _, it in parts if it["sfreq"] != target})
        print(f"note: recordings of {', '.join(odd)} are not at {target:g} Hz like the others; resampled to it "
              "(data.resample sets the rate)", file=sys.stderr)
        prep = replace(prep, resample=target)
        parts = [(s, r, it if it["sfreq"] == target else read(paths[(s, r)], prep)) for s, r, it in parts]
    first = parts[0][2]
    for s, r, it in parts:
        if it["ch_names"] != first["ch_names"] or it["sfreq"] != first["sfreq"] or it["X"].shape[2] != first["X"].shape[2]:
            raise UserError(f"recording S{s:03d}R{r:02d}: channels, sampling rate or epoch length differ from "
                            f"S{parts[0][0]:03d}R{parts[0][1]:02d}; set data.resample or data.channels")
    cat = np.concatenate
    return EpochSet(
        X=cat([it["X"] for _, _, it in parts]), y=cat([it["y"] for _, _, it in parts]),
        subject=cat([np.full(len(it["y"]), s) for s, _, it in parts]),
        run=cat([np.full(len(it["y"]), r) for _, r, it in parts]),
        sfreq=first["sfreq"], ch_names=first["ch_names"], ch_pos=first["ch_pos"],
        rest=cat([it["rest"] for _, _, it in parts]),
        rest_subject=cat([np.full(len(it["rest"]), s) for s, _, it in parts]),
        rest_run=cat([np.full(len(it["rest"]), r) for _, r, it in parts]))


@dataclass
class Splits:
    train: EpochSet
    val: EpochSet
    test: EpochSet
    info: dict = field(default_factory=dict)
    source: object | None = None              # representation=source: data.sources.SourceModel
    sensor: "Splits | None" = None            # representation=source: the matching sensor-space splits

    def pooled(self) -> "Splits":
        """The validation trials moved into training, for trainers that select nothing on them: the GAN
        trainers, whose held-out check is the test set. The evaluation's real-trained baselines use the
        same pool (trainers.evaluate.RealData), so a generator sees every trial its yardstick sees; on a
        five-subject pool that is 150 trials instead of 120."""
        if not len(self.val):
            return self
        info = {**self.info, "n_train": len(self.train) + len(self.val), "n_val": 0}
        return replace(self, train=self.train.merged(self.val), val=self.val.subset(np.zeros(len(self.val), bool)),
                       info=info, sensor=None if self.sensor is None else self.sensor.pooled())


def _stratified_holdout(y: np.ndarray, groups: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Boolean mask of validation trials: `fraction` of each (group, class) cell."""
    val = np.zeros(len(y), bool)
    if fraction <= 0:
        return val
    for g in np.unique(groups):
        for c in np.unique(y):
            idx = np.flatnonzero((groups == g) & (y == c))
            k = int(round(fraction * len(idx)))
            if k and k < len(idx):
                val[rng.choice(idx, k, replace=False)] = True
    return val


def split(data: EpochSet, cfg: dict, data_cfg: dict | None = None, seed: int | None = None) -> Splits:
    """Train / validation / test by run or by subject; validation is carved from training trials only."""
    d = cfg["data"] if data_cfg is None else data_cfg
    runs, subjects = sorted(set(data.run.tolist())), sorted(set(data.subject.tolist()))
    if d["split"] == "run":
        test_runs = d["test_runs"] or runs[-1:]
        train_runs = d["train_runs"] or [r for r in runs if r not in test_runs]
        for r in train_runs + test_runs:
            if r not in runs:
                raise UserError(f"config key 'data.train_runs'/'data.test_runs': run {r} is not among the loaded "
                                f"runs {runs}")
        train_mask, test_mask = np.isin(data.run, train_runs), np.isin(data.run, test_runs)
        info = {"split": "run", "train_runs": train_runs, "test_runs": test_runs, "subjects": subjects}
    else:
        n_test = max(1, int(round(0.2 * len(subjects))))
        test_s = d["test_subjects"] or subjects[-n_test:]
        train_s = d["train_subjects"] or [s for s in subjects if s not in test_s]
        for s in train_s + test_s:
            if s not in subjects:
                raise UserError(f"config key 'data.train_subjects'/'data.test_subjects': subject {s} is not among "
                                f"the loaded subjects {subjects}")
        train_mask, test_mask = np.isin(data.subject, train_s), np.isin(data.subject, test_s)
        info = {"split": "subject", "train_subjects": train_s, "test_subjects": test_s, "runs": runs}
    if not train_mask.any() or not test_mask.any():
        raise UserError("data split: the training or the test selection is empty")
    rng = np.random.default_rng(cfg["seed"] if seed is None else seed)
    train = data.subset(train_mask)
    val_mask = _stratified_holdout(train.y, train.subject, d["val_fraction"], rng)
    out = Splits(train.subset(~val_mask), train.subset(val_mask), data.subset(test_mask), info)
    for name in ("train", "test"):
        part = getattr(out, name)
        if len(np.unique(part.y)) < 2:
            raise UserError(f"data split: the {name} selection holds only one class")
    info.update(n_train=len(out.train), n_val=len(out.val), n_test=len(out.test))
    return out


def pretrain_data_cfg(cfg: dict) -> dict:
    """`data` with the non-null `pretrain_data` entries (gpt2cgan's source task/subjects) applied."""
    d = dict(cfg["data"])
    for k, v in cfg["pretrain_data"].items():
        if v is not None:
            d[k] = v
    if cfg["pretrain_data"]["task"] is not None and cfg["pretrain_data"]["runs"] is None:
        d["runs"] = None
        d["train_runs"] = d["test_runs"] = None  # runs of another task: derive the split from them
    return d


def load_splits(cfg: dict, data_cfg: dict | None = None, seed: int | None = None, progress: bool = True) -> Splits:
    data_cfg = cfg["data"] if data_cfg is None else data_cfg
    if cfg.get("representation") == "source":  # motor-area sources, fitted on the training part
        from data.sources import load_source_splits

        return load_source_splits(cfg, data_cfg, seed, progress)
    return split(load_recordings(cfg, data_cfg, progress), cfg, data_cfg, seed)


@dataclass
class Standardizer:
    """Per-channel mean and std, fitted on training trials only; maps volts <-> unit scale."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, mode: str = "channel") -> "Standardizer":
        n_chans = X.shape[1]
        if mode == "none":
            return cls(np.zeros(n_chans, np.float32), np.ones(n_chans, np.float32))
        mean = X.mean(axis=(0, 2)).astype(np.float32)
        std = X.std(axis=(0, 2)).astype(np.float32)
        return cls(mean, np.maximum(std, 1e-12).astype(np.float32))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean[:, None]) / self.std[:, None]).astype(np.float32)

    def inverse(self, Z: np.ndarray) -> np.ndarray:
        return (Z * self.std[:, None] + self.mean[:, None]).astype(np.float32)

    def state(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, st: dict) -> "Standardizer":
        return cls(np.asarray(st["mean"], np.float32), np.asarray(st["std"], np.float32))


def shuffle_buffer_order(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """Order produced by a tf.data-style shuffle buffer over a (pre-shuffled-by-nothing) stream.

    A buffer of `buffer_size` trials is filled in stream order; each step emits a random trial
    from it and refills from the stream. `buffer_size >= n` is a uniform shuffle.
    """
    if buffer_size >= n:
        return rng.permutation(n)
    buf = list(range(buffer_size))
    nxt, out = buffer_size, []
    while buf:
        j = int(rng.integers(len(buf)))
        out.append(buf[j])
        if nxt < n:
            buf[j] = nxt
            nxt += 1
        else:
            buf[j] = buf[-1]
            buf.pop()
    return np.asarray(out)


def epoch_order(n: int, buffer_size: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Trial order of one epoch, a pure function of (seed, epoch): resuming replays it exactly.

    With a buffer that holds every trial this is the permutation DistributedSampler draws, so a
    single-process run and a multi-process run with the same global batch see the same batches.
    """
    if not shuffle:
        return np.arange(n)
    if buffer_size >= n:
        from utils.distributed import epoch_permutation

        return epoch_permutation(n, seed, epoch)
    return shuffle_buffer_order(n, buffer_size, np.random.default_rng([seed, epoch]))


def batches(order: np.ndarray, batch_size: int, drop_last: bool = False):
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        if drop_last and len(idx) < batch_size:
            return
        yield idx
