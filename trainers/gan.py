"""gpt2cgan: class-conditional WGAN-GP pretraining of the GPT-2 generator.

Per real batch (trial order from `epoch_order`, labels taken from the real trials):
- `gan.critic_steps` critic updates on that batch, each with fresh noise and fresh interpolation
  weights: loss = E[D(fake, y)] - E[D(real, y)] + gp_weight * E[(||grad_x D(x_hat, y)||_2 - 1)^2],
  x_hat = a * real + (1 - a) * fake, a ~ U(0, 1) per trial, real and fake of the same class y;
- one generator update: adv_weight * -E[D(G(z, y), y)] + moment_weight * moment loss + psd_weight *
  spectrum loss + contrast_weight * contrast loss + envelope_weight * envelope loss + csp_envelope_weight *
  CSP-envelope loss + trial_cov_weight * trial-covariance loss (+ band_cls_weight *
  band-classifier loss, and the fine-tuning trainer's classifier term). With
  `gan.paired_classes` (default) its batch is pairs (z, left), (z, right) sharing the noise.

The moment and spectrum terms compare class-conditional statistics of the generated batch with
fixed targets computed once from all real training trials (see `SpectralTargets`). They give the
generator a direct, low-variance signal about the band power and spatial structure that motor
imagery lives in, which a WGAN critic alone conveys too slowly for a 10-minute CPU budget.

Run folder: generator.safetensors, critic.safetensors, gan.json, metrics.jsonl, figures/,
checkpoint/ (resumable), round_summary.json.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from data.dataset import Standardizer, batches, epoch_order, load_splits, pretrain_data_cfg
from models.critic import Critic, CriticConfig
from models.gpt2_generator import GPT2Generator, GPT2GeneratorConfig
from trainers.common import GracefulInterrupt, MetricsLog, check_finite, load_training_state, save_training_state
from utils import distributed as dist
from utils.checkpoint import write_json
from utils.fft import rfft
from utils.metrics import BANDS
from utils.runtime import autocast, seed_everything

# Statistics also use the whole spectrum ("broad", filter skirts included): the broadband spatial
# covariance is what CSP-type decoders see.
STAT_BANDS = {**BANDS, "broad": (0.0, float("inf"))}
CLASS_NAMES = ("left", "right")
# Time course of band power (the ERD/ERS curve): band-limited power averaged in windows of this length.
ENVELOPE_BANDS = ("theta", "mu", "beta")
ENVELOPE_WINDOW_S = 0.5
CSP_ENVELOPE_COMPONENTS = 6  # per band, half from each end of the CSP spectrum
MOTOR_TRIO = ("C3", "Cz", "C4")
# Below this many generator updates a run is warned: on S007 (24 trials, one update an epoch) the
# class structure formed between 50 and 150 updates (bench/RESULTS.md, "Transfer, session 4").
MIN_GENERATOR_UPDATES = 100


# --- spectral statistics and the objectives built on them -------------------------------------

def band_mask(freqs: torch.Tensor, bands) -> torch.Tensor:
    """True where a frequency lies in one of the named BANDS."""
    m = torch.zeros(freqs.shape, dtype=torch.bool)
    for b in bands:
        lo, hi = BANDS[b]
        m |= (freqs >= lo) & (freqs < hi)
    return m


def _equalise(pair: torch.Tensor, where: torch.Tensor, dim: int) -> None:
    """In place: both rows of a (2, ...) class pair take their mean at the indices `where` of `dim`."""
    idx = torch.nonzero(where).flatten().to(pair.device)
    if len(idx):
        sel = pair.index_select(dim, idx)
        pair.index_copy_(dim, idx, sel.mean(0, keepdim=True).expand_as(sel).contiguous())


def _pool_correlations(pair: torch.Tensor) -> None:
    """In place, on a (2, ..., C, C) class pair of covariances: both classes take the class-averaged channel
    correlations, each rescaled to its own channel variances, so the pair differs in power only."""
    sd = torch.diagonal(pair, dim1=-2, dim2=-1).clamp_min(1e-30).sqrt()
    scale = sd[..., :, None] * sd[..., None, :]
    pair.copy_((pair / scale).mean(0, keepdim=True) * scale)


class SpectralTargets(torch.nn.Module):
    """Class-conditional spectral statistics of real trials, and losses pulling a batch towards them.

    Computed in standardized units, per class c:
    - log band power per channel and band (theta, mu, beta, gamma): mean and std over trials;
    - band-passed spatial covariance per band, averaged over trials (what CSP diagonalises);
    - log of the class-mean power spectrum per channel, 1 Hz-ish rfft bins in [4, 40) Hz;
    - the time course of theta, mu and beta power per channel in 0.5 s windows (log, minus its mean).
    Band-passing is an FFT mask, so everything is differentiable and costs one rfft per batch.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, sfreq: float, class_count: int = 2,
                 band_classifier: bool = True, ema_decay: float = 0.9, subject: torch.Tensor | None = None,
                 subject_count: int = 0, envelope: bool = True, trial_cov: str | None = None,
                 shrink_contrast: bool = False, class_bands=None, class_covariance: str = "full",
                 csp_envelope: bool = False, subject_shrinkage: str = "global"):
        super().__init__()
        n_times = X.shape[-1]
        freqs = torch.fft.rfftfreq(n_times, 1.0 / sfreq)
        # Parseval with a one-sided spectrum: interior bins count twice, DC and Nyquist once.
        weight = torch.full_like(freqs, 2.0)
        weight[0] = 1.0
        if n_times % 2 == 0:
            weight[-1] = 1.0
        self.register_buffer("weight", weight.sqrt() / n_times)
        self.band_idx = [torch.nonzero((freqs >= lo) & (freqs < hi)).flatten() for lo, hi in STAT_BANDS.values()]
        self.register_buffer("psd_sel", ((freqs >= 4.0) & (freqs < 40.0)))
        # ~1 Hz bins: average neighbouring rfft bins so the target is not single-bin noise.
        self.per = max(1, int(round(1.0 / (freqs[1] - freqs[0]).item())))
        stats = [self._stats(X[y == c]) for c in range(class_count)]
        for name in ("logbp_mean", "logbp_std", "cov", "logpsd"):
            self.register_buffer(name, torch.stack([s[name] for s in stats]))
        # gan.class_covariance = "power": the class pair differs only in band power, not in how channels
        # correlate. On S006-S010 the training pool's class difference in channel correlations is mostly
        # sampling noise, and matched as it is, every generated trial carries it: a tangent-space decoder
        # tells held-out generated classes apart at 0.93, and the real trials far less (bench/RESULTS.md, session 18).
        self.pool_correlations = class_covariance == "power" and class_count == 2
        if self.pool_correlations:
            _pool_correlations(self.cov)
        # gan.class_bands: the bands whose class difference is a target (`_restrict`); the rest get the
        # class-averaged statistic. Naming all four is the default, no restriction.
        self.class_bands = tuple(BANDS) if class_bands is None else tuple(class_bands)
        self.restricted = class_count == 2 and set(self.class_bands) != set(BANDS)
        # Per STAT_BANDS entry: a band whose class difference is dropped (never "broad").
        self.dropped = torch.tensor([b in BANDS and b not in self.class_bands for b in STAT_BANDS])
        if self.restricted:
            self._restrict(self.logbp_mean, self.cov, self.logbp_std)
            # The spectrum target's ~1 Hz bins, binned like the power: their mean frequencies.
            _equalise(self.logpsd, ~band_mask(self._psd(freqs), self.class_bands), dim=-1)
        self.class_contrast_kept: dict = {}  # mean part of the class difference kept, per statistic
        self.class_contrast_noise: dict = {}  # per statistic: (|d|^2, what sampling noise alone gives)
        if shrink_contrast and class_count == 2:
            self._shrink_class_contrast(X, y, subject)
        # Band power over time within the trial, per class: real trials desynchronise after the cue
        # (pooled S001-S010 imagery, C3/C4 mu power is 1.2-1.4 times its trial mean in the first 0.5 s
        # and 0.8-0.9 at 0.5-1.5 s) and a stationary generator has none of that. Only the shape is a
        # target (log power per window minus its mean over windows); the level is the moment term's.
        self.win = max(1, int(round(ENVELOPE_WINDOW_S * sfreq)))
        # Off (weight 0): not computed at all. The CSP envelope shares the windows and band masks.
        self.n_win = n_times // self.win if envelope or csp_envelope else 0
        self.channel_envelope = envelope and self.n_win >= 2
        if self.n_win >= 2:
            mask = torch.stack([((freqs >= BANDS[b][0]) & (freqs < BANDS[b][1])).float() for b in ENVELOPE_BANDS])
            self.register_buffer("env_mask", mask)                               # (n_env_bands, F)
        if self.channel_envelope:
            with torch.no_grad():
                self.register_buffer("logenv", torch.stack([self._shape(self.envelope(X[y == c]).mean(0))
                                                            for c in range(class_count)]))
            if self.restricted:
                _equalise(self.logenv, torch.tensor([b not in self.class_bands for b in ENVELOPE_BANDS]), dim=1)
            self.register_buffer("ema_env", torch.zeros_like(self.logenv))
        self.csp_envelope = bool(csp_envelope) and self.n_win >= 2 and class_count == 2
        if self.csp_envelope:
            self._fit_csp_envelope(X, y)
        # Class contrast (right minus left): the part of the statistics that carries the label. It is
        # a few percent of the statistics themselves, so it gets its own, self-normalised term.
        # It is compared in whitened coordinates: W = (pooled class-mean covariance)^-1/2 per band,
        # where W C_c W^T is what CSP eigendecomposes, so matching it there is matching what a
        # covariance decoder learns, whatever the channels' scales.
        self.register_buffer("whiten", self._inv_sqrt(self.cov.mean(0)))       # (n_bands, C, C)
        self.register_buffer("wcov", self._whitened(self.cov))                  # (classes, n_bands, C, C)
        self.register_buffer("d_logbp", self.logbp_mean[1] - self.logbp_mean[0])
        self.register_buffer("d_wcov", self.wcov[1] - self.wcov[0])
        self.register_buffer("d_logbp_scale", self.d_logbp.pow(2).mean().clamp_min(1e-8))
        self.register_buffer("d_wcov_scale", self.d_wcov.flatten(1).pow(2).sum(-1).clamp_min(1e-12))
        # The generated side of the contrast is an exponential moving average over generator steps:
        # a 16-trial batch estimates a ~0.5 dB class difference with more noise than signal, so the
        # loss is evaluated at the EMA (low noise) while its gradient flows through the batch.
        self.ema_decay = float(ema_decay)
        self.register_buffer("ema_logbp", torch.zeros_like(self.logbp_mean))
        self.register_buffer("ema_wcov", torch.zeros_like(self.wcov))
        self.register_buffer("ema_count", torch.zeros(class_count))
        # Trial-to-trial covariance of log band power within a class (channels x bands features): the
        # correlations a decoder's weights depend on (LDA: w = cov^-1 (mean_R - mean_L)). The session-6
        # generators had the right means and per-feature spreads but too correlated features (mean
        # |corr| 0.81 against 0.69 pooled), and an LDA with their covariance lost 6 points on run 12
        # (bench/RESULTS.md, session 7). Ledoit-Wolf shrinkage: a 105-dim covariance from 24-240 trials. Off by
        # default (gan.trial_cov_weight 0): in the frobenius form, at weight 1 it fought the class terms on
        # S006-S010; the kl form (gan.trial_cov_form, session 16) doubled the generated spread along the thin
        # directions but moved train-on-synthetic by less than its seed-to-seed noise.
        self.trial_cov = trial_cov or None  # None (off), "kl" or "frobenius" (gan.trial_cov_form)
        if self.trial_cov:
            with torch.no_grad():
                lb = self.features(X)["logbp"].flatten(1).double()
            resid, _ = self._within_class(lb, y, class_count)
            cov_lw = self._ledoit_wolf(resid)
            sd = torch.diagonal(cov_lw).clamp_min(1e-12).sqrt()
            # Compared in units of the real per-feature spread: every correlation counts alike. (Whitened
            # by the real covariance instead, the one shared-gain direction that makes features move
            # together weighs 1/105 of the error, and the generators' excess correlation stayed.)
            self.register_buffer("tcov_scale", (1 / sd).float())
            self.register_buffer("tcov", (cov_lw / sd[:, None] / sd[None]).float())
            self.register_buffer("ema_tcov", torch.zeros((1,) + self.tcov.shape))
            self.register_buffer("ema_tcov_count", torch.zeros(1))
        # Per-trial class signal: a logistic regression on real trials' log band power. Batch
        # statistics of 16 trials per class are too noisy to carry a ~0.5 dB lateralisation; a
        # per-trial loss along the real discriminant direction is not.
        self.band_classifier = band_classifier
        if band_classifier:
            self._fit_band_classifier(X, y)
        # Subject conditioning: the same mean log band power and whitened covariance per (subject,
        # class) cell. A batch holds one or two trials of a cell, so the generated side is again an
        # EMA, updated whenever the cell is in the batch.
        self.subject_count = int(subject_count) if subject is not None else 0
        self.subject_contrast_kept: list[float] = []  # per subject, by _shrink_subject_contrast
        if self.subject_count:
            n_cells = self.subject_count * class_count
            cell = subject * class_count + y
            logbp = torch.zeros((n_cells,) + self.logbp_mean.shape[1:])
            cov = torch.zeros((n_cells,) + self.wcov.shape[1:])
            present = torch.zeros(n_cells, dtype=torch.bool)
            # Per cell and band: the summed variance of its mean log band power and of its mean whitened
            # covariance (the sampling noise _shrink_subject_contrast weighs each subject's difference against).
            n_stat = self.logbp_mean.shape[1]
            noise_logbp, noise_wcov = torch.zeros(n_cells, n_stat), torch.zeros(n_cells, n_stat)
            for k in range(n_cells):
                count = int((cell == k).sum())
                if count:
                    f = self.features(X[cell == k])
                    logbp[k], cov[k], present[k] = f["logbp"].mean(0), f["cov"].mean(0), True
                    if count > 1:
                        noise_logbp[k] = (f["logbp"].var(0) / count).sum(-1)
                        noise_wcov[k] = (self._whitened(f["cov"]).var(0) / count).sum((-1, -2))
            for s in range(self.subject_count):
                if present[2 * s] and present[2 * s + 1]:
                    if self.restricted:
                        self._restrict(logbp[2 * s:2 * s + 2], cov[2 * s:2 * s + 2])  # views: in place
                    if self.pool_correlations:
                        _pool_correlations(cov[2 * s:2 * s + 2])
            wcov = self._whitened(cov)
            if class_count == 2:
                self._shrink_subject_contrast(logbp, wcov, present, noise_logbp, noise_wcov, subject_shrinkage)
            self.register_buffer("cell_logbp", logbp)
            self.register_buffer("cell_wcov", wcov)
            self.register_buffer("cell_present", present)
            self.register_buffer("ema_cell_logbp", torch.zeros_like(logbp))
            self.register_buffer("ema_cell_wcov", torch.zeros_like(wcov))
            self.register_buffer("ema_cell_count", torch.zeros(n_cells))

    def _restrict(self, logbp: torch.Tensor, cov: torch.Tensor, logbp_std: torch.Tensor | None = None) -> None:
        """In place, on (2, n_stat_bands, ...) class pairs: drop the class difference of the bands outside
        `class_bands`. The broadband covariance keeps the sum of the kept bands' differences (it is the
        sum of the bands' covariances plus the filter skirts), its log power the matching relative change."""
        drop = self.dropped
        broad = list(STAT_BANDS).index("broad")
        keep = ~drop
        keep[broad] = False
        d_cov = (cov[1, keep] - cov[0, keep]).sum(0)
        d_pow = (logbp[1, keep].exp() - logbp[0, keep].exp()).sum(0)
        for t in (logbp, cov) + ((logbp_std,) if logbp_std is not None else ()):
            _equalise(t, drop, dim=1)
        mid = cov[:, broad].mean(0)
        cov[0, broad], cov[1, broad] = mid - d_cov / 2, mid + d_cov / 2
        mid = logbp[:, broad].mean(0)
        half = d_pow / (2 * mid.exp())
        logbp[0, broad], logbp[1, broad] = mid - half, mid + half

    def _shrink_subject_contrast(self, logbp, wcov, present, noise_logbp, noise_wcov, mode: str = "global") -> None:
        """Shrink each subject's right-minus-left difference towards the pooled one, James-Stein style.

        A subject's cells hold 10-25 trials, and their class difference is mostly sampling noise: on
        S001-S010 its norm is within 1.4 times what noise alone gives, for every subject (bench/RESULTS.md,
        session 7). Matched as it is, the generator reproduces that noise as class structure, which a
        classifier trained on generated trials learns and the held-out run does not have. The part kept is
        max(0, 1 - noise / |d_subject - d_pooled|^2), noise being the variance of the difference; the
        subject's class-averaged level is untouched. mode "none": every subject keeps its own difference
        (the targets before session 7). "global": one factor per subject, from its log
        band power, for both statistics (session 7). "band": one per band and statistic, each against its
        own noise, so a difference confined to one band, or to the channel correlations, is not averaged
        away by the noise of the rest (S007 pooled with S001-S009: 0.17 kept globally, though CSP+LDA on
        its own trials decodes its run 12 at 1.00; bench/RESULTS.md session 19, `bench_gan.py transforms`).
        `subject_contrast_kept` gets each subject's mean factor.
        """
        for s in range(len(logbp) // 2):
            l, r = 2 * s, 2 * s + 1
            if not (present[l] and present[r]) or (noise_logbp[l] == 0).all() or (noise_logbp[r] == 0).all():
                continue
            dev_lb = (logbp[r] - logbp[l] - self.d_logbp).pow(2).sum(-1)             # (n_bands,)
            if mode == "none":
                keeps = (torch.ones_like(dev_lb), torch.ones_like(dev_lb))
            elif mode == "global":
                keep = (1 - (noise_logbp[l] + noise_logbp[r]).sum() / dev_lb.sum().clamp_min(1e-12)).clamp(0, 1)
                keeps = (keep.expand_as(dev_lb), keep.expand_as(dev_lb))
            else:
                dev_wc = (wcov[r] - wcov[l] - self.d_wcov).pow(2).sum((-1, -2))
                keeps = tuple((1 - (n[l] + n[r]) / d.clamp_min(1e-12)).clamp(0, 1)
                              for n, d in ((noise_logbp, dev_lb), (noise_wcov, dev_wc)))
            for buf, pooled, keep in ((logbp, self.d_logbp, keeps[0]), (wcov, self.d_wcov, keeps[1])):
                k = keep.reshape((-1,) + (1,) * (pooled.dim() - 1)).to(buf.dtype)
                mid, d = (buf[l] + buf[r]) / 2, pooled + k * (buf[r] - buf[l] - pooled)
                buf[l], buf[r] = mid - d / 2, mid + d / 2
            self.subject_contrast_kept.append(float(torch.cat(keeps).mean()))

    def _shrink_class_contrast(self, X: torch.Tensor, y: torch.Tensor, subject: torch.Tensor | None) -> None:
        """Shrink the right-minus-left difference of each target statistic towards 0, one element at a
        time, by how far it stands above its sampling noise: the part kept is max(0, 1 - noise / d^2).

        Summed over elements the training trials' class difference is at the level of sampling noise
        (S006-S010: band covariance |d|^2 0.75 against 1.10 from noise alone, log band power 0.72 against
        0.40; `bench/bench_gan.py diagnose`), while the lateralisation a decoder uses sits in a few elements.
        Matched as it is, the generator reproduces that noise as class structure. (On S006-S010 shrinking
        it did not raise train-on-synthetic, bench/RESULTS.md session 8, so gan.shrink_contrast is off by default.)
        The noise is the within-(subject, class) variance of the trial statistic over the class's trial
        count; subjects hold both classes, so their offsets cancel in the difference. The class-averaged
        statistic is untouched."""
        cells = y if subject is None else subject * 2 + y
        f = self.features(X)
        n = torch.stack([(y == c).sum() for c in (0, 1)]).double()
        trial = {"logbp_mean": f["logbp"], "cov": f["cov"], "logpsd": f["psd"]}
        for name, F_ in trial.items():
            F_ = F_.double()
            resid, groups = self._within_class(F_, cells, int(cells.max()) + 1)
            var = resid.pow(2).sum(0) / max(len(resid) - groups, 1)
            target = getattr(self, name)
            if name == "logpsd":  # log of a class mean: delta method, var / (n * mean^2)
                mean = torch.stack([F_[y == c].mean(0) for c in (0, 1)])
                noise = (var / (n[:, None, None] * mean.pow(2).clamp_min(1e-30))).sum(0)
            else:
                noise = var * (1 / n).sum()
            d = (target[1] - target[0]).double()
            keep = (1 - noise / d.pow(2).clamp_min(1e-30)).clamp(0, 1)
            mid, half = (target[0] + target[1]).double() / 2, keep * d / 2
            target.copy_(torch.stack([mid - half, mid + half]).to(target.dtype))
            self.class_contrast_kept[name] = float(keep.mean())
            self.class_contrast_noise[name] = (float(d.pow(2).sum()), float(noise.sum()))

    @staticmethod
    def _within_class(feats: torch.Tensor, y: torch.Tensor, class_count: int) -> tuple[torch.Tensor | None, int]:
        """Features minus their class mean, for the classes with 2+ trials; and how many classes those are."""
        parts = [feats[y == c] - feats[y == c].mean(0) for c in range(class_count) if (y == c).sum() > 1]
        return (torch.cat(parts) if parts else None), len(parts)

    @staticmethod
    def _ledoit_wolf(resid: torch.Tensor) -> torch.Tensor:
        """Shrunk covariance of centred residual rows (double): 84-105 features from 24-240 trials."""
        from sklearn.covariance import ledoit_wolf

        from utils.metrics import blas_single_thread

        with blas_single_thread():
            cov, _ = ledoit_wolf(resid.numpy(), assume_centered=True)
        return torch.from_numpy(cov)

    @staticmethod
    def _inv_sqrt(cov: torch.Tensor) -> torch.Tensor:
        """Symmetric inverse square root per band, regularised like Ledoit-Wolf's shrinkage target."""
        c = cov.double()
        n = c.shape[-1]
        tr = torch.diagonal(c, dim1=-2, dim2=-1).mean(-1)[..., None, None]
        c = 0.99 * c + 0.01 * tr * torch.eye(n, dtype=c.dtype)
        vals, vecs = torch.linalg.eigh(c)
        return (vecs * vals.clamp_min(1e-12).rsqrt()[..., None, :] @ vecs.transpose(-1, -2)).float()

    def _whitened(self, cov: torch.Tensor) -> torch.Tensor:
        return self.whiten @ cov @ self.whiten

    def _ema(self, name: str, c: int, value: torch.Tensor, count: str = "ema_count") -> torch.Tensor:
        """Update the EMA of a generated statistic; returns a tensor equal to the updated EMA whose
        gradient is the batch statistic's (a straight-through estimate with the EMA's low noise)."""
        if not self.training:  # eval mode: plain batch statistics, nothing accumulated
            return value
        buf = getattr(self, name)
        with torch.no_grad():  # c: one row, or a tensor of rows with value stacked along dim 0
            first = getattr(self, count)[c] == 0
            first = first.reshape(first.shape + (1,) * (buf.dim() - 1))
            v = value.detach()
            buf[c] = torch.where(first, v, self.ema_decay * buf[c] + (1 - self.ema_decay) * v)
        return buf[c].clone() + (value - value.detach())

    def _fit_band_classifier(self, X: torch.Tensor, y: torch.Tensor) -> None:
        from sklearn.linear_model import LogisticRegression

        from utils.metrics import blas_single_thread

        with torch.no_grad():
            feats = self.features(X)["logbp"].double()
        if self.restricted:  # constant features: zero weights
            feats[:, self.dropped] = 0
        feats = feats.flatten(1)
        mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-6)
        with blas_single_thread():
            lr = LogisticRegression(C=0.1, max_iter=500).fit(((feats - mu) / sd).numpy(), y.numpy())
        w = torch.from_numpy(lr.coef_[0]).float()
        self.register_buffer("cls_w", w / sd.float())
        self.register_buffer("cls_b", torch.tensor(float(lr.intercept_[0]) - float((w.double() * mu / sd).sum())))

    def _psd(self, power: torch.Tensor) -> torch.Tensor:
        p = power[..., self.psd_sel]
        n = (p.shape[-1] // self.per) * self.per
        return p[..., :n].reshape(*p.shape[:-1], -1, self.per).mean(-1)

    def band_signals(self, x: torch.Tensor, Xf: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T) -> (B, n_env_bands, C, T): theta, mu and beta band-passed by FFT mask."""
        Xf = rfft(x) if Xf is None else Xf
        return torch.fft.irfft(Xf[:, None] * self.env_mask[None, :, None, :].to(x.device), n=x.shape[-1], dim=-1)

    def _windowed_power(self, xb: torch.Tensor) -> torch.Tensor:
        return xb[..., :self.n_win * self.win].pow(2).reshape(*xb.shape[:-1], self.n_win, self.win).mean(-1)

    def envelope(self, x: torch.Tensor, Xf: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T) -> (B, n_env_bands, C, n_win): band-limited power (FFT mask) averaged per window.
        Xf: rfft(x) when the caller has it."""
        return self._windowed_power(self.band_signals(x, Xf))

    def _fit_csp_envelope(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """gan.csp_envelope_weight: CSP filters of the real training trials per theta/mu/beta band (the
        CSP_ENVELOPE_COMPONENTS extreme generalised eigenvectors of (C_right, C_left + C_right)) and, per
        class, the time course of their class-mean power in the envelope windows (log, minus its mean over
        windows). The channel envelope follows every channel alone; a decoder reads power through
        spatial filters, and the time course of the filtered power is what it sees."""
        from scipy.linalg import eigh

        from utils.metrics import blas_single_thread

        k = CSP_ENVELOPE_COMPONENTS // 2
        filters = []
        with torch.no_grad():
            xb = self.band_signals(X).double()                                   # (N, nb, C, T)
            cov = torch.einsum("nbct,nbdt->nbcd", xb, xb) / xb.shape[-1]
            for b in range(xb.shape[1]):
                c0, c1 = cov[y == 0, b].mean(0).numpy(), cov[y == 1, b].mean(0).numpy()
                with blas_single_thread():
                    _, vecs = eigh(c1, c0 + c1 + 1e-6 * np.trace(c0 + c1) / len(c0) * np.eye(len(c0)))
                filters.append(np.concatenate([vecs[:, :k], vecs[:, -k:]], 1).T)  # (2k, C)
            self.register_buffer("csp_filters", torch.from_numpy(np.stack(filters)).float())  # (nb, 2k, C)
            env = self.csp_env(X)
            self.register_buffer("csp_logenv", torch.stack([self._shape(env[y == c].mean(0)) for c in (0, 1)]))
        self.register_buffer("ema_csp_env", torch.zeros_like(self.csp_logenv))

    def csp_env(self, x: torch.Tensor, Xf: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T) -> (B, n_env_bands, n_components, n_win): windowed power of the CSP components."""
        return self._csp_power(self.band_signals(x, Xf))

    def _csp_power(self, xb: torch.Tensor) -> torch.Tensor:
        return self._windowed_power(torch.einsum("bkc,nbct->nbkt", self.csp_filters.to(xb.dtype), xb))

    @staticmethod
    def _shape(env_mean: torch.Tensor) -> torch.Tensor:
        """Class-mean windowed power -> log time course relative to its mean over windows."""
        log = torch.log(env_mean + 1e-8)
        return log - log.mean(-1, keepdim=True)

    def features(self, x: torch.Tensor, Xf: torch.Tensor | None = None) -> dict:
        """Band covariances straight from the spectrum (Parseval): the same numbers as
        band-passing with an FFT mask and taking x x^T / n_times, without the inverse FFTs.
        Xf: rfft(x) when the caller has it."""
        Xf = (rfft(x) if Xf is None else Xf) * self.weight.to(x.device)
        covs = []
        for idx in self.band_idx:
            Z = Xf[..., idx.to(x.device)]
            A = torch.cat([Z.real, Z.imag], dim=-1)                 # (B, C, 2 * n_bins)
            covs.append(A @ A.transpose(-1, -2))
        cov = torch.stack(covs, dim=1)                               # (B, n_bands, C, C)
        logbp = torch.log(torch.diagonal(cov, dim1=-2, dim2=-1) + 1e-6)  # (B, n_bands, C)
        power = (Xf.real.pow(2) + Xf.imag.pow(2)) * x.shape[-1]
        return {"logbp": logbp, "cov": cov, "psd": self._psd(power)}

    def _stats(self, x: torch.Tensor) -> dict:
        f = self.features(x)
        return {"logbp_mean": f["logbp"].mean(0), "logbp_std": f["logbp"].std(0), "cov": f["cov"].mean(0),
                "logpsd": torch.log(f["psd"].mean(0) + 1e-8)}

    def losses(self, x: torch.Tensor, y: torch.Tensor, subject: torch.Tensor | None = None) -> dict:
        """Generated x with labels y (and subject indices) -> {"moment", "spectrum", "contrast",
        "band_cls", "subject_moment", "envelope", "trial_cov"} losses (classes with fewer than 2 trials in the batch are skipped)."""
        Xf = rfft(x)
        f = self.features(x, Xf)
        moment, spectrum, envelope, n = x.new_zeros(()), x.new_zeros(()), x.new_zeros(()), 0
        means, wcovs = {}, {}
        xb = self.band_signals(x, Xf) if self.channel_envelope or self.csp_envelope else None
        env = self._windowed_power(xb) if self.channel_envelope else None
        csp_env = self._csp_power(xb) if self.csp_envelope else None
        csp_envelope = x.new_zeros(())
        for c in range(self.logbp_mean.shape[0]):
            sel = y == c
            if sel.sum() < 2:
                continue
            lb = f["logbp"][sel]
            means[c] = self._ema("ema_logbp", c, lb.mean(0))
            wcovs[c] = self._ema("ema_wcov", c, self._whitened(f["cov"][sel].mean(0)))
            # Whitened covariance error: every spatial direction counts, including the low-variance
            # ones that a plain Frobenius error ignores and that CSP-type decoders weigh most.
            moment = moment + F.mse_loss(lb.mean(0), self.logbp_mean[c]) \
                + F.mse_loss(lb.std(0), self.logbp_std[c]) \
                + (wcovs[c] - self.wcov[c]).pow(2).sum((-1, -2)).mean() / self.wcov.shape[-1]
            spectrum = spectrum + F.mse_loss(torch.log(f["psd"][sel].mean(0) + 1e-8), self.logpsd[c])
            if env is not None:
                # EMA in power (not log) units, so it averages like more trials would.
                envelope = envelope + F.mse_loss(self._shape(self._ema("ema_env", c, env[sel].mean(0))),
                                                 self.logenv[c])
            if csp_env is not None:
                csp_envelope = csp_envelope + F.mse_loss(
                    self._shape(self._ema("ema_csp_env", c, csp_env[sel].mean(0))), self.csp_logenv[c])
            n += 1
        if self.training:
            for c in means:
                self.ema_count[c] += 1
        contrast = x.new_zeros(())
        if 0 in means and 1 in means:
            # 1.0 when the generated classes do not differ at all, 0 when they differ like real ones.
            contrast = (means[1] - means[0] - self.d_logbp).pow(2).mean() / self.d_logbp_scale \
                + ((wcovs[1] - wcovs[0] - self.d_wcov).flatten(1).pow(2).sum(-1) / self.d_wcov_scale).mean()
            contrast = contrast / 2
        band_cls = x.new_zeros(())
        if self.band_classifier:
            logits = f["logbp"].flatten(1) @ self.cls_w + self.cls_b
            band_cls = F.binary_cross_entropy_with_logits(logits, y.float())
        trial_cov = x.new_zeros(())
        if self.trial_cov:
            resid, groups = self._within_class(f["logbp"].flatten(1), y, self.logbp_mean.shape[0])
            if groups:
                r = resid * self.tcov_scale
                cov = self._ema("ema_tcov", 0, r.T @ r / max(len(r) - groups, 1), "ema_tcov_count")
                if self.trial_cov == "kl":
                    trial_cov = gaussian_kl(cov, self.tcov)
                else:
                    trial_cov = (cov - self.tcov).pow(2).sum() / len(cov)
                if self.training:
                    self.ema_tcov_count += 1
        subject_moment, subject_contrast = x.new_zeros(()), x.new_zeros(())
        if self.subject_count and subject is not None:
            # All cells of the batch at once: a (cells x trials) averaging matrix instead of a Python
            # loop over cells (which cost ~25 ms of a 0.3 s step).
            cells, inv = torch.unique(subject * self.logbp_mean.shape[0] + y, return_inverse=True)
            avg = F.one_hot(inv, len(cells)).T.to(x.dtype)
            avg = avg / avg.sum(1, keepdim=True)
            keep = self.cell_present[cells]
            cells, avg = cells[keep], avg[keep]
            if len(cells):
                lb = self._ema("ema_cell_logbp", cells, torch.einsum("kb,b...->k...", avg, f["logbp"]),
                               "ema_cell_count")
                wc = self._ema("ema_cell_wcov", cells, self._whitened(torch.einsum("kb,b...->k...", avg, f["cov"])),
                               "ema_cell_count")
                subject_moment = ((lb - self.cell_logbp[cells]).pow(2).flatten(1).mean(1)
                                  + (wc - self.cell_wcov[cells]).pow(2).sum((-1, -2)).mean(-1)
                                  / self.wcov.shape[-1]).mean()
                subject_contrast = self._subject_contrast(cells, lb, wc)
                if self.training:
                    self.ema_cell_count[cells] += 1
        return {"moment": moment / max(n, 1), "spectrum": spectrum / max(n, 1), "contrast": contrast,
                "band_cls": band_cls, "subject_moment": subject_moment, "envelope": envelope / max(n, 1),
                "trial_cov": trial_cov, "csp_envelope": csp_envelope / max(n, 1), "subject_contrast": subject_contrast}

    def _subject_contrast(self, cells: torch.Tensor, lb: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
        """Per subject with both classes among `cells`: the contrast term's error for its own right-minus-left
        difference (generated cell EMAs lb, wc against the cell targets), self-normalised by that subject's
        target difference, so 1 means its generated classes do not differ. In the subject-moment term the same
        difference is a few percent of each cell's level and weighs accordingly little (S007 pooled with four
        others, its targets unshrunk: cosine 0.48 between its generated and real class-covariance difference)."""
        pos = {int(c): i for i, c in enumerate(cells)}
        pairs = [(pos[c], pos[c + 1]) for c in pos if c % 2 == 0 and c + 1 in pos]
        if not pairs:
            return lb.new_zeros(())
        left, right = torch.tensor(pairs, device=lb.device).T
        t_lb = self.cell_logbp[cells[right]] - self.cell_logbp[cells[left]]        # (pairs, n_bands, C)
        t_wc = self.cell_wcov[cells[right]] - self.cell_wcov[cells[left]]          # (pairs, n_bands, C, C)
        err_lb = (lb[right] - lb[left] - t_lb).pow(2).flatten(1).sum(1) / t_lb.pow(2).flatten(1).sum(1).clamp_min(1e-8)
        err_wc = (wc[right] - wc[left] - t_wc).pow(2).sum((-1, -2)) / t_wc.pow(2).sum((-1, -2)).clamp_min(1e-12)
        return ((err_lb + err_wc.mean(-1)) / 2).mean()


def gaussian_kl(cov: torch.Tensor, target: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """KL(N(0, cov) || N(0, target)) per dimension (0 when equal), both with `ridge` added to the diagonal.

    A Frobenius error is dominated by the few large shared-gain directions; this one measures every
    direction against the target's own variance there, so a direction where generated trials vary 3x
    less than real ones costs 25x more than a 20% error along the largest. Generated trials had such
    thin directions, along which their classes separated far more cleanly than real ones (bench/RESULTS.md,
    session 16)."""
    eye = torch.eye(len(cov), dtype=torch.float64, device=cov.device)
    a, t = cov.double() + ridge * eye, target.double() + ridge * eye
    p = len(cov)
    return (0.5 * (torch.linalg.solve(t, a).diagonal().sum() - torch.logdet(a) + torch.logdet(t) - p) / p).to(cov.dtype)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor,
                     alpha: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
    """E[(||grad_x D(x_hat, y)||_2 - 1)^2], x_hat = alpha * real + (1 - alpha) * fake, per trial."""
    x_hat = (alpha.view(-1, 1, 1) * real + (1 - alpha.view(-1, 1, 1)) * fake).requires_grad_(True)
    score = critic(x_hat, y) if subject is None else critic(x_hat, y, subject)
    grad, = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


# --- run-folder artefacts -------------------------------------------------------------------

def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Atomic safetensors write (temp file + rename)."""
    model = dist.unwrap(model)
    tmp = path.with_name("." + path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": "pt"})
    os.replace(tmp, path)


def gan_meta(cfg: dict, gen_cfg: GPT2GeneratorConfig, critic_cfg: CriticConfig, train, standardizer: Standardizer,
             extra: dict | None = None) -> dict:
    return {"model_name": cfg["model_name"], "generator": gen_cfg.to_dict(), "critic": critic_cfg.to_dict(),
            "n_chans": train.n_chans, "n_times": train.n_times, "sfreq": float(train.sfreq),
            "ch_names": list(train.ch_names), "standardizer": standardizer.state(),
            "representation": cfg["representation"], "class_names": list(CLASS_NAMES), "config": cfg,
            **(extra or {})}


def render_figures(fig_dir: Path, epoch: int, fake: np.ndarray, y_fake: np.ndarray, real: np.ndarray,
                   y_real: np.ndarray, sfreq: float, ch_names: list[str], n_examples: int) -> None:
    """Traces at C3/Cz/C4 (real vs generated, per class) and class-mean PSDs, both in volts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.signal import welch

    fig_dir.mkdir(parents=True, exist_ok=True)
    chans = [c for c in MOTOR_TRIO if c in ch_names] or list(ch_names[:3])
    idx = [ch_names.index(c) for c in chans]
    t = np.arange(fake.shape[-1]) / sfreq
    # Fixed margins instead of tight_layout: layout solving costs seconds per figure on a busy CPU.
    fig, axes = plt.subplots(len(chans), 2, figsize=(12, 2.2 * len(chans)), sharex=True, squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.93, bottom=0.1, hspace=0.45, wspace=0.15)
    for j, cname in enumerate(CLASS_NAMES):
        r, g = real[y_real == j][:n_examples], fake[y_fake == j][:n_examples]
        for i, ch in enumerate(idx):
            ax = axes[i, j]
            for k, tr in enumerate(r):
                ax.plot(t, tr[ch] * 1e6, color="k", lw=0.6, alpha=0.6, label="real" if k == 0 else None)
            for k, tr in enumerate(g):
                ax.plot(t, tr[ch] * 1e6, color="tab:red", lw=0.6, alpha=0.6, label="generated" if k == 0 else None)
            ax.set_title(f"{cname} fist, {chans[i]}", fontsize=9)
            ax.set_ylabel("uV")
    axes[0, 0].legend(fontsize=8, loc="upper right")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.savefig(fig_dir / f"epoch-{epoch:03d}-traces.png", dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(chans), figsize=(4 * len(chans), 3), squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.16, wspace=0.25)
    nper = min(int(sfreq), real.shape[-1])
    for i, ch in enumerate(idx):
        ax = axes[0, i]
        for j, (cname, color) in enumerate(zip(CLASS_NAMES, ("tab:blue", "tab:orange"))):
            for X, yy, ls, lab in ((real, y_real, "-", "real"), (fake, y_fake, "--", "generated")):
                if not np.any(yy == j):
                    continue
                f, P = welch(X[yy == j][:, ch], fs=sfreq, nperseg=nper)
                keep = (f >= 2) & (f <= 45)
                ax.semilogy(f[keep], P.mean(0)[keep], ls, color=color, label=f"{lab} {cname}")
        ax.set_title(chans[i])
        ax.set_xlabel("Hz")
    axes[0, 0].set_ylabel("V^2/Hz")
    axes[0, 0].legend(fontsize=7)
    fig.savefig(fig_dir / f"epoch-{epoch:03d}-psd.png", dpi=80)
    plt.close(fig)


def quick_quality(fake: np.ndarray, y_fake: np.ndarray, real: np.ndarray, y_real: np.ndarray, sfreq: float,
                  ch_names: list[str]) -> dict:
    """Cheap monitoring numbers (volts in): worst relative mu/beta power error at C3/Cz/C4 over
    classes, and the right-minus-left mu power (dB) at C3 and C4 for generated and real trials."""
    from scipy.signal import welch

    out, errs = {}, []
    chans = [c for c in MOTOR_TRIO if c in ch_names]
    if not chans:
        return out
    idx = [ch_names.index(c) for c in chans]
    nper = min(int(sfreq), real.shape[-1])
    fg, Pg = welch(fake[:, idx], fs=sfreq, nperseg=nper)
    _, Pr = welch(real[:, idx], fs=sfreq, nperseg=nper)
    for band, (lo, hi) in (("mu", BANDS["mu"]), ("beta", BANDS["beta"])):
        sel = (fg >= lo) & (fg <= hi)
        bg, br = Pg[..., sel].mean(-1), Pr[..., sel].mean(-1)
        for c in range(2):
            if np.any(y_fake == c) and np.any(y_real == c):
                errs += list(np.abs(bg[y_fake == c].mean(0) / br[y_real == c].mean(0) - 1))
        if band == "mu":
            for ch in ("C3", "C4"):
                if ch in chans:
                    k = chans.index(ch)
                    for name, b, yy in (("generated", bg, y_fake), ("real", br, y_real)):
                        out[f"mu_lat_{ch}_{name}_db"] = float(10 * np.log10(b[yy == 1, k].mean() / b[yy == 0, k].mean()))
    out["bandpower_max_rel_err"] = float(np.max(errs)) if errs else float("nan")
    out["bandpower_mean_rel_err"] = float(np.mean(errs)) if errs else float("nan")
    return out


# --- the training loop shared by gpt2cgan and the fine-tuning trainers -------------------------

def generate(generator, n_per_class: int, seed: int, device, batch_size: int = 256, return_subjects: bool = False):
    """2 * n_per_class trials (standardized units) from a private RNG: labels 0...0 1...1. With
    return_subjects, also the subject number of every trial (None unless subject-conditioned)."""
    g = torch.Generator().manual_seed(seed)
    gen = dist.unwrap(generator)
    y = torch.arange(2).repeat_interleave(n_per_class)
    z = gen.sample_noise(len(y), generator=g)
    # Subject-conditioned: subjects in training proportions, the same sequence for both classes, so a
    # generated set's class difference is never a difference of subject mix.
    s = gen.sample_subjects(n_per_class, generator=g)
    s = None if s is None else s.repeat(2)
    was = gen.training
    gen.eval()
    with torch.no_grad():
        out = torch.cat([gen(z[i:i + batch_size].to(device), y[i:i + batch_size].to(device),
                             None if s is None else s[i:i + batch_size].to(device)).cpu()
                         for i in range(0, len(y), batch_size)])
    gen.train(was)
    if return_subjects:
        return out, y, None if s is None else torch.tensor(gen.config.subjects)[s]
    return out, y


def fit_gan(cfg: dict, round_dir: Path, device: torch.device, seed: int, resume: bool, splits, standardizer,
            generator: GPT2Generator, critic: Critic, extra_loss=None, meta_extra: dict | None = None,
            progress: bool = True, adv_weight: float | None = None, on_epoch=None) -> dict:
    """Train (generator, critic) on splits.train (the trainers pass `Splits.pooled()`: training and
    validation trials); write the run-folder artefacts; return the summary.

    extra_loss(fake_std_units, y[, subject index]) -> (loss tensor, {metric: float}) is added to the generator loss
    (the fine-tuning trainers' frozen-classifier term). on_epoch(epoch, generator, row) runs on the
    main process after every epoch (bench/bench_gan.py records quality curves with it).
    """
    round_dir = Path(round_dir)
    main = dist.is_main()
    if adv_weight is not None:  # fine-tuning: finetune.adv_weight replaces gan.adv_weight
        cfg = {**cfg, "gan": {**cfg["gan"], "adv_weight": adv_weight}}
    g_cfg = cfg["gan"]
    train = splits.train
    Xtr = torch.from_numpy(standardizer.transform(train.X))
    ytr = torch.from_numpy(train.y.astype(np.int64))
    # Subject-conditioned networks (gan.subject_condition): each trial's index into the embeddings.
    s_tr = generator.subject_index(train.subject) if generator.config.subject_count else None
    if s_tr is not None:
        generator.set_subject_weights(s_tr)
    targets = SpectralTargets(Xtr, ytr, train.sfreq, cfg["class_count"],
                              band_classifier=g_cfg["band_cls_weight"] > 0, ema_decay=g_cfg["contrast_ema"],
                              subject=s_tr, subject_count=generator.config.subject_count,
                              envelope=g_cfg["envelope_weight"] > 0,
                              trial_cov=g_cfg["trial_cov_form"] if g_cfg["trial_cov_weight"] > 0 else None,
                              shrink_contrast=g_cfg["shrink_contrast"],
                              class_bands=g_cfg["class_bands"],
                              class_covariance=g_cfg["class_covariance"],
                              csp_envelope=g_cfg["csp_envelope_weight"] > 0,
                              subject_shrinkage=g_cfg["subject_shrinkage"]).to(device)
    G, D = dist.wrap_model(generator.to(device), device), dist.wrap_model(critic.to(device), device)
    opt_g, opt_d = build_optimizers(cfg, G, D)
    base_lr = [(opt, opt.param_groups[0]["lr"]) for opt in (opt_g, opt_d)]  # before a resume loads the last rates
    # targets hold the contrast EMA, so they are saved with the networks for an exact resume.
    models, optims = {"generator": G, "critic": D, "targets": targets}, {"generator": opt_g, "critic": opt_d}
    if g_cfg["grad_match_weight"] > 0:
        from trainers.evaluate import settings as eval_settings
        from trainers.gradient_matching import GradientMatching

        matcher = GradientMatching(Xtr, ytr, train.sfreq, train.ch_names, eval_settings(cfg)["architecture"], seed,
                                   reset_every=g_cfg["grad_match_reset"], ema=g_cfg["grad_match_ema"]).to(device)
        models["grad_match"], optims["grad_match"] = matcher, matcher.optimizer
        extra_loss = _with_grad_match(extra_loss, matcher, g_cfg["grad_match_weight"], G, g_cfg["grad_match_batch"],
                                      s_tr is not None, device)
    # gan.generator_ema: an exponential moving average of the generator's weights is what the run
    # keeps. The contrast term's error signal is a moving average of past batches, so under Adam the
    # class statistics circle their target instead of settling on it: on S006-S010 the training-time
    # contrast read 0.14-0.20 while the last weights, on fresh batches, scored 1.28-1.60 (bench/RESULTS.md, session 8).
    ema = None
    if g_cfg["generator_ema"] > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(g_cfg["generator_ema"]), use_buffers=True)
        models["generator_ema"] = ema

    start_epoch, start_batch, partial = 0, 0, {}
    if resume:
        counters, extra = load_training_state(round_dir, models, optims, cfg=cfg)
        start_epoch, start_batch = counters["epoch"], counters.get("batch", 0)
        partial = extra.get("partial", {})
    metrics = MetricsLog(round_dir / "metrics.jsonl", keep_until=start_epoch if resume else None) if main else None

    # Fixed monitoring noise: the same random_vector_num vectors rendered under both classes.
    gmon = torch.Generator().manual_seed(seed + 7919)
    n_mon = cfg["random_vector_num"]
    z_mon = generator.sample_noise(n_mon, generator=gmon).repeat(2, 1, 1)
    y_mon = torch.arange(2).repeat_interleave(n_mon)
    s_mon = generator.sample_subjects(n_mon, generator=gmon)
    s_mon = None if s_mon is None else s_mon.repeat(2).to(device)
    fig_real_idx = np.concatenate([np.flatnonzero(train.y == c)[:cfg["example_to_generate"]] for c in range(2)])

    def monitor(epoch: int) -> dict:
        gen = dist.unwrap(G)
        gen.eval()
        with torch.no_grad():
            fake = standardizer.inverse(gen(z_mon.to(device), y_mon.to(device), s_mon).cpu().numpy())
        gen.train()
        if epoch % g_cfg["figure_every"] == 0 or epoch == cfg["epochs"]:
            render_figures(round_dir / "figures", epoch, fake, y_mon.numpy(), train.X[fig_real_idx],
                           train.y[fig_real_idx], train.sfreq, train.ch_names,
                           min(cfg["example_to_generate"], n_mon))
        # Class effect on the fixed vectors: same noise, other class -> how different the output is.
        diff = np.abs(fake[:n_mon] - fake[n_mon:]).mean() / max(np.abs(fake).mean(), 1e-30)
        return {"fixed_class_effect": float(diff)}

    n = len(train)
    bs = cfg["batch_size"]
    n_batches = -(-n // bs)
    updates = cfg["epochs"] * n_batches // g_cfg["critic_steps"]
    if main and updates < MIN_GENERATOR_UPDATES:
        epochs = f"{cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}"
        print(f"warning: {n} training trials in batches of {bs} give {updates} generator updates over {epochs}; "
              "the single-subject runs in the README needed about 100-300 (raise epochs)", flush=True)
    epoch = start_epoch
    bar = tqdm(range(start_epoch, cfg["epochs"]), desc=cfg["model_name"], unit="epoch",
               disable=not (progress and main), initial=start_epoch, total=cfg["epochs"])
    sums: dict = {}
    stop = GracefulInterrupt().start()  # Ctrl-C is honoured at the next step boundary
    try:
        for epoch in bar:
            # A pure function of the epoch, so a resumed run sets the same rates.
            factor = lr_factor(g_cfg["schedule"], epoch, cfg["epochs"])
            for opt, base in base_lr:
                for group in opt.param_groups:
                    group["lr"] = base * factor
            sums = dict(partial) if epoch == start_epoch else {}
            order = epoch_order(n, cfg["buffer_size"], seed, epoch)
            for b, idx in enumerate(batches(order, bs)):
                if (epoch == start_epoch and b < start_batch) or len(idx) < dist.world_size():
                    continue  # already done before the resume / DDP: a last batch smaller than the world
                step = epoch * n_batches + b  # global critic-step index: a pure function of (epoch, b)
                with autocast(cfg, device):  # training.bf16 on CUDA; nothing on CPU
                    step_metrics = _train_step(cfg, G, D, opt_g, opt_d, targets, Xtr, ytr, s_tr, idx,
                                               dist.local_slice(len(idx)), device,
                                               extra_loss, epoch, b, (step + 1) % cfg["gan"]["critic_steps"] == 0)
                if ema is not None and "generator_loss" in step_metrics:
                    ema.update_parameters(dist.unwrap(G))
                for k, v in step_metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                    sums["n_" + k] = sums.get("n_" + k, 0) + 1
                start_batch = b + 1
                stop.check()
            row = {"epoch": epoch + 1, **{k: dist.all_reduce_mean(v / sums["n_" + k])
                                          for k, v in sums.items() if not k.startswith("n_")}}
            partial, start_batch = {}, 0
            if main:
                row.update(monitor(epoch + 1))
                if on_epoch is not None:
                    row.update(on_epoch(epoch + 1, dist.unwrap(G), row) or {})
                metrics.append(row)
                bar.set_postfix(w=f"{row['wasserstein']:.3f}", mom=f"{row.get('moment_loss', float('nan')):.3f}")
                if (epoch + 1) % cfg["training"]["checkpoint_every"] == 0 or epoch + 1 == cfg["epochs"]:
                    save_training_state(round_dir, models, optims, counters={"epoch": epoch + 1, "batch": 0},
                                        cfg=cfg)
            epoch += 1  # this epoch is complete: a Ctrl-C during its tail saves "epoch + 1, batch 0"
            stop.check()
        epoch = cfg["epochs"]
    except KeyboardInterrupt:
        if main:
            save_training_state(round_dir, models, optims,
                                counters={"epoch": epoch, "batch": start_batch},
                                extra={"partial": sums if start_batch else {}}, cfg=cfg)
        raise
    finally:
        stop.close()
        bar.close()

    summary = {"epochs_completed": cfg["epochs"]}
    if ema is not None:  # the averaged weights are calibrated, saved, scored and sampled from
        dist.unwrap(G).load_state_dict(ema.module.state_dict())
    # After the last training state is saved, so a resumed run repeats the same calibration. Every
    # rank runs it (same weights, data and seed), so DDP replicas stay identical.
    summary.update(calibrate_spectrum(G, Xtr, ytr, train.sfreq, g_cfg["calibrate"], seed + 2, device,
                                      class_bands=g_cfg["class_bands"]))
    summary.update(calibrate_subjects(G, Xtr, ytr, train.subject, train.sfreq, g_cfg["calibrate_subject"], seed + 3,
                                      device))
    if not main:
        return summary
    if g_cfg["calibrate"] != "none" or g_cfg["calibrate_subject"] != "none":
        monitor(cfg["epochs"])  # the final figures show the generator as saved
    gen_cfg, crit_cfg = generator.config, critic.config
    save_weights(G, round_dir / "generator.safetensors")
    save_weights(D, round_dir / "critic.safetensors")
    write_json(round_dir / "gan.json", gan_meta(cfg, gen_cfg, crit_cfg, train, standardizer, meta_extra))
    if splits.source is not None:  # representation=source: projection to the scalp + ROI figure (data/sources.py)
        from data.sources import write_run_files

        write_run_files(splits.source, round_dir)
    rows = metrics.rows()
    last = rows[-1] if rows else {}
    summary.update({k: last[k] for k in last if k != "epoch" and isinstance(last[k], (int, float))})
    # Held-out check: as many generated trials per class as the test set has.
    n_gen = max(int(np.bincount(splits.test.y, minlength=2).max()), 2)
    fake, y_fake = generate(G, n_gen, seed + 1, device)
    summary.update(quick_quality(standardizer.inverse(fake.numpy()), y_fake.numpy(), splits.test.X, splits.test.y,
                                 train.sfreq, train.ch_names))
    summary.update(_evaluate(round_dir, cfg, device))
    return summary


def _mean_cov(x: torch.Tensor) -> torch.Tensor:
    """Mean spatial covariance (C, C), float64, of trials x (n, C, T) (about zero mean: band-passed)."""
    x = x.double()
    return torch.einsum("nct,ndt->cd", x, x) / (x.shape[0] * x.shape[-1])


def _sym_power(cov: torch.Tensor, p: float, floor: float = 1e-6) -> torch.Tensor:
    """cov^p for a symmetric positive semi-definite matrix, eigenvalues floored at floor * the largest."""
    w, v = torch.linalg.eigh(cov)
    w = w.clamp_min(floor * w[-1])
    return (v * w.pow(p)) @ v.T


def covariance_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Affine-invariant Riemannian distance ||log(a^-1/2 b a^-1/2)||_F between covariance matrices."""
    r = _sym_power(a, -0.5)
    w = torch.linalg.eigvalsh(r @ b @ r).clamp_min(1e-12)
    return float(torch.log(w).pow(2).sum().sqrt())


def calibrate_subjects(generator, X: torch.Tensor, y: torch.Tensor, subject, sfreq: float, mode: str, seed: int,
                       device) -> dict:
    """gan.calibrate_subject after gan.calibrate: "covariance" (calibrate_subject_covariance), "spectrum" or
    "class_spectrum" (calibrate_subject_spectrum, classes pooled or per class) or "none"."""
    if mode in ("spectrum", "class_spectrum"):
        return calibrate_subject_spectrum(generator, X, y, subject, sfreq, seed, device, per_class=mode == "class_spectrum")
    return calibrate_subject_covariance(generator, X, subject, mode, seed, device)


@torch.no_grad()
def calibrate_subject_spectrum(generator, X: torch.Tensor, y: torch.Tensor, subject, sfreq: float, seed: int, device,
                               per_class: bool = False, n_per_class: int = 128, smooth_hz: float = 2.0) -> dict:
    """Fit the generator's `subject_calibration` so each subject's generated mean power spectrum per
    channel (the mean of its two class means; per_class: each class mean) equals that of its real trials X
    (standardized units, labels y, `subject` their subject numbers). Without subject conditioning one shared
    response is fitted.

    Why: gan.calibrate fits the class-mean spectra of the whole pool, so a subject drawn on its own
    (evaluation.subjects, generate --subjects) keeps whatever level the generator learned for it, and
    subjects' power differs several-fold: the ten-subject generator's S006-S010 spectra were 1.2-1.4 dB off
    their real ones on average (bench/RESULTS.md, session 25). Pooled over classes, a subject's few trials set its
    level and shape but not its class difference; per class they set that too, sampling noise included.
    n_per_class trials per class are drawn for every subject. Returns the mean absolute
    dB difference of the subjects' generated and real mean spectra in the pass band, before and after
    (a fresh draw for "after")."""
    gen = dist.unwrap(generator)
    subject = np.asarray(subject)
    units = list(gen.config.subjects) if gen.config.subject_count else [None]
    classes = gen.calibration.shape[0]
    k = _smoothing_bins(sfreq, X.shape[-1], smooth_hz)
    labels = torch.arange(classes).repeat_interleave(n_per_class)

    def spectrum(x: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:   # (classes, C, F)
        return _class_psd(x, lab, classes, k, pooled=not per_class)

    def fake_spectra(draw_seed: int) -> torch.Tensor:                    # (units, classes, C, F)
        g = torch.Generator().manual_seed(draw_seed)
        was = gen.training
        gen.eval()
        out = []
        for i in range(len(units)):
            z = gen.sample_noise(len(labels), generator=g)
            s = torch.full((len(labels),), i, dtype=torch.long).to(device) if units[0] is not None else None
            out.append(spectrum(gen(z.to(device), labels.to(device), s).cpu(), labels))
        gen.train(was)
        return torch.stack(out)

    real = torch.stack([spectrum(X if u is None else X[torch.from_numpy(subject == u)],
                                 y if u is None else y[torch.from_numpy(subject == u)]) for u in units])
    before = fake_spectra(seed)
    gain, passband = _passband_gain(gen, real / before.clamp_min(1e-30))
    gen.subject_calibration.mul_(gain.to(gen.subject_calibration.device))
    after = fake_spectra(seed + 1)

    def db_error(fake: torch.Tensor) -> float:
        return float((10 * torch.log10(fake.clamp_min(1e-30) / real.clamp_min(1e-30)))[..., passband].abs().mean())

    return {"subject_spectrum_db_before": db_error(before), "subject_spectrum_db_after": db_error(after)}


@torch.no_grad()
def calibrate_subject_covariance(generator, X: torch.Tensor, subject, mode: str, seed: int, device,
                                 n_per_class: int = 512) -> dict:
    """Fit the generator's `subject_mixing` so each subject's generated mean spatial covariance (both
    classes pooled) equals that of its real trials X (standardized units; `subject` their subject numbers).

    Per subject u the mixing becomes A_u M_u with A_u = C_real^1/2 C_gen^-1/2, the symmetric map that
    re-centres the generated covariances on the real mean (the Riemannian re-centring of transfer-learning
    BCI work): A_u C_gen A_u = C_real, while the generator's class difference and trial-to-trial spread
    are carried along relative to it. Why: a CSP or tangent-space decoder trained on generated trials
    and tested on real ones reads the subject's spatial covariance first; on S007 the generator's sat
    off along a CSP direction, and its generated-trained CSP called every real trial one class (bench/RESULTS.md,
    sessions 21-22). Without subjects one shared map is fitted. Returns the mean distance between generated
    and real subject covariances before and after (`covariance_distance`, a fresh draw for "after").
    mode "none" leaves the generator as trained."""
    if mode == "none":
        return {}
    gen = dist.unwrap(generator)
    subject = np.asarray(subject)
    units = list(gen.config.subjects) if gen.config.subject_count else [None]

    def covs(draw_seed: int) -> list[torch.Tensor]:
        fake, _, s_fake = generate(gen, n_per_class, draw_seed, device, return_subjects=True)
        return [_mean_cov(fake if u is None else fake[s_fake == u]) for u in units]

    real = [_mean_cov(X if u is None else X[torch.from_numpy(subject == u)]) for u in units]
    before = covs(seed)
    mixing = gen.subject_mixing.detach().cpu().double()
    for i, (c_real, c_gen) in enumerate(zip(real, before)):
        mixing[i] = _sym_power(c_real, 0.5) @ _sym_power(c_gen, -0.5) @ mixing[i]
    gen.subject_mixing.copy_(mixing.float().to(gen.subject_mixing.device))
    after = covs(seed + 1)
    return {"subject_covariance_distance_before": float(np.mean([covariance_distance(r, g) for r, g in zip(real, before)])),
            "subject_covariance_distance_after": float(np.mean([covariance_distance(r, g) for r, g in zip(real, after)]))}


@torch.no_grad()
def calibrate_spectrum(generator, X: torch.Tensor, y: torch.Tensor, sfreq: float, mode: str, seed: int, device,
                       n_per_class: int = 512, smooth_hz: float = 2.0, class_bands=None) -> dict:
    """Fit the generator's output `calibration` so its class-mean power spectrum per channel equals
    that of the real trials X (standardized units, labels y).

    The output filter multiplies rfft bins, so a gain g scales the generated mean power at that bin
    by exactly g^2: one pass of g = sqrt(P_real / P_generated) removes the bias, up to the sampling
    noise of both means, which `smooth_hz`-wide frequency averaging keeps small. mode "class" fits
    one response per class (the class-mean spectra, lateralisation included, become the real ones);
    "pooled" fits one for both classes (the generated class difference is kept as trained); "band" fits
    the pooled one and, per class, one factor per channel and CLASS_BANDS band on top of it; "none"
    leaves the generator as trained. Only bins inside the pass band are changed; gains are clipped
    to [0.5, 2] (a 4x power correction at most). `class_bands` (gan.class_bands; None: all): outside
    these bands the real class spectra are replaced by their class average before fitting ("class"),
    or the per-class factors are 1 ("band"). Returns summary numbers of the applied gains.
    """
    if mode == "none":
        return {}
    if class_bands is not None and set(class_bands) == set(BANDS):
        class_bands = None  # all four: no restriction (the filter skirts keep their class difference too)
    gen = dist.unwrap(generator)
    classes = gen.calibration.shape[0]
    k = _smoothing_bins(sfreq, X.shape[-1], smooth_hz)

    def class_psd(x: torch.Tensor, labels: torch.Tensor, pooled: bool) -> torch.Tensor:
        return _class_psd(x, labels, classes, k, pooled)

    fake, y_fake = generate(gen, n_per_class, seed, device)
    if mode == "band":
        # The pooled response at full resolution, and per class only a deviation from it that is constant
        # within each CLASS_BANDS band: the class-mean band power becomes the real one, without the sample's
        # bin-by-bin class difference (at the level of sampling noise, bench/RESULTS.md session 8). The smoothing is
        # linear, so the pooled spectra are the class means of the smoothed class spectra.
        p_real, p_fake = class_psd(X, y, False), class_psd(fake, y_fake, False).clamp_min(1e-30)
        log_class = torch.log(p_real / p_fake)
        log_pooled = torch.log(p_real.mean(0, keepdim=True) / p_fake.mean(0, keepdim=True))
        basis = GPT2Generator._class_basis(gen.config).double()                        # (n_bands, F)
        dev = torch.einsum("kcf,nf->kcn", log_class - log_pooled, basis) / basis.sum(-1)
        if class_bands is not None:
            dev[..., [b not in class_bands for b in BANDS]] = 0
        ratio = torch.exp(log_pooled + torch.einsum("kcn,nf->kcf", dev, basis))
    else:
        p_real = class_psd(X, y, mode == "pooled")
        if class_bands is not None and mode == "class":
            drop = ~band_mask(torch.fft.rfftfreq(X.shape[-1], 1 / sfreq), class_bands)
            p_real[..., drop] = p_real[..., drop].mean(0, keepdim=True)
        ratio = p_real / class_psd(fake, y_fake, mode == "pooled").clamp_min(1e-30)
    gain, passband = _passband_gain(gen, ratio)
    gen.calibration.mul_(gain.to(gen.calibration.device))
    gain_db = 20 * torch.log10(gain[..., passband])
    return {"calibration_gain_db_mean_abs": float(gain_db.abs().mean()),
            "calibration_gain_db_max_abs": float(gain_db.abs().max())}


def _smoothing_bins(sfreq: float, n_times: int, smooth_hz: float) -> int:
    """Width, in rfft bins, of the odd centred window that averages spectra over smooth_hz."""
    return max(1, int(round(smooth_hz / (sfreq / n_times)))) | 1


def _class_psd(x: torch.Tensor, labels: torch.Tensor, classes: int, k: int, pooled: bool = False) -> torch.Tensor:
    """(classes, C, F) class-mean power spectra of x (n, C, T), float64, averaged over k bins; pooled:
    the mean of the class means for every class (class-balanced whatever the class counts)."""
    p = torch.stack([torch.fft.rfft(x[labels == c].double(), dim=-1).abs().pow(2).mean(0)
                     for c in range(classes)])
    if pooled:
        p = p.mean(0, keepdim=True).expand_as(p)
    return F.avg_pool1d(p.reshape(-1, 1, p.shape[-1]), k, stride=1, padding=k // 2,
                        count_include_pad=False).reshape(p.shape)


def _passband_gain(gen, power_ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude gain sqrt(power_ratio), clipped to [0.5, 2] (a 4x power correction at most) and 1
    outside the generator's pass band or where the ratio is undefined, as float32; and the pass-band mask."""
    passband = gen.band_response.detach().cpu().double().pow(2) > 0.01  # X and the samples are on the CPU
    gain = power_ratio.sqrt().clamp(0.5, 2.0)
    keep = passband & torch.isfinite(gain)  # a class a subject has no trials of keeps its response
    return torch.where(keep, gain, torch.ones_like(gain)).float(), passband


def build_optimizers(cfg: dict, G, D) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Separate Adam optimisers for generator and critic (gan.lr_generator / gan.lr_critic, else
    learning_rate; gan.beta1/beta2). Not the fused kernel: it is 4x faster on the generator's 63
    tensors (about 1% of a CPU step), but its rounding let 3% of the critic's near-zero-gradient
    entries drift apart between one process and two (tests/robustness/test_ddp.py, session 11)."""
    g = cfg["gan"]
    lr_g = g["lr_generator"] if g["lr_generator"] is not None else cfg["learning_rate"]
    lr_c = g["lr_critic"] if g["lr_critic"] is not None else cfg["learning_rate"]
    betas = (g["beta1"], g["beta2"])
    return torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas), torch.optim.Adam(D.parameters(), lr=lr_c, betas=betas)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for 0-based `epoch` of `epochs`: constant, or linear decay to 10% at
    the last epoch (the class structure forms early and then drifts under a constant rate)."""
    if schedule == "linear" and epochs > 1:
        return 1.0 - 0.9 * epoch / (epochs - 1)
    return 1.0


def paired_draw(gen, idx: torch.Tensor, s_tr: torch.Tensor | None, generator: torch.Generator | None = None):
    """Generator inputs for a batch of len(idx) with each noise vector rendered as both classes
    (interleaved, so a DDP slice keeps its pairs): the nuisance variation common to a pair cancels in
    the class difference the contrast term sees. Returns (z, y, subjects or None); a pair takes the
    subject of the real batch's first trial of its two."""
    n_pairs = -(-len(idx) // 2)
    z = gen.sample_noise(n_pairs, generator=generator).repeat_interleave(2, dim=0)[:len(idx)]
    y = torch.arange(2).repeat(n_pairs)[:len(idx)]
    s = None if s_tr is None else s_tr[idx][::2].repeat_interleave(2)[:len(idx)]
    return z, y, s


def _train_step(cfg, G, D, opt_g, opt_d, targets, Xtr, ytr, s_tr, idx, local, device, extra_loss, epoch, b,
                generator_step: bool) -> dict:
    """One critic update on this real batch; and, every gan.critic_steps batches, one generator update.
    s_tr: the training trials' subject indices for subject-conditioned networks, else None."""
    gan = cfg["gan"]
    gen = dist.unwrap(G)
    real, y = Xtr[idx][local].to(device), ytr[idx][local].to(device)
    cond = (y,) if s_tr is None else (y, s_tr[idx][local].to(device))  # fakes get the real batch's labels
    # Noise and interpolation weights for the GLOBAL batch from the global RNG, then sliced:
    # every rank draws the same numbers, so DDP and one process see the same step.
    z = gen.sample_noise(len(idx))[local].to(device)
    alpha = torch.rand(len(idx))[local].to(device)
    with torch.no_grad():
        fake = G(z, *cond)
    # Real and fake in one critic pass: one batch of 2B keeps the critic's convolutions' matrix products
    # larger than two batches of B. The critic is per-trial, except for the gan.critic_batch_std term,
    # for which `group` keeps the real and the generated trials' spreads apart.
    source = torch.cat([torch.zeros(len(real)), torch.ones(len(fake))]).long().to(device)
    scores = D(torch.cat([real, fake]), *(torch.cat([c, c]) for c in cond), group=source)
    d_real, d_fake = scores[:len(real)].mean(), scores[len(real):].mean()
    gp = gradient_penalty(D, real, fake, y, alpha, cond[1] if len(cond) > 1 else None)
    loss_d = d_fake - d_real + gan["gp_weight"] * gp
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    check_finite(loss_d.item(), "critic loss", epoch + 1, b)  # epochs 1-based, as in metrics.jsonl
    out = {"critic_loss": loss_d.item(), "gradient_penalty": gp.item(), "wasserstein": (d_real - d_fake).item()}
    if not generator_step:
        return out

    if gan["paired_classes"]:
        z, y, s = paired_draw(gen, idx, s_tr)
        z, y = z[local].to(device), y[local].to(device)
        cond = (y,) if s is None else (y, s[local].to(device))
    else:
        z = gen.sample_noise(len(idx))[local].to(device)
    fake = G(z, *cond)
    adv = -D(fake, *cond).mean()
    terms = targets.losses(fake, *cond)
    loss_g = gan["adv_weight"] * adv + gan["moment_weight"] * (terms["moment"] + terms["subject_moment"]) \
        + gan["psd_weight"] * terms["spectrum"] + gan["contrast_weight"] * terms["contrast"] \
        + gan["band_cls_weight"] * terms["band_cls"] + gan["envelope_weight"] * terms["envelope"] \
        + gan["trial_cov_weight"] * terms["trial_cov"] + gan["csp_envelope_weight"] * terms["csp_envelope"] \
        + gan["subject_contrast_weight"] * terms["subject_contrast"]
    if extra_loss is not None:
        extra, extra_metrics = extra_loss(fake, *cond)  # (y,) or (y, subject index)
        loss_g = loss_g + extra
        out.update(extra_metrics)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    check_finite(loss_g.item(), "generator loss", epoch + 1, b)
    out.update(generator_loss=loss_g.item(), adversarial_loss=adv.item(), moment_loss=terms["moment"].item(),
               spectrum_loss=terms["spectrum"].item(), contrast_loss=terms["contrast"].item(),
               band_cls_loss=terms["band_cls"].item(), envelope_loss=terms["envelope"].item(),
               trial_cov_loss=terms["trial_cov"].item(), csp_envelope_loss=terms["csp_envelope"].item(),
               **({"subject_moment_loss": terms["subject_moment"].item(),
                   "subject_contrast_loss": terms["subject_contrast"].item()} if s_tr is not None else {}))
    return out


def _with_grad_match(extra_loss, matcher, weight: float, G, n: int, subjects: bool, device):
    """extra_loss plus weight * the gradient-matching term (trainers/gradient_matching.py) on n trials rendered
    for it (gan.grad_match_batch; the cosine of a 32-trial gradient with the real one is mostly sampling
    noise). Every DDP rank renders all n from the shared RNG and computes the same term, so the averaged
    gradient is the one-process gradient."""
    def loss(fake: torch.Tensor, y: torch.Tensor, *subject):
        gen = dist.unwrap(G)  # a second forward pass outside the DDP wrapper; its gradients sum into the same weights
        z, y_gm, _ = paired_draw(gen, torch.arange(n), None)
        y_gm = y_gm.to(device)
        # Left/right pairs share a subject, drawn in the training proportions (no real batch to take it from).
        s = gen.sample_subjects(-(-n // 2)).repeat_interleave(2)[:n].to(device) if subjects else None
        gm, out = matcher.loss(gen(z.to(device), y_gm, *(() if s is None else (s,))), y_gm)
        total = weight * gm
        if extra_loss is not None:
            extra, metrics = extra_loss(fake, y, *subject)
            total, out = total + extra, {**out, **metrics}
        return total, out

    return loss


def _evaluate(round_dir: Path, cfg: dict, device) -> dict:
    """Headline numbers of trainers.evaluate.evaluate_round, when the evaluation module is present."""
    try:
        from trainers.evaluate import evaluate_round
    except ImportError:
        return {}
    res = evaluate_round(round_dir, cfg, device, progress=False)
    return {k: v for k, v in (res or {}).items() if isinstance(v, (int, float, str, bool))}


def finish_run(run_dir: Path, rds: list[Path]) -> None:
    """After the last round of a multi-round run: the run-level evaluation.json and report.md (means over
    rounds, and the interval of the mean train-on-synthetic shortfall), as `--mode evaluate` writes them."""
    try:
        from trainers.evaluate import write_run_evaluation
    except ImportError:
        return
    if all((rd / "evaluation.json").is_file() for rd in rds):
        write_run_evaluation(run_dir, rds=rds)


# --- gpt2cgan entry point ------------------------------------------------------------------------

def conditioned_subjects(cfg: dict, subjects) -> list[int] | None:
    """The subjects networks are conditioned on: the training trials' subjects when gan.subject_condition
    is on and there are at least two of them (one subject leaves nothing to tell apart), else None."""
    found = sorted({int(s) for s in subjects}) if subjects is not None else []
    return found if cfg["gan"]["subject_condition"] and len(found) > 1 else None


def build_models(cfg: dict, n_chans: int, n_times: int, sfreq: float,
                 X_init: np.ndarray | None = None, subjects=None) -> tuple[GPT2Generator, Critic]:
    """Fresh generator and critic. X_init: training trials in generator units (standardized) for the
    generator's data-dependent initialisation (`GPT2Generator.init_from_data`). subjects: the training
    subjects, used when gan.subject_condition is on."""
    subjects = conditioned_subjects(cfg, subjects)
    gen = GPT2Generator(GPT2GeneratorConfig.from_config(cfg, n_chans, n_times, sfreq, subjects))
    if X_init is not None:
        gen.init_from_data(torch.as_tensor(X_init), cfg["gan"]["gain_spread"])
    crit = Critic(CriticConfig.from_config(cfg, n_chans, n_times, sfreq, len(subjects or ())))
    return gen, crit


def train_round(cfg: dict, round_dir: Path, device: torch.device, seed: int, resume: bool = False) -> dict:
    seed_everything(seed)
    splits = load_splits(cfg, pretrain_data_cfg(cfg), seed=seed, progress=dist.is_main()).pooled()
    standardizer = Standardizer.fit(splits.train.X, cfg["data"]["normalize"])
    generator, critic = build_models(cfg, splits.train.n_chans, splits.train.n_times, splits.train.sfreq,
                                     X_init=standardizer.transform(splits.train.X), subjects=splits.train.subject)
    return fit_gan(cfg, round_dir, device, seed, resume, splits, standardizer, generator, critic,
                   meta_extra={"data": {**splits.info, "source": pretrain_data_cfg(cfg)}})
