"""Motor-area cortical sources: an offline head model, a minimum-norm inverse, and the way back.

`representation = "source"` turns every trial into the activity of the cortical sources under
C3/Cz/C4 (the ROI), estimated with MNE-Python:

* forward model: fsaverage's BEM and cortical surface when a local copy exists, otherwise a
  four-shell sphere fitted to the montage (`mne.make_sphere_model`) with a discrete source space
  of dipoles on a cortical shell, each oriented along the radius. Fixed, radial orientations give
  one signed time course per location, which is what the generator's channels need; a volume
  grid would give three free components per location and sLORETA would then return unsigned
  norms (or a vector per location) that cannot be generated as one channel.
* inverse: noise covariance of the training subjects' rest (T0) epochs of the training runs,
  `mne.minimum_norm.make_inverse_operator` (fixed orientation), and the method's kernel taken once
  with `apply_inverse` on an identity "evoked", then applied as a matrix (fast, exactly what
  `apply_inverse_epochs` computes). The inverse always uses every EEG channel of the recording:
  21 channels over the motor strip alone cannot tell sources under them apart from the rest.
* way back: dSPM/sLORETA values are noise-normalised currents, so the row scale of the kernel is
  divided out and the ROI currents go through the (average-referenced) leadfield to the sensors
  named by `data.channels`.

Operators are cached under `cache_dir/sources/` keyed by everything they depend on: MNE's own
`-fwd.fif` / `-inv.fif` files for interoperability, and an `.npz` (no pickle) of the matrices used
here, the only file read on a cache hit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import UserError

OPERATOR_VERSION = 1
FSAVERAGE_BEM = "fsaverage-5120-5120-5120-bem-sol.fif"


@dataclass(frozen=True)
class SourceParams:
    """Every setting that changes the operators; part of their cache keys."""

    head_model: str
    spacing_mm: float
    shell_fraction: float
    method: str
    snr: float
    depth: float
    noise_cov: str
    roi_channels: tuple[str, ...]
    roi_radius_mm: float

    @classmethod
    def from_config(cls, cfg: dict) -> "SourceParams":
        s = cfg["source"]
        return cls(s["head_model"], float(s["spacing_mm"]), float(s["shell_fraction"]), s["method"],
                   float(s["snr"]), float(s["depth"]), s["noise_cov"], tuple(s["roi_channels"]),
                   float(s["roi_radius_mm"]))

    @property
    def lambda2(self) -> float:
        return 1.0 / self.snr ** 2


# --- small helpers ---------------------------------------------------------------------------

def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _save_npz(path: Path, **arrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError:  # an unwritable cache only costs speed
        pass


def _load_npz(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception:  # damaged entry: rebuilt by the caller
        return None


def _write_fif(writer, path: Path, obj) -> None:
    """MNE's writers are not atomic: write next to the target and rename."""
    tmp = path.with_name(f".{os.getpid()}-{path.name}")
    try:
        writer(tmp, obj, overwrite=True, verbose="error")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _eeg_info(ch_names: list[str], ch_pos: np.ndarray, sfreq: float):
    """Info with the channels' head positions and an average-reference projector (required by MNE's inverse)."""
    import mne

    norms = np.linalg.norm(ch_pos, axis=1) if ch_pos is not None else np.zeros(len(ch_names))
    bad = [c for c, r in zip(ch_names, norms) if not np.isfinite(r) or r < 1e-6]
    if bad:
        raise UserError(f"representation=source: no montage position for channel(s) {', '.join(bad[:5])}")
    info = mne.create_info(list(ch_names), float(sfreq), "eeg")
    montage = mne.channels.make_dig_montage(dict(zip(ch_names, ch_pos)), coord_frame="head")
    info.set_montage(montage, verbose="error")
    ev = mne.EvokedArray(np.zeros((len(ch_names), 1)), info, nave=1, verbose="error")
    ev.set_eeg_reference(projection=True, verbose="error")
    return ev.info


def _fsaverage_dir(fetch: bool) -> Path | None:
    """subjects_dir holding fsaverage with its BEM solution; fetched only when `fetch` (online)."""
    import mne

    roots = [mne.get_config("SUBJECTS_DIR"),
             Path(mne.get_config("MNE_DATA") or Path.home() / "mne_data") / "MNE-fsaverage-data"]
    for root in roots:
        if root and (Path(root) / "fsaverage" / "bem" / FSAVERAGE_BEM).is_file():
            return Path(root)
    if fetch:
        try:
            return Path(mne.datasets.fetch_fsaverage(verbose="error")).parent
        except Exception:  # offline or refused: the caller names the fix
            return None
    return None


def resolve_head_model(params: SourceParams) -> tuple[str, Path | None]:
    if params.head_model == "sphere":
        return "sphere", None
    sd = _fsaverage_dir(fetch=params.head_model == "fsaverage")
    if sd is not None:
        return "fsaverage", sd
    if params.head_model == "fsaverage":
        raise UserError("config key 'source.head_model': fsaverage is not available locally and could not be "
                        "fetched (offline?); use 'sphere' or 'auto'")
    return "sphere", None


# --- forward model ---------------------------------------------------------------------------

def _shell_sources(info, params: SourceParams):
    """Sphere fitted to the electrodes, and radial dipoles spread evenly (Fibonacci lattice) over the
    part of a cortical shell that lies under the electrode cap."""
    import mne

    sphere = mne.make_sphere_model("auto", "auto", info, verbose="error")
    r0, radius = np.asarray(sphere["r0"], float), float(sphere.radius)
    shell = params.shell_fraction * radius
    elec = np.array([ch["loc"][:3] for ch in info["chs"]]) - r0
    elec /= np.linalg.norm(elec, axis=1, keepdims=True)
    n_full = max(16, int(round(4 * np.pi * shell ** 2 / (params.spacing_mm / 1000) ** 2)))
    i = np.arange(n_full) + 0.5
    polar, azim = np.arccos(1 - 2 * i / n_full), np.pi * (1 + 5 ** 0.5) * i
    nn = np.c_[np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar)]
    # Keep dipoles whose direction is within ~1.5 lattice steps of an electrode's: the head under the cap.
    reach = np.cos(max(np.deg2rad(20), 1.5 * params.spacing_mm / 1000 / shell))
    nn = nn[(nn @ elec.T).max(axis=1) >= reach]
    src = mne.setup_volume_source_space(pos=dict(rr=r0 + shell * nn, nn=nn), sphere=sphere, verbose="error")
    return src, sphere, {"r0": r0.tolist(), "head_radius": radius, "shell_radius": shell}


def _fsaverage_sources(subjects_dir: Path):
    import mne

    src = mne.setup_source_space("fsaverage", spacing="oct5", subjects_dir=subjects_dir, add_dist=False,
                                 verbose="error")
    bem = mne.read_bem_solution(subjects_dir / "fsaverage" / "bem" / FSAVERAGE_BEM, verbose="error")
    return src, bem, {"subjects_dir": str(subjects_dir)}


def build_forward(ch_names: list[str], ch_pos: np.ndarray, sfreq: float, params: SourceParams,
                  cache_dir: Path | None = None) -> dict:
    """Fixed-orientation leadfield for these electrodes: gain (n_chans, n_sources) in V/(A m),
    source positions and normals in head coordinates (m)."""
    kind, subjects_dir = resolve_head_model(params)
    geo = {"ch_names": list(ch_names), "ch_pos": np.round(np.asarray(ch_pos, float), 6).tolist()}
    key = "fwd-" + _hash({"v": OPERATOR_VERSION, "kind": kind, "geo": geo, "spacing": params.spacing_mm,
                          "shell": params.shell_fraction, "subjects_dir": str(subjects_dir)})
    folder = Path(cache_dir) / "sources" if cache_dir is not None else None
    if folder is not None:
        hit = _load_npz(folder / f"{key}.npz")
        if hit is not None:
            return {"key": key, "kind": kind, "gain": hit["gain"], "src_pos": hit["src_pos"],
                    "src_nn": hit["src_nn"], "geometry": json.loads(str(hit["geometry"])), "cached": True}
    import mne

    info = _eeg_info(ch_names, ch_pos, sfreq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "sphere":
            src, bem, geometry = _shell_sources(info, params)
            trans = None
        else:
            src, bem, geometry = _fsaverage_sources(subjects_dir)
            trans = "fsaverage"
        fwd = mne.make_forward_solution(info, trans=trans, src=src, bem=bem, meg=False, eeg=True,
                                        n_jobs=1, verbose="error")
        # The inverse wants the free-orientation forward in surface orientation (for depth weighting);
        # the leadfield used here is its fixed (normal) component.
        fwd = mne.convert_forward_solution(fwd, surf_ori=True, use_cps=True, verbose="error")
        fixed = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True, use_cps=True, copy=True,
                                             verbose="error")
    # Positions in head coordinates, like the electrodes, so the ROI rule compares like with like
    # (make_forward_solution already moves its source space to head coordinates; check, not assume).
    rr = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    nn = fixed["source_nn"]
    if fwd["src"][0]["coord_frame"] == mne.io.constants.FIFF.FIFFV_COORD_MRI:
        mri_head = fwd["mri_head_t"]["trans"]
        rr, nn = rr @ mri_head[:3, :3].T + mri_head[:3, 3], nn @ mri_head[:3, :3].T
    src_pos, src_nn = rr, nn
    out = {"key": key, "kind": kind, "gain": fixed["sol"]["data"].astype(np.float64), "src_pos": src_pos,
           "src_nn": src_nn, "geometry": geometry, "cached": False, "fwd": fwd}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _write_fif(mne.write_forward_solution, folder / f"{key}-fwd.fif", fwd)
        _save_npz(folder / f"{key}.npz", gain=out["gain"], src_pos=src_pos, src_nn=src_nn,
                  geometry=np.array(json.dumps(geometry)))
    return out


# --- inverse ---------------------------------------------------------------------------------

def build_inverse(fwd: dict, ch_names: list[str], ch_pos: np.ndarray, sfreq: float, rest: np.ndarray,
                  params: SourceParams, cache_dir: Path | None = None) -> dict:
    """Inverse kernel (n_sources, n_chans) of `params.method` (average reference included) and the
    per-source noise normalisation that turns its values back into currents (1 for MNE)."""
    if rest is None or len(rest) < 2:
        raise UserError("representation=source: the training data hold fewer than 2 rest (T0) epochs for the "
                        "noise covariance")
    rest = np.ascontiguousarray(rest, dtype=np.float32)
    key = "inv-" + _hash({"v": OPERATOR_VERSION, "fwd": fwd["key"], "method": params.method,
                          "snr": params.snr, "depth": params.depth, "cov": params.noise_cov,
                          "rest": hashlib.sha256(rest.tobytes()).hexdigest(), "shape": rest.shape})
    folder = Path(cache_dir) / "sources" if cache_dir is not None else None
    if folder is not None:
        hit = _load_npz(folder / f"{key}.npz")
        if hit is not None:
            return {"key": key, "kernel": hit["kernel"], "noise_norm": hit["noise_norm"], "cached": True}
    import mne
    from threadpoolctl import threadpool_limits

    info = _eeg_info(ch_names, ch_pos, sfreq)
    fwd_obj = fwd.get("fwd")
    if fwd_obj is None:  # forward came from the npz cache: re-read MNE's file (or rebuild it)
        f = folder / f"{fwd['key']}-fwd.fif" if folder is not None else None
        fwd_obj = (mne.read_forward_solution(f, verbose="error") if f is not None and f.is_file()
                   else build_forward(ch_names, ch_pos, sfreq, params, None)["fwd"])
        fwd_obj = mne.convert_forward_solution(fwd_obj, surf_ori=True, use_cps=True, verbose="error")
    # Small eigendecompositions are ~100x slower with many OpenBLAS threads on these machines.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epochs = mne.EpochsArray(rest.astype(np.float64), info, verbose="error")
        cov = mne.compute_covariance(epochs, method=params.noise_cov, rank="info", verbose="error")
        inv = mne.minimum_norm.make_inverse_operator(info, fwd_obj, cov, loose=0.0, depth=params.depth or None,
                                                     fixed=True, rank="info", verbose="error")
        eye = mne.EvokedArray(np.eye(len(ch_names)), info, nave=1, verbose="error")
        kernels = {}
        for m in dict.fromkeys((params.method, "MNE")):
            stc = mne.minimum_norm.apply_inverse(eye, inv, params.lambda2, m, verbose="error")
            kernels[m] = stc.data
    kernel, k_mne = kernels[params.method], kernels["MNE"]
    noise_norm = np.linalg.norm(kernel, axis=1) / np.maximum(np.linalg.norm(k_mne, axis=1), 1e-30)
    out = {"key": key, "kernel": kernel, "noise_norm": noise_norm, "cached": False}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _write_fif(mne.minimum_norm.write_inverse_operator, folder / f"{key}-inv.fif", inv)
        _save_npz(folder / f"{key}.npz", kernel=kernel, noise_norm=noise_norm)
    return out


# --- region of interest ----------------------------------------------------------------------

def roi_mask(src_pos: np.ndarray, ch_names: list[str], ch_pos: np.ndarray, roi_channels, radius_mm: float):
    """Motor ROI: the source nearest each anchor electrode (its radial projection on the shell) and
    every source within `radius_mm` of one of those anchors. Returns (mask, anchor indices)."""
    missing = [c for c in roi_channels if c not in ch_names]
    if missing:
        raise UserError(f"config key 'source.roi_channels': {', '.join(missing)} not among the recording's "
                        "channels")
    anchors = []
    for c in roi_channels:
        p = np.asarray(ch_pos[ch_names.index(c)], float)
        anchors.append(int(np.argmin(np.linalg.norm(src_pos - p, axis=1))))
    dist = np.linalg.norm(src_pos[:, None, :] - src_pos[anchors][None, :, :], axis=2).min(axis=1)
    mask = dist <= radius_mm / 1000.0
    return mask, np.asarray(anchors)


# --- the fitted model ------------------------------------------------------------------------

def _out_channels(data_cfg: dict, all_names: list[str]) -> list[str]:
    from data.eegbci import MOTOR_CHANNELS

    ch = data_cfg["channels"]
    names = all_names if ch == "all" else list(MOTOR_CHANNELS if ch == "motor" else ch)
    missing = [c for c in names if c not in all_names]
    if missing:
        raise UserError(f"config key 'data.channels': {', '.join(missing[:5])} not in the recording")
    return names


@dataclass
class SourceModel:
    """The operators of one training set: EEG (all channels) -> ROI sources -> EEG (`out_names`)."""

    ch_names: list[str]            # every EEG channel, the inverse's input
    ch_pos: np.ndarray
    out_names: list[str]           # sensors the sources are projected back to (data.channels)
    kernel_roi: np.ndarray         # (n_roi, n_chans) the method's inverse kernel, ROI rows
    projection: np.ndarray         # (n_out, n_roi) leadfield (average reference) / noise normalisation
    src_pos: np.ndarray            # (n_sources, 3) every source, head coordinates, m
    roi: np.ndarray                # indices of ROI sources in src_pos
    anchors: np.ndarray            # indices of the anchor sources
    params: dict
    info: dict

    @property
    def n_sources(self) -> int:
        return len(self.roi)

    @property
    def source_names(self) -> list[str]:
        return [f"src{i:04d}" for i in self.roi]

    def to_sources(self, X: np.ndarray) -> np.ndarray:
        """(n, n_chans, n_times) volts on every channel -> (n, n_roi, n_times) source values."""
        if X.shape[1] != len(self.ch_names):
            raise UserError(f"source model: expected {len(self.ch_names)} channels, got {X.shape[1]}")
        return np.einsum("sc,nct->nst", self.kernel_roi.astype(np.float32), X.astype(np.float32),
                         optimize=True).astype(np.float32)

    def to_sensors(self, S: np.ndarray) -> np.ndarray:
        """(n, n_roi, n_times) source values -> (n, n_out, n_times) average-referenced volts."""
        if S.shape[1] != self.n_sources:
            raise UserError(f"source model: expected {self.n_sources} sources, got {S.shape[1]}")
        return np.einsum("cs,nst->nct", self.projection.astype(np.float32), S.astype(np.float32),
                         optimize=True).astype(np.float32)

    def reference(self, X: np.ndarray) -> np.ndarray:
        """The sensor data the projection can be compared with: average reference over every channel,
        then the `out_names` channels."""
        idx = [self.ch_names.index(c) for c in self.out_names]
        return (X - X.mean(axis=1, keepdims=True))[:, idx].astype(np.float32)

    def to_source_set(self, es):
        from data.dataset import EpochSet

        return EpochSet(self.to_sources(es.X), es.y, es.subject, es.run, es.sfreq, self.source_names,
                        self.src_pos[self.roi].copy(), None, None)

    def to_sensor_set(self, es):
        from data.dataset import EpochSet

        idx = [self.ch_names.index(c) for c in self.out_names]
        rest = None if es.rest is None else self.reference(es.rest)
        return EpochSet(self.reference(es.X), es.y, es.subject, es.run, es.sfreq, list(self.out_names),
                        None if es.ch_pos is None else es.ch_pos[idx], rest, es.rest_subject, es.rest_run)

    # JSON-able state: what a generator bundle needs to project its output to the scalp.
    def state(self) -> dict:
        idx = [self.ch_names.index(c) for c in self.out_names]
        return {"out_names": list(self.out_names), "out_pos": self.ch_pos[idx].tolist(),
                "source_names": self.source_names, "source_pos": self.src_pos[self.roi].tolist(),
                "projection": self.projection.tolist(), "params": self.params, "info": self.info}

    @classmethod
    def fit(cls, train, cfg: dict, data_cfg: dict | None = None, progress: bool = False) -> "SourceModel":
        """Operators from the training EpochSet (all channels, with its rest epochs)."""
        data_cfg = cfg["data"] if data_cfg is None else data_cfg
        params = SourceParams.from_config(cfg)
        cache_dir = Path(cfg["cache_dir"])
        t0 = time.perf_counter()
        fwd = build_forward(train.ch_names, train.ch_pos, train.sfreq, params, cache_dir)
        inv = build_inverse(fwd, train.ch_names, train.ch_pos, train.sfreq, train.rest, params, cache_dir)
        mask, anchors = roi_mask(fwd["src_pos"], train.ch_names, train.ch_pos, params.roi_channels,
                                 params.roi_radius_mm)
        roi = np.flatnonzero(mask)
        out_names = _out_channels(data_cfg, train.ch_names)
        gain = fwd["gain"] - fwd["gain"].mean(axis=0, keepdims=True)  # average reference
        out_idx = [train.ch_names.index(c) for c in out_names]
        projection = gain[np.ix_(out_idx, roi)] / inv["noise_norm"][roi][None, :]
        info = {"head_model": fwd["kind"], "n_sources_total": int(len(fwd["src_pos"])), "n_roi": int(len(roi)),
                "n_chans_inverse": len(train.ch_names), "lambda2": params.lambda2,
                "n_rest_epochs": int(len(train.rest)), "geometry": fwd["geometry"],
                "cache_hit": bool(fwd["cached"] and inv["cached"]),
                "build_s": round(time.perf_counter() - t0, 3)}
        return cls(list(train.ch_names), np.asarray(train.ch_pos, float), out_names,
                   inv["kernel"][roi].astype(np.float64), projection, fwd["src_pos"], roi,
                   anchors, dataclasses.asdict(params), info)


class SourceProjection:
    """Projection of generated ROI activity to the scalp, rebuilt from `SourceModel.state()`."""

    def __init__(self, state: dict):
        self.out_names = list(state["out_names"])
        self.out_pos = np.asarray(state["out_pos"], float)
        self.source_names = list(state["source_names"])
        self.source_pos = np.asarray(state["source_pos"], float)
        self.projection = np.asarray(state["projection"], np.float64)
        if self.projection.shape != (len(self.out_names), len(self.source_names)):
            raise UserError(f"source projection: matrix shape {self.projection.shape} does not match "
                            f"{len(self.out_names)} sensors x {len(self.source_names)} sources")
        self.params, self.info = state.get("params", {}), state.get("info", {})

    def to_sensors(self, S: np.ndarray) -> np.ndarray:
        if S.shape[1] != len(self.source_names):
            raise UserError(f"source projection: expected {len(self.source_names)} sources, got {S.shape[1]}")
        return np.einsum("cs,nst->nct", self.projection.astype(np.float32), np.asarray(S, np.float32),
                         optimize=True).astype(np.float32)

    def to_sensors_torch(self, S):
        """Differentiable version for (B, n_sources, n_times) tensors (e.g. a sensor-space classifier
        judging generated sources)."""
        import torch

        P = torch.as_tensor(self.projection, dtype=S.dtype, device=S.device)
        return torch.einsum("cs,bst->bct", P, S)


# --- splits in source space -------------------------------------------------------------------

def load_source_splits(cfg: dict, data_cfg: dict | None = None, seed: int | None = None, progress: bool = True):
    """`data.dataset.load_splits` for representation=source: every EEG channel is loaded (the inverse
    needs them), split as configured, operators fitted on the training part, and every part mapped
    to ROI sources. `splits.source` keeps the model; `splits.sensor` the matching average-referenced
    sensor data on `data.channels` (what projected trials are compared with)."""
    from data.dataset import Splits, load_recordings, split

    data_cfg = cfg["data"] if data_cfg is None else data_cfg
    full = split(load_recordings(cfg, {**data_cfg, "channels": "all"}, progress), cfg, data_cfg, seed)
    model = SourceModel.fit(full.train, cfg, data_cfg)
    parts = [model.to_source_set(getattr(full, p)) for p in ("train", "val", "test")]
    info = dict(full.info)
    info.update(representation="source", n_sources=model.n_sources, source_model=model.info)
    out = Splits(*parts, info)
    out.source = model
    out.sensor = Splits(*(model.to_sensor_set(getattr(full, p)) for p in ("train", "val", "test")), dict(full.info))
    return out


# --- figure ----------------------------------------------------------------------------------

def plot_roi(model, path: str | Path, title: str | None = None) -> Path:
    """Top view of the head: electrodes, all sources, ROI sources and anchors (SourceModel or
    SourceProjection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    if isinstance(model, SourceModel):
        ch_names, ch_pos = model.ch_names, model.ch_pos
        all_src, roi_pos = model.src_pos, model.src_pos[model.roi]
        anchors = model.src_pos[model.anchors]
        n_total = len(model.src_pos)
    else:
        ch_names, ch_pos, all_src, roi_pos, anchors = model.out_names, model.out_pos, None, model.source_pos, None
        n_total = model.info.get("n_sources_total", len(roi_pos))
    center = np.asarray(model.info.get("geometry", {}).get("r0", ch_pos.mean(axis=0)), float)

    def flat(p):  # azimuthal equidistant projection around the vertex, like MNE's topomaps
        d = np.asarray(p, float) - center
        r = np.linalg.norm(d, axis=1)
        theta = np.arccos(np.clip(d[:, 2] / r, -1, 1))
        az = np.arctan2(d[:, 1], d[:, 0])
        return np.c_[theta * np.cos(az), theta * np.sin(az)]

    if all_src is not None:
        xy = flat(all_src)
        ax.scatter(xy[:, 0], xy[:, 1], s=4, c="0.8", label=f"sources ({n_total})")
    xy = flat(roi_pos)
    ax.scatter(xy[:, 0], xy[:, 1], s=14, c="tab:red", label=f"ROI sources ({len(roi_pos)})")
    if anchors is not None:
        xy = flat(anchors)
        ax.scatter(xy[:, 0], xy[:, 1], s=60, marker="x", c="k", label="anchors")
    xy = flat(ch_pos)
    ax.scatter(xy[:, 0], xy[:, 1], s=18, facecolors="none", edgecolors="tab:blue", label="electrodes")
    for (x, y), n in zip(xy, ch_names):
        ax.annotate(n, (x, y), fontsize=5, ha="center", va="bottom", color="tab:blue")
    circle = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.pi / 2 * np.cos(circle), np.pi / 2 * np.sin(circle), c="0.5", lw=0.8)  # the horizon through r0
    ax.plot([-0.12, 0, 0.12], [np.pi / 2 - 0.01, np.pi / 2 + 0.12, np.pi / 2 - 0.01], c="0.5", lw=0.8)  # nose
    ax.set_aspect("equal")
    ax.axis("off")
    p = model.params
    anchors_txt = ", ".join(p.get("roi_channels", []))
    if len(p.get("roi_channels", [])) > 6:
        anchors_txt = f"{len(p['roi_channels'])} electrodes ({p['roi_channels'][0]}..{p['roi_channels'][-1]})"
    ax.set_title(title or f"motor ROI ({p.get('method')}): {len(roi_pos)} of {n_total} sources within "
                          f"{p.get('roi_radius_mm'):g} mm of {anchors_txt}", fontsize=9)
    ax.legend(loc="lower left", fontsize=7, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# --- run-folder files ------------------------------------------------------------------------

SOURCE_FILE = "source.json"


def write_run_files(model: SourceModel, round_dir: str | Path) -> dict:
    """`source.json` (the projection back to the scalp, ROI and operator summary) and `roi.png`."""
    from utils.checkpoint import write_json

    round_dir = Path(round_dir)
    write_json(round_dir / SOURCE_FILE, model.state())
    plot_roi(model, round_dir / "roi.png")
    return {"n_sources": model.n_sources, "head_model": model.info["head_model"]}


def load_projection(run_dir: str | Path) -> SourceProjection | None:
    """The projection a source-space run saved, or None for a sensor-space run."""
    f = Path(run_dir) / SOURCE_FILE
    if not f.is_file():
        return None
    try:
        state = json.loads(f.read_text())
    except (OSError, ValueError):
        raise UserError(f"{f}: unreadable source projection; retrain the run") from None
    return SourceProjection(state)
