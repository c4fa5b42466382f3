"""Read one recording with MNE and turn it into labelled task epochs (and rest epochs).

The same code path serves every format `mne.io.read_raw` understands; events come from the
T0/T1/T2 annotations (EDF+ annotation channel, or annotations saved in FIF/EEGLAB/BrainVision).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.eegbci import EVENT_LABELS, MOTOR_CHANNELS
from utils.errors import UserError


@dataclass
class Preprocessing:
    """Everything that changes the cached epochs; part of the cache key."""

    channels: str | tuple[str, ...]
    l_freq: float | None
    h_freq: float | None
    resample: float | None
    tmin: float
    tmax: float

    @classmethod
    def from_config(cls, data_cfg: dict) -> "Preprocessing":
        ch = data_cfg["channels"]
        return cls(ch if isinstance(ch, str) else tuple(ch), data_cfg["l_freq"], data_cfg["h_freq"],
                   data_cfg["resample"], float(data_cfg["tmin"]), float(data_cfg["tmax"]))


def _read_raw(path: Path):
    import mne

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            raw = mne.io.read_raw(str(path), preload=True, verbose="warning")
    except Exception as e:  # MNE raises many types for corrupt files; all mean "unreadable"
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
        raise UserError(f"{path}: not a readable EEG recording ({reason})") from None
    # MNE reads a cut-off EDF/BDF silently (only a warning) and returns fewer trials.
    if any("does not match the file size" in str(w.message) for w in caught) and _declared_records(path) > 0:
        raise UserError(f"{path}: truncated recording (the header declares more data than the file holds); "
                        "download it again")
    if raw.n_times == 0 or len(raw.ch_names) == 0:
        raise UserError(f"{path}: recording holds no samples")
    return raw


def _declared_records(path: Path) -> int:
    """Data-record count in an EDF/BDF header (-1: unknown, as in recordings never closed)."""
    try:
        with open(path, "rb") as fh:
            return int(fh.read(256)[236:244].decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return -1


def standard_montage():
    """MNE's standard 10-05 montage (renamed colin27_1005 in MNE 1.13; same positions)."""
    import mne

    names = mne.channels.get_builtin_montages()
    return mne.channels.make_standard_montage("colin27_1005" if "colin27_1005" in names else "standard_1005")


def _pick_channels(raw, channels, path: Path):
    import mne

    mne.datasets.eegbci.standardize(raw)  # 'C3..' -> 'C3', 'Fcz.' -> 'FCz'
    raw.pick(mne.pick_types(raw.info, eeg=True, exclude=[]))
    wanted = list(raw.ch_names) if channels == "all" else list(MOTOR_CHANNELS if channels == "motor" else channels)
    missing = [c for c in wanted if c not in raw.ch_names]
    if missing:
        raise UserError(f"{path}: channel(s) {', '.join(missing[:5])} not in the recording "
                        f"(it has {', '.join(raw.ch_names[:8])}...)")
    raw.pick(wanted)
    raw.set_montage(standard_montage(), match_case=False, on_missing="ignore", verbose="error")
    return raw


def _epochs(raw, events, label_of_code: dict, prep: Preprocessing, sfreq: float, path: Path):
    import mne

    n_times = int(round((prep.tmax - prep.tmin) * sfreq))
    if n_times < 2:
        raise UserError(f"{path}: epoch window {prep.tmin}..{prep.tmax} s holds fewer than 2 samples")
    ep = mne.Epochs(raw, events, event_id={str(c): c for c in label_of_code}, tmin=prep.tmin,
                    tmax=prep.tmin + (n_times - 1) / sfreq, baseline=None, preload=True,
                    reject_by_annotation=False, on_missing="ignore", verbose="error")
    if len(ep) == 0:  # the window fits around no event; the caller says so
        return np.zeros((0, len(raw.ch_names), n_times), np.float32), np.zeros(0, np.int64), np.zeros(0, int)
    X = ep.get_data(copy=False).astype(np.float32)
    y = np.array([label_of_code[c] for c in ep.events[:, 2]], dtype=np.int64)
    return X, y, ep.events[:, 0]


def read_epochs(path: Path, prep: Preprocessing) -> dict:
    """Task epochs `X` (n, n_chans, n_times) in volts with labels `y` (0 left, 1 right), plus
    rest (T0) epochs of the same length for noise statistics."""
    import mne

    raw = _read_raw(path)
    raw = _pick_channels(raw, prep.channels, path)
    try:
        events, codes = mne.events_from_annotations(raw, verbose="error")
    except Exception:
        events, codes = np.zeros((0, 3), int), {}
    task = {codes[k]: v for k, v in EVENT_LABELS.items() if k in codes}
    if not task or not np.isin(events[:, 2], list(task)).any():
        raise UserError(f"{path}: no T1/T2 (left/right) events in the recording's annotations")
    if prep.l_freq is not None or prep.h_freq is not None:
        raw.filter(prep.l_freq, prep.h_freq, fir_design="firwin", n_jobs=1, verbose="error")
    if prep.resample and prep.resample != raw.info["sfreq"]:
        raw, events = raw.resample(prep.resample, events=events, n_jobs=1, verbose="error")
    sfreq = float(raw.info["sfreq"])
    X, y, _ = _epochs(raw, events, task, prep, sfreq, path)
    if len(y) == 0:
        dur = raw.n_times / sfreq
        raise UserError(f"{path}: epoch window {prep.tmin}..{prep.tmax} s fits around no T1/T2 event "
                        f"(recording lasts {dur:.1f} s)")
    rest = np.zeros((0,) + X.shape[1:], np.float32)
    if "T0" in codes:
        rest, _, _ = _epochs(raw, events, {codes["T0"]: -1}, Preprocessing(
            prep.channels, None, None, None, 0.0, prep.tmax - prep.tmin), sfreq, path)
    if not np.isfinite(X).all():
        raise UserError(f"{path}: recording contains NaN or infinite samples")
    pos = np.array([raw.info["chs"][i]["loc"][:3] for i in range(len(raw.ch_names))], dtype=np.float64)
    return {"X": X, "y": y, "rest": rest, "sfreq": sfreq, "ch_names": list(raw.ch_names), "ch_pos": pos}
