"""ShallowConvNet-style CNN (Schirrmeister et al. 2017, Hum. Brain Mapp. 38:5391).

Designed to mimic filter-bank CSP: temporal filters, a spatial filter across all channels,
squaring and average pooling (band power), a log, and a linear classifier. Kernel and pooling
lengths are given in seconds (the paper's 25/75/15 samples at 250 Hz) so they scale with sfreq.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShallowConvNet(nn.Module):
    def __init__(self, n_chans: int, n_times: int, sfreq: float, n_outputs: int = 2, dropout: float = 0.5,
                 n_filters: int = 40, kernel_s: float = 0.1, pool_s: float = 0.3, pool_stride_s: float = 0.06):
        super().__init__()
        self.n_chans, self.n_times, self.sfreq, self.n_outputs = n_chans, n_times, sfreq, n_outputs
        k = max(2, min(n_times, int(round(kernel_s * sfreq))))
        n_conv = n_times - k + 1
        pool = max(1, min(n_conv, int(round(pool_s * sfreq))))
        stride = max(1, int(round(pool_stride_s * sfreq)))
        self.temporal = nn.Conv2d(1, n_filters, (1, k))
        # No bias: the batch norm right after makes it redundant.
        self.spatial = nn.Conv2d(n_filters, n_filters, (n_chans, 1), bias=False)
        self.bn = nn.BatchNorm1d(n_filters)
        self.pool = nn.AvgPool1d(pool, stride=stride)
        self.dropout = nn.Dropout(dropout)
        self.n_features = n_filters * ((n_conv - pool) // stride + 1)
        self.classifier = nn.Linear(self.n_features, n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_chans, n_times) -> (B, n_features): log band power of spatio-temporal filters."""
        # Temporal then spatial convolution with nothing in between is one linear map: fold both
        # kernels into a single (n_filters, n_chans, k) Conv1d kernel. Same function, same
        # parameters and gradients as the paper's two layers, ~4x less compute on CPU.
        wt, ws = self.temporal.weight[:, 0, 0, :], self.spatial.weight[..., 0]      # (F, k), (F, F, C)
        kernel = torch.einsum("ofc,fk->ock", ws, wt)
        bias = torch.einsum("ofc,f->o", ws, self.temporal.bias)
        x = self.bn(F.conv1d(x, kernel, bias))
        # Clamp before the log: a silent filter would otherwise give -inf and NaN gradients.
        x = torch.log(torch.clamp(self.pool(x * x), min=1e-6))
        return self.dropout(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
