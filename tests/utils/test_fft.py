import pytest
import torch

from utils.fft import rfft


@pytest.mark.parametrize("n", [16, 15])
def test_rfft_matches_torch_values_and_gradients(n):
    torch.manual_seed(0)
    x = torch.randn(3, 4, n, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n // 2 + 1, dtype=torch.complex128)
    ours, ref = rfft(x), torch.fft.rfft(x, dim=-1)
    assert torch.allclose(ours, ref)
    # A loss that uses both parts of the spectrum, as the GAN's power and covariance terms do.
    g_ours, = torch.autograd.grad((ours * w).real.sum() + ours.abs().pow(2).sum(), x)
    g_ref, = torch.autograd.grad((ref * w).real.sum() + ref.abs().pow(2).sum(), x)
    assert torch.allclose(g_ours, g_ref)


@pytest.mark.parametrize("n", [12, 11])
def test_rfft_is_twice_differentiable(n):
    # The gradient penalty differentiates the critic's FFT twice.
    x = torch.randn(2, 3, n, dtype=torch.float64, requires_grad=True)
    f = lambda v: torch.view_as_real(rfft(v)).pow(2).sum(-1).log()
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_rfft_second_derivative_matches_torch():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)

    def penalty(fft):
        p = torch.view_as_real(fft(x)[..., 2:9]).pow(2).sum(-1).add(1e-3).log().sum()
        g, = torch.autograd.grad(p, x, create_graph=True)
        h, = torch.autograd.grad(g.pow(2).sum(), x)
        return h

    assert torch.allclose(penalty(rfft), penalty(lambda v: torch.fft.rfft(v, dim=-1)))
