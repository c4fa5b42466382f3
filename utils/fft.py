"""`rfft` along the last axis with a cheaper backward pass than torch.fft.rfft's.

PyTorch differentiates a one-sided FFT by zero-padding the gradient to the full two-sided
spectrum and running a complex-to-complex FFT over it. The adjoint of rfft is a (weighted)
inverse real FFT of the one-sided gradient, half the work and no padding. In a one-off
micro-benchmark of the gradient-penalty pass of the critic's spectral branch (1 thread, batch 32,
21 x 640 trials; README "Performance") it took 15.1 ms against 23.5 ms. The GAN differentiates
its FFTs once (generator losses) and twice (the gradient penalty through the critic), so both
functions below are differentiable again in terms of each other.
"""
from __future__ import annotations

import torch


def _adjoint_weights(n_bins: int, n: int, like: torch.Tensor) -> torch.Tensor:
    # irfft counts interior bins twice (their negative-frequency twins) and DC / Nyquist once.
    c = torch.full((n_bins,), 0.5, dtype=like.real.dtype, device=like.device)
    c[0] = 1.0
    if n % 2 == 0:
        c[-1] = 1.0
    return c


class _RFFT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.n = x.shape[-1]
        return torch.fft.rfft(x, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        return _RFFTAdjoint.apply(grad, ctx.n)


class _RFFTAdjoint(torch.autograd.Function):
    """g (..., n // 2 + 1) complex -> (..., n) real: d<rfft(x), g>/dx in autograd's convention
    (the gradient of a real loss with respect to a complex z is dL/dRe z + i dL/dIm z)."""

    @staticmethod
    def forward(ctx, g, n):
        ctx.n = n
        return torch.fft.irfft(g * _adjoint_weights(g.shape[-1], n, g), n=n, dim=-1) * n

    @staticmethod
    def backward(ctx, grad):
        return _RFFT.apply(grad), None


def rfft(x: torch.Tensor) -> torch.Tensor:
    """torch.fft.rfft(x, dim=-1), differentiable (twice and more) with the cheaper adjoint."""
    return _RFFT.apply(x)
