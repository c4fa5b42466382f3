"""EEGNet-style compact CNN (Lawhern et al. 2018, J. Neural Eng. 15:056013).

Temporal convolution (band-pass-like filters) -> depthwise spatial convolution per filter
(filter-specific spatial patterns, like CSP) -> separable convolution -> linear read-out.
Kernel lengths are given in seconds so the same network works at any sampling rate.
"""
from __future__ import annotations

import torch
from torch import nn


class EEGNet(nn.Module):
    def __init__(self, n_chans: int, n_times: int, sfreq: float, n_outputs: int = 2, dropout: float = 0.5,
                 F1: int = 8, D: int = 2, F2: int = 16, kernel_s: float = 0.5, sep_kernel_s: float = 0.125):
        super().__init__()
        self.n_chans, self.n_times, self.sfreq, self.n_outputs = n_chans, n_times, sfreq, n_outputs
        k1 = max(3, int(round(kernel_s * sfreq)) | 1)      # odd, so 'same' padding is symmetric
        k2 = max(3, int(round(sep_kernel_s * sfreq)) | 1)
        # Pool by 4 then 8 as in the paper (at 128 Hz); shorter inputs pool less so the
        # sequence never collapses to zero length.
        p1 = min(4, max(1, n_times // 4))
        p2 = min(8, max(1, n_times // p1 // 2))
        self.block1 = nn.Sequential(
            nn.Conv2d(1, F1, (1, k1), padding=(0, k1 // 2), bias=False),
            nn.BatchNorm2d(F1),
            nn.Conv2d(F1, F1 * D, (n_chans, 1), groups=F1, bias=False),
            nn.BatchNorm2d(F1 * D),
            nn.ELU(),
            nn.AvgPool2d((1, p1)),
            nn.Dropout(dropout),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(F1 * D, F1 * D, (1, k2), padding=(0, k2 // 2), groups=F1 * D, bias=False),
            nn.Conv2d(F1 * D, F2, 1, bias=False),
            nn.BatchNorm2d(F2),
            nn.ELU(),
            nn.AvgPool2d((1, p2)),
            nn.Dropout(dropout),
        )
        self.n_features = F2 * ((n_times // p1) // p2)
        self.classifier = nn.Linear(self.n_features, n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_chans, n_times) -> (B, n_features), the input of the linear read-out."""
        x = self.block2(self.block1(x.unsqueeze(1)))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
