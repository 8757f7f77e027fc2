"""Likelihood bounds (flowlm.methods.likelihood, flowlm nll): every term against a closed form.

- the divergence through h = x @ W equals autograd's divergence of the velocity in the full one-hot space;
  Hutchinson probes (both spaces) are unbiased;
- a toy with a closed-form denoiser (data: independent positions with known symbol probabilities, SPEC §2's
  exact denoiser softmax(log π + t·x/(1 − t)²)): log p_ODE equals the exact marginal density and the bound
  equals −log p(x) draw by draw, for several t_max, converging at the solver's order as steps grow;
- a constant denoiser (no divergence): the prior term against its closed form;
- MDLM's NELBO draws against the exact expectation of test_mdlm; AR's exact NLL against its loss;
- the hook on every method, refusals, and the command (CLI and Python) on a tiny model with a corpus.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_mdlm import MaskCountModel, exact_expected_loss

import flowlm
from flowlm.cli import main
from flowlm.data import load_tokenizer
from flowlm.errors import ConfigError
from flowlm.eval.likelihood import summarize
from flowlm.methods import registry
from flowlm.methods.ar import ar_loss
from flowlm.methods.likelihood import (
    FlowBoundOptions,
    ar_nll,
    basis_pairs,
    denoise_and_trace,
    flow_nll_bound,
    mdlm_nelbo,
    network_denoiser,
    ode_log_density,
    probe_pairs,
    t_max_of,
)
from flowlm.methods.mdlm import T_MIN
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.schedule import get_schedule
from flowlm.training.checkpoint import provenance, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def random_dit(vocab: int, length: int, width: int, **options) -> DiT:
    """A DiT with every weight drawn with std 0.3 (a fresh DiT's zero output layer would make D constant)."""
    torch.manual_seed(0)
    cfg = DiTConfig(vocab_size=vocab, seq_len=length, hidden_size=width, n_blocks=1, n_heads=2, cond_dim=8,
                    dropout=0.0, **options)  # fmt: skip
    net = DiT(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ divergence


@pytest.mark.parametrize("vocab, width", [(12, 8), (6, 8)])  # V > d (h-space smaller) and V < d
def test_divergence_through_h_equals_autograd_divergence_of_the_velocity(vocab, width):
    """div_x b = (tr J − L·V)/(1 − t), J = ∂(D(h) @ W)/∂h, against the trace of the full [LV × LV] Jacobian of
    b(x) = (D(x) − x)/(1 − t) by autograd. float32 network: each Jacobian entry carries ~1e-7 relative rounding,
    the trace sums L·V = 36 entries of size <= ~1/(1 − t), so 1e-4 relative is ~30x that rounding bound."""
    length, tau = 3, 0.6
    net = random_dit(vocab, length, width)
    t = float(get_schedule(vocab).t_from_tau(torch.tensor(tau)))
    x = torch.randn(1, length, vocab, generator=torch.Generator().manual_seed(1))

    def velocity(flat):
        d = torch.softmax(net(flat.view(1, length, vocab), torch.full((1,), tau)), dim=-1)
        return ((d - flat.view(1, length, vocab)) / (1 - t)).reshape(-1)

    full = torch.autograd.functional.jacobian(velocity, x.reshape(-1)).trace().item()
    logits_fn, matrix = network_denoiser(net)
    h = x @ matrix
    for space in ("h", "v"):
        _, trace = denoise_and_trace(logits_fn, h, tau, list(basis_pairs(length, vocab, matrix, space, "cpu")), True)
        via = (trace.item() - length * vocab) / (1 - t)
        assert abs(via - full) <= 1e-4 * max(1.0, abs(full)), (space, via, full)


def test_hutchinson_probes_are_unbiased_in_both_spaces():
    """Rademacher probes in h-space (L·d) and V-space (L·V): the mean of 4,000 estimates is within 4 standard
    errors (their sample std / sqrt(n)) of the exact trace."""
    vocab, length, width, tau = 12, 3, 8, 0.5
    net = random_dit(vocab, length, width)
    logits_fn, matrix = network_denoiser(net)
    h = torch.randn(1, length, vocab, generator=torch.Generator().manual_seed(2)) @ matrix
    exact = denoise_and_trace(logits_fn, h, tau, list(basis_pairs(length, vocab, matrix, "h", "cpu")), True)[1]
    g = torch.Generator().manual_seed(3)
    n = 4000
    for space in ("h", "v"):
        pairs = probe_pairs(1, length, vocab, matrix, n, space, g, "cpu")
        a, b = pairs
        # the per-probe values by hand (one batched backward over the n probes), then the function's mean
        with torch.enable_grad():
            x = h.float().expand(n, -1, -1).clone().requires_grad_(True)
            p = torch.softmax(logits_fn(x, torch.full((n,), tau)), -1)
            (grad,) = torch.autograd.grad((p * a[:, 0]).sum(), x)
        estimates = (grad * b[:, 0]).sum((-1, -2)).double()
        se = estimates.std().item() / math.sqrt(n)
        assert abs(estimates.mean().item() - exact.item()) < 4 * se, (space, estimates.mean().item(), exact.item(), se)
        mean_call = denoise_and_trace(logits_fn, h, tau, pairs, False)[1]
        torch.testing.assert_close(mean_call, estimates.mean().view(1), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ closed-form toy

TOY_V, TOY_L = 3, 2
TOY_PI = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)


def toy_logits(h: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The exact denoiser of data with independent positions x_ℓ ~ π (SPEC §2): E[x₁ | x_t = x] =
    softmax_k(log π_k + t·x_k/(1 − t)²). It is handed τ and converts it to t, so a clock mix-up in the
    solver (t passed as τ, or τ used for a state) changes the answer."""
    t = get_schedule(TOY_V).t_from_tau(tau.double()).view(-1, 1, 1)
    return (TOY_PI.log() + t * h.double() / (1 - t) ** 2).float()


def toy_log_density(z: torch.Tensor, t: float) -> torch.Tensor:
    """log p_t(z) [B] = Σ_ℓ log Σ_k π_k N(z_ℓ; t·e_k, (1 − t)² I)."""
    diff = z.unsqueeze(-2) - t * torch.eye(TOY_V, dtype=torch.float64)
    log_normal = -0.5 * diff.square().sum(-1) / (1 - t) ** 2 - TOY_V * math.log((1 - t) * math.sqrt(2 * math.pi))
    return torch.logsumexp(TOY_PI.log() + log_normal, dim=-1).sum(-1)


def toy_states(n: int, t: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.multinomial(TOY_PI.float(), n * TOY_L, replacement=True, generator=g).view(n, TOY_L)
    noise = torch.randn(n, TOY_L, TOY_V, generator=g, dtype=torch.float64)
    return t * torch.nn.functional.one_hot(x, TOY_V).double() + (1 - t) * noise


@pytest.mark.parametrize("grid", ["tau", "t"])
def test_ode_log_density_matches_the_exact_marginal(grid):
    """log p_ODE(z) of the exact denoiser is log p_t(z) (the probability-flow ODE transports N(0, I) to p_t).
    RK4 with 128 steps and the exact trace: measured errors <= 2e-6 (tau grid) on these states; 1e-4 leaves
    room for other CPUs' rounding while still ~1,000x below the error at 8 steps (0.09)."""
    t1 = t_max_of(TOY_V, 0.99)
    z = toy_states(6, t1, seed=0)
    got = ode_log_density(
        toy_logits, None, z, TOY_V, t1, FlowBoundOptions(steps=128, solver="rk4", probes=0, grid=grid)
    )
    torch.testing.assert_close(got, toy_log_density(z, t1), rtol=0, atol=1e-4)


def test_solvers_converge_at_their_order():
    """Error of log p_ODE at N and 2N steps: halving the step divides it by ~2 (Euler), ~4 (Heun), ~16 (RK4).
    Asserted ratios (1.6, 3, 10) leave room for the pre-asymptotic range; a first-order bug in a stage fails."""
    t1 = t_max_of(TOY_V, 0.99)
    z = toy_states(4, t1, seed=1)
    exact = toy_log_density(z, t1)
    for solver, n, ratio in (("euler", 64, 1.6), ("heun", 32, 3.0), ("rk4", 16, 10.0)):
        errors = [
            (
                ode_log_density(toy_logits, None, z, TOY_V, t1, FlowBoundOptions(steps=s, solver=solver, probes=0))
                - exact
            )
            .abs()
            .max()
            .item()
            for s in (n, 2 * n)
        ]
        assert errors[0] / errors[1] > ratio, (solver, errors)


@pytest.mark.parametrize("tau_max", [0.9, 0.99, 0.999])
def test_bound_equals_the_exact_nll_with_the_exact_denoiser(tau_max):
    """With the exact denoiser, p_ODE = p_{t₁} and D(z)[x] = p(x | z), so every draw of the bound is −log p(x)
    exactly (the gap KL(q(z|x) ‖ p(z|x)) vanishes) at any t_max; what is left is the solver's error (RK4 on a
    t-grid of 64 steps: measured <= 3e-7; 1e-4 allowed)."""
    tokens = torch.tensor([[0, 0], [1, 2], [2, 2], [2, 1]])
    truth = -TOY_PI.log()[tokens].sum(-1)
    options = FlowBoundOptions(tau_max=tau_max, steps=64, solver="rk4", grid="t", probes=0)
    out = flow_nll_bound(toy_logits, None, tokens, TOY_V, options, torch.Generator().manual_seed(4))
    torch.testing.assert_close(out["bound"], truth, rtol=0, atol=1e-4)
    torch.testing.assert_close(out["bound"], out["decoder"] + out["prior"] + out["divergence"])


# Correlated positions: a joint distribution over V^L = 9 blocks (the two symbols agree 3/4 of the time).
JOINT = torch.tensor([[0.30, 0.05, 0.02], [0.05, 0.25, 0.03], [0.06, 0.04, 0.20]], dtype=torch.float64)
BLOCKS = torch.cartesian_prod(torch.arange(TOY_V), torch.arange(TOY_V))  # [9, 2], row-major like JOINT


def joint_posterior(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """p(x | z_t = z) over the 9 blocks [B, 9]: ∝ P(x)·exp(Σ_ℓ t·z[ℓ, x_ℓ]/(1 − t)²)."""
    t = t.view(-1, 1)
    score = z[:, 0, BLOCKS[:, 0]] + z[:, 1, BLOCKS[:, 1]]  # [B, 9]
    return torch.softmax(JOINT.log().reshape(1, -1) + t * score / (1 - t) ** 2, dim=-1)


def joint_logits(h: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The exact per-position denoiser of JOINT: the marginals of the joint posterior (fed τ, converted to t)."""
    t = get_schedule(TOY_V).t_from_tau(tau.double())
    post = joint_posterior(h.double(), t).view(-1, TOY_V, TOY_V)  # [B, x_0, x_1]
    return torch.stack([post.sum(2), post.sum(1)], dim=1).log().float()


def test_correlated_toy_density_is_exact_and_the_bound_gap_is_the_factorized_decoder():
    """With the exact denoiser p_ODE = p_{t₁} (checked against the mixture density), so one draw of the bound is
    −log P(x) + log p(x | z) − Σ_ℓ log p(x_ℓ | z): the only gap is the factorized decoder's (the posterior's
    total correlation), which is > 0 and shrinks as τ_max → 1. Checked per draw (RK4, 64 / 128 steps, t-grid,
    exact trace; 1e-4 as in the independent toy), and the gap averaged over x ~ P (4 draws per block) falls from
    τ_max 0.5 to 0.999."""
    t1 = t_max_of(TOY_V, 0.99)
    picks = torch.multinomial(
        JOINT.reshape(-1).float(), 6, replacement=True, generator=torch.Generator().manual_seed(9)
    )
    x = BLOCKS[picks]
    noise = torch.randn(6, TOY_L, TOY_V, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    z = t1 * torch.nn.functional.one_hot(x, TOY_V).double() + (1 - t1) * noise
    diff = z.unsqueeze(-2) - t1 * torch.eye(TOY_V, dtype=torch.float64)  # [B, L, V(k), V]
    log_normal = -0.5 * diff.square().sum(-1) / (1 - t1) ** 2 - TOY_V * math.log((1 - t1) * math.sqrt(2 * math.pi))
    exact = torch.logsumexp(
        JOINT.log().reshape(1, -1) + log_normal[:, 0, BLOCKS[:, 0]] + log_normal[:, 1, BLOCKS[:, 1]], -1
    )
    options = FlowBoundOptions(steps=64, solver="rk4", grid="t", probes=0)
    torch.testing.assert_close(ode_log_density(joint_logits, None, z, TOY_V, t1, options), exact, rtol=0, atol=1e-4)

    tokens = BLOCKS.repeat(4, 1)  # every block, 4 draws each
    gaps = []
    for tau_max in (0.5, 0.999):
        opts = FlowBoundOptions(tau_max=tau_max, steps=128, solver="rk4", grid="t", probes=0)
        out = flow_nll_bound(joint_logits, None, tokens, TOY_V, opts, torch.Generator().manual_seed(11))
        t = t_max_of(TOY_V, tau_max)
        eps = torch.randn(len(tokens), TOY_L, TOY_V, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
        zz = t * torch.nn.functional.one_hot(tokens, TOY_V).double() + (1 - t) * eps
        post = joint_posterior(zz, torch.tensor(t, dtype=torch.float64))
        index = tokens[:, 0] * TOY_V + tokens[:, 1]
        log_joint = post.gather(1, index[:, None]).squeeze(1).log()
        marg = post.view(-1, TOY_V, TOY_V)
        log_factor = (
            marg.sum(2).gather(1, tokens[:, :1]).squeeze(1).log()
            + marg.sum(1).gather(1, tokens[:, 1:]).squeeze(1).log()
        )
        expected = -JOINT.reshape(-1)[index].log() + log_joint - log_factor
        torch.testing.assert_close(out["bound"], expected, rtol=0, atol=1e-4)
        weight = JOINT.reshape(-1)[index]  # E over x ~ P of the gap: the expected total correlation, >= 0
        gaps.append(((log_joint - log_factor) * weight).sum().item() / weight.sum().item())
    assert gaps[0] > 0.01 and abs(gaps[1]) < gaps[0] / 5, gaps  # measured 0.038 and ~1e-9


def test_prior_and_decoder_terms_with_a_constant_denoiser():
    """D ≡ c (a network that ignores its input): J = 0, so the divergence term is 0, the decoder is −Σ log c[x],
    and δ = ∫₀^{t₁} (x₁ − c)/(1 − s)² ds = (x₁ − c)·t₁/(1 − t₁), so prior = ⟨ε, δ⟩ + ‖δ‖²/2 in closed form.
    The solver integrates (1 − s)^-2 with RK4 on 64 τ-steps: relative error ~1e-8 here (1e-6 allowed)."""
    vocab, length = 5, 4
    c = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])

    def constant(h, tau):
        return c.log().expand(h.shape[0], length, vocab)

    tokens = torch.tensor([[0, 4, 2, 2], [1, 3, 0, 4]])
    options = FlowBoundOptions(tau_max=0.99, steps=64, solver="rk4", probes=0)
    out = flow_nll_bound(constant, None, tokens, vocab, options, torch.Generator().manual_seed(5))
    t1 = t_max_of(vocab, 0.99)
    eps = torch.randn(2, length, vocab, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    delta = (torch.nn.functional.one_hot(tokens, vocab).double() - c.double()) * t1 / (1 - t1)
    prior = (eps * delta).sum((-1, -2)) + 0.5 * delta.square().sum((-1, -2))
    torch.testing.assert_close(out["prior"], prior, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out["divergence"], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(out["decoder"], -c.double().log()[tokens].sum(-1), rtol=1e-6, atol=0)


def test_bound_through_a_dit_is_the_same_in_h_and_v_space():
    """The exact trace taken in h-space or V-space gives the same bound for the same draw (same ε: drawn first);
    float32 network, so agreement to 1e-4 relative."""
    net = random_dit(12, 3, 8)
    logits_fn, matrix = network_denoiser(net)
    tokens = torch.tensor([[1, 5, 11], [0, 0, 7]])
    out = [
        flow_nll_bound(
            logits_fn,
            matrix,
            tokens,
            12,
            FlowBoundOptions(steps=4, probes=0, divergence=space),
            torch.Generator().manual_seed(6),
        )["bound"]  # fmt: skip
        for space in ("h", "v")
    ]
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("vocab", [12, 6])  # V > d and V < d (d = 8)
def test_low_rank_path_equals_the_full_state_path(vocab):
    """Solving in h = x @ W [B, L, d] (the default for a DiT) and in the full state x [B, L, V] (the network then
    embeds x itself) gives the same x-space bound for the same draw: the h-space bookkeeping (h(t₁) = z @ W, dh/dt,
    δ in V-space) is exact. The default, the density of the input space, equals it where W has full row rank
    (V ≤ d) and is smaller where V > d (on average; here on both blocks). float32 network: 1e-4 relative."""
    net = random_dit(vocab, 3, 8)
    tokens = torch.tensor([[1, 5, 3], [0, 0, 4]])
    options = FlowBoundOptions(steps=4, probes=0)
    logits_fn, matrix = network_denoiser(net)
    low = {
        full: flow_nll_bound(logits_fn, matrix, tokens, vocab, options, torch.Generator().manual_seed(12),
                             full_space=full)["bound"]  # fmt: skip
        for full in (False, True)
    }
    state = flow_nll_bound(lambda x, tau: net(x, tau), None, tokens, vocab, options, torch.Generator().manual_seed(12))
    torch.testing.assert_close(low[True], state["bound"], rtol=1e-4, atol=1e-4)
    if vocab > 8:
        assert bool((low[False] < low[True]).all())
    else:
        torch.testing.assert_close(low[False], low[True], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------- MDLM, AR, summary


def test_mdlm_nelbo_draws_match_the_exact_expectation():
    """mdlm_nelbo / L has the expectation of mdlm_loss (exact, by test_mdlm's enumeration over mask counts).
    8 blocks × 64 stratified draws; the blocks are independent, so the SE of the mean is std(block means)/√8;
    4 SE bound a chance failure at ~1e-4."""
    vocab, tokens = 3, [0, 2, 1, 1, 2]
    model = MaskCountModel(vocab, len(tokens))
    exact, _ = exact_expected_loss(model, tokens, T_MIN)
    x = torch.tensor([tokens] * 8)
    draws = mdlm_nelbo(model, x, vocab, draws=64, generator=torch.Generator().manual_seed(7)) / len(tokens)
    assert draws.shape == (8, 64)
    means = draws.mean(1)
    se = means.std().item() / math.sqrt(len(means))
    assert abs(means.mean().item() - exact) < 4 * se + 1e-9, (means.mean().item(), exact, se)


def test_ar_nll_is_the_sum_of_its_loss():
    net = random_dit(7, 6, 8, causal=True)
    tokens = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(8))
    per_block = ar_nll(net, tokens)
    assert per_block.shape == (3, 1)
    torch.testing.assert_close(per_block.sum().float() / (3 * 5), ar_loss(net, tokens)["nll"])


def test_summary_interval_and_monte_carlo_error_by_hand():
    """nats/token = Σ mean_b / (n·T); MC s.e. = sqrt(Σ_b s_b²/K)/(n·T); the bootstrap interval holds the mean."""
    rng = np.random.default_rng(0)
    draws = rng.normal(50.0, 3.0, size=(40, 4)) + rng.normal(0, 5.0, size=(40, 1))
    out = summarize(draws, 10, exact=False)
    assert out["nats_per_token"] == pytest.approx(draws.mean() / 10)
    assert out["mc_se_nats"] == pytest.approx(math.sqrt(draws.var(axis=1, ddof=1).sum() / 4) / 400)
    lo, hi = out["interval_95_nats"]
    assert lo < out["nats_per_token"] < hi
    # the interval is about ±1.96 standard errors of the mean over blocks (delta method: 20% slack)
    half = 1.96 * draws.mean(1).std(ddof=1) / math.sqrt(40) / 10
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)
    assert out["bits_per_token"] == pytest.approx(out["nats_per_token"] / math.log(2))
    assert summarize(draws[:, :1], 10, exact=False)["mc_se_nats"] is None
    assert summarize(draws[:, :1], 10, exact=True)["mc_se_nats"] == 0.0


# --------------------------------------------------------------------------------------------- the command

WORDS = "the cat sat on mat and dog log a quick brown fox".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    paragraphs = [" ".join(rng.choice(WORDS, size=10)) for _ in range(200)]
    path = tmp_path_factory.mktemp("nll_corpus") / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def make_model(folder, corpus, method: str) -> str:
    """A random tiny model of ``method`` (its DiT options from the registry) recording ``corpus``."""
    kind = registry.get(method)
    tok = load_tokenizer("char", train_texts=[corpus.read_text()])
    net = random_dit(tok.vocab_size, 16, 16, time_inputs=kind.time_inputs, **kind.dit_options)
    meta = provenance(method=kind.records, model=net.config.to_dict(), vocab_size=tok.vocab_size, step=0,
                      weights="random", tokenizer={"spec": tok.spec, "name": tok.name, "vocab_size": tok.vocab_size},
                      run={"data": {"corpus": str(corpus)}})  # fmt: skip
    return str(save_model(folder, net.state_dict(), meta, tok))


@pytest.fixture(scope="module")
def models(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("nll_models")
    return {m: make_model(root / m, corpus, m) for m in ("flm", "fmlm", "mdlm", "ar")}


def test_cli_writes_the_result_and_python_api_agrees(models, tmp_path, capsys):
    out = tmp_path / "flm.json"
    argv = ["nll", models["flm"], "-n", "5", "--batch-size", "2", "--bound", "ode", "--ode-steps", "2", "--seed",
            "3", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "bits/token" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["method"] == "flm" and result["blocks"] == 5 and result["draws"] == 2 and result["bound"] == "ode"
    assert result["tokens_per_block"] == result["seq_len"] - 1
    assert result["options"]["steps"] == 2 and 0 < result["options"]["t_max"] < 1
    lo, hi = result["interval_95_nats"]
    assert lo <= result["nats_per_token"] <= hi and result["mc_se_nats"] > 0
    again = flowlm.nll(models["flm"], num_blocks=5, batch_size=2, bound="ode", ode_steps=2, seed=3,
                       cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    assert again["per_block_nats"] == pytest.approx(result["per_block_nats"], rel=1e-9)


def test_elbo_is_the_default_flm_bound(models, tmp_path):
    """``flowlm nll`` on an FLM computes the diffusion ELBO unless told otherwise; its options are recorded."""
    out = tmp_path / "elbo.json"
    argv = ["nll", models["flm"], "-n", "4", "--batch-size", "3", "--time-points", "3", "--seed", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["bound"] == "elbo" and "ELBO" in result["likelihood"]
    assert result["options"]["time_points"] == 3 and result["options"]["tau_max"] == 0.9
    assert math.isfinite(result["nats_per_token"]) and result["mc_se_nats"] > 0


@pytest.mark.parametrize("method", ["fmlm", "mdlm", "ar"])
def test_every_method_with_a_likelihood_runs(models, method, tmp_path):
    result = flowlm.nll(models[method], num_blocks=3, batch_size=2, draws=2, cache_dir=tmp_path, progress=False,
                        **({"time_points": 2} if method == "fmlm" else {}))  # fmt: skip
    assert result["method"] == method and math.isfinite(result["nats_per_token"])
    assert (result["mc_se_nats"] == 0.0) == (method == "ar")


def test_refusals(models, corpus, tmp_path):
    with pytest.raises(ConfigError, match="options of the FLM and FMLM bounds"):
        flowlm.nll(models["mdlm"], num_blocks=2, probes=3, cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="one likelihood"):
        flowlm.nll(models["ar"], num_blocks=2, bound="elbo", cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="not options of the elbo bound.*--bound ode"):
        flowlm.nll(models["flm"], num_blocks=2, solver="rk4", cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="not options of the ode bound.*--bound elbo"):
        flowlm.nll(models["flm"], num_blocks=2, bound="ode", time_points=4, cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="bound='exact'"):
        flowlm.nll(models["flm"], num_blocks=2, bound="exact", cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="solver="):
        flowlm.nll(models["flm"], num_blocks=2, bound="ode", solver="dopri5", cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="fewer than"):
        flowlm.nll(models["flm"], num_blocks=10_000, cache_dir=tmp_path, progress=False)
    moved = tmp_path / "moved" / "corpus.txt"  # a model whose corpus was moved away after training
    moved.parent.mkdir()
    moved.write_text(corpus.read_text())
    model = make_model(tmp_path / "moved_model", moved, "flm")
    moved.unlink()
    with pytest.raises(ConfigError, match="not on this machine.*pass --data"):
        flowlm.nll(model, num_blocks=2, cache_dir=tmp_path, progress=False)
    assert registry.get("fmlm-v1-stage1").likelihood is None
    assert main(["nll", models["ar"], "--ode-steps", "4", "-n", "2", "--quiet", "--cache-dir", str(tmp_path)]) == 2
