"""Critic and gradient penalty: hand-computed penalties, conditioning, no batch-norm."""
import pytest
import torch
from torch import nn

from models.critic import Critic, CriticConfig
from trainers.gan import gradient_penalty


class LinearCritic(nn.Module):
    """D(x, y) = <w_y, x>: grad_x D = w_y everywhere, so the penalty is (||w_y|| - 1)^2."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x, y):
        return (self.w[y] * x).flatten(1).sum(1)


class QuadraticCritic(nn.Module):
    """D(x) = ||x||^2 / 2: grad_x D = x, so the penalty depends on the interpolate itself."""

    def forward(self, x, y):
        return 0.5 * x.pow(2).flatten(1).sum(1)


def test_gradient_penalty_linear_critic_per_class():
    w = torch.zeros(2, 2, 3)
    w[0, 0, 0] = 3.0                # ||w_0|| = 3 -> (3 - 1)^2 = 4
    w[1, 1, :] = 0.5                # ||w_1|| = sqrt(0.75)
    real, fake = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    y = torch.tensor([0, 1, 1, 0])
    gp = gradient_penalty(LinearCritic(w), real, fake, y, torch.rand(4))
    expected = (2 * 4.0 + 2 * (0.75 ** 0.5 - 1) ** 2) / 4
    assert gp.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_penalty_uses_the_interpolate_and_per_sample_norms():
    real = torch.tensor([[[3.0, 0.0]], [[0.0, 2.0]]])
    fake = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    alpha = torch.tensor([0.5, 0.25])
    # x_hat = (2, 0) and (0, 0.5): norms 2 and 0.5 -> ((2-1)^2 + (0.5-1)^2) / 2 = 0.625
    gp = gradient_penalty(QuadraticCritic(), real, fake, torch.tensor([0, 1]), alpha)
    assert gp.item() == pytest.approx(0.625, rel=1e-6)
    # A penalty on the batch-mean gradient (a classic mistake) would give a different number.


def test_gradient_penalty_is_differentiable_wrt_critic_weights():
    w = nn.Parameter(torch.full((2, 1, 4), 1.0))
    gp = gradient_penalty(LinearCritic(w), torch.randn(3, 1, 4), torch.randn(3, 1, 4), torch.tensor([0, 1, 0]),
                          torch.rand(3))
    gp.backward()
    # ||w_y|| = 2 -> d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = 1 per entry, times each class's share.
    assert torch.allclose(w.grad[0], torch.full((1, 4), 2 / 3))
    assert torch.allclose(w.grad[1], torch.full((1, 4), 1 / 3))


@pytest.mark.parametrize("spectral", [True, False])
def test_critic_is_conditional_and_has_no_batch_norm(spectral):
    torch.manual_seed(0)
    d = Critic(CriticConfig(n_chans=4, n_times=160, sfreq=160.0, width=8, spectral=spectral))
    with torch.no_grad():
        d.class_embedding.weight.normal_()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    x = torch.randn(3, 4, 160)
    s0, s1 = d(x, torch.zeros(3, dtype=torch.long)), d(x, torch.ones(3, dtype=torch.long))
    assert s0.shape == (3,) and not torch.allclose(s0, s1)
    # Per-sample independence (what the per-sample gradient penalty assumes): no batch coupling.
    assert torch.allclose(d(x[:1], torch.zeros(1, dtype=torch.long)), s0[:1], atol=1e-5)


def test_critic_gradient_penalty_runs_end_to_end():
    d = Critic(CriticConfig(n_chans=4, n_times=160, sfreq=160.0, width=8))
    gp = gradient_penalty(d, torch.randn(2, 4, 160), torch.randn(2, 4, 160), torch.tensor([0, 1]), torch.rand(2))
    gp.backward()
    assert torch.isfinite(gp) and d.out.weight.grad is not None and d.temporal[0].weight.grad.abs().sum() > 0


def test_subject_projection_makes_the_score_depend_on_the_subject():
    torch.manual_seed(0)
    d = Critic(CriticConfig(n_chans=4, n_times=128, sfreq=128.0, width=8, subject_count=3))
    x, y = torch.randn(5, 4, 128), torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        d.subject_embedding.weight.normal_()
    assert not torch.allclose(d(x, y, torch.zeros(5, dtype=torch.long)), d(x, y, torch.full((5,), 2)))
    d.set_subject_count(0)
    assert d(x, y).shape == (5,)


def test_batch_std_scores_the_spread_of_each_class_and_source_apart():
    """gan.critic_batch_std: the score depends on how much a trial's group (class, and real or generated
    via `group`) varies, so an under-dispersed generated set scores differently from a real one with the
    same trials' content; groups never mix, so one pass over real and generated trials equals two passes;
    a critic that gains the term (fine-tuning) starts with unchanged scores."""
    torch.manual_seed(0)
    d = Critic(CriticConfig(n_chans=4, n_times=128, sfreq=128.0, width=8))
    x, y = torch.randn(8, 4, 128), torch.tensor([0, 1] * 4)
    before = d(x, y)
    d.set_batch_std(True)
    assert torch.allclose(d(x, y), before)  # zero-initialised
    with torch.no_grad():
        d.std_out.weight.normal_()
    # The same first two trials, once with spread-out companions and once with near-copies of themselves.
    spread = d(x, y)[:2]
    copies = torch.cat([x[:2], x[:2].repeat(3, 1, 1) + 1e-3 * torch.randn(6, 4, 128)])
    assert not torch.allclose(d(copies, y)[:2], spread, atol=1e-3)
    real, fake = x, torch.randn(8, 4, 128) * 0.1
    source = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    joint = d(torch.cat([real, fake]), torch.cat([y, y]), group=source)
    assert torch.allclose(joint, torch.cat([d(real, y), d(fake, y)]), atol=1e-5)
    d.set_batch_std(False)
    assert not hasattr(d, "std_out") and torch.allclose(d(x, y), before)
