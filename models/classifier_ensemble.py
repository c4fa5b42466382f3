"""Several trained classifiers read as one (the rounds of one classifier run), each fed as it was trained.

Why several: the fine-tuning trainers push generated trials along the gradient of a frozen classifier. One
network's gradient carries, besides the class difference it learned, the idiosyncrasies of its own
initialisation and training draw; the mean over networks trained from different seeds keeps what they
share (the same reasoning as classifier guidance with averaged or robust classifiers).

Why per-subject whiteners: a classifier trained with Euclidean alignment (`classifier.alignment`) reads every
subject's trials whitened by that subject's mean covariance, so it learns the class difference subjects share
rather than the ones that tell subjects apart. A subject-conditioned generator's trials belong to a subject,
so they can be whitened as that subject's real trials are.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ClassifierEnsemble(nn.Module):
    """members: classifiers; member i was trained on trials x_i = (W_i[s] @ v - mean_i) / std_i, v in volts,
    W_i[s] its Euclidean-alignment whitener of the trial's subject (no whitening when `whiteners` is None).

    Input: x = (v - mean_0) / std_0, the first member's standardized units (before any whitening), and with
    whiteners the subject of each trial as an index into the whiteners' first axis. Output (B, n_outputs):
    the mean of the members' log-probabilities, a log of the normalised geometric mean of their
    probabilities once passed through softmax or cross-entropy."""

    def __init__(self, members: list[nn.Module], stds: list[np.ndarray], means: list[np.ndarray],
                 whiteners: list[np.ndarray] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.aligned = whiteners is not None
        if not self.aligned:
            # first member's units -> member i's units, per channel: x_i = x_0 * a_i + b_i
            a = [torch.as_tensor(stds[0] / s, dtype=torch.float32)[:, None] for s in stds]
            b = [torch.as_tensor((means[0] - m) / s, dtype=torch.float32)[:, None] for s, m in zip(stds, means)]
            self.register_buffer("scale", torch.stack(a))
            self.register_buffer("shift", torch.stack(b))
            return
        # Whitening needs volts: the input is mapped back with the first member's standardizer, whitened
        # (float64: the whiteners are of order 1 / volts), then standardized as each member's training trials.
        self.register_buffer("std_0", torch.as_tensor(stds[0], dtype=torch.float64)[:, None])
        self.register_buffer("mean_0", torch.as_tensor(means[0], dtype=torch.float64)[:, None])
        self.register_buffer("whiteners", torch.stack([torch.as_tensor(w, dtype=torch.float64) for w in whiteners]))
        self.register_buffer("stds", torch.stack([torch.as_tensor(s, dtype=torch.float64)[:, None] for s in stds]))
        self.register_buffer("means", torch.stack([torch.as_tensor(m, dtype=torch.float64)[:, None] for m in means]))

    def member_inputs(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> list[torch.Tensor]:
        """What each member reads for the trials x (first member's units) of subjects `subject`."""
        if not self.aligned:
            return [x * a + b for a, b in zip(self.scale, self.shift)]
        if subject is None:
            raise ValueError("this classifier reads trials whitened per subject: pass their subject indices")
        volts = x.double() * self.std_0 + self.mean_0
        return [((torch.einsum("bcd,bdt->bct", w[subject], volts) - m) / s).to(x.dtype)
                for w, m, s in zip(self.whiteners, self.means, self.stds)]

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([F.log_softmax(m(xi), dim=-1)
                            for m, xi in zip(self.members, self.member_inputs(x, subject))]).mean(0)
