"""The γ-sampler of the flow map: the paper's step and the exact one (``gamma_mode="exact"``).

Toy flow, exactly integrable: Gaussian data ``x₁ ~ N(m, s²)`` (one coordinate). Then ``x_t = t·x₁ + (1 − t)·ε`` is
``N(t·m, v_t)`` with ``v_t = t²s² + (1 − t)²``, the denoiser is linear, ``D_t(x) = m + (t·s²/v_t)(x − t·m)``, and
the probability-flow ODE ``dx/dt = (D_t(x) − x)/(1 − t)`` moves the marginals by the monotone affine map
``X_{s,t}(x) = t·m + √(v_t/v_s)·(x − s·m)``. The two-time denoiser follows from
``X_{s,t}(x) = ((1 − t)/(1 − s))·x + ((t − s)/(1 − s))·δ_{s,t}(x)``. Everything is Gaussian, so a law is its mean and
variance; the tests compare sample moments with the target law with tolerances from the sample size.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from flowlm.errors import ConfigError
from flowlm.methods.fmlm import churn_step, churn_times, fmlm_sample
from flowlm.schedule import t_from_tau, tau_from_t

M, S = 1.0, 2.0  # a wide data law: the exact δ is far from x₁, where the paper's step errs most


def var(t: float) -> float:
    return t * t * S * S + (1 - t) ** 2


def flow(x: torch.Tensor, s: float, t: float) -> torch.Tensor:
    return t * M + math.sqrt(var(t) / var(s)) * (x - s * M)


def two_time_denoiser(x: torch.Tensor, s: float, t: float) -> torch.Tensor:
    return (flow(x, s, t) - (1 - t) / (1 - s) * x) * (1 - s) / (t - s)


def denoiser(x: torch.Tensor, t: float) -> torch.Tensor:
    return M + t * S * S / var(t) * (x - t * M)


def test_the_toy_flow_map_is_the_ode_flow():
    """RK4 of the ODE with the closed-form denoiser reproduces the closed-form map (so the toy is honest)."""
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    s, t, n = 0.1, 0.8, 2000
    h, y = (t - s) / n, x.clone()
    f = lambda z, r: (denoiser(z, r) - z) / (1 - r)  # noqa: E731
    for i in range(n):
        r = s + i * h
        k1 = f(y, r)
        k2 = f(y + h / 2 * k1, r + h / 2)
        k3 = f(y + h / 2 * k2, r + h / 2)
        k4 = f(y + h * k3, r + h)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    # RK4 error O(h⁴) with h = 3.5e-4 and smooth coefficients: far below 1e-9.
    torch.testing.assert_close(y, flow(x, s, t), rtol=0, atol=1e-9)


def run_chain(grid: list[float], gamma: float, mode: str, n: int, seed: int) -> list[torch.Tensor]:
    """Start from the exact law at grid[0] and take churn steps with the exact two-time denoiser."""
    g = torch.Generator().manual_seed(seed)
    x = grid[0] * M + math.sqrt(var(grid[0])) * torch.randn(n, dtype=torch.float64, generator=g)
    states = []
    for t, t_next in itertools.pairwise(grid):
        t_tilde = churn_times(t_next, gamma, mode)[0]
        delta = two_time_denoiser(x, t, t_tilde)
        x = churn_step(x, delta, t, t_next, gamma, torch.randn(n, dtype=torch.float64, generator=g), mode)
        states.append(x)
    return states


def moment_errors(x: torch.Tensor, t: float) -> tuple[float, float]:
    """(mean error, variance error) in standard errors of a sample of n Gaussians: the sample mean has standard
    deviation √(v/n), the sample variance (for n this large) √(2/n)·v."""
    n, v = x.numel(), var(t)
    return (x.mean().item() - t * M) / math.sqrt(v / n), (x.var().item() - v) / (v * math.sqrt(2 / n))


GRID = [0.0, 0.3, 0.6, 0.85]
N = 200_000


@pytest.mark.parametrize("gamma", [0.5, 0.8])
def test_exact_churn_keeps_the_marginal_law_and_the_paper_step_does_not(gamma):
    for t, x in zip(GRID[1:], run_chain(GRID, gamma, "exact", N, seed=1), strict=True):
        z_mean, z_var = moment_errors(x, t)
        assert abs(z_mean) < 5 and abs(z_var) < 5, (t, z_mean, z_var)  # 5 standard errors: a 1-in-1.7e6 miss
    # The paper's step at the same γ: the final variance is 35 standard errors too large at γ = 0.5 (11% for
    # this law), 70 at γ = 0.8 (22%); its mean stays right.
    z_mean, z_var = moment_errors(run_chain(GRID, gamma, "paper", N, seed=1)[-1], GRID[-1])
    assert abs(z_mean) < 5 and z_var > 20, z_var


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_both_steps_agree_at_the_ends(gamma):
    g = torch.Generator().manual_seed(3)
    x, noise = torch.randn(50, dtype=torch.float64, generator=g), torch.randn(50, dtype=torch.float64, generator=g)
    t, t_next = 0.2, 0.55
    assert churn_times(t_next, gamma, "paper")[0] == pytest.approx(churn_times(t_next, gamma, "exact")[0], abs=1e-15)
    t_tilde = churn_times(t_next, gamma, "exact")[0]
    delta = two_time_denoiser(x, t, t_tilde) if gamma == 0 else denoiser(x, t)  # any δ will do at γ = 1
    a = churn_step(x, delta, t, t_next, gamma, noise, "paper")
    b = churn_step(x, delta, t, t_next, gamma, noise, "exact")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # float64 rounding of O(1) terms


def test_exact_times_and_coefficients():
    t_next, gamma = 0.6, 0.5
    sigma = 1 - t_next
    r = sigma * math.sqrt(1 - gamma**2)
    t_tilde, a, c = churn_times(t_next, gamma, "exact")
    assert t_tilde == pytest.approx(t_next / (t_next + r), rel=1e-15) and a == pytest.approx(t_next / t_tilde)
    assert c == 0.0 and t_next < t_tilde < 1
    assert a * (1 - t_tilde) == pytest.approx(r, rel=1e-14)  # the noise kept from x is exactly r
    t_tilde, a, c = churn_times(t_next, gamma, "paper")
    assert (t_tilde, a, c) == pytest.approx((1 - r, 1.0, r - sigma), rel=1e-15)
    with pytest.raises(ConfigError, match="gamma_mode"):
        churn_times(t_next, gamma, "approx")


class Spy(torch.nn.Module):
    """Logits that depend on the state and both times; records each call."""

    def __init__(self, vocab, seq):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b = torch.randn(seq, vocab, generator=g), torch.randn(seq, vocab, generator=g)
        self.calls = []

    def logits(self, x, tau, tau_end):
        return self.a + 3.0 * tau.view(-1, 1, 1) * self.b + 2.0 * x + 2.0 * tau_end.view(-1, 1, 1) * self.b.flip(-1)

    def forward(self, x, tau, tau_end=None):
        self.calls.append((x.clone(), tau.clone(), tau_end.clone()))
        return self.logits(x, tau, tau_end)


@pytest.mark.parametrize("steps", [2, 4])
def test_exact_mode_sampler_matches_hand_recursion(steps):
    vocab, seq, n, gamma = 4096, 3, 2, 0.6
    spy = Spy(vocab, seq)
    x0 = torch.randn(n, seq, vocab, generator=torch.Generator().manual_seed(1))
    tokens = fmlm_sample(
        spy, n, seq, vocab, steps, gamma=gamma, generator=torch.Generator().manual_seed(2), x0=x0, gamma_mode="exact"
    )
    assert len(spy.calls) == steps  # one network call per step
    noise = torch.Generator().manual_seed(2)
    x = x0.clone()
    for k in range(steps):
        t = t_from_tau(torch.tensor(k / steps, dtype=torch.float64), vocab).item()
        t_next = t_from_tau(torch.tensor((k + 1) / steps, dtype=torch.float64), vocab).item()
        sigma = 1 - t_next
        t_tilde = t_next / (t_next + sigma * math.sqrt(1 - gamma**2))
        seen_x, seen_tau, seen_end = spy.calls[k]
        # float32 states built from O(1) terms over a few steps: 1e-5 is ~100 float32 ulps.
        torch.testing.assert_close(seen_x, x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(seen_tau, torch.full((n,), k / steps))
        expected_end = tau_from_t(torch.tensor(t_tilde, dtype=torch.float64), vocab).item()
        torch.testing.assert_close(seen_end, torch.full((n,), expected_end), rtol=0, atol=1e-6)
        delta = torch.softmax(spy.logits(x, seen_tau, seen_end), -1)
        if k == steps - 1:
            assert torch.equal(tokens, delta.argmax(-1))
            break
        moved = (1 - t_tilde) / (1 - t) * x + (t_tilde - t) / (1 - t) * delta
        x = t_next / t_tilde * moved + gamma * sigma * torch.randn(x.shape, generator=noise)


def test_bad_gamma_mode_raises():
    with pytest.raises(ConfigError, match="gamma_mode"):
        fmlm_sample(Spy(5, 2), 1, 2, 5, 2, gamma=0.5, gamma_mode="Exact")
