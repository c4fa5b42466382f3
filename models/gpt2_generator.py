"""Class-conditional GPT-2 generator of EEG epochs.

Tokens are time patches: a trial of n_times samples is `n_times / patch_size` tokens, each token
emitting `patch_size` samples of every channel. Each token's input is Gaussian noise (variance
`noise_variance`) concatenated with a learned class embedding (`condition_size` dims), projected
to `n_embd` and fed through `GPT2Model(inputs_embeds=...)`; GPT-2 adds its learned position
embeddings, so `n_positions` bounds the number of patches. A linear head maps each hidden state
to a (n_chans x patch_size) block, and a short depthwise temporal convolution smooths the seams
between neighbouring patches, and the result is band-limited with the magnitude response of the
FIR filter the real data went through (data.l_freq-data.h_freq), because power outside that band
is invisible to a band-power objective yet dominates covariance-based decoders such as CSP. A
per-class, per-channel magnitude response (`calibration`, fitted after training) corrects the
remaining bias of the class-mean spectra; optionally (gan.calibrate_subject) a per-subject magnitude
response (`subject_calibration`) gives each subject its own mean spectrum (per class or classes pooled), or a last per-subject spatial
mixing (`subject_mixing`) re-centres each subject's mean spatial covariance on its real one. Output is in the standardized units of the training
data (data.dataset.Standardizer); the trainer maps it back to volts.

Why time patches and not channels-as-tokens (the original): with 21 channels the sequence would
be 21 tokens carrying 640-sample embeddings, so n_embd would be fixed by the data (not a free
width) and attention would mix electrodes instead of time. Time patches keep n_embd a real model
width, make n_positions mean "how long a trial can be", and let the causal attention carry
rhythm phase from patch to patch.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import GPT2Config, GPT2Model

from utils.errors import UserError
from utils.fft import rfft

CLASS_EFFECTS = ("embedding", "spectral", "spatial")
# Spatial components per band of the "spatial" class effect (CSP keeps the extreme filters of each end).
CLASS_COMPONENTS = 2
# Frequency bands (Hz) of the "spectral" and "spatial" class effects: the band-power features the class
# difference is measured in. Neighbours overlap in 1 Hz linear ramps so the gains sum to a smooth response.
CLASS_BANDS = ((4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 40.0))
CLASS_BAND_RAMP_HZ = 1.0

# GPT-2 keys of the project config passed straight into GPT2Config.
GPT2_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
             "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range")


@dataclass
class GPT2GeneratorConfig:
    n_chans: int
    n_times: int
    patch_size: int = 16
    condition_size: int = 16
    class_count: int = 2
    # Subject numbers the generator is conditioned on (gan.subject_condition); None: class only.
    subjects: list[int] | None = None
    # Where the class acts (gan.class_effect): "embedding", a class embedding fed to GPT-2 with the
    # noise, free to shape anything; "spectral", only a learned per-class, per-channel gain of the
    # theta/mu/beta/gamma bands (CLASS_BANDS) on the output, GPT-2 seeing no class at all; "spatial",
    # only a per-class gain of CLASS_COMPONENTS learned spatial components per band (a low-rank change of
    # the band covariance, the model behind CSP), GPT-2 again seeing no class.
    class_effect: str = "embedding"
    # gan.token_gain: a per-token, per-channel log gain read from GPT-2's output (see set_token_gain).
    token_gain: bool = False
    noise_variance: float = 1.0
    vocab_size: int = 1
    n_positions: int = 64
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_inner: int | None = None
    activation_function: str = "gelu_pytorch_tanh"
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    # The pass band of the real data's preprocessing (data.l_freq / data.h_freq at sfreq): the output
    # goes through the same FIR magnitude response, so it has no power where the real data has none.
    sfreq: float | None = None
    l_freq: float | None = None
    h_freq: float | None = None

    @classmethod
    def from_config(cls, cfg: dict, n_chans: int, n_times: int, sfreq: float | None = None,
                    subjects: list[int] | None = None) -> "GPT2GeneratorConfig":
        kw = {k: cfg[k] for k in GPT2_KEYS}
        return cls(n_chans=n_chans, n_times=n_times, patch_size=cfg["gan"]["patch_size"],
                   condition_size=cfg["condition_size"], class_count=cfg["class_count"], subjects=subjects,
                   class_effect=cfg["gan"]["class_effect"], token_gain=cfg["gan"]["token_gain"],
                   noise_variance=cfg["noise_variance"], sfreq=sfreq, l_freq=cfg["data"]["l_freq"],
                   h_freq=cfg["data"]["h_freq"], **kw)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["subjects"] = None if self.subjects is None else [int(s) for s in self.subjects]
        return d

    @property
    def subject_count(self) -> int:
        return len(self.subjects or ())

    @property
    def n_tokens(self) -> int:
        return self.n_times // self.patch_size

    def check(self) -> None:
        if self.n_times % self.patch_size:
            raise UserError(f"config key 'gan.patch_size': {self.patch_size} does not divide the trial length "
                            f"n_times={self.n_times} (data.tmax - data.tmin times sfreq)")
        if self.n_tokens > self.n_positions:
            raise UserError(f"config keys 'n_positions'/'gan.patch_size': a trial is {self.n_tokens} tokens "
                            f"(n_times {self.n_times} / patch_size {self.patch_size}) but n_positions is "
                            f"{self.n_positions}; raise n_positions (and n_ctx) or gan.patch_size")
        if self.n_embd % self.n_head:
            raise UserError(f"config key 'n_head': {self.n_head} does not divide n_embd ({self.n_embd})")


class GPT2Generator(nn.Module):
    def __init__(self, config: GPT2GeneratorConfig):
        super().__init__()
        config.check()
        self.config = config
        # Token ids are never used (inputs_embeds); 0 keeps them inside the 1-token vocabulary.
        gcfg = GPT2Config(**{k: getattr(config, k) for k in GPT2_KEYS}, use_cache=False, bos_token_id=0,
                          eos_token_id=0)
        gcfg._attn_implementation = "sdpa"
        self.transformer = GPT2Model(gcfg)  # random init; nothing is downloaded
        self.class_embedding = nn.Embedding(config.class_count, config.condition_size)
        self.set_subjects(config.subjects)
        self.set_class_effect(config.class_effect)
        self.input_proj = nn.Linear(config.n_embd + config.condition_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.n_chans * config.patch_size)
        # Depthwise, so each channel keeps its own spectrum; initialised to identity.
        self.smooth = nn.Conv1d(config.n_chans, config.n_chans, 9, padding=4, groups=config.n_chans)
        with torch.no_grad():
            self.smooth.weight.zero_()
            self.smooth.weight[:, 0, 4] = 1.0
            self.smooth.bias.zero_()
        self.register_buffer("band_response", self._band_response(config))
        # Per-class, per-channel magnitude response applied with the band response: ones until the
        # trainer's spectral calibration (trainers.gan.calibrate_spectrum) fits it after training, so
        # the class-mean power spectrum at every channel equals the real training data's. A positive
        # per-channel filter: it rescales power and leaves the coherence between channels unchanged.
        self.register_buffer("calibration", torch.ones(config.class_count, config.n_chans, config.n_times // 2 + 1))
        # Spatial mixing of the output channels (learned). `init_from_data` starts it at the square root
        # of the real data's spatial covariance, so the network itself works in whitened coordinates:
        # at initialisation every spatial direction already has the real data's share of variance.
        self.spatial = nn.Parameter(torch.eye(config.n_chans))
        # Per-trial, per-channel log gain from the first token's noise. GPT-2's final LayerNorm
        # normalises every hidden state, so without this path the output amplitude barely varies
        # with the noise, while real trials' power varies several-fold (subjects, sessions).
        # Noise only, not the class: it models nuisance amplitude variation, and a class-dependent
        # gain let the generator meet class targets with exaggerated lateralisation.
        # Zero (gains of 1) unless `init_from_data` starts it at the data's spread.
        self.gain = nn.Linear(config.n_embd, config.n_chans)
        with torch.no_grad():
            self.gain.weight.zero_()
            self.gain.bias.zero_()
        self.set_token_gain(config.token_gain)

    def set_token_gain(self, on: bool) -> None:
        """gan.token_gain: add (or drop) a zero-initialised linear map from each token's hidden state to a
        log gain per channel, interpolated linearly over the token's samples, so the output's power can
        rise and fall within the trial. The same LayerNorm that flattens the per-trial amplitude (see
        `gain`) flattens it from token to token: the generators' power varied less over 0.5 s windows than
        real trials' (median sd of log power 0.27 against 0.36-0.39 on S006-S010, bench/RESULTS.md session 18), and
        the time course of power is what a CNN trained on real trials reads there. Zero weights: the
        output is unchanged until training moves them, so a pretrained generator can take it on."""
        self.config.token_gain = bool(on)
        if not on:
            if hasattr(self, "token_gain"):
                del self.token_gain
            return
        if not hasattr(self, "token_gain"):
            self.token_gain = nn.Linear(self.config.n_embd, self.config.n_chans,
                                        device=self.class_embedding.weight.device)
            with torch.no_grad():
                self.token_gain.weight.zero_()
                self.token_gain.bias.zero_()

    @torch.no_grad()
    def init_from_data(self, X: torch.Tensor, gain_spread: float = 1.0) -> None:
        """Data-dependent initialisation from training trials X (B, n_chans, n_times), output units:
        the spatial mixing starts at the square root of the data's spatial covariance, and the gain
        path at `gain_spread` times the data's trial-to-trial std of log power (see `init_gain`)."""
        Xc = X - X.mean(-1, keepdim=True)
        cov = torch.einsum("bct,bdt->cd", Xc.double(), Xc.double()) / (Xc.shape[0] * Xc.shape[-1])
        cov = cov + 1e-3 * torch.diagonal(cov).mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        vals, vecs = torch.linalg.eigh(cov)
        self.spatial.copy_((vecs * vals.clamp_min(0).sqrt()[None, :]) @ vecs.T)
        self.init_gain(X, gain_spread)

    @torch.no_grad()
    def init_gain(self, X: torch.Tensor, gain_spread: float = 1.0) -> None:
        """Set the gain path so the per-trial log amplitude has half the covariance (over channels)
        of the real trials' per-trial log power, log power being twice log amplitude. Real trials
        differ mostly by one shared factor (subject, session, electrode contact: about 70% of the
        log band-power variance in the pooled EEGBCI data), and a zero-initialised gain sits at a
        saddle of the spread objective (no spread, no gradient towards spread), so it is started
        where the data is. The bias keeps the mean power at 1: E[exp(2 g)] = exp(2 b + 2 var g)."""
        if X.shape[0] < 3 or gain_spread <= 0:
            return
        c = self.config
        Xc = X - X.mean(-1, keepdim=True)
        logp = torch.log(Xc.double().pow(2).mean(-1) + 1e-12)                    # (B, C) per-trial log power
        cov_g = torch.cov(logp.T) * (gain_spread ** 2 / 4) + 1e-6 * torch.eye(c.n_chans, dtype=torch.float64)
        k = min(c.n_chans, c.n_embd)
        chol = torch.linalg.cholesky(cov_g)[:, :k] / c.noise_variance ** 0.5
        self.gain.weight.zero_()
        self.gain.weight[:, :k] = chol.float()
        self.gain.bias.copy_(-torch.diagonal(cov_g).float())

    @staticmethod
    def _band_response(c: GPT2GeneratorConfig) -> torch.Tensor:
        """|H(f)| at the rfft bins of one trial, for the FIR band-pass MNE applied to the real data
        (mne.filter.create_filter with the loader's settings). All ones when there is no band."""
        n_bins = c.n_times // 2 + 1
        if c.sfreq is None or (c.l_freq is None and c.h_freq is None):
            return torch.ones(n_bins)
        import mne
        from scipy.signal import freqz

        nyq = c.sfreq / 2
        h_freq = c.h_freq if c.h_freq is not None and c.h_freq < nyq else None
        if c.l_freq is None and h_freq is None:
            return torch.ones(n_bins)
        h = mne.filter.create_filter(None, c.sfreq, c.l_freq, h_freq, fir_design="firwin", verbose="error")
        _, resp = freqz(h, worN=np.fft.rfftfreq(c.n_times, 1 / c.sfreq), fs=c.sfreq)
        return torch.from_numpy(np.abs(resp)).float()

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Noise per trial: one n_embd vector per token."""
        return (self.config.n_tokens, self.config.n_embd)

    def sample_noise(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        z = torch.randn((n,) + self.noise_shape, generator=generator)
        return (z * self.config.noise_variance ** 0.5).to(device)

    def set_subjects(self, subjects: list[int] | None) -> None:
        """Condition on these subject numbers with a fresh subject embedding (None: class only).
        The embedding is added to the class embedding: pooled over subjects, the left/right difference
        is a mixture of each subject's own; conditioned, the generator can model each one."""
        for name in ("subject_embedding", "subject_weights", "subject_mixing", "subject_calibration"):
            if hasattr(self, name):
                delattr(self, name)
        self.config.subjects = None if subjects is None else [int(s) for s in subjects]
        n = self.config.subject_count
        device = self.class_embedding.weight.device
        if n:
            self.subject_embedding = nn.Embedding(n, self.config.condition_size, device=device)
            # How often each subject is drawn when sampling (its share of the training trials).
            self.register_buffer("subject_weights", torch.full((n,), 1.0 / n, device=device))
        # Per-subject spatial mixing of the output (one shared matrix without subjects): identity until the
        # trainer's subject covariance calibration (trainers.gan.calibrate_subject_covariance, gan.calibrate_subject)
        # fits it after training, so each subject's generated mean spatial covariance equals its real one.
        self.register_buffer("subject_mixing", torch.eye(self.config.n_chans, device=device).repeat(max(n, 1), 1, 1))
        # Per-subject, per-class, per-channel magnitude response (one shared without subjects): ones until the
        # trainer's subject spectrum calibration (trainers.gan.calibrate_subject_spectrum) fits it, so each
        # subject's generated mean power spectrum (classes pooled, or per class) equals its real one.
        self.register_buffer("subject_calibration", torch.ones(max(n, 1), self.config.class_count, self.config.n_chans,
                                                               self.config.n_times // 2 + 1, device=device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Runs saved before subject_mixing existed (session 21) load with the identity: their output is unchanged.
        state_dict.setdefault(prefix + "subject_mixing", self.subject_mixing.detach().clone())
        state_dict.setdefault(prefix + "subject_calibration", self.subject_calibration.detach().clone())  # session 25
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_class_effect(self, mode: str) -> None:
        """Make the class act through `mode` (GPT2GeneratorConfig.class_effect). "spectral" adds a
        zero-initialised `class_gain` (class_count, n_chans, n_bands): each class's log amplitude gain
        per channel and band. Why: the real left/right difference that carries from session to session
        is the level of mu/beta power per channel (bench/RESULTS.md, session 8), while the rest of the sample's
        class difference is sampling noise; a class input that can move only those few directions
        cannot reproduce the noise as class structure. "spatial" adds a zero-initialised `class_gain`
        (class_count, n_bands, CLASS_COMPONENTS) and `class_pattern` (n_bands, CLASS_COMPONENTS, n_chans):
        each class scales the band-limited signal along a few learned spatial patterns, as a focal
        desynchronisation changes the band covariance along its source's topography instead of
        scaling whole channels, shared background included. Switching modes (fine-tuning) starts a
        fresh gain."""
        if mode not in CLASS_EFFECTS:
            raise UserError(f"config key 'gan.class_effect': {mode!r} is not one of {', '.join(CLASS_EFFECTS)}")
        c = self.config
        if mode != "embedding" and c.sfreq is None:
            raise UserError(f"config key 'gan.class_effect': {mode!r} needs the data's sampling rate")
        device = self.class_embedding.weight.device
        if mode != c.class_effect or not hasattr(self, "class_gain"):
            for name in ("class_gain", "class_pattern"):
                if hasattr(self, name):
                    delattr(self, name)
            if mode == "spectral":
                self.class_gain = nn.Parameter(torch.zeros(c.class_count, c.n_chans, len(CLASS_BANDS), device=device))
            elif mode == "spatial":
                # Gains start at 0 (no class difference); the unit patterns at random directions, since
                # with a zero gain a pattern gets no gradient and any fixed start would be a saddle.
                self.class_gain = nn.Parameter(torch.zeros(c.class_count, len(CLASS_BANDS), CLASS_COMPONENTS,
                                                           device=device))
                self.class_pattern = nn.Parameter(torch.randn(len(CLASS_BANDS), CLASS_COMPONENTS, c.n_chans,
                                                              device=device) / c.n_chans ** 0.5)
            if mode != "embedding" and not hasattr(self, "class_basis"):
                self.register_buffer("class_basis", self._class_basis(c).to(device), persistent=False)
        self.config.class_effect = mode

    @staticmethod
    def _class_basis(c: GPT2GeneratorConfig) -> torch.Tensor:
        """(n_bands, n_times // 2 + 1) trapezoids over the rfft bins, one per CLASS_BANDS entry."""
        f = torch.fft.rfftfreq(c.n_times, 1 / c.sfreq).double()
        w = CLASS_BAND_RAMP_HZ
        return torch.stack([((f - lo) / w + 0.5).clamp(0, 1) * ((hi - f) / w + 0.5).clamp(0, 1)
                            for lo, hi in CLASS_BANDS]).float()

    def subject_index(self, subjects) -> torch.Tensor:
        """Subject numbers (array-like) -> indices into the subject embedding."""
        pos = {int(s): i for i, s in enumerate(self.config.subjects or ())}
        missing = sorted({int(s) for s in subjects} - set(pos))
        if missing:
            raise UserError(f"the generator is conditioned on subjects {sorted(pos)}, not on "
                            f"{', '.join(f'S{s:03d}' for s in missing)}")
        return torch.tensor([pos[int(s)] for s in subjects], dtype=torch.long)

    @torch.no_grad()
    def set_subject_weights(self, index: torch.Tensor) -> None:
        """Sampling proportions of the subjects from the training trials' subject indices."""
        counts = torch.bincount(index, minlength=self.config.subject_count).float()
        self.subject_weights.copy_(counts / counts.sum())

    def sample_subjects(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Subject indices for n trials in the training proportions, in random order; None without
        subjects. Stratified: each subject gets floor(n * share) trials and the remaining few go to
        subjects drawn by share. Subjects' power differs several-fold, so independent draws moved a
        generated set's class-mean band power by several percent with the subject mix alone."""
        if not self.config.subject_count:
            return None
        w = self.subject_weights.cpu().double()
        counts = torch.floor(w * n).long()
        rest = n - int(counts.sum())
        if rest:
            counts += torch.bincount(torch.multinomial(w, rest, replacement=True, generator=generator),
                                     minlength=len(w))
        s = torch.repeat_interleave(torch.arange(len(w)), counts)
        return s[torch.randperm(n, generator=generator)]

    def forward(self, z: torch.Tensor, y: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, n_tokens, n_embd) noise, y (B,) class, subject (B,) subject index when the generator
        is subject-conditioned -> (B, n_chans, n_times) standardized units."""
        c = self.config
        if c.class_effect == "embedding":
            cond = self.class_embedding(y)
        else:
            cond = torch.zeros(y.shape[0], c.condition_size, device=z.device)
        if c.subject_count:
            if subject is None:
                raise ValueError("this generator is subject-conditioned: pass subject indices")
            cond = cond + self.subject_embedding(subject)
        cond = cond[:, None, :].expand(-1, z.shape[1], -1)
        h = self.transformer(inputs_embeds=self.input_proj(torch.cat([z, cond], dim=-1))).last_hidden_state
        x = self.head(h).view(z.shape[0], c.n_tokens, c.n_chans, c.patch_size)
        x = x.permute(0, 2, 1, 3).reshape(z.shape[0], c.n_chans, c.n_times)
        if c.token_gain:
            log_gain = self.token_gain(h).transpose(1, 2)                       # (B, n_chans, n_tokens)
            x = x * torch.exp(F.interpolate(log_gain, size=c.n_times, mode="linear", align_corners=False))
        x = torch.einsum("cd,bdt->bct", self.spatial, self.smooth(x)) * torch.exp(self.gain(z[:, 0]))[:, :, None]
        spec = rfft(x)
        if c.class_effect == "spectral":
            spec = spec * torch.exp(self.class_gain[y] @ self.class_basis)
        elif c.class_effect == "spatial":
            # Per band b and component k: the part of the band-limited signal along the unit pattern u_bk
            # is scaled by exp(gain[y, b, k]); everything orthogonal to the patterns is left as it is.
            u = F.normalize(self.class_pattern, dim=-1).to(spec.dtype)                   # (nb, k, C)
            proj = torch.einsum("nkc,bcf,nf->bnkf", u, spec, self.class_basis.to(spec.dtype))
            scale = torch.expm1(self.class_gain[y]).to(spec.dtype)                        # (B, nb, k)
            spec = spec + torch.einsum("nkc,bnkf->bcf", u, proj * scale[..., None])
        per_subject = self.subject_calibration[subject if c.subject_count else 0, y]
        spec = spec * (self.band_response * self.calibration[y] * per_subject)
        # Last, so the fitted subject covariance is exact: a per-channel filter after a mixing would not commute
        # with it, and leaks a tiny share of the strong directions into the weakest ones, which CSP reads.
        mixing = self.subject_mixing[subject] if c.subject_count else self.subject_mixing.expand(y.shape[0], -1, -1)
        return torch.fft.irfft(torch.einsum("bcd,bdf->bcf", mixing.to(spec.dtype), spec), n=c.n_times, dim=-1)
