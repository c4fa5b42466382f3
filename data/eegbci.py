"""Where recordings live: PhysioNet EEGBCI layout, subject/run selection, MNE's fetcher.

A recording is `data_path/SXXX/SXXXRYY.<ext>` with any extension MNE reads (EDF here; BDF,
GDF, FIF, EEGLAB .set, BrainVision .vhdr work the same way), or MNE's own download layout
`data_path/MNE-eegbci-data/files/eegmmidb/1.0.0/SXXX/SXXXRYY.edf`.
"""
from __future__ import annotations

from pathlib import Path

from utils.errors import UserError

TASK_RUNS = {"imagery": [4, 8, 12], "execution": [3, 7, 11], "both": [3, 4, 7, 8, 11, 12]}
# In runs 3/4/7/8/11/12, T1 is the left fist and T2 the right fist (SOURCE.md); labels 0 and 1.
EVENT_LABELS = {"T1": 0, "T2": 1}
CLASS_NAMES = ("left", "right")
# 10-10 motor strip, FC5..CP6: the first 21 channels of the EEGBCI files.
MOTOR_CHANNELS = ("FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6",
                  "C5", "C3", "C1", "Cz", "C2", "C4", "C6",
                  "CP5", "CP3", "CP1", "CPz", "CP2", "CP4", "CP6")
EXTENSIONS = (".edf", ".bdf", ".gdf", ".fif", ".set", ".vhdr")
MNE_SUBDIR = Path("MNE-eegbci-data/files/eegmmidb/1.0.0")


def select_subjects(cfg: dict, data_cfg: dict | None = None) -> list[int]:
    data_cfg = cfg["data"] if data_cfg is None else data_cfg
    if data_cfg["subjects"]:
        return sorted(set(data_cfg["subjects"]))
    return list(range(1, cfg["subject_count"] + 1))


def select_runs(data_cfg: dict) -> list[int]:
    return sorted(set(data_cfg["runs"])) if data_cfg["runs"] else list(TASK_RUNS[data_cfg["task"]])


def _find(root: Path, subject: int, run: int) -> Path | None:
    stem = f"S{subject:03d}R{run:02d}"
    for folder in (root / f"S{subject:03d}", root / MNE_SUBDIR / f"S{subject:03d}"):
        for ext in EXTENSIONS:
            if (folder / (stem + ext)).is_file():
                return folder / (stem + ext)
    return None


def recording_paths(data_path: str | Path, subjects: list[int], runs: list[int],
                    download: bool = True) -> dict[tuple[int, int], Path]:
    """Map (subject, run) to an existing file, fetching missing EEGBCI files when online."""
    root = Path(data_path)
    found = {(s, r): _find(root, s, r) for s in subjects for r in runs}
    missing = [k for k, p in found.items() if p is None]
    if missing and download:
        _fetch(root, missing)
        found = {k: _find(root, *k) for k in found}
        missing = [k for k, p in found.items() if p is None]
    if missing:
        s, r = missing[0]
        raise UserError(
            f"recording S{s:03d}R{r:02d} not found ({len(missing)} of {len(found)} missing): put the PhysioNet "
            f"EEGBCI files at {root}/SXXX/SXXXRYY.edf or set data_path; online, they are fetched automatically")
    return found


def _fetch(root: Path, missing: list[tuple[int, int]]) -> None:
    """Download with MNE's EEGBCI fetcher; any failure (offline, no write access) is reported by the caller."""
    import mne

    try:
        root.mkdir(parents=True, exist_ok=True)
        by_subject: dict[int, list[int]] = {}
        for s, r in missing:
            by_subject.setdefault(s, []).append(r)
        for s, runs in by_subject.items():
            mne.datasets.eegbci.load_data(s, runs, path=str(root), update_path=False, verbose="error")
    except Exception:  # offline, refused, read-only: the missing-file message says what to do
        return
