"""`--mode evaluate`: how real is a GAN run's EEG, and what is it worth for decoding?

A round folder's generator emits trials that are compared with the REAL HELD-OUT trials (test
split) of the run's target data (`cfg["data"]`). Every metric is reported for three candidates:

- `gan`: the generator's trials;
- `phase_random`: a trivial generator, Fourier phase-randomised copies of real training trials
  (same amplitude spectrum per channel, one random phase per frequency shared by all channels,
  so spatial covariance is kept);
- `real`: the floor, real held-out trials the reference never saw.

Distribution metrics compare a candidate with one half of the held-out trials (`R_B`); the floor
candidate is the other half (`R_A`) and every candidate has `R_A`'s class counts, so set-size
bias is the same for all three. Decoding metrics train on the candidate (or on real training
trials: TRTR) and test on all held-out trials.

The GAN-independent parts (floor, baseline, real-only low-data accuracies and the fixed feature
classifier) are cached under `<cache_dir>/evaluation/`, so evaluating every round of a run costs
only the GAN's own share.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils import metrics as M
from utils.checkpoint import write_json
from utils.errors import UserError

CANDIDATES = ("gan", "phase_random", "real")
# Evaluation settings; `cfg["evaluation"]` overrides them (see config/schema.py).
DEFAULTS = {"n_per_class": None, "augment_trials": [5, 10, 20], "augment_seeds": 3, "augment_per_class": 40,
            "classifier_steps": 100, "classifier_batch": 32, "classifier_lr": 0.003, "architecture": None, "fd_dims": 32,
            "csp_components": 6, "reference_seeds": 3, "tstr_seeds": 3, "figures": True, "subjects": None}
CACHE_VERSION = 6  # 2: band-power LDA in the decoding references; 3: per-trial correctness (intervals);
# 4: the phase-randomised candidate's CNN averaged over evaluation.tstr_seeds; 5: the pool in load order;
# 6: candidates' distribution subsets in the real half's subject mix


def settings(cfg: dict) -> dict:
    s = dict(DEFAULTS)
    s.update({k: v for k, v in (cfg.get("evaluation") or {}).items() if k in DEFAULTS})
    if s["architecture"] is None:
        s["architecture"] = cfg["classifier"]["architecture"]
    return s


class RealData:
    """Real training pool (train + validation trials) and held-out test trials with their halves."""

    def __init__(self, cfg: dict, progress: bool = True):
        from data.dataset import load_splits

        # The pool (training + validation trials) in load order, subject by subject, whatever the validation
        # draw: a run on some subjects and a larger run judged on them (evaluation.subjects) then hold the same
        # trials in the same order, so their real-trained yardsticks are the same CNNs.
        splits = load_splits(cfg, {**cfg["data"], "val_fraction": 0.0}, seed=cfg["seed"], progress=progress)
        if splits.sensor is not None:  # representation=source: judge on the scalp, where bundle.sample() projects
            splits = splits.sensor
        pool, te = splits.pooled().train, splits.test  # the trials a GAN run trains on
        only = (cfg.get("evaluation") or {}).get("subjects")
        if only is not None:
            pool, te = (_only_subjects(pool, only, "training"), _only_subjects(te, only, "held-out"))
        self.info = splits.info
        self.X_pool, self.y_pool, self.subject_pool = pool.X, pool.y, pool.subject
        self.X_test, self.y_test, self.subject_test = te.X, te.y, te.subject
        self.rest = te.rest
        self.sfreq, self.ch_names = float(te.sfreq), list(te.ch_names)
        a, b = M.split_halves(te.y, cfg["seed"], te.subject)
        self.X_a, self.y_a, self.X_b, self.y_b = te.X[a], te.y[a], te.X[b], te.y[b]
        self.subject_a = te.subject[a]
        self.scale = np.maximum(self.X_pool.std(axis=(0, 2)), 1e-30)

    @property
    def counts_a(self) -> list[int]:
        return [int((self.y_a == c).sum()) for c in (0, 1)]


def _only_subjects(trials, subjects, what: str):
    """evaluation.subjects: the trials of these subjects (a one-line error when the data lacks one)."""
    missing = sorted(set(subjects) - set(np.unique(trials.subject).tolist()))
    if missing:
        raise UserError(f"config key 'evaluation.subjects': the {what} trials hold no trials of subject(s) "
                        f"{missing} (they hold {sorted(np.unique(trials.subject).tolist())})")
    return trials.subset(np.isin(trials.subject, subjects))


def _subset_like(X, y, subject, ref_y, ref_subject, rng) -> tuple[np.ndarray, np.ndarray]:
    """Trials of (X, y) in the class counts of the reference labels ref_y and, when both sides have subject
    numbers, in its (subject, class) counts (topped up from the rest of the class where a subject has too few).
    Why: the real half A that a candidate's distribution metrics are compared with is stratified by subject
    (utils.metrics.split_halves), and subjects' power differs several-fold, so a candidate subset with a chance
    subject mix carried that mix as noise (the pooled ten-subject pretrained GAN: Fréchet 201 with it, 106
    without; bench/RESULTS.md, session 25)."""
    if subject is None or ref_subject is None:
        return _subset_by_counts(X, y, [int((ref_y == c).sum()) for c in (0, 1)], rng)
    subject, idx = np.asarray(subject), []
    for c in (0, 1):
        chosen = []
        for u in np.unique(ref_subject):
            need = int(((ref_subject == u) & (ref_y == c)).sum())
            chosen.extend(rng.permutation(np.flatnonzero((subject == u) & (y == c)))[:need].tolist())
        short = int((ref_y == c).sum()) - len(chosen)
        if short > 0:
            chosen.extend(rng.permutation(np.setdiff1d(np.flatnonzero(y == c), chosen))[:short].tolist())
        idx.extend(chosen)
    idx = np.asarray(idx, dtype=int)
    return X[idx], y[idx]


def _subset_by_counts(X, y, counts, rng) -> tuple[np.ndarray, np.ndarray]:
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c, n in enumerate(counts)])
    return X[idx], y[idx]


class Evaluator:
    """Scores candidate trial sets against the real held-out data of one configuration."""

    def __init__(self, cfg: dict, device="cpu", progress: bool = True, real: RealData | None = None):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.s = settings(cfg)
        self.seed = cfg["seed"]
        self.real = real or RealData(cfg, progress)
        self.fixed = None   # classifier trained on the real pool: TRTR and Frechet features
        self.pca = None

    # --- classifiers ------------------------------------------------------------------------
    def fit(self, X, y, seed: int) -> M.FittedClassifier:
        r = self.real
        return M.fit_classifier(X, y, r.sfreq, r.ch_names, self.s["architecture"], steps=self.s["classifier_steps"],
                                batch_size=self.s["classifier_batch"], lr=self.s["classifier_lr"], dropout=self.cfg["classifier"]["dropout"],
                                seed=seed, device=self.device)

    def fixed_classifier(self, state: dict | None = None) -> M.FittedClassifier:
        """The fixed real-data classifier; restored from `state` (cached weights) when given."""
        if self.fixed is None:
            r = self.real
            if state is not None:
                from data.dataset import Standardizer
                from models import build_classifier

                model = build_classifier(self.s["architecture"], len(r.ch_names), r.X_pool.shape[-1], r.sfreq,
                                         r.ch_names, 2, self.cfg["classifier"]["dropout"])
                model.load_state_dict({k: v for k, v in state["weights"].items()})
                model.to(self.device).eval().requires_grad_(False)
                self.fixed = M.FittedClassifier(model, Standardizer.from_state(state["standardizer"]), self.device)
            else:
                self.fixed = self.fit(r.X_pool, r.y_pool, self.seed)
            from sklearn.decomposition import PCA

            F = self.fixed.features(r.X_pool)
            k = int(min(self.s["fd_dims"], F.shape[1], len(F) - 1))
            self.pca = PCA(n_components=k, random_state=0).fit(F)
        return self.fixed

    def features(self, X) -> np.ndarray:
        fixed = self.fixed_classifier()  # first: it fits the PCA on a first call
        return self.pca.transform(fixed.features(X))

    # --- the metric families --------------------------------------------------------------
    def distribution(self, X, y) -> dict:
        """Candidate (R_A-sized) vs the reference half R_B."""
        r = self.real
        out = {"frechet": M.frechet_distance(self.features(X), self.features(r.X_b)),
               "sliced_wasserstein": M.sliced_wasserstein(X, r.X_b, scale=r.scale, seed=self.seed),
               **M.psd_db_difference(X, r.X_b, r.sfreq),
               "band_power_error": M.band_power_errors(X, y, r.X_b, r.y_b, r.sfreq, r.ch_names),
               "lateralization": M.lateralization_agreement(X, y, r.X_b, r.y_b, r.sfreq, r.ch_names),
               **M.nn_distance_ratio(X, r.X_pool, r.X_b),
               **M.amplitude_sanity(X, r.X_b)}
        return out

    def decoding(self, X, y, seed: int, clf: M.FittedClassifier | None = None, cnn_seeds: int | None = None) -> dict:
        """Train on the candidate, test on every held-out trial (TSTR; TRTR for the real pool).

        Each decoder's accuracy, its 95% Wilson interval (`ci95`) and which held-out trials it got right
        (`correct` in test order: the paired comparison of `tstr_uncertainty` needs them). The CNN part is
        averaged trial by trial over `cnn_seeds` CNNs (seeds seed, seed+1, ...; `clf`, when given, is the
        first; default evaluation.tstr_seeds), and `cnn_per_seed` holds each one's accuracy: one short CNN
        training is a noisy measurement (on S006-S010 four seeds of the real-trained CNN scored 0.627-0.693 on
        run 12, bench/RESULTS.md session 22), on real and generated trials alike."""
        r = self.real
        n = self.s["tstr_seeds"] if cnn_seeds is None else cnn_seeds
        runs = [((clf if i == 0 and clf is not None else self.fit(X, y, seed + i)).predict(r.X_test)
                 == r.y_test).astype(float) for i in range(n)]
        correct = {"cnn": np.mean(runs, 0),
                   "csp_lda": (M.csp_lda_predict(X, y, r.X_test, self.s["csp_components"]) == r.y_test).astype(int),
                   "band_lda": (M.band_lda_predict(X, y, r.X_test, r.sfreq) == r.y_test).astype(int)}
        out = {k: float(c.mean()) for k, c in correct.items()}
        out["ci95"] = {k: list(M.wilson_interval(int(round(c.sum())), len(c))) for k, c in correct.items()}
        out["correct"] = {k: c.tolist() for k, c in correct.items()}
        out["cnn_per_seed"] = [float(c.mean()) for c in runs]
        return out

    def real_trained_decoding(self) -> dict:
        """TRTR: `decoding` of the real pool, its CNN part averaged over `reference_seeds` CNNs (the fixed
        classifier and seeds seed+1, ...). The target bar moves with it."""
        r = self.real
        return self.decoding(r.X_pool, r.y_pool, self.seed, clf=self.fixed_classifier(),
                             cnn_seeds=self.s["reference_seeds"])

    def augmentation(self, extra_fn, desc: str) -> dict:
        """Accuracy on held-out trials when k real trials per class (+ extra trials) train the classifier.

        extra_fn(idx, seed) -> (X_extra, y_extra) or None for real-only. Returns per k the per-seed
        accuracies of the CNN and CSP+LDA.
        """
        r = self.real
        out = {}
        cells = [(k, s) for k in self.s["augment_trials"] for s in range(self.s["augment_seeds"])]
        for k, s in tqdm(cells, desc=desc, disable=not self.progress, leave=False):
            seed = self.seed + 1000 * k + s
            idx = M.low_data_subset(r.y_pool, k, seed)
            X, y = r.X_pool[idx], r.y_pool[idx]
            if extra_fn is not None:
                Xe, ye = extra_fn(idx, seed)
                X, y = np.concatenate([X, Xe]), np.concatenate([y, ye])
            cell = out.setdefault(str(k), {"cnn": [], "csp_lda": []})
            cell["cnn"].append(self.fit(X, y, seed).accuracy(r.X_test, r.y_test))
            cell["csp_lda"].append(M.csp_lda_accuracy(X, y, r.X_test, r.y_test, self.s["csp_components"]))
        return out

    # --- the two trivial candidates -----------------------------------------------------------
    def phase_extra(self, idx, seed):
        """m phase-randomised copies per class of the k chosen real trials (cycled, fresh phases)."""
        r, m = self.real, self.s["augment_per_class"]
        sel = np.concatenate([np.resize(idx[r.y_pool[idx] == c], m) for c in (0, 1)])
        return M.phase_randomize(r.X_pool[sel], seed + 1), r.y_pool[sel]

    def real_extra(self, idx, seed):
        """m more real training trials per class, none of the k chosen ones: what real data would add."""
        r, m = self.real, self.s["augment_per_class"]
        rest = np.setdiff1d(np.arange(len(r.y_pool)), idx)
        rng = np.random.default_rng(seed + 2)
        sel = np.concatenate([rng.permutation(rest[r.y_pool[rest] == c])[:m] for c in (0, 1)])
        return r.X_pool[sel], r.y_pool[sel]

    def references(self) -> dict:
        """Floor and phase-randomised baseline for every metric, plus real-only low-data accuracies."""
        r = self.real
        rng = np.random.default_rng(self.seed + 11)
        Xp, yp = _subset_like(r.X_pool, r.y_pool, r.subject_pool, r.y_a, r.subject_a, rng)
        phase_dist = M.phase_randomize(Xp, self.seed + 12)
        phase_pool = M.phase_randomize(r.X_pool, self.seed + 13)
        steps = tqdm(total=5, desc="evaluation references", disable=not self.progress, leave=False)
        trtr = self.real_trained_decoding()
        steps.update()
        out = {"real": {"distribution": self.distribution(r.X_a, r.y_a), "decoding": trtr}}
        steps.update()
        out["phase_random"] = {"distribution": self.distribution(phase_dist, yp),
                               "decoding": self.decoding(phase_pool, r.y_pool, self.seed + 3)}
        steps.update()
        out["real_only"] = self.augmentation(None, "low-data real only")
        steps.update()
        out["phase_random"]["augmented"] = self.augmentation(self.phase_extra, "low-data + phase-random")
        out["real"]["augmented"] = self.augmentation(self.real_extra, "low-data + real")
        steps.update()
        steps.close()
        return out

    def score_generated(self, X_gen, y_gen, seed: int, subject=None) -> dict:
        """Every metric for generated trials (X_gen holds at least augment_per_class per class; `subject`
        their subject numbers when the generator is subject-conditioned)."""
        r = self.real
        rng = np.random.default_rng(seed)
        Xd, yd = _subset_like(X_gen, y_gen, subject, r.y_a, r.subject_a, rng)
        out = {"distribution": self.distribution(Xd, yd), "decoding": self.decoding(X_gen, y_gen, seed + 3)}
        m = self.s["augment_per_class"]

        def gan_extra(idx, s):
            return _subset_by_counts(X_gen, y_gen, [m, m], np.random.default_rng(s + 3))

        out["augmented"] = self.augmentation(gan_extra, "low-data + generated")
        return out


# --- reference cache ------------------------------------------------------------------------------

def _cache_key(cfg: dict, s: dict) -> str:
    data = {k: v for k, v in cfg["data"].items() if k != "download"}
    blob = {"v": CACHE_VERSION, "data": data, "data_path": str(Path(cfg["data_path"]).resolve()),
            "subject_count": cfg["subject_count"], "representation": cfg["representation"],
            "source": cfg.get("source"), "seed": cfg["seed"], "dropout": cfg["classifier"]["dropout"],
            "settings": {k: v for k, v in s.items() if k != "figures"}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_references(ev: Evaluator) -> dict:
    """Evaluator.references(), read from / written to `<cache_dir>/evaluation/<key>/`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    folder = Path(ev.cfg["cache_dir"]) / "evaluation" / _cache_key(ev.cfg, ev.s)
    ref_file, w_file = folder / "references.json", folder / "classifier.safetensors"
    if ref_file.is_file() and w_file.is_file():
        try:
            ref = json.loads(ref_file.read_text())
            ev.fixed_classifier({"weights": load_file(str(w_file)), "standardizer": ref["standardizer"]})
            return ref["references"]
        except (OSError, json.JSONDecodeError, KeyError, RuntimeError, SafetensorError):
            ev.fixed = None  # stale or damaged cache (e.g. the classifier code changed): recompute
    refs = ev.references()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".classifier.safetensors.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in ev.fixed.model.state_dict().items()}, str(tmp))
        tmp.replace(w_file)
        write_json(ref_file, {"references": refs, "standardizer": ev.fixed.standardizer.state()})
    except OSError:
        pass  # a read-only cache only costs time
    return refs


# --- headline numbers, report -------------------------------------------------------------------

def _acc_stats(cells: dict, k: str, model: str) -> dict:
    return M.summarize(cells.get(k, {}).get(model, []))


def augmentation_table(result: dict) -> dict:
    """Per k: real-only accuracy and the gain of each kind of extra trials, mean and std over seeds."""
    out = {}
    base = result["references"]["real_only"]
    for k in base:
        row = {}
        for model in ("cnn", "csp_lda"):
            row[f"{model}_real_only"] = _acc_stats(base, k, model)
            for cand in CANDIDATES:
                aug = result["candidates"][cand].get("augmented", {})
                if k not in aug:
                    continue
                gains = np.asarray(aug[k][model]) - np.asarray(base[k][model])
                row[f"{model}_gain_{cand}"] = M.summarize(gains.tolist())
        out[k] = row
    return out


# (headline key eval_tstr_<key>, key in a candidate's `decoding`, name in the report)
TSTR_DECODERS = (("cnn", "cnn", "CNN"), ("csp", "csp_lda", "CSP+LDA"), ("band", "band_lda", "band-power LDA"))
TARGET_SHARE = 0.8  # the target: 80% of the real-trained decoder's margin over chance


def mean_correctness(rounds: list[dict], candidate: str = "gan") -> dict[str, np.ndarray]:
    """Per decoder (headline key): which held-out trials the decoder trained on `candidate` got right,
    averaged over rounds. `rounds`: the `candidates` of evaluated rounds over the same held-out trials;
    a decoder missing from a round (a run evaluated before session 22) is left out."""
    out = {}
    for key, dk, _ in TSTR_DECODERS:
        vals = [c[candidate]["decoding"].get("correct", {}).get(dk) for c in rounds]
        if all(v is not None for v in vals) and len({len(v) for v in vals}) == 1:
            out[key] = np.mean(vals, 0)
    return out


def tstr_uncertainty(rounds: list[dict], groups, seed: int) -> dict:
    """Per decoder: the GAN's train-on-synthetic accuracy minus the target bar, with a 95% paired bootstrap
    interval over the held-out trials resampled within each subject (`metrics.margin_shortfall`).

    Several rounds are averaged trial by trial first (`mean_correctness`), so the interval is that of the
    mean over rounds: the generators' seed-to-seed spread averages down, the held-out set's own noise, shared
    by every round, does not."""
    gen, real = mean_correctness(rounds, "gan"), mean_correctness(rounds, "real")
    return {key: M.margin_shortfall(gen[key], real[key], TARGET_SHARE, groups=groups, seed=seed)
            for key in gen if key in real and len(gen[key]) == len(real[key])}


def evaluated_rounds(run_dir) -> list[dict]:
    """The evaluation.json of each round of an evaluated GAN run (one for a single-round run), in order."""
    run_dir = Path(run_dir)
    rounds = sorted(run_dir.glob("round-*/evaluation.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return [json.loads(p.read_text()) for p in (rounds or [run_dir / "evaluation.json"]) if p.is_file()]


def headline(result: dict) -> dict:
    """Flat numbers merged into the GAN round summary (prefix eval_)."""
    c = result["candidates"]
    h = {}
    for name, short in (("gan", ""), ("phase_random", "_phase"), ("real", "_floor")):
        d, dec = c[name]["distribution"], c[name]["decoding"]
        h[f"eval_tstr_cnn{short}"] = dec["cnn"]
        h[f"eval_tstr_csp{short}"] = dec["csp_lda"]
        h[f"eval_tstr_band{short}"] = dec["band_lda"]
        h[f"eval_frechet{short}"] = d["frechet"]
        h[f"eval_swd{short}"] = d["sliced_wasserstein"]
        h[f"eval_psd_db{short}"] = d["psd_db_abs"]
        h[f"eval_nn_ratio{short}"] = d["nn_ratio"]
        h[f"eval_std_ratio{short}"] = d["std_ratio"]
        h[f"eval_band_error{short}"] = d["band_power_error"].get("mean_abs", math.nan)
    for key, dk, _ in TSTR_DECODERS:
        lo_hi = c["gan"]["decoding"].get("ci95", {}).get(dk)
        if lo_hi:
            h[f"eval_tstr_{key}_ci_lo"], h[f"eval_tstr_{key}_ci_hi"] = lo_hi
    for key, u in result.get("tstr_uncertainty", {}).items():
        h[f"eval_tstr_{key}_bar_diff"] = u["difference"]
        h[f"eval_tstr_{key}_bar_diff_lo"], h[f"eval_tstr_{key}_bar_diff_hi"] = u["lo"], u["hi"]
    aug = result["augmentation"]
    for k, row in aug.items():
        for cand, short in (("gan", ""), ("phase_random", "_phase"), ("real", "_floor")):
            g = row.get(f"cnn_gain_{cand}")
            if g:
                h[f"eval_aug_gain_{k}{short}"] = g["mean"]
                h[f"eval_aug_gain_{k}{short}_std"] = g["std"]
    h["eval_nan_count"] = c["gan"]["distribution"]["nan_count"] + c["gan"]["distribution"]["inf_count"]
    h["eval_time_s"] = result["time_s"]
    return h


def _noise_verdict(h: dict, key: str, n_test) -> str:
    """How the paired bootstrap interval of (train-on-synthetic - bar) reads, or '' without one."""
    lo, hi = h.get(f"eval_tstr_{key}_bar_diff_lo"), h.get(f"eval_tstr_{key}_bar_diff_hi")
    if lo is None or hi is None:
        return ""
    trials = f"{n_test} held-out trials" if n_test else "the held-out trials"
    verdict = ("beyond the noise of" if lo > 0 else "missed beyond the noise of" if hi < 0
               else "the bar lies within the noise of")
    return (f" Generated-trained minus bar {h[f'eval_tstr_{key}_bar_diff']:+.3f}, 95% paired bootstrap interval "
            f"[{lo:+.3f}, {hi:+.3f}]: {verdict} {trials}.")


def targets_status(h: dict, chance: float = 0.5, n_test: int | None = None) -> list[str]:
    lines = []
    for key, _, name in TSTR_DECODERS:
        t, r = h.get(f"eval_tstr_{key}"), h.get(f"eval_tstr_{key}_floor")
        if t is None or r is None:
            continue
        if r <= chance:
            lines.append(f"- Train-on-synthetic vs train-on-real ({name}): {t:.3f} vs {r:.3f}: trained on real "
                         "trials it is at chance, so there is no margin for the generated trials to keep.")
            continue
        bar = chance + TARGET_SHARE * (r - chance)
        ci = ""
        if f"eval_tstr_{key}_ci_lo" in h:
            ci = f" (95% interval {h[f'eval_tstr_{key}_ci_lo']:.3f}-{h[f'eval_tstr_{key}_ci_hi']:.3f})"
        lines.append(f"- Train-on-synthetic vs train-on-real ({name}): {t:.3f}{ci} vs {r:.3f}; 80% of the real margin "
                     f"over chance is {bar:.3f}: " + ("**met**." if t >= bar - 1e-9 else "**not met**.")
                     + _noise_verdict(h, key, n_test))
    t, tp = h.get("eval_tstr_cnn"), h.get("eval_tstr_cnn_phase")
    f, fp = h.get("eval_frechet"), h.get("eval_frechet_phase")
    g, gs = h.get("eval_aug_gain_10"), h.get("eval_aug_gain_10_std")
    if t is not None and tp is not None:
        lines.append(f"- Train-on-synthetic accuracy (CNN): GAN {t:.3f} vs phase-randomised {tp:.3f}: "
                     + ("**met** (GAN higher)." if t > tp else "**not met**: the GAN does not beat the trivial baseline."))
    if f is not None and fp is not None:
        lines.append(f"- Frechet distance: GAN {f:.3g} vs phase-randomised {fp:.3g}: "
                     + ("**met** (GAN lower)." if f < fp else "**not met**: the GAN is farther from real data than the trivial baseline."))
    if g is not None:
        lines.append(f"- Augmentation gain at 10 real trials/class (CNN, mean over seeds): {100 * g:+.1f} "
                     f"+- {100 * gs:.1f} points (target +3): " + ("**met**." if g >= 0.03 else "**not met**."))
    return lines


def _fmt(v, pct=False) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


METRIC_ROWS = [  # (label, path into a candidate's result, percentage?)
    ("TSTR accuracy, CNN (TRTR for real)", ("decoding", "cnn"), True),
    ("TSTR accuracy, CSP+LDA (TRTR for real)", ("decoding", "csp_lda"), True),
    ("TSTR accuracy, band-power LDA (TRTR for real)", ("decoding", "band_lda"), True),
    ("Frechet distance (classifier features)", ("distribution", "frechet"), False),
    ("Sliced Wasserstein (units of real std)", ("distribution", "sliced_wasserstein"), False),
    ("mean abs log-PSD difference, dB (4-40 Hz)", ("distribution", "psd_db_abs"), False),
    ("mu/beta power rel. error at C3/Cz/C4 (mean abs)", ("distribution", "band_power_error", "mean_abs"), False),
    ("mu lateralisation C3, right - left, dB (reference: below)", ("distribution", "lateralization", "C3_generated_db"), False),
    ("mu lateralisation C4, right - left, dB", ("distribution", "lateralization", "C4_generated_db"), False),
    ("lateralisation sign agrees at C3 / C4", ("distribution", "lateralization", "signs"), False),
    ("NN distance ratio (copying: ~0)", ("distribution", "nn_ratio"), False),
    ("std ratio (generated / real)", ("distribution", "std_ratio"), False),
    ("NaN + inf samples", ("distribution", "nan_count"), False),
]


def _get(d, path):
    if path[-1] == "signs":
        lat = _get(d, path[:-1]) or {}
        return " / ".join(_fmt(lat[f"{ch}_sign_agrees"]) for ch in ("C3", "C4") if f"{ch}_sign_agrees" in lat) or None
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _cell(candidate: dict, path, pct: bool) -> str:
    text = _fmt(_get(candidate, path), pct)
    ci = _get(candidate, ("decoding", "ci95", path[1])) if path[0] == "decoding" else None
    return text + (f" ({100 * ci[0]:.0f}-{100 * ci[1]:.0f})" if ci else "")


def metric_table(candidates: dict) -> str:
    lines = ["| metric | GAN | phase-randomised | real (floor) |", "|---|---|---|---|"]
    for label, path, pct in METRIC_ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(candidates.get(c, {}), path, pct) for c in CANDIDATES) + " |")
    return "\n".join(lines)


def augmentation_markdown(aug: dict) -> str:
    lines = ["| real trials/class | model | real only | + generated | + phase-randomised | + real (ceiling) |",
             "|---|---|---|---|---|---|"]
    for k, row in aug.items():
        for model in ("cnn", "csp_lda"):
            base = row[f"{model}_real_only"]
            cells = []
            for cand in CANDIDATES:
                g = row.get(f"{model}_gain_{cand}")
                cells.append(f"{100 * g['mean']:+.1f} +- {100 * g['std']:.1f}" if g else "n/a")
            lines.append(f"| {k} | {model} | {100 * base['mean']:.1f}% +- {100 * base['std']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(folder: Path, result: dict, figures: dict) -> Path:
    h = result["headline"]
    lat = result["candidates"]["real"]["distribution"]["lateralization"]
    ref_lat = ", ".join(f"{ch} {lat.get(f'{ch}_real_db', float('nan')):+.2f} dB" for ch in ("C3", "C4")
                        if f"{ch}_real_db" in lat)
    s = result["settings"]
    md = [f"# Evaluation of {result['model_name']} run `{result['round_dir']}`", "",
          f"Generated trials vs the real held-out trials of the target data ({result['data']['split']} split, "
          f"test {result['data'].get('test_runs') or result['data'].get('test_subjects')}: {result['n_test']} trials; "
          f"real training pool {result['n_pool']} trials). Distribution metrics: each candidate "
          f"({result['n_candidate']} trials) against one half of the held-out trials; the floor is the other half. "
          f"Classifier: `{s['architecture']}`, {s['classifier_steps']} Adam steps of {s['classifier_batch']} trials. "
          f"Frechet distance on the {result['fd_dims']} leading principal components of its penultimate features. "
          f"Phase-randomised baseline: real training trials with one random phase per frequency shared across "
          f"channels (spectrum and spatial covariance kept).", "",
          "## Targets", "", *targets_status(h, n_test=result["n_test"]), "",
          "## Metrics", "", metric_table(result["candidates"]), "",
          f"Reference lateralisation (right - left mu power) of the held-out half: {ref_lat}; real motor imagery "
          "gives C3 < 0 < C4.", "",
          "## Augmentation (accuracy gain on held-out trials, points, mean +- std over "
          f"{s['augment_seeds']} seeds; {s['augment_per_class']} extra trials per class)", "",
          augmentation_markdown(result["augmentation"]), "",
          "## Figures", ""]
    for name, p in figures.items():
        if p:
            md.append(f"![{name}]({Path(p).relative_to(folder).as_posix()})")
    md += ["", f"Evaluation time: {result['time_s']:.1f} s."]
    path = folder / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def render_figures(folder: Path, ev: Evaluator, X_gen, y_gen, round_dir: Path, s_gen=None) -> dict:
    from utils import figures as F

    r = ev.real
    fig_dir = folder / "evaluation"
    n = min(len(r.y_test), len(y_gen))
    rng = np.random.default_rng(ev.seed)
    Xg, yg = _subset_like(X_gen, y_gen, s_gen, r.y_test, r.subject_test, rng)
    Xp = M.phase_randomize(r.X_pool[:n], ev.seed + 5)
    out = {"trials": F.plot_trials(r.X_test, r.y_test, Xg, yg, r.sfreq, r.ch_names, fig_dir / "trials.png"),
           "psd": F.plot_psd(r.X_test, r.y_test, Xg, yg, r.sfreq, r.ch_names, fig_dir / "psd.png"),
           "topomap": None, "tfr": None}
    if any(c in r.ch_names for c in ("C3", "C4")):  # scalp channels (a source run is judged on the scalp too)
        out["topomap"] = F.plot_mu_topomaps(r.X_test, r.y_test, Xg, yg, r.sfreq, r.ch_names, fig_dir / "topomap_mu.png")
    if any(c in r.ch_names for c in ("C3", "C4")):
        out["tfr"] = F.plot_tfr(r.X_test, r.y_test, Xg, yg, r.sfreq, r.ch_names, fig_dir / "tfr.png", rest=r.rest)
    out["curves"] = F.plot_curves(Path(round_dir) / "metrics.jsonl", fig_dir / "curves.png")
    out["embedding"] = F.plot_embedding(r.X_test, r.y_test, Xg, yg, r.sfreq, fig_dir / "embedding.png",
                                        extra={"phase-randomised": (Xp, r.y_pool[:n])})
    return out


def _round_seed(round_dir: Path, cfg: dict) -> int:
    m = re.fullmatch(r"round-(\d+)", Path(round_dir).name)
    return cfg["seed"] + (int(m.group(1)) if m else 0)


def evaluate_round(round_dir, cfg: dict, device="cpu", progress: bool = True, real: RealData | None = None) -> dict:
    """Evaluate one finished GAN round folder: writes evaluation.json, report.md and evaluation/*.png
    there and returns the headline numbers (flat dict, keys prefixed eval_)."""
    from trainers.generate import load_generator

    t0 = time.time()
    round_dir = Path(round_dir)
    bundle = load_generator(round_dir, device=device)
    ev = Evaluator(cfg, device, progress, real)
    if ev.s["subjects"] is not None:
        bundle.only_subjects(ev.s["subjects"])
    r = ev.real
    if list(bundle.ch_names) != r.ch_names or bundle.n_times != r.X_test.shape[-1] or bundle.sfreq != r.sfreq:
        raise UserError(f"evaluate {round_dir}: the generator's channels/length/rate "
                        f"({bundle.n_chans} ch, {bundle.n_times} samples, {bundle.sfreq} Hz) differ from the target "
                        f"data's ({len(r.ch_names)} ch, {r.X_test.shape[-1]} samples, {r.sfreq} Hz)")
    refs = cached_references(ev)
    seed = _round_seed(round_dir, cfg)
    s = ev.s
    n_per_class = s["n_per_class"] or int(np.bincount(r.y_pool, minlength=2).max())
    n_per_class = max(n_per_class, s["augment_per_class"], max(r.counts_a))
    X_gen, y_gen, s_gen = bundle.sample_subjects(n_per_class, seed + 100)
    gan = ev.score_generated(X_gen, y_gen, seed + 200, subject=s_gen)
    result = {"model_name": cfg["model_name"], "round_dir": str(round_dir), "seed": seed,
              "data": r.info, "n_test": int(len(r.y_test)), "n_pool": int(len(r.y_pool)),
              "n_candidate": int(len(r.y_a)), "n_generated_per_class": n_per_class, "settings": s,
              "fd_dims": int(ev.pca.n_components_),
              "candidates": {"gan": gan, "phase_random": refs["phase_random"], "real": refs["real"]},
              "references": {"real_only": refs["real_only"]}}
    result["augmentation"] = augmentation_table(result)
    result["test_subject"] = r.subject_test.tolist()
    result["tstr_uncertainty"] = tstr_uncertainty([result["candidates"]], r.subject_test, seed + 300)
    figures = render_figures(round_dir, ev, X_gen, y_gen, round_dir, s_gen) if s["figures"] else {}
    result["time_s"] = round(time.time() - t0, 2)
    result["headline"] = headline(result)
    result["figures"] = {k: str(Path(v).relative_to(round_dir)) for k, v in figures.items() if v}
    write_json(round_dir / "evaluation.json", result)
    write_report(round_dir, result, figures)
    return result["headline"]


_PER_ROUND_INTERVAL = re.compile(r"_(ci|bar_diff)_(lo|hi)$")  # a mean of intervals is no interval


def aggregate_rounds(run_dir: Path, heads: list[dict], round_dirs: list[Path]) -> dict:
    """Mean and std over rounds of every headline number; with the rounds' evaluation.json files at hand,
    also the paired interval of the mean train-on-synthetic shortfall (`tstr_uncertainty` over all rounds)."""
    out = {"rounds": len(heads), "per_round": heads, "round_dirs": [str(p) for p in round_dirs]}
    for k in heads[0]:
        vals = [h[k] for h in heads if isinstance(h.get(k), (int, float)) and math.isfinite(h[k])]
        if vals and not _PER_ROUND_INTERVAL.search(k):
            out[k + "_mean"] = float(np.mean(vals))
            out[k + "_std"] = float(np.std(vals))
    files = [Path(p) / "evaluation.json" for p in round_dirs]
    if files and all(f.is_file() for f in files):
        results = [json.loads(f.read_text()) for f in files]
        if all("test_subject" in r and "candidates" in r for r in results):
            unc = tstr_uncertainty([r["candidates"] for r in results], results[0]["test_subject"],
                                   results[0].get("seed", 0) + 400)
            out["tstr_uncertainty"] = unc
            out["n_test"] = results[0]["n_test"]
            for key, u in unc.items():
                out[f"eval_tstr_{key}_bar_diff_lo"], out[f"eval_tstr_{key}_bar_diff_hi"] = u["lo"], u["hi"]
    return out


def write_run_report(run_dir: Path, agg: dict) -> Path:
    keys = [k[:-5] for k in agg if k.endswith("_mean")]
    lines = [f"# Evaluation over {agg['rounds']} rounds of `{run_dir}`", "",
             "Mean +- std over rounds; every round's own report is linked below.", "",
             "| metric | mean | std |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(agg[k + '_mean'])} | {_fmt(agg[k + '_std'])} |" for k in keys]
    means = {**{k: agg[k + "_mean"] for k in keys}, **{k: v for k, v in agg.items() if _PER_ROUND_INTERVAL.search(k)}}
    lines += ["", "## Targets (round means; intervals over the held-out trials with every round's decoders averaged "
              "trial by trial)", "", *targets_status(means, n_test=agg.get("n_test")), "",
              "## Rounds", ""]
    lines += [f"- [{Path(p).name}]({Path(p).relative_to(run_dir).as_posix()}/report.md)" for p in agg["round_dirs"]]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_run_evaluation(run_dir, heads: list[dict] | None = None, rds: list[Path] | None = None) -> dict:
    """Run-level evaluation.json + report.md (mean and std over rounds) of a multi-round GAN run.

    Without `heads`, the rounds' own evaluation.json files are read: a trainer can call this once
    every round has been evaluated by evaluate_round.
    """
    run_dir = Path(run_dir)
    if rds is None:
        rds = sorted((p for p in run_dir.glob("round-*") if (p / "evaluation.json").is_file()),
                     key=lambda p: int(p.name.split("-")[1]))
    if heads is None:
        heads = [json.loads((p / "evaluation.json").read_text())["headline"] for p in rds]
    if not heads:
        raise UserError(f"evaluate {run_dir}: no evaluated rounds")
    agg = aggregate_rounds(run_dir, heads, rds)
    write_json(run_dir / "evaluation.json", agg)
    write_run_report(run_dir, agg)
    return agg


def main(args) -> int:
    """`--mode evaluate --checkpoint RUN_DIR [--set key=value ...]`."""
    from config.schema import apply_overrides, validate
    from trainers.common import round_dirs
    from utils.runs import read_run_config, resolve_run_dir
    from utils.runtime import pick_device, set_threads

    run_dir = resolve_run_dir(args.checkpoint, "GAN run folder")
    cfg = validate(apply_overrides(read_run_config(run_dir), list(args.overrides or [])))
    if cfg["model_name"] == "classifier":
        raise UserError(f"evaluate {run_dir}: a classifier run; --mode evaluate needs a GAN run "
                        "(gpt2cgan, gpt2xcnn or gpt2scnn)")
    set_threads(cfg)
    device = pick_device(cfg)
    rds = round_dirs(run_dir, cfg["rounds"])
    missing = [p for p in rds if not (p / "gan.json").is_file()]
    if missing:
        raise UserError(f"evaluate {run_dir}: {missing[0].name if missing[0] != run_dir else 'the run'} has no "
                        "gan.json (training unfinished?)")
    real = RealData(cfg, progress=True)
    heads = []
    for rd in rds:
        heads.append(evaluate_round(rd, copy.deepcopy(cfg), device, progress=True, real=real))
        print(f"{rd}: report {rd / 'report.md'}")
    if len(rds) > 1:
        agg = write_run_evaluation(run_dir, heads, rds)
        h = {k[:-5]: agg[k] for k in agg if k.endswith("_mean")}
    else:
        h = heads[0]
    print(f"evaluation: {run_dir / 'report.md'}")
    keys = ("eval_tstr_cnn", "eval_tstr_cnn_phase", "eval_tstr_cnn_floor", "eval_frechet", "eval_frechet_phase",
            "eval_frechet_floor", "eval_aug_gain_10", "eval_time_s")
    print("summary: " + ", ".join(f"{k}={h[k]:.4g}" for k in keys if k in h))
    return 0
