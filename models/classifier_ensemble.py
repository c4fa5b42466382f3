"""Several trained classifiers read as one (the rounds of one classifier run).

Why: the fine-tuning trainers push generated trials along the gradient of a frozen classifier. One
network's gradient carries, besides the class difference it learned, the idiosyncrasies of its own
initialisation and training draw; the mean over networks trained from different seeds keeps what they
share (the same reasoning as classifier guidance with averaged or robust classifiers).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ClassifierEnsemble(nn.Module):
    """members: classifiers, each taking its own standardized units (member i: x_volts = x_i * std_i + mean_i).
    Input is in the first member's units; output (B, n_outputs) is the mean of the members' log-probabilities,
    a log of the normalised geometric mean of their probabilities once passed through softmax or cross-entropy."""

    def __init__(self, members: list[nn.Module], stds: list[np.ndarray], means: list[np.ndarray]):
        super().__init__()
        self.members = nn.ModuleList(members)
        # first member's units -> member i's units, per channel: x_i = x_0 * a_i + b_i
        a = [torch.as_tensor(stds[0] / s, dtype=torch.float32)[:, None] for s in stds]
        b = [torch.as_tensor((means[0] - m) / s, dtype=torch.float32)[:, None] for s, m in zip(stds, means)]
        self.register_buffer("scale", torch.stack(a))
        self.register_buffer("shift", torch.stack(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.log_softmax(m(x * a + b), dim=-1)
                            for m, a, b in zip(self.members, self.scale, self.shift)]).mean(0)
