"""FLM formulas (SPEC §2): interpolant, velocity, the two clocks, the loss and the Euler sampler."""

import math

import pytest
import torch
from tolerances import assert_close_up_to_rounding

from flowlm.errors import ConfigError
from flowlm.methods.common import (
    LossWeighting,
    interpolate,
    masked_mean,
    one_hot,
    stratified_times,
    token_cross_entropy,
    velocity,
)
from flowlm.methods.flm import flm_loss, flm_sample
from flowlm.schedule import t_from_tau, tau_from_t


class Spy(torch.nn.Module):
    """A network whose logits are a fixed function of τ; records every call's (x, τ)."""

    def __init__(self, vocab: int, seq: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(seq, vocab, generator=g)
        self.b = torch.randn(seq, vocab, generator=g)
        self.calls = []

    def logits(self, tau):
        return self.a + 3.0 * tau.view(-1, 1, 1) * self.b

    def forward(self, x, tau, tau_end=None):
        self.calls.append((x.clone(), tau.clone()))
        return self.logits(tau).expand(x.shape[0], -1, -1)


def test_interpolant_endpoints_and_midpoint():
    x0, x1 = torch.randn(2, 3, 5), one_hot(torch.randint(0, 5, (2, 3)), 5)
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(2)), x0)
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(2)), x1)
    t = torch.tensor([0.25, 0.75])
    expected = torch.stack([0.75 * x0[0] + 0.25 * x1[0], 0.25 * x0[1] + 0.75 * x1[1]])
    torch.testing.assert_close(interpolate(x0, x1, t), expected)


def test_velocity_formula_and_guard():
    d, x = torch.rand(2, 3, 4), torch.randn(2, 3, 4)
    t = torch.tensor([0.2, 0.9])
    torch.testing.assert_close(velocity(d, x, t), (d - x) / (1 - t).view(2, 1, 1))
    assert torch.isfinite(velocity(d, x, torch.ones(2))).all()
    torch.testing.assert_close(velocity(d, x, 1.0), (d - x) / 1e-5)


def test_velocity_transports_interpolant_to_data():
    # With the exact denoiser D = x1 (one data point), x_t + (1 - t)·b = x1.
    x0, x1 = torch.randn(1, 4, 6), one_hot(torch.randint(0, 6, (1, 4)), 6)
    t = torch.tensor([0.3])
    xt = interpolate(x0, x1, t)
    torch.testing.assert_close(xt + 0.7 * velocity(x1, xt, t), x1)


def test_stratified_times_cover_each_stratum_once():
    for n in (1, 7, 64):
        tau = stratified_times(n, torch.Generator().manual_seed(n))
        assert tau.shape == (n,) and ((tau >= 0) & (tau < 1)).all()
        assert sorted((tau * n).floor().long().tolist()) == list(range(n))


def test_cross_entropy_hand_case():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    ce = token_cross_entropy(logits, torch.tensor([[0, 2]]))
    torch.testing.assert_close(ce, torch.tensor([[math.log(2), -math.log(0.8)]]))
    soft = token_cross_entropy(logits, torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]))
    torch.testing.assert_close(soft, torch.tensor([[0.5 * math.log(2) + 0.5 * math.log(4), -math.log(0.8)]]))
    assert masked_mean(ce, torch.tensor([[1, 0]])) == pytest.approx(math.log(2))


class StateProbe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x, tau, tau_end=None):
        self.seen = (x.clone(), tau.clone())
        return torch.zeros_like(x)


def test_loss_uses_t_for_the_state_and_tau_for_the_network():
    vocab, seq, batch = 4096, 64, 8
    probe = StateProbe()
    tokens = torch.randint(0, vocab, (batch, seq))
    out = flm_loss(probe, tokens, vocab, generator=torch.Generator().manual_seed(0))
    x, tau = probe.seen
    torch.testing.assert_close(tau, out["tau"])
    # Off the clean coordinate, x_t = (1 - t)·noise: its std estimates 1 - t per sequence.
    clean = one_hot(tokens, vocab).bool()
    for i in range(batch):
        noise_std = x[i][~clean[i]].std().item()
        t_expected = t_from_tau(tau[i], vocab).item()
        assert abs((1 - noise_std) - t_expected) < 0.01
        # ... and the clean coordinate has mean t.
        assert abs(x[i][clean[i]].mean().item() - t_expected) < 4 * (1 - t_expected) / math.sqrt(seq) + 1e-3
    # A clock error would be visible: at V = 4096, t and τ differ a lot over most of [0, 1].
    mid = (tau > 0.2) & (tau < 0.8)
    assert (t_from_tau(tau[mid], vocab) - tau[mid]).abs().min() > 0.1


def test_uniform_denoiser_loss_is_log_v():
    out = flm_loss(StateProbe(), torch.randint(0, 50, (4, 8)), 50, generator=torch.Generator().manual_seed(0))
    assert out["loss"].item() == pytest.approx(math.log(50), rel=1e-6)


def test_loss_weighting_starts_neutral_and_follows_formula():
    w = LossWeighting(cond_dim=16)
    tau = torch.rand(5)
    assert torch.count_nonzero(w(tau)) == 0
    per_seq, weights = torch.rand(5), torch.randn(5)
    torch.testing.assert_close(LossWeighting.apply(per_seq, weights), (torch.exp(-weights) * per_seq + weights).mean())
    out = flm_loss(
        StateProbe(), torch.randint(0, 50, (4, 8)), 50, generator=torch.Generator().manual_seed(0), weighting=w
    )
    assert out["loss"].item() == pytest.approx(math.log(50), rel=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_euler_sampler_matches_hand_recursion(steps):
    vocab, seq, n = 30, 5, 3
    spy = Spy(vocab, seq)
    x0 = torch.randn(n, seq, vocab, generator=torch.Generator().manual_seed(1))
    tokens = flm_sample(spy, n, seq, vocab, steps, x0=x0)

    assert len(spy.calls) == steps
    taus = [k / steps for k in range(steps + 1)]
    ts = [t_from_tau(torch.tensor(tau, dtype=torch.float64), vocab).item() for tau in taus]
    x = x0.clone()
    for k in range(steps):
        seen_x, seen_tau = spy.calls[k]
        torch.testing.assert_close(seen_tau, torch.full((n,), taus[k]))
        assert_close_up_to_rounding(seen_x, x, (k + 1) * vocab)  # k Euler steps, each a V-term softmax
        d = torch.softmax(spy.logits(torch.tensor([taus[k]])), -1)
        if k < steps - 1:
            x = x + (ts[k + 1] - ts[k]) * (d - x) / (1 - ts[k])
    expected = torch.softmax(spy.logits(torch.tensor([taus[steps - 1]])), -1).argmax(-1).expand(n, -1)
    assert torch.equal(tokens, expected)


def test_euler_is_exact_for_a_constant_denoiser():
    # dx/dt = (p − x)/(1 − t) is linear; Euler on the t grid gives x_k = p + (1 − t_k)/(1 − t_0)·(x_0 − p).
    vocab, seq, steps = 12, 4, 6
    spy = Spy(vocab, seq)
    spy.b.zero_()
    p = torch.softmax(spy.a, -1)
    x0 = torch.randn(1, seq, vocab, generator=torch.Generator().manual_seed(2))
    flm_sample(spy, 1, seq, vocab, steps, x0=x0)
    for k, (seen_x, _) in enumerate(spy.calls):
        t_k = t_from_tau(torch.tensor(k / steps, dtype=torch.float64), vocab).item()
        assert_close_up_to_rounding(seen_x, p + (1 - t_k) * (x0 - p), (k + 1) * vocab)  # k steps of V-term softmaxes


def test_sampler_is_seeded_and_reproducible():
    spy = Spy(20, 6)
    spy.a = torch.zeros(6, 20)
    model = lambda x, tau, tau_end=None: 5 * x  # noqa: E731  (depends on the noise)
    a = flm_sample(model, 4, 6, 20, 3, generator=torch.Generator().manual_seed(7))
    b = flm_sample(model, 4, 6, 20, 3, generator=torch.Generator().manual_seed(7))
    c = flm_sample(model, 4, 6, 20, 3, generator=torch.Generator().manual_seed(8))
    assert a.shape == (4, 6) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_step_counts_raise(steps):
    with pytest.raises(ConfigError, match="steps"):
        flm_sample(Spy(5, 2), 1, 2, 5, steps)


def test_autoguidance_formula():
    torch.manual_seed(0)

    class Dropping(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(0.5)
            self.w = torch.nn.Parameter(torch.randn(8, 8))

        def forward(self, x, tau, tau_end=None):
            return self.drop(x) @ self.w

    from flowlm.methods.flm import flm_denoise

    net = Dropping().eval()
    x = torch.randn(2, 3, 8)
    plain = flm_denoise(net, x, 0.5)
    torch.testing.assert_close(flm_denoise(net, x, 0.5, guidance=1.0), plain)
    torch.manual_seed(1)
    guided = flm_denoise(net, x, 0.5, guidance=3.0)
    torch.manual_seed(1)
    with torch.no_grad():
        net.train()
        weak = torch.softmax(net(x, None), -1)
        net.eval()
    torch.testing.assert_close(guided, weak + 3.0 * (plain - weak))
    assert not net.drop.training


def test_schedule_round_trip_used_by_sampler_grid():
    tau = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(tau_from_t(t_from_tau(tau, 1000), 1000), tau, atol=1e-5, rtol=0)
