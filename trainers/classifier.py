"""`model_name = classifier`: a CNN that tells imagined left from right fist movement.

One round: load the leak-free splits, fit the standardizer on training trials only, train with
AdamW, keep the last epoch's weights (`classifier.select`; or the epoch with the best VALIDATION
accuracy or loss), score the test split once, at the end, and write into the round folder:

  classifier.safetensors   weights of the selected epoch
  classifier.json          what is needed to rebuild and feed it (architecture, shapes, channel
                           names, standardizer state, representation)
  metrics.jsonl            one row per epoch: train/val loss and accuracy, learning rate, time
  curves.png               loss and accuracy curves
  checkpoint/              resumable state (weights, best weights, optimiser, RNGs, counters)
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.dataset import Standardizer, batches, epoch_order, load_splits
from models import build_classifier
from trainers.common import (GracefulInterrupt, MetricsLog, check_finite, load_training_state,
                             save_training_state)
from utils.distributed import all_reduce_mean, is_main, local_slice, unwrap, wrap_model
from utils.checkpoint import write_json
from utils.errors import UserError
from utils.runs import resolve_run_dir
from utils.runtime import autocast, seed_everything

WEIGHTS, META = "classifier.safetensors", "classifier.json"


# --- data preparation ---------------------------------------------------------------------------

def _covariance_whitener(X: np.ndarray) -> np.ndarray:
    """R^{-1/2} of the mean trial covariance (Euclidean alignment, He & Wu 2019)."""
    Xc = X.astype(np.float64)
    covs = np.einsum("nct,ndt->ncd", Xc, Xc) / X.shape[2]
    R = covs.mean(0)
    w, V = np.linalg.eigh(R)
    w = np.maximum(w, w.max() * 1e-10)
    return (V / np.sqrt(w)) @ V.T


def align(sets: dict, mode: str) -> tuple[dict, dict]:
    """Per-subject Euclidean alignment; returns (aligned sets, {"S001": whitener, ...}).

    Each subject's trials are whitened with the mean covariance of that subject's TRAINING trials
    (labels never used, test trials never used). A subject with no training trials (a held-out
    test subject of split=subject) is whitened with its own trials' mean covariance, still
    without labels, as alignment is meant to be used on a new user's unlabelled calibration data.
    """
    if mode == "none":
        return sets, {}
    train = sets["train"]
    out, whiteners = {}, {}
    for name, es in sets.items():
        X = es.X.copy()
        for s in np.unique(es.subject):
            key = f"S{int(s):03d}"
            if key not in whiteners:
                ref = train.X[train.subject == s]
                whiteners[key] = _covariance_whitener(ref if len(ref) else es.X[es.subject == s]).astype(np.float32)
            m = es.subject == s
            X[m] = np.einsum("cd,ndt->nct", whiteners[key], es.X[m])
        out[name] = copy.copy(es)
        out[name].X = X
    return out, whiteners


# --- training -----------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: torch.nn.Module, X: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for every trial, in eval mode (dropout off, batch-norm running statistics)."""
    was = model.training
    model.eval()
    out = [model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 2)


def _score(model, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float, np.ndarray]:
    if len(y) == 0:
        return float("nan"), float("nan"), np.zeros(0, np.int64)
    logits = predict(model, X)
    loss = float(F.cross_entropy(logits, y))
    pred = logits.argmax(1)
    return loss, float((pred == y).float().mean()), pred.cpu().numpy()


def _better(select: str, va_acc: float, va_loss: float, extra: dict) -> bool:
    """Is this epoch the best on validation so far? Ranked by loss for "val_loss", else by accuracy
    with the loss breaking ties ("last" still tracks it, for the curves and classifier.patience)."""
    if select == "val_loss":
        return va_loss < extra["best_val_loss"]
    return va_acc > extra["best_val_accuracy"] or (va_acc == extra["best_val_accuracy"]
                                                    and va_loss < extra["best_val_loss"])


def _lr_at(cfg: dict, epoch: int) -> float:
    """Learning rate of an epoch: linear warm-up then cosine decay to 0 (or constant)."""
    base, c = cfg["learning_rate"], cfg["classifier"]
    if c["schedule"] == "constant":
        return base
    warm = c["warmup_epochs"]
    if epoch < warm:
        return base * (epoch + 1) / (warm + 1)
    span = max(1, cfg["epochs"] - warm)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warm) / span)))


def _augment(x: torch.Tensor, cfg: dict, gen_noise: torch.Tensor, gen_shift: torch.Tensor,
             white: torch.Tensor | None = None) -> torch.Tensor:
    """Label-preserving jitter: a random circular time shift and a random amplitude scale per trial, and
    white noise (`white`, N(0, 1) per sample, times classifier.augment_noise) on the standardized trials. A
    classifier trained on noisy trials is what `finetune.cls_noise` needs: its gradient, averaged over
    that noise, is then the gradient of a classifier of noisy trials, not of one that never saw noise."""
    c = cfg["classifier"]
    if c["augment_shift_s"] > 0:
        x = torch.stack([torch.roll(xi, int(s), dims=-1) for xi, s in zip(x, gen_shift.tolist())])
    if c["augment_scale"] > 0:
        x = x * (1 + c["augment_scale"] * gen_noise)[:, None, None]
    if white is not None and c["augment_noise"] > 0:
        x = x + c["augment_noise"] * white
    return x


def train_round(cfg: dict, round_dir: Path, device: torch.device, seed: int, resume: bool = False) -> dict:
    round_dir = Path(round_dir)
    main = is_main()
    if main:
        round_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    splits = load_splits(cfg, seed=seed, progress=main)
    sets, whiteners = align({"train": splits.train, "val": splits.val, "test": splits.test},
                            cfg["classifier"]["alignment"])
    train, val, test = sets["train"], sets["val"], sets["test"]
    std = Standardizer.fit(train.X, cfg["data"]["normalize"])

    def tensors(es):
        return (torch.from_numpy(std.transform(es.X)).to(device), torch.from_numpy(es.y).long().to(device))

    (Xtr, ytr), (Xva, yva), (Xte, yte) = tensors(train), tensors(val), tensors(test)
    c = cfg["classifier"]
    arch = dict(architecture=c["architecture"], n_chans=train.n_chans, n_times=train.n_times, sfreq=train.sfreq,
                ch_names=list(train.ch_names), n_outputs=cfg["class_count"], dropout=c["dropout"])
    model = build_classifier(**arch).to(device)
    best = copy.deepcopy(model).eval()
    net = wrap_model(model, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=c["weight_decay"])

    counters = {"epoch": 0, "best_epoch": 0, "kept_epoch": 0, "bad_epochs": 0, "stopped": False}
    extra = {"best_val_accuracy": -1.0, "best_val_loss": float("inf"), "kept_val_accuracy": float("nan"),
             "train_time_s": 0.0, "samples": 0}
    if resume:
        counters, extra = load_training_state(round_dir, {"model": model, "best": best}, {"model": opt}, cfg)
    log = MetricsLog(round_dir / "metrics.jsonl", keep_until=counters["epoch"] if resume else None) if main else None

    n, bs, epochs = len(ytr), cfg["batch_size"], cfg["epochs"]
    shift_max = int(round(c["augment_shift_s"] * train.sfreq))
    bar = tqdm(range(counters["epoch"], epochs), desc=f"classifier {c['architecture']}", unit="epoch",
               disable=not main, initial=counters["epoch"], total=epochs)

    def checkpoint():
        if main:
            save_training_state(round_dir, {"model": model, "best": best}, {"model": opt},
                                counters=counters, extra=extra, cfg=cfg)

    stop = GracefulInterrupt().start()  # Ctrl-C is honoured at the next epoch boundary
    try:
        for epoch in bar:
            if counters["stopped"]:
                break
            t0 = time.time()
            lr = _lr_at(cfg, epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            net.train()
            loss_sum = correct = seen = 0.0
            for step, idx in enumerate(batches(epoch_order(n, cfg["buffer_size"], seed, epoch), bs)):
                # Randomness for the GLOBAL batch, then this rank's slice: same draws whatever the world size.
                noise, shift = torch.randn(len(idx)), torch.randint(-shift_max, shift_max + 1, (len(idx),))
                white = torch.randn((len(idx),) + tuple(Xtr.shape[1:])) if c["augment_noise"] > 0 else None
                sl = local_slice(len(idx))
                if sl.start >= sl.stop:  # DDP: a last batch smaller than the world size
                    continue
                idx_t = torch.as_tensor(idx[sl], device=device)
                xb = _augment(Xtr[idx_t], cfg, noise[sl].to(device), shift[sl],
                              None if white is None else white[sl].to(device))
                yb = ytr[idx_t]
                with autocast(cfg, device):  # training.bf16 on CUDA; nothing on CPU
                    logits = net(xb)
                    loss = F.cross_entropy(logits, yb, label_smoothing=c["label_smoothing"])
                check_finite(loss.item(), "classifier loss", epoch + 1, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(yb)
                correct += float((logits.argmax(1) == yb).sum())
                seen += len(yb)
            dt = time.time() - t0
            extra["train_time_s"] += dt
            extra["samples"] += n
            tr_loss, tr_acc = all_reduce_mean(loss_sum / max(seen, 1)), all_reduce_mean(correct / max(seen, 1))
            va_loss, va_acc, _ = _score(model, Xva, yva)
            counters["epoch"] = epoch + 1
            improved = len(yva) == 0 or _better(c["select"], va_acc, va_loss, extra)
            if improved:
                extra["best_val_accuracy"], extra["best_val_loss"] = va_acc, va_loss
                counters["best_epoch"], counters["bad_epochs"] = epoch + 1, 0
            else:
                counters["bad_epochs"] += 1
            # Kept weights. On small pools validation picks noise: S006-S010 (30 validation trials,
            # seed 42) chose epoch 2, 0.56 on run 12, where the last epoch scores 0.63 (README).
            if improved or c["select"] == "last":
                best.load_state_dict(model.state_dict())
                counters["kept_epoch"], extra["kept_val_accuracy"] = epoch + 1, va_acc
            if c["patience"] is not None and counters["bad_epochs"] >= c["patience"]:
                counters["stopped"] = True
            if main:
                log.append({"epoch": epoch + 1, "train_loss": tr_loss, "train_accuracy": tr_acc, "val_loss": va_loss,
                            "val_accuracy": va_acc, "lr": lr, "epoch_time_s": round(dt, 4)})
                bar.set_postfix(loss=f"{tr_loss:.3f}", val_acc=f"{va_acc:.3f}")
            if counters["stopped"] or (epoch + 1) % cfg["training"]["checkpoint_every"] == 0 or epoch + 1 == epochs:
                checkpoint()
            if counters["stopped"]:
                break
            stop.check()
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        stop.close()
        bar.close()

    # The test split is scored once, with the kept weights (classifier.select).
    te_loss, te_acc, te_pred = _score(best, Xte, yte)
    per_subject = {f"S{int(s):03d}": float((te_pred[test.subject == s] == test.y[test.subject == s]).mean())
                   for s in np.unique(test.subject)}
    meta = {**arch, "n_params": sum(p.numel() for p in best.parameters()), "standardizer": std.state(),
            "normalize": cfg["data"]["normalize"], "alignment": c["alignment"],
            # Inputs must be whitened per subject (X -> W @ X) before the standardizer when alignment is on.
            "alignment_whiteners": {k: w.tolist() for k, w in whiteners.items()}, "representation": cfg["representation"],
            "classes": ["left", "right"], "select": c["select"], "kept_epoch": counters.get("kept_epoch"),
            "best_epoch": counters["best_epoch"], "data": cfg["data"]}
    if main:
        _save_weights(best, round_dir / WEIGHTS)
        write_json(round_dir / META, meta)
        if splits.source is not None:  # representation=source: ROI figure + projection (data/sources.py)
            from data.sources import write_run_files

            write_run_files(splits.source, round_dir)
        plot_curves(log.rows(), round_dir / "curves.png", counters.get("kept_epoch"))
    epochs_done = counters["epoch"]
    t = max(extra["train_time_s"], 1e-9)
    return {
        "architecture": c["architecture"], "epochs_completed": epochs_done, "stopped_early": counters["stopped"],
        "select": c["select"], "kept_epoch": counters.get("kept_epoch"),
        "val_accuracy": None if len(yva) == 0 else extra.get("kept_val_accuracy"),
        "best_epoch": counters["best_epoch"],
        "best_val_accuracy": None if len(yva) == 0 else extra["best_val_accuracy"],
        "test_accuracy": te_acc, "test_loss": te_loss, "test_accuracy_per_subject": per_subject,
        "n_train": len(ytr), "n_val": len(yva), "n_test": len(yte), "n_params": meta["n_params"],
        "train_samples_per_s": round(extra["samples"] / t, 1), "s_per_epoch": round(t / max(epochs_done, 1), 4),
        "split": splits.info,
    }


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}, tmp,
                  metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plot_curves(rows: list[dict], path: Path, kept_epoch: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, what in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            vals = [r.get(f"{split}_{what}") for r in rows]
            ax.plot(ep, [np.nan if v is None else v for v in vals], style, label=split)
        if kept_epoch:
            ax.axvline(kept_epoch, color="grey", lw=0.8, ls=":", label="kept epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.5, color="k", lw=0.5)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- loading ------------------------------------------------------------------------------------

def load_classifier(run_dir, device="cpu", all_rounds: bool = False,
                    subjects: list[int] | None = None) -> tuple[torch.nn.Module, dict]:
    """A trained classifier in eval mode with frozen weights, and its metadata (incl. a Standardizer).

    `run_dir` may be a run folder, `<output_dir>/classifier/latest` or the model folder; a run with
    several rounds gives round-0's model, or with all_rounds (finetune.classifier_rounds = "all") every
    round's model as one models.classifier_ensemble.ClassifierEnsemble taking round-0's units (the
    metadata is round-0's, with "ensemble" the number of members).

    A classifier trained with `classifier.alignment` reads trials whitened per subject. Given `subjects`
    (subject numbers), it comes as a ClassifierEnsemble (of one or more members) that whitens each trial
    itself, with its subject given as an index into `subjects`; without, round-0's model is returned as
    trained, for inputs the caller has whitened.
    """
    folders = _round_folders(run_dir, all_rounds)
    loaded = [_load_one_classifier(run_dir, folder, device) for folder in folders]
    model, meta = loaded[0]
    aligned = meta.get("alignment", "none") != "none"
    if aligned and subjects is None and len(loaded) > 1:
        raise UserError(f"classifier run folder {run_dir}: its rounds were trained on trials whitened per "
                        "subject, so they can be read as one only for trials of known subjects")
    if len(loaded) == 1 and not (aligned and subjects is not None):
        return model, meta
    from models.classifier_ensemble import ClassifierEnsemble

    for folder, (_, m) in zip(folders[1:], loaded[1:]):
        if any(m.get(k) != meta.get(k) for k in ("architecture", "ch_names", "n_times", "sfreq", "n_outputs",
                                                  "alignment")):
            raise UserError(f"classifier run folder {run_dir}: {folder.name} differs from round-0 in architecture, "
                            "channels, length, rate or alignment, so its rounds cannot be read as one classifier")
    stds = [m["standardizer"] for _, m in loaded]
    whiteners = [_subject_whiteners(run_dir, folder, m, subjects) for folder, (_, m) in zip(folders, loaded)] \
        if aligned else None
    ensemble = ClassifierEnsemble([m for m, _ in loaded], [s.std for s in stds], [s.mean for s in stds], whiteners)
    ensemble.to(device).eval()
    return ensemble, {**meta, "ensemble": len(loaded)}


def _round_folders(run_dir, all_rounds: bool) -> list[Path]:
    """The round folders `load_classifier` reads: the run folder itself for a one-round run, else round-0, or every
    round-N with all_rounds."""
    run = resolve_run_dir(run_dir, "classifier run folder")
    if (run / META).is_file():
        return [run]
    folders = sorted((d for d in run.glob("round-*") if re.fullmatch(r"round-\d+", d.name)),
                     key=lambda d: int(d.name.split("-")[1]))
    return folders if all_rounds and folders else [run / "round-0"]


def classifier_meta(run_dir) -> dict:
    """Round-0's classifier.json (architecture, alignment, ...) without loading any weights."""
    folder = _round_folders(run_dir, all_rounds=False)[0]
    try:
        return json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"classifier run folder {run_dir}: no readable {META} (unfinished or not a classifier run: "
                        f"{e.__class__.__name__})") from None


def _subject_whiteners(run_dir, folder: Path, meta: dict, subjects: list[int]) -> np.ndarray:
    """(len(subjects), C, C): the round's alignment whitener of each subject, in the order of `subjects`."""
    table = meta.get("alignment_whiteners") or {}
    missing = [f"S{int(s):03d}" for s in subjects if f"S{int(s):03d}" not in table]
    if missing:
        raise UserError(f"classifier run folder {run_dir}: {folder.name} was trained with alignment on "
                        f"{', '.join(sorted(table)) or 'no subjects'}, so it cannot whiten trials of {', '.join(missing)}")
    return np.stack([np.asarray(table[f"S{int(s):03d}"], np.float64) for s in subjects])


def _load_one_classifier(run_dir, folder: Path, device) -> tuple[torch.nn.Module, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"classifier run folder {run_dir}: no {META}/{WEIGHTS} (unfinished or not a classifier run)")
    try:
        meta = json.loads((folder / META).read_text())
        model = build_classifier(meta["architecture"], meta["n_chans"], meta["n_times"], meta["sfreq"],
                                 meta["ch_names"], meta.get("n_outputs", 2), meta.get("dropout", 0.5))
        state = load_file(str(folder / WEIGHTS))
        model.load_state_dict(state)
    except (OSError, json.JSONDecodeError, KeyError, SafetensorError, RuntimeError) as e:
        raise UserError(f"classifier run folder {run_dir}: cannot load the model "
                        f"({str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__})") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    meta["standardizer"] = Standardizer.from_state(meta["standardizer"])
    return model, meta
