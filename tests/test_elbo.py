"""FLM's diffusion ELBO (flowlm.methods.elbo): every term against a closed form, on toys whose truth is known.

- the step KL of the stochastic sampler is ½·ΔSNR·‖x₁ − D‖² for this path (Gaussian posteriors by hand);
- SNR-uniform draws inside the strata integrate a known function without bias;
- the projected squared error ‖(x₁ − D)·Q‖² against an explicit QR basis (V > d), the plain one where W has full
  row rank (V ≤ d), no cancellation when the denoiser is sure;
- a constant denoiser: diffusion = ½·SNR(t₁)·‖x₁ − c‖² and decoder = −Σ log c[x], draw by draw;
- the exact denoiser of independent positions: the ELBO's mean is −log π(x) at every t_max; of correlated positions:
  its mean over x ~ P exceeds the entropy by the expected total correlation of the posterior at t₁;
- a DiT: the low-rank and full-state paths agree in mean, the x-space ELBO is never below the default, the flow
  map's diagonal, data-parallel row slices equal one process.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_likelihood import (
    BLOCKS,
    JOINT,
    TOY_L,
    TOY_PI,
    TOY_V,
    joint_logits,
    joint_posterior,
    random_dit,
    toy_logits,
)

from flowlm.errors import ConfigError
from flowlm.methods.elbo import (
    ElboOptions,
    Whitener,
    decoder_nll,
    diffusion_elbo,
    snr,
    strata,
    stratified_times,
    t_from_snr,
)
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.schedule import get_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def within(samples: torch.Tensor, truth: float, sigmas: float = 4.0) -> tuple[bool, float, float]:
    """Whether the mean of i.i.d. ``samples`` is within ``sigmas`` standard errors of ``truth``."""
    mean, se = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
    return abs(mean - truth) <= sigmas * se, mean, se


# ---------------------------------------------------------------------------------------------- the weighting


@pytest.mark.parametrize("t, u", [(0.1, 0.2), (0.3, 0.55), (0.8, 0.95)])
def test_step_kl_is_half_the_snr_increment_times_the_squared_error(t, u):
    """For x_t = t·x₁ + (1 − t)·ε and t < u: q(x_u | x_t, x₁) is Gaussian with precision 1/σ_u² + a²/v (a = t/u,
    v = σ_t² − a²σ_u²: x_t given x_u) and a mean whose coefficient on x₁ is (α_u/σ_u²)/precision. Replacing x₁ by D
    moves the mean by that coefficient times (x₁ − D), so KL = ½·coef²·precision·‖x₁ − D‖², which must equal
    ½·(SNR(u) − SNR(t)) per unit ‖x₁ − D‖² (VDM eq. 13 for this path). Float64: agreement to 1e-12."""
    a = t / u
    v = (1 - t) ** 2 - a**2 * (1 - u) ** 2
    precision = 1 / (1 - u) ** 2 + a**2 / v
    coefficient = (u / (1 - u) ** 2) / precision
    kl_per_unit = 0.5 * coefficient**2 * precision
    half_increment = 0.5 * (snr(torch.tensor(u, dtype=torch.float64)) - snr(torch.tensor(t, dtype=torch.float64)))
    assert kl_per_unit == pytest.approx(half_increment.item(), rel=1e-12)


def test_snr_and_its_inverse():
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.99], dtype=torch.float64)
    torch.testing.assert_close(snr(t), torch.tensor([0.0, 1 / 9, 1.0, 9.0, 9801.0], dtype=torch.float64))
    torch.testing.assert_close(t_from_snr(snr(t)), t, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid", ["tau", "t"])
def test_strata_draws_integrate_a_known_function_without_bias(grid):
    """½∫₀^{t₁} f dSNR with f(t) = (1 − t)²: SNR' = 2t/(1 − t)³, so the integral is ∫₀^{t₁} t/(1 − t) dt =
    −t₁ − log(1 − t₁). Each row's Σ_k ½ΔSNR_k·f(t_k) is one unbiased draw; 20,000 of them within 4 standard errors.
    Times stay inside their strata, and the strata tile [0, t₁] (equal steps of τ for the tau grid)."""
    vocab, t1 = 50, 0.95
    edges = strata(vocab, t1, 6, grid)
    assert edges[0] == 0 and edges[-1] == t1 and bool((edges.diff() > 0).all())
    if grid == "tau":
        taus = get_schedule(vocab).tau_from_t(edges)
        torch.testing.assert_close(taus.diff(), taus.diff().mean().expand(6), rtol=1e-6, atol=1e-9)
    t, half_dsnr = stratified_times(20_000, edges, torch.Generator().manual_seed(0))
    assert bool(((t >= edges[:-1]) & (t <= edges[1:])).all())
    draws = (half_dsnr * (1 - t).square()).sum(-1)
    ok, mean, se = within(draws, -t1 - math.log(1 - t1))
    assert ok, (mean, -t1 - math.log(1 - t1), se)


# ---------------------------------------------------------------------------------------- the squared error


def test_whitener_projects_onto_the_column_space_of_w():
    """‖(x₁ − D)·Q‖² with Q an orthonormal basis of col(W), computed by QR here: V > d projects (and is smaller than
    the plain ‖x₁ − D‖²); V ≤ d with W of full row rank is the plain error; None and full_space are the plain error.
    Float32 logits, float64 sums: 1e-5 relative."""
    g = torch.Generator().manual_seed(0)
    for vocab, width in ((12, 5), (6, 9)):
        w = torch.randn(vocab, width, generator=g)
        logits = torch.randn(3, 4, vocab, generator=g) * 2
        tokens = torch.randint(0, vocab, (3, 4), generator=g)
        residual = torch.nn.functional.one_hot(tokens, vocab).double() - torch.softmax(logits.double(), -1)
        plain = residual.square().sum(-1)
        q, _ = torch.linalg.qr(w.double())
        projected = (residual @ q).square().sum(-1)
        got = Whitener(w)(logits, tokens)
        torch.testing.assert_close(got, projected if vocab > width else plain, rtol=1e-5, atol=1e-7)
        if vocab > width:
            assert bool((got < plain).all())
        for whitener in (Whitener(None), Whitener(w, full_space=True)):
            torch.testing.assert_close(whitener(logits, tokens), plain, rtol=1e-5, atol=1e-7)


def test_a_sure_denoiser_leaves_no_cancellation():
    """Logits giving D_y = 1 − ~1e-12: the error is (1 − D_y)² + Σ D_v² ~ 1e-24, which a plain float32 1 − D_y
    would round to 0 (and 2·(1 − D_y) − ... to noise). Against float64 by hand, 1e-6 relative."""
    vocab = 5
    logits = torch.full((1, 1, vocab), -30.0)
    logits[0, 0, 2] = 0.0
    tokens = torch.tensor([[2]])
    p = torch.softmax(logits.double(), -1)[0, 0]
    exact = (1 - p[2]) ** 2 + (p.square().sum() - p[2] ** 2)
    got = Whitener(None)(logits, tokens)
    assert got.item() == pytest.approx(exact.item(), rel=1e-6) and got.item() > 0


# ------------------------------------------------------------------------------------------------ the bound


def test_constant_denoiser_closed_form():
    """D ≡ c: every stratum sees the same error, so the diffusion draw is ½·SNR(t₁)·‖x₁ − c‖² whatever the times
    (the ΔSNR telescope), and the decoder is −Σ log c[x]; per draw, float64 sums of float32 logs: 1e-6 relative."""
    vocab, length = 5, 4
    c = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])

    def constant(x, tau):
        return c.log().expand(x.shape[0], length, vocab)

    tokens = torch.tensor([[0, 4, 2, 2], [1, 3, 0, 4]])
    for tau_max in (0.5, 0.99):
        out = diffusion_elbo(constant, tokens, vocab, 3, ElboOptions(tau_max=tau_max, time_points=5),
                             torch.Generator().manual_seed(1))  # fmt: skip
        t1 = get_schedule(vocab).t_from_tau(torch.tensor(tau_max, dtype=torch.float64))
        error = (torch.nn.functional.one_hot(tokens, vocab).double() - c.double()).square().sum((-1, -2))
        torch.testing.assert_close(out["diffusion"], (0.5 * snr(t1) * error)[:, None].expand(-1, 3), rtol=1e-6, atol=0)
        decoder = -c.double().log()[tokens].sum(-1)
        torch.testing.assert_close(out["decoder"], decoder[:, None].expand(-1, 3), rtol=1e-6, atol=0)
        torch.testing.assert_close(out["bound"], out["decoder"] + out["diffusion"])


@pytest.mark.parametrize("tau_max", [0.5, 0.99])
def test_exact_denoiser_of_independent_positions_gives_the_exact_nll(tau_max):
    """With the exact denoiser of data with independent positions (fed τ, converted to t: a clock mix-up in the
    estimator changes the answer), the stochastic sampler has the data's path law and the decoder is the exact
    posterior, so E[ELBO] = −log π(x) for every t_max. 1,500 draws per block, each within 4 standard errors."""
    tokens = torch.tensor([[0, 0], [1, 2], [2, 1]])
    truth = -TOY_PI.log()[tokens].sum(-1)
    out = diffusion_elbo(toy_logits, tokens, TOY_V, 1500, ElboOptions(tau_max=tau_max, time_points=8),
                         torch.Generator().manual_seed(2))  # fmt: skip
    for b in range(len(tokens)):
        ok, mean, se = within(out["bound"][b], truth[b].item())
        assert ok, (tau_max, b, mean, truth[b].item(), se)


def test_correlated_toy_gap_is_the_expected_total_correlation():
    """Correlated positions (JOINT) with the exact per-position denoiser (the posterior's marginals): the sampler
    still has the data's path law, so E_x[ELBO] − H(P) = E_{x, z_{t₁}}[log p(x | z) − Σ_ℓ log p(x_ℓ | z)], the
    expected total correlation of the posterior at t₁, computed here by Monte Carlo over (x, z). τ_max = 0.5, where
    it is clearly positive (0.038 nats in test_likelihood); 400 draws per block; 4 combined standard errors."""
    tau_max = 0.5
    t1 = get_schedule(TOY_V).t_from_tau(torch.tensor(tau_max, dtype=torch.float64))
    out = diffusion_elbo(joint_logits, BLOCKS, TOY_V, 400, ElboOptions(tau_max=tau_max, time_points=8),
                         torch.Generator().manual_seed(3))  # fmt: skip
    weight = JOINT.reshape(-1)
    entropy = -(weight * weight.log()).sum().item()
    per_block_mean, per_block_var = out["bound"].mean(1), out["bound"].var(1) / out["bound"].shape[1]
    elbo_mean = (weight * per_block_mean).sum().item()
    elbo_se = (weight.square() * per_block_var).sum().sqrt().item()

    g = torch.Generator().manual_seed(4)
    n = 40_000
    picks = torch.multinomial(weight.float(), n, replacement=True, generator=g)
    x = BLOCKS[picks]
    z = t1 * torch.nn.functional.one_hot(x, TOY_V).double() + (1 - t1) * torch.randn(
        n, TOY_L, TOY_V, generator=g, dtype=torch.float64
    )
    post = joint_posterior(z, t1.expand(n))
    marg = post.view(-1, TOY_V, TOY_V)
    correlation = (
        post.gather(1, picks[:, None]).squeeze(1).log()
        - marg.sum(2).gather(1, x[:, :1]).squeeze(1).log()
        - marg.sum(1).gather(1, x[:, 1:]).squeeze(1).log()
    )
    gap, gap_se = correlation.mean().item(), correlation.std().item() / math.sqrt(n)
    assert gap > 0.01
    assert abs(elbo_mean - entropy - gap) <= 4 * math.hypot(elbo_se, gap_se), (elbo_mean - entropy, gap, elbo_se)


def test_low_rank_and_full_state_paths_agree_and_x_space_is_never_smaller():
    """A random DiT with V > d. Same generator and the full-state path: the x-space ELBO (full_space) is at least the
    default draw by draw (a projection shortens every residual) and the decoder is the same. Low-rank vs full-state
    (different random streams, the same law of h = x @ W): means within 4 combined standard errors."""
    vocab, length, width = 24, 6, 8
    net = random_dit(vocab, length, width)
    tokens = torch.randint(0, vocab, (4, length), generator=torch.Generator().manual_seed(5))
    options = ElboOptions(tau_max=0.9, time_points=4)

    def run(noise, full=False, draws=300):
        return diffusion_elbo(net, tokens, vocab, draws, options, torch.Generator().manual_seed(6), input_noise=noise,
                              full_space=full)  # fmt: skip

    naive, full = run("naive", draws=20), run("naive", True, draws=20)
    assert bool((full["diffusion"] > naive["diffusion"]).all())
    torch.testing.assert_close(full["decoder"], naive["decoder"])
    a, b = run("naive")["bound"], run("lowrank")["bound"]
    se = math.hypot(a.std().item(), b.std().item()) / math.sqrt(a.numel())
    assert abs(a.mean().item() - b.mean().item()) <= 4 * se, (a.mean().item(), b.mean().item(), se)


def test_flow_map_diagonal_and_data_parallel_slices():
    """A two-time DiT scored on its diagonal equals the same network wrapped as a one-time denoiser δ_{t,t}; row
    slices (first, total) of one batch reproduce that batch's draws exactly (every rank draws all rows)."""
    vocab, length = 10, 5
    net = random_dit(vocab, length, 8, time_inputs=2)
    tokens = torch.randint(0, vocab, (5, length), generator=torch.Generator().manual_seed(7))
    options = ElboOptions(time_points=3)
    whole = diffusion_elbo(net, tokens, vocab, 2, options, torch.Generator().manual_seed(8), two_times=True,
                           input_noise="naive")["bound"]  # fmt: skip
    wrapped = diffusion_elbo(lambda x, tau: net(x, tau, tau), tokens, vocab, 2, options,
                             torch.Generator().manual_seed(8))["bound"]  # fmt: skip
    assert whole.shape == (5, 2)
    # the wrapped callable has no input matrix (Q = I), the DiT has V = 10 > d = 8: decoders agree, errors do not
    out_a = diffusion_elbo(net, tokens, vocab, 2, options, torch.Generator().manual_seed(8), two_times=True,
                           input_noise="naive", full_space=True)["bound"]  # fmt: skip
    torch.testing.assert_close(out_a, wrapped, rtol=1e-6, atol=1e-6)
    assert bool((whole <= wrapped + 1e-9).all())
    parts = [
        diffusion_elbo(net, tokens[first:last], vocab, 2, options, torch.Generator().manual_seed(8), two_times=True,
                       input_noise="naive", rows=(first, 5))["bound"]  # fmt: skip
        for first, last in ((0, 2), (2, 5))
    ]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-6, atol=1e-6)


def test_decoder_term_is_the_cross_entropy_and_options_are_checked():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    expected = -torch.log_softmax(logits.double(), -1)[0, 0, 1]
    assert decoder_nll(logits, torch.tensor([[1]])).item() == pytest.approx(expected.item(), rel=1e-6)
    for bad, match in (
        (dict(time_points=0), "time_points"),
        (dict(tau_max=1.0), "tau_max"),
        (dict(t_max=0.0), "t_max"),
        (dict(grid="log"), "grid"),
    ):
        with pytest.raises(ConfigError, match=match):
            ElboOptions(**bad).check()
    with pytest.raises(ConfigError, match="draws"):
        diffusion_elbo(toy_logits, torch.tensor([[0, 1]]), TOY_V, 0)


# --------------------------------------------------------------- V > d: the bounds of the network's own chain

H_VOCAB, H_WIDTH = 7, 4
H_PI = torch.tensor([0.3, 0.25, 0.15, 0.1, 0.1, 0.05, 0.05], dtype=torch.float64)


class ExactInputSpaceDenoiser(DiT):
    """A DiT (so that the bounds see its input matrix W [7, 4], V > d) whose forward is the exact posterior of the
    chain it sees, for data with independent positions y ~ π: h_t = t·W[y] + (1 − t)·ε·W, ε·W ~ N(0, Σ = WᵀW), so
    log p(y | h) = log π_y + (t/(1 − t)²)·W_y Σ⁻¹ hᵀ − (t²/(2(1 − t)²))·W_y Σ⁻¹ W_yᵀ + const. Fed τ, converted to t."""

    def __init__(self):
        super().__init__(DiTConfig(vocab_size=H_VOCAB, seq_len=2, hidden_size=H_WIDTH, n_blocks=1, n_heads=1,
                                   cond_dim=4, dropout=0.0))  # fmt: skip
        with torch.no_grad():
            self.vocab_embed.embedding.copy_(torch.randn(H_VOCAB, H_WIDTH, generator=torch.Generator().manual_seed(0)))

    def forward(self, h, tau, tau_end=None, embedded=False, targets=None):
        w = self.vocab_embed.embedding.double()
        h = h.double() if embedded else h.double() @ w
        t = get_schedule(H_VOCAB).t_from_tau(tau.double()).view(-1, 1, 1)
        sigma_inv = torch.linalg.inv(w.T @ w)
        score = (h @ sigma_inv @ w.T) * t / (1 - t) ** 2
        quad = ((w @ sigma_inv) * w).sum(-1) * t.square() / (2 * (1 - t) ** 2)
        return (H_PI.log() + score - quad).float()


def test_bounds_of_the_input_space_chain_are_exact_where_v_exceeds_d():
    """V = 7 > d = 4, independent positions, the exact posterior of h = x @ W as the denoiser: the h-chain's ODE
    transports N(0, Σ) to the law of h_{t₁} and the decoder is exact, so every draw of the ODE bound in the input
    space is −log π(x) (RK4, 64 t-steps, exact trace: 1e-4, as the x-space toy), and the ELBO's mean is −log π(x)
    (600 draws per block, 4 standard errors). The same bounds in the full one-hot space (full_space) count the
    3 unseen directions and are clearly larger (mean gap over 5 standard errors)."""
    from flowlm.methods.likelihood import FlowBoundOptions, flow_nll_bound, network_denoiser

    net = ExactInputSpaceDenoiser().eval()
    tokens = torch.tensor([[0, 1], [2, 5], [4, 4]])
    truth = -H_PI.log()[tokens].sum(-1)
    logits_fn, matrix = network_denoiser(net)
    options = FlowBoundOptions(tau_max=0.99, steps=64, grid="t", probes=0)
    rows = tokens.repeat_interleave(3, 0)
    for full in (False, True):
        ode = flow_nll_bound(logits_fn, matrix, rows, H_VOCAB, options, torch.Generator().manual_seed(9),
                             full_space=full)["bound"]  # fmt: skip
        if not full:
            torch.testing.assert_close(ode, truth.repeat_interleave(3), rtol=0, atol=1e-4)
        else:
            assert (ode - truth.repeat_interleave(3)).mean().item() > 1.0
    draws = diffusion_elbo(net, tokens, H_VOCAB, 600, ElboOptions(tau_max=0.99, time_points=8),
                           torch.Generator().manual_seed(10))["bound"]  # fmt: skip
    for b in range(len(tokens)):
        ok, mean, se = within(draws[b], truth[b].item())
        assert ok, (b, mean, truth[b].item(), se)
    full = diffusion_elbo(net, tokens, H_VOCAB, 600, ElboOptions(tau_max=0.99, time_points=8),
                          torch.Generator().manual_seed(10), full_space=True)["bound"]  # fmt: skip
    gap = (full - draws).reshape(-1)
    assert gap.mean().item() > 5 * gap.std().item() / math.sqrt(gap.numel())
