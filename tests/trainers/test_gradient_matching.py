"""gan.grad_match_weight: the gradient-matching term (trainers/gradient_matching.py)."""
import torch

from trainers.gradient_matching import GradientMatching, layer_distance

CH = [f"C{i}" for i in range(4)]


def pool(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    X = torch.randn(n, 4, 160, generator=g)
    X[y == 1, 0] *= 2.0  # a class difference in one channel's power, for the probe to learn
    return X, y


def test_layer_distance_is_zero_for_parallel_gradients_and_two_for_opposite_ones():
    g = torch.randn(3, 5)
    assert layer_distance(g, 2 * g).abs().item() < 1e-6
    assert abs(layer_distance(g, -g).item() - 2) < 1e-6


def test_the_real_pool_itself_matches_and_noise_does_not():
    X, y = pool()
    near, _ = GradientMatching(X, y, 160.0, CH, "shallow", seed=1).loss(X.clone().requires_grad_(True), y)
    fake = torch.randn_like(X).requires_grad_(True)
    far, metrics = GradientMatching(X, y, 160.0, CH, "shallow", seed=1).loss(fake, y)
    assert near.item() < 1e-4 and far.item() > 0.1
    assert metrics["grad_match_loss"] == far.item()
    far.backward()  # the term reaches the generated trials (second-order through the probe)
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_the_probe_learns_from_real_trials_only_and_restarts_on_schedule():
    X, y = pool()
    a = GradientMatching(X, y, 160.0, CH, "shallow", seed=3, reset_every=3)
    b = GradientMatching(X, y, 160.0, CH, "shallow", seed=3, reset_every=3)
    first = {k: v.clone() for k, v in a.probe.state_dict().items()}
    for step in range(4):
        a.loss(torch.randn_like(X), y)
        b.loss(torch.zeros_like(X), y)  # other generated trials: the same probe trajectory
        assert all(torch.equal(v, b.probe.state_dict()[k]) for k, v in a.probe.state_dict().items())
        if step == 0:
            assert not torch.equal(a.probe.state_dict()["classifier.weight"], first["classifier.weight"])
    # Step 3 began from a fresh initialisation (restart 1), not from where step 2 left the probe.
    c = GradientMatching(X, y, 160.0, CH, "shallow", seed=3, reset_every=3)
    fresh = c._fresh(1).state_dict()
    assert not torch.equal(fresh["classifier.weight"], first["classifier.weight"])
    assert int(a.step) == 4


def test_the_moving_average_starts_over_when_the_probe_restarts():
    X, y = pool()
    one = GradientMatching(X, y, 160.0, CH, "shallow", seed=5, reset_every=2)
    avg = GradientMatching(X, y, 160.0, CH, "shallow", seed=5, reset_every=2, ema=0.9)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        fake = torch.randn(X.shape, generator=g)
        d1, _ = one.loss(fake, y)
        d2, _ = avg.loss(fake, y)
        if step == 1:  # the average holds step 0's generated gradient too
            assert abs(d1.item() - d2.item()) > 1e-3
        else:  # first step of a probe run (steps 0 and 2): the average is this batch's gradient
            assert abs(d1.item() - d2.item()) < 1e-5
