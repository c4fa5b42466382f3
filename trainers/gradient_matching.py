"""Gradient matching: a decoder should learn the same thing from generated trials as from real ones.

A generator-loss term after dataset condensation by gradient matching (Zhao, Mopuri & Bilen, ICLR 2021):
a probe CNN of the evaluation's architecture takes a gradient step on a real training batch, and the
generator is asked to produce trials on which the same CNN's cross-entropy gradient points the same
way, layer by layer and filter by filter (1 - cosine per output unit). If that holds all along a
training run, a CNN trained on generated trials follows the run of one trained on real trials, which is
what the train-on-synthetic target measures. The class statistics the other terms match are batch
means and spreads; what a CNN learns from is the joint distribution of its own features and the labels,
and on S006-S010 matching statistics left the generated-trained CNN at chance (bench/RESULTS.md).

The probe trains on real training trials only (never on held-out ones) and restarts from a fresh
initialisation every `reset_every` matching steps, so the generator sees gradients from the start of a
training run to its end, as a decoder trained on its trials would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import build_classifier


def layer_distance(g_real: torch.Tensor, g_fake: torch.Tensor) -> torch.Tensor:
    """Mean over output units of 1 - cos(real, generated gradient) of one weight tensor (out, ...)."""
    a, b = g_real.flatten(1), g_fake.flatten(1)
    return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-12)).mean()


class GradientMatching(nn.Module):
    """The gradient-matching term over real training trials X (generator units), labels y.

    Its state (probe weights, the probe optimiser's moments, the step counter) is saved with the GAN's
    training state, so a resumed run repeats the same probe trajectory.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, sfreq: float, ch_names, architecture: str, seed: int,
                 reset_every: int = 20, lr: float = 0.003, batch_size: int = 32, real_batch: int = 256,
                 ema: float = 0.0):
        super().__init__()
        self.X, self.y = X, y
        self.architecture, self.sfreq, self.ch_names = architecture, float(sfreq), list(ch_names)
        self.seed, self.reset_every = int(seed), int(reset_every)
        self.batch_size, self.real_batch = int(min(batch_size, len(y))), int(min(real_batch, len(y)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._restarted = 0  # the step at which the probe last restarted (distance() may run twice a step)
        # No dropout: its masks would make the two gradients differ for reasons that are not the data.
        self.probe = self._fresh(0)
        # The weights whose gradients are matched; biases and norms carry no direction.
        self.matched = [n for n, p in self.probe.named_parameters() if p.dim() > 1]
        self.optimizer = torch.optim.Adam(self.probe.parameters(), lr=lr)
        # gan.grad_match_ema: the generated gradient is a moving average over steps within one probe run, so the
        # cosine is taken of (nearly) the expected gradient, not of one batch's noisy estimate; a per-batch
        # cosine also rewards generated trials that vary little, whose gradients are less noisy.
        self.ema = float(ema)
        for i, name in enumerate(self.matched):
            self.register_buffer(f"ema_{i}", torch.zeros_like(self.probe.get_parameter(name)))

    def _fresh(self, restart: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1009 + restart)
            return build_classifier(self.architecture, self.X.shape[1], self.X.shape[2], self.sfreq,
                                    self.ch_names, n_outputs=2, dropout=0.0)

    def _ema_buffers(self) -> list:
        return [getattr(self, f"ema_{i}") for i in range(len(self.matched))]

    def _restart(self, restart: int) -> None:
        device = next(self.probe.parameters()).device
        self.probe.load_state_dict(self._fresh(restart).state_dict())
        self.probe.to(device)
        self.optimizer.state.clear()
        for b in self._ema_buffers():
            b.zero_()

    def _real_batch(self, n: int, salt: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        # A pure function of the step: a resumed run draws the same batches.
        g = torch.Generator().manual_seed(self.seed * 7919 + int(self.step) * 2 + salt)
        idx = torch.randperm(len(self.y), generator=g)[:n]
        return self.X[idx].to(device), self.y[idx].to(device)

    def distance(self, x: torch.Tensor, y: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        """Mean over the probe's weight tensors of layer_distance between its gradient on the real training
        trials and on (x, y), at the probe's current weights (differentiable in x with create_graph)."""
        step = int(self.step)
        if step > 0 and step % self.reset_every == 0 and self._restarted != step:
            self._restart(step // self.reset_every)
            self._restarted = step
        probe = self.probe.train()
        params = dict(probe.named_parameters())
        # The target: the gradient over up to real_batch training trials. A 32-trial gradient is mostly
        # sampling noise (1 - cos of two such batches ~0.75 per filter on S006-S010).
        real, y_real = self._real_batch(self.real_batch, 0, x.device)
        g_real = torch.autograd.grad(F.cross_entropy(probe(real), y_real), [params[n] for n in self.matched])
        # x goes through copies of the weights: the probe's own step changes them in place before the
        # generator's backward pass runs through this graph.
        copies = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        # Buffers too: batch norm's running statistics follow the real trials only.
        buffers = {n: b.clone() for n, b in probe.named_buffers()}
        logits = torch.func.functional_call(probe, {**copies, **buffers}, (x,))
        g_x = torch.autograd.grad(F.cross_entropy(logits, y), [copies[n] for n in self.matched],
                                  create_graph=create_graph)
        if self.ema > 0 and create_graph:
            # The average's last term carries the gradient; the earlier ones are constants. It starts from zero
            # at each restart, and the cosine does not care about its overall scale.
            g_x = [self.ema * b + (1 - self.ema) * g for b, g in zip(self._ema_buffers(), g_x)]
            for b, g in zip(self._ema_buffers(), g_x):
                b.copy_(g.detach())
        return torch.stack([layer_distance(gr.detach(), g) for gr, g in zip(g_real, g_x)]).mean()

    def step_probe(self) -> None:
        """One Adam step of the probe on a real training batch (it learns from real trials only)."""
        real, y_real = self._real_batch(self.batch_size, 1, next(self.probe.parameters()).device)
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.probe.train()(real), y_real).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def loss(self, fake: torch.Tensor, y_fake: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The matching distance on this generated batch (differentiable in `fake`); then one probe step."""
        dist = self.distance(fake, y_fake)
        self.step_probe()
        return dist, {"grad_match_loss": dist.item()}
