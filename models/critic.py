"""Class-conditional WGAN-GP critic over EEG trials (n_chans x n_times).

Two feature branches are concatenated into one vector h:
- a temporal CNN (strided 1-D convolutions with the electrodes as input channels, LeakyReLU, no
  normalisation: batch-norm would couple the trials of a batch and break the per-sample gradient
  penalty);
- a spectral branch: learned spatial filters (initialised to the identity), log power of each
  filtered signal in 2 Hz bins between 4 and 40 Hz. Motor imagery lives in band power (mu/beta
  desynchronisation) that a small CNN sees only slowly; this branch shows it directly.
The score is a projection discriminator (Miyato & Koyama 2018): w.h + b + <embed(y), h>, so the
class acts through an inner product with the features and the critic cannot ignore it. With
`gan.subject_condition` the subject gets its own projection, <embed(subject), h>.
With `gan.critic_batch_std` the score also sees how much the features vary within the batch (per class
and source, a minibatch-standard-deviation feature as in Karras et al. 2018, one per feature): a
per-trial critic cannot tell trials that are each realistic from a set that varies too little. It
couples the trials of a batch, so the gradient penalty's per-trial gradients include that coupling (as
in progressive GANs, which used it with WGAN-GP).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from utils.fft import rfft


@dataclass
class CriticConfig:
    n_chans: int
    n_times: int
    sfreq: float
    width: int = 32
    class_count: int = 2
    subject_count: int = 0
    spectral: bool = True
    f_lo: float = 4.0
    f_hi: float = 40.0
    bin_hz: float = 2.0
    batch_std: bool = False

    @classmethod
    def from_config(cls, cfg: dict, n_chans: int, n_times: int, sfreq: float, subject_count: int = 0) -> "CriticConfig":
        return cls(n_chans=n_chans, n_times=n_times, sfreq=float(sfreq), width=cfg["gan"]["critic_width"],
                   class_count=cfg["class_count"], subject_count=subject_count, spectral=cfg["gan"]["spectral_critic"],
                   batch_std=cfg["gan"]["critic_batch_std"])

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def band_bins(n_times: int, sfreq: float, f_lo: float, f_hi: float, bin_hz: float) -> torch.Tensor:
    """(n_bins, n_freqs) averaging matrix from rfft bins to bin_hz-wide bands in [f_lo, f_hi)."""
    freqs = torch.fft.rfftfreq(n_times, 1.0 / sfreq)
    edges = torch.arange(f_lo, f_hi + 1e-9, bin_hz)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = ((freqs >= lo) & (freqs < hi)).float()
        if m.sum() > 0:
            rows.append(m / m.sum())
    if not rows:  # very short trials: one band over everything
        rows.append(torch.ones_like(freqs) / len(freqs))
    return torch.stack(rows)


class Critic(nn.Module):
    def __init__(self, config: CriticConfig):
        super().__init__()
        self.config = config
        w = config.width
        # A patchifying first layer (kernel 8, stride 4) cuts the time axis early: the critic runs
        # 3 forwards and a double backward per step, so its FLOPs dominate a CPU training step.
        layers, c_in, n = [], config.n_chans, config.n_times
        for c_out, k, stride in ((w, 8, 4), (2 * w, 5, 2), (2 * w, 5, 2), (2 * w, 5, 2)):
            stride = stride if n >= 4 * stride else 1
            layers += [nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2), nn.LeakyReLU(0.2)]
            c_in, n = c_out, n // stride
        self.temporal = nn.Sequential(*layers)
        n_feat = 2 * w * 2  # mean and std over time of the last conv map
        if config.spectral:
            self.spatial = nn.Linear(config.n_chans, config.n_chans, bias=False)
            nn.init.eye_(self.spatial.weight)
            bins = band_bins(config.n_times, config.sfreq, config.f_lo, config.f_hi, config.bin_hz)
            # Only the rfft bins some band averages: the rest of the spectrum is never squared (or
            # differentiated twice by the gradient penalty).
            used = torch.nonzero(bins.sum(0)).flatten()
            self.bin_lo, self.bin_hi = int(used.min()), int(used.max()) + 1
            self.register_buffer("bins", bins[:, self.bin_lo:self.bin_hi].contiguous(), persistent=False)
            self.spectral_mlp = nn.Sequential(nn.Linear(config.n_chans * self.bins.shape[0], 4 * w),
                                              nn.LeakyReLU(0.2))
            n_feat += 4 * w
        self.n_features = n_feat
        self.out = nn.Linear(n_feat, 1)
        self.class_embedding = nn.Embedding(config.class_count, n_feat)
        nn.init.normal_(self.class_embedding.weight, std=0.02)
        self.set_subject_count(config.subject_count)
        self.set_batch_std(config.batch_std)

    def set_batch_std(self, on: bool) -> None:
        """Add (a zero-initialised `std_out`: the score starts unchanged) or drop the batch-spread term."""
        self.config.batch_std = bool(on)
        if on and not hasattr(self, "std_out"):
            self.std_out = nn.Linear(self.n_features, 1, bias=False, device=self.out.weight.device)
            nn.init.zeros_(self.std_out.weight)
        elif not on and hasattr(self, "std_out"):
            del self.std_out

    def set_subject_count(self, n: int) -> None:
        """A fresh subject projection <embed(subject), h> for n subjects (0: class only)."""
        if hasattr(self, "subject_embedding"):
            del self.subject_embedding
        self.config.subject_count = int(n)
        if n:
            self.subject_embedding = nn.Embedding(n, self.n_features, device=self.out.weight.device)
            nn.init.normal_(self.subject_embedding.weight, std=0.02)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.temporal(x)
        feats = [h.mean(-1), (h.var(-1) + 1e-6).sqrt()]
        if self.config.spectral:
            # Spatial filtering commutes with the FFT, so it is applied to the few bins kept, and
            # |X|^2 is re^2 + im^2 (abs() costs a sign and a division in every backward pass).
            spec = torch.view_as_real(rfft(x)[..., self.bin_lo:self.bin_hi])       # (B, C, F, 2)
            power = torch.einsum("dc,bcfr->bdfr", self.spatial.weight, spec).square().sum(-1) / x.shape[-1]
            logp = torch.log(power @ self.bins.T + 1e-3)  # floor keeps grad_x bounded (GP)
            feats.append(self.spectral_mlp(logp.flatten(1)))
        return torch.cat(feats, dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, subject: torch.Tensor | None = None,
                group: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, n_chans, n_times) standardized units, y (B,) class, subject (B,) subject index for a
        subject-conditioned critic, group (B,) which set each trial belongs to when one batch holds
        several (real and generated), for the batch-spread term -> (B,) scores."""
        h = self.features(x)
        emb = self.class_embedding(y)
        if self.config.subject_count:
            if subject is None:
                raise ValueError("this critic is subject-conditioned: pass subject indices")
            emb = emb + self.subject_embedding(subject)
        score = self.out(h).squeeze(1) + (emb * h).sum(1)
        if self.config.batch_std:
            key = y if group is None else y + self.config.class_count * group
            score = score + self.std_out(group_std(h, key)).squeeze(1)
        return score


def group_std(h: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """(B, F) features -> (B, F): each trial gets the standard deviation of its group's features (the
    trials with the same key)."""
    _, inv = torch.unique(key, return_inverse=True)
    n = torch.bincount(inv).to(h.dtype)[:, None]
    mean = torch.zeros(len(n), h.shape[1], dtype=h.dtype, device=h.device).index_add(0, inv, h) / n
    var = torch.zeros_like(mean).index_add(0, inv, (h - mean[inv]).square()) / n
    return (var + 1e-6).sqrt()[inv]
