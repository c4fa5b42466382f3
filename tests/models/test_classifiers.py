"""The three CNN classifiers: shapes, features, gradients, channel handling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from data.eegbci import MOTOR_CHANNELS
from models import ARCHITECTURES, build_classifier
from utils.errors import UserError

CH = list(MOTOR_CHANNELS)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("n_times, sfreq", [(640, 160.0), (200, 100.0)])
def test_shapes_features_and_input_gradient(arch, n_times, sfreq):
    torch.manual_seed(0)
    model = build_classifier(arch, len(CH), n_times, sfreq, CH, n_outputs=2, dropout=0.5)
    x = torch.randn(5, len(CH), n_times, requires_grad=True)
    logits = model(x)
    feats = model.features(x)
    assert logits.shape == (5, 2) and feats.ndim == 2 and feats.shape[0] == 5
    assert torch.isfinite(logits).all()
    # Differentiable end to end: a generator behind the classifier gets a gradient.
    logits[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    model.eval()
    assert torch.allclose(model(x), model.classifier(model.features(x)), atol=1e-5)


@pytest.mark.parametrize("arch", ["eegnet", "shallow"])
def test_other_channel_counts(arch):
    model = build_classifier(arch, 3, 320, 160.0, ["C3", "Cz", "C4"])
    assert model(torch.randn(2, 3, 320)).shape == (2, 2)


def test_stft_uses_only_c3_cz_c4():
    torch.manual_seed(0)
    model = build_classifier("stft", len(CH), 640, 160.0, CH).eval()
    x = torch.randn(3, len(CH), 640)
    y = x.clone()
    keep = [CH.index(c) for c in ("C3", "Cz", "C4")]
    others = [i for i in range(len(CH)) if i not in keep]
    y[:, others] = torch.randn(3, len(others), 640) * 5
    assert torch.allclose(model(x), model(y), atol=1e-5)
    z = x.clone()
    z[:, keep[0]] *= 3
    assert not torch.allclose(model(x), model(z), atol=1e-4)


def test_stft_needs_its_channels():
    with pytest.raises(UserError, match="C3"):
        build_classifier("stft", 2, 640, 160.0, ["Cz", "C4"])


def test_shallow_folded_convolution_equals_two_layers():
    torch.manual_seed(0)
    m = build_classifier("shallow", len(CH), 640, 160.0, CH)
    x = torch.randn(4, len(CH), 640)
    two_layers = m.spatial(m.temporal(x.unsqueeze(1))).squeeze(2)
    wt, ws = m.temporal.weight[:, 0, 0, :], m.spatial.weight[..., 0]
    folded = F.conv1d(x, torch.einsum("ofc,fk->ock", ws, wt), torch.einsum("ofc,f->o", ws, m.temporal.bias))
    assert torch.allclose(folded, two_layers, atol=1e-4)


def test_unknown_architecture_and_channel_mismatch():
    with pytest.raises(UserError, match="architecture"):
        build_classifier("resnet", 21, 640, 160.0, CH)
    with pytest.raises(UserError, match="channel names"):
        build_classifier("shallow", 20, 640, 160.0, CH)
