"""Spectrogram CNN over C3, Cz and C4 (the original project's classifier design).

The short-time Fourier transform runs inside `forward` (torch.stft is differentiable), so the
network can sit behind a generator and pass gradients back to it. Mu/beta rhythms over the
sensorimotor cortex (C3 left, C4 right hemisphere, Cz midline) carry the left/right signal, so
only those three channels are used and only the 4-40 Hz bins are kept.
"""
from __future__ import annotations

import torch
from torch import nn

from utils.errors import UserError

STFT_CHANNELS = ("C3", "Cz", "C4")


class STFTCNN(nn.Module):
    def __init__(self, n_chans: int, n_times: int, sfreq: float, ch_names: list[str], n_outputs: int = 2,
                 dropout: float = 0.5, window_s: float = 0.5, hop_s: float = 0.125, fmin: float = 4.0,
                 fmax: float = 40.0, width: int = 16):
        super().__init__()
        self.n_chans, self.n_times, self.sfreq, self.n_outputs = n_chans, n_times, sfreq, n_outputs
        lower = [c.lower() for c in ch_names]
        missing = [c for c in STFT_CHANNELS if c.lower() not in lower]
        if missing:
            raise UserError(f"classifier.architecture 'stft' needs channels {', '.join(STFT_CHANNELS)}; "
                            f"{', '.join(missing)} not in data.channels")
        # A buffer, not a Python list, so the picks move with .to(device) and land in the state dict.
        self.register_buffer("picks", torch.tensor([lower.index(c.lower()) for c in STFT_CHANNELS]))
        self.n_fft = max(8, min(n_times, int(round(window_s * sfreq))))
        self.hop = max(1, int(round(hop_s * sfreq)))
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        freqs = torch.fft.rfftfreq(self.n_fft, 1.0 / sfreq)
        keep = torch.nonzero((freqs >= fmin) & (freqs <= min(fmax, sfreq / 2))).flatten()
        if len(keep) == 0:
            keep = torch.arange(len(freqs))
        self.f_lo, self.f_hi = int(keep[0]), int(keep[-1]) + 1
        self.conv = nn.Sequential(
            nn.Conv2d(len(STFT_CHANNELS), width, 3, padding=1), nn.BatchNorm2d(width), nn.ELU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ELU(),
            nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.dropout = nn.Dropout(dropout)
        self.n_features = 2 * width * 16
        self.classifier = nn.Linear(self.n_features, n_outputs)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_chans, n_times) -> log power (B, 3, n_freqs, n_frames) of C3, Cz, C4."""
        x = x.index_select(1, self.picks)
        b, c, t = x.shape
        spec = torch.stft(x.reshape(b * c, t), self.n_fft, hop_length=self.hop, window=self.window.to(x.dtype),
                          center=True, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # abs() has an undefined gradient at 0
        power = power[:, self.f_lo:self.f_hi]
        return torch.log(power + 1e-6).reshape(b, c, power.shape[1], power.shape[2])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(self.spectrogram(x)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
