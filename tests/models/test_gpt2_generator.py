"""GPT-2 generator: shapes, class conditioning, token-count errors, determinism."""
import pytest
import torch

from models.gpt2_generator import GPT2Generator, GPT2GeneratorConfig
from utils.errors import UserError


def tiny(**kw):
    base = dict(n_chans=5, n_times=64, patch_size=8, condition_size=4, n_positions=16, n_embd=16, n_layer=1,
                n_head=2)
    base.update(kw)
    return GPT2GeneratorConfig(**base)


def test_output_shape_and_time_patch_tokens():
    torch.manual_seed(0)
    g = GPT2Generator(tiny())
    assert g.noise_shape == (8, 16)  # 64 samples / 8 per token
    z = g.sample_noise(3)
    x = g(z, torch.tensor([0, 1, 0]))
    assert x.shape == (3, 5, 64) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_changing_the_class_changes_the_output():
    torch.manual_seed(0)
    g = GPT2Generator(tiny()).eval()
    z = g.sample_noise(4)
    x0 = g(z, torch.zeros(4, dtype=torch.long))
    x1 = g(z, torch.ones(4, dtype=torch.long))
    assert (x0 - x1).abs().mean() > 1e-3 * x0.abs().mean()
    # ... and the class embedding receives gradient, so training can use the condition.
    (x0.sum() - x1.sum()).backward()
    assert g.class_embedding.weight.grad.abs().sum() > 0


def test_noise_variance_scales_the_noise():
    g = GPT2Generator(tiny(noise_variance=4.0))
    z = g.sample_noise(2000, generator=torch.Generator().manual_seed(0))
    assert abs(z.var().item() - 4.0) < 0.1


def test_too_many_tokens_is_a_user_error_naming_the_keys():
    with pytest.raises(UserError, match="n_positions"):
        GPT2Generator(tiny(n_times=640, patch_size=8, n_positions=16))  # 80 tokens > 16
    with pytest.raises(UserError, match="patch_size"):
        GPT2Generator(tiny(n_times=60, patch_size=8))


def test_config_keys_reach_gpt2():
    g = GPT2Generator(tiny(n_layer=2, n_inner=24, activation_function="relu", n_positions=12))
    c = g.transformer.config
    assert (c.n_layer, c.n_inner, c.activation_function, c.n_positions) == (2, 24, "relu", 12)
    assert g.transformer.wpe.weight.shape == (12, 16)


def test_seeded_construction_repeats_exactly():
    torch.manual_seed(3)
    a = GPT2Generator(tiny())
    torch.manual_seed(3)
    b = GPT2Generator(tiny())
    z = a.sample_noise(2, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1])
    assert torch.equal(a(z, y), b(z, y))


def test_output_has_no_power_outside_the_data_pass_band():
    # The real data went through MNE's 4-40 Hz FIR filter; the generator applies the same response.
    torch.manual_seed(0)
    g = GPT2Generator(tiny(n_times=640, patch_size=16, n_positions=64, sfreq=160.0, l_freq=4.0, h_freq=40.0))
    with torch.no_grad():
        x = g(g.sample_noise(8), torch.tensor([0, 1] * 4))
    power = torch.fft.rfft(x, dim=-1).abs().pow(2).mean((0, 1))
    f = torch.fft.rfftfreq(640, 1 / 160.0)
    inside = power[(f >= 5) & (f <= 38)].mean()
    assert power[f < 2].max() < 1e-3 * inside
    assert power[f > 55].max() < 1e-3 * inside
    unfiltered = GPT2Generator(tiny(n_times=640, patch_size=16, n_positions=64))
    assert torch.equal(unfiltered.band_response, torch.ones(321))


def test_spatial_initialisation_gives_the_output_the_data_channel_correlation():
    torch.manual_seed(0)
    src = torch.randn(50, 1, 64)
    X = torch.cat([src, src + 0.1 * torch.randn(50, 1, 64), torch.randn(50, 3, 64)], dim=1)  # ch 0 ~ ch 1
    g = GPT2Generator(tiny())
    with torch.no_grad():
        before = g(g.sample_noise(64), torch.zeros(64, dtype=torch.long))
        g.init_from_data(X)
        after = g(g.sample_noise(64), torch.zeros(64, dtype=torch.long))

    def corr01(x):
        return torch.corrcoef(x.transpose(0, 1).reshape(5, -1))[0, 1].item()
    assert abs(corr01(before)) < 0.5 < 0.9 < corr01(after)
    assert "spatial" in dict(g.named_parameters())  # learned from there on


def test_data_initialisation_gives_the_output_the_data_trial_to_trial_power_spread():
    torch.manual_seed(0)
    # Real trials differ by a factor shared by all channels (log-amplitude std 0.5), as subjects do.
    X = torch.randn(200, 5, 64) * torch.exp(0.5 * torch.randn(200, 1, 1))
    g = GPT2Generator(tiny())
    z, y = g.sample_noise(400), torch.zeros(400, dtype=torch.long)

    def spread(x):
        logp = torch.log(x.pow(2).mean(-1))
        corr = torch.corrcoef(logp.T)
        return logp.std(0).mean().item(), corr[~torch.eye(5, dtype=torch.bool)].mean().item()
    with torch.no_grad():
        before = spread(g(z, y))
        g.init_from_data(X)
        after = spread(g(z, y))
    real = spread(X)  # log-power std 1.0, channels correlated ~0.8
    assert before[0] < 0.5 * real[0] and before[1] < 0.5
    assert after[0] == pytest.approx(real[0], rel=0.3) and after[1] > 0.6


def test_subject_conditioning_changes_the_output_and_draws_training_proportions():
    torch.manual_seed(0)
    g = GPT2Generator(tiny(subjects=[3, 7, 9])).eval()
    z = g.sample_noise(4)
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="subject-conditioned"):
        g(z, y)
    x0, x1 = g(z, y, torch.zeros(4, dtype=torch.long)), g(z, y, torch.full((4,), 2))
    assert (x0 - x1).abs().mean() > 1e-3 * x0.abs().mean()
    idx = g.subject_index([7, 7, 7, 9])
    assert idx.tolist() == [1, 1, 1, 2]
    with pytest.raises(UserError, match="S004"):
        g.subject_index([4])
    g.set_subject_weights(idx)
    draws = g.sample_subjects(4000, generator=torch.Generator().manual_seed(1))
    # Exact proportions, never a subject without training trials, and not in blocks.
    assert torch.bincount(draws, minlength=3).tolist() == [0, 3000, 1000]
    assert 0.2 < (draws[1:] != draws[:-1]).float().mean() < 0.5
    odd = torch.bincount(g.sample_subjects(7, generator=torch.Generator().manual_seed(2)), minlength=3)
    assert odd[0] == 0 and odd[1] >= 5 and odd.sum() == 7  # floor(7 * 0.75) = 5, the rest drawn by share
    g.set_subjects(None)  # back to class only
    assert g.sample_subjects(3) is None and not hasattr(g, "subject_embedding") and g(z, y).shape == (4, 5, 64)


def class_effect_generator(mode: str, n: int):
    """A 4 s, 160 Hz generator whose class acts through `mode`, n noise vectors, and both label sets."""
    torch.manual_seed(0)
    g = GPT2Generator(tiny(n_times=640, patch_size=32, n_positions=32, class_effect=mode, sfreq=160.0,
                           l_freq=4.0, h_freq=40.0)).eval()
    return g, g.sample_noise(n), torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)


def test_spectral_class_effect_moves_only_band_power_per_channel():
    g, z, y0, y1 = class_effect_generator("spectral", 4)
    # GPT-2 sees no class: with a zero gain both classes render the same noise identically ...
    assert torch.equal(g(z, y0), g(z, y1))
    # ... and a class's mu gain at one channel scales that channel's 8-13 Hz amplitude and nothing else.
    with torch.no_grad():
        g.class_gain[1, 2, 1] = 0.5
    x0, x1 = g(z, y0), g(z, y1)
    assert torch.equal(x0[:, [0, 1, 3, 4]], x1[:, [0, 1, 3, 4]])
    f = torch.fft.rfftfreq(640, 1 / 160.0)
    ratio = torch.fft.rfft(x1[:, 2]).abs() / torch.fft.rfft(x0[:, 2]).abs()
    mu, beta = (f >= 9) & (f <= 12), (f >= 15) & (f <= 29)
    assert torch.allclose(ratio[:, mu], torch.full_like(ratio[:, mu], float(torch.e ** 0.5)), rtol=1e-3)
    assert torch.allclose(ratio[:, beta], torch.ones_like(ratio[:, beta]), rtol=1e-3)
    (x1.pow(2).sum()).backward()
    assert g.class_gain.grad[1].abs().sum() > 0 and g.class_embedding.weight.grad is None


def test_switching_the_class_effect_starts_a_fresh_gain_and_rejects_unknown_modes():
    g = GPT2Generator(tiny(n_times=640, patch_size=32, n_positions=32, sfreq=160.0))
    assert not hasattr(g, "class_gain")
    g.set_class_effect("spectral")
    assert g.config.class_effect == "spectral" and g.class_gain.abs().sum() == 0
    assert "class_gain" in dict(g.named_parameters())
    g.set_class_effect("embedding")
    assert not hasattr(g, "class_gain") and g.config.class_effect == "embedding"
    with pytest.raises(UserError, match="gan.class_effect"):
        g.set_class_effect("channel")
    with pytest.raises(UserError, match="sampling rate"):
        GPT2Generator(tiny(class_effect="spectral"))


def test_spatial_class_effect_scales_one_band_component_and_leaves_the_rest():
    g, z, y0, y1 = class_effect_generator("spatial", 8)
    assert torch.equal(g(z, y0), g(z, y1))  # zero gains: GPT-2 sees no class, so no class difference
    with torch.no_grad():
        g.class_gain[1, 1, 0] = -1.0  # class 1: the first mu component at exp(-1) of its amplitude
    s0, s1 = torch.fft.rfft(g(z, y0)), torch.fft.rfft(g(z, y1))
    f = torch.fft.rfftfreq(640, 1 / 160.0)
    mu, beta = (f >= 9) & (f <= 12), (f >= 15) & (f <= 29)
    u = torch.nn.functional.normalize(g.class_pattern[1, 0].detach(), dim=0)
    along = lambda s: torch.einsum("c,bcf->bf", u.to(s.dtype), s)[:, mu]
    assert torch.allclose(along(s1), along(s0) * torch.e ** -1, rtol=1e-3, atol=1e-5)
    resid = lambda s: s[..., mu] - u.to(s.dtype)[None, :, None] * along(s)[:, None]
    assert torch.allclose(resid(s1), resid(s0), atol=1e-4)  # orthogonal to the pattern: unchanged
    assert torch.allclose(s1[..., beta], s0[..., beta], atol=1e-4)
    torch.fft.irfft(s1).pow(2).sum().backward()
    assert g.class_pattern.grad.abs().sum() > 0 and g.class_gain.grad.abs().sum() > 0


def test_token_gain_starts_as_identity_and_lets_power_change_within_the_trial():
    """gan.token_gain: a zero-initialised per-token, per-channel log gain. Added to a generator it
    changes nothing; once its weights move, the output's power varies from one part of the trial to
    another (smoothly: interpolated between tokens), and it gets gradient; switching it off removes it."""
    torch.manual_seed(0)
    g = GPT2Generator(tiny()).eval()
    z, y = g.sample_noise(8), torch.tensor([0, 1] * 4)
    plain = g(z, y)
    g.set_token_gain(True)
    assert g.config.token_gain and torch.equal(g(z, y), plain)
    with torch.no_grad():
        g.token_gain.bias.fill_(0.0)
        g.token_gain.weight.normal_(0, 1.0)
    x = g(z, y)

    def swing(x):  # mean |log power ratio| between the two halves of the trial
        halves = x.reshape(8, 5, 2, 32).pow(2).mean(-1)
        return (halves[..., 0].log() - halves[..., 1].log()).abs().mean().item()

    assert swing(x) > 3 * swing(plain)
    x.pow(2).mean().backward()
    assert g.token_gain.weight.grad.abs().sum() > 0
    g.set_token_gain(False)
    assert not hasattr(g, "token_gain") and torch.equal(g(z, y), plain)
    assert GPT2Generator(tiny(token_gain=True)).token_gain.weight.abs().sum() == 0   # from the config too
