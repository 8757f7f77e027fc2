"""DUO (flowlm.methods.duo): the uniform-state NELBO, posterior, curriculum and sampler against closed forms.

- the continuous-time NELBO integrand equals the limit of the discrete-time ELBO's step KL divided by the step
  (exact posteriors by enumeration), and vanishes only for the exact denoiser;
- the posterior formula equals Bayes' rule through the transition matrices, for one-hot x;
- the corruption keeps a position with probability α + (1 − α)/V; the Gaussian relaxation's arg-max has the same law
  with α = T_V(...), its window runs from α 0.95 to 0.05, its slope is the derivative of α(t);
- the sampler's output law equals the exact law of its Markov chain (transition matrices by hand), for both tails
  and with tempering, and approaches the data law as steps grow, with the exact denoiser of independent positions;
- the NELBO estimator's mean against the integral by quadrature; the loss with clean positions and the curriculum.
"""

from __future__ import annotations

import math

import pytest
import torch
from known_warnings import TORCH_FORWARD_AD_JIT

from flowlm.methods.duo import (
    Curriculum,
    alpha,
    alpha_slope,
    corrupt,
    duo_loss,
    duo_nelbo,
    duo_sample,
    nelbo_per_position,
    usdm_posterior,
)
from flowlm.methods.tempering import OFF, Tempering

pytestmark = pytest.mark.usefixtures("one_thread")

V = 5
TABLE = torch.softmax(torch.randn(V, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5, -1)


def transition(a_t: float, a_s: float) -> torch.Tensor:
    """q(z_t = j | z_s = i) [V, V] of the uniform-state process from α_s to α_t < α_s."""
    ratio = a_t / a_s
    return ratio * torch.eye(V, dtype=torch.float64) + (1 - ratio) / V


def marginal(a: float, m: int) -> torch.Tensor:
    """q(z = · | x = m) [V]."""
    return a * torch.nn.functional.one_hot(torch.tensor(m), V).double() + (1 - a) / V


@pytest.mark.parametrize("t", [0.2, 0.5, 0.9])
def test_nelbo_integrand_is_the_limit_of_the_discrete_elbo(t):
    """E_{z_t}[loss(z_t)] at time t equals E_{z_t}[KL(q(z_s | z_t, x) ‖ q(z_s | z_t, x_θ(z_t)))]/Δ as Δ → 0 (Δ = 1e-5:
    relative difference O(Δ·|∂ log|) ≲ 1e-4; the integrand is computed in float32 on 5 classes: 1e-4 more)."""
    m, dt = 2, 1e-5
    a_t = float(alpha(torch.tensor(t, dtype=torch.float64)))
    a_s = float(alpha(torch.tensor(t - dt, dtype=torch.float64)))
    exact = torch.nn.functional.one_hot(torch.tensor([m]), V).double()
    weights = marginal(a_t, m)
    discrete = 0.0
    for i in range(V):
        z = torch.tensor([[i]])
        p = usdm_posterior(exact.view(1, 1, V), z, a_t, a_s)[0, 0]
        q = usdm_posterior(TABLE[i].view(1, 1, V), z, a_t, a_s)[0, 0]
        discrete += weights[i].item() * (p * (p / q).log()).sum().item() / dt
    z = torch.arange(V).view(V, 1)  # every z_t at once, one row each
    per = nelbo_per_position(TABLE.log().view(V, 1, V).float(), z, torch.full((V, 1), m), alpha(torch.full((V,), t)),
                             alpha_slope(torch.full((V,), t)))  # fmt: skip
    continuous = (weights * per.double().view(-1)).sum().item()
    assert continuous == pytest.approx(discrete, rel=2e-4)


def test_nelbo_integrand_vanishes_only_for_the_exact_denoiser():
    tokens = torch.tensor([[0, 3, 4]])
    z = torch.tensor([[1, 3, 2]])
    t = torch.tensor([0.4])
    sure = torch.full((1, 3, V), -40.0).scatter(-1, tokens.unsqueeze(-1), 40.0)
    assert nelbo_per_position(sure, z, tokens, alpha(t), alpha_slope(t)).abs().max().item() < 1e-5
    unsure = torch.zeros(1, 3, V)
    assert bool((nelbo_per_position(unsure, z, tokens, alpha(t), alpha_slope(t)) > 1e-3).all())


def test_posterior_is_bayes_rule():
    """q(z_s | z_t, x) = q(z_s | x)·q(z_t | z_s)/q(z_t | x) for one-hot x (float64, 1e-12), and the final update
    (α_s = 1) puts all mass on x."""
    a_t, a_s = 0.3, 0.7
    for m in range(V):
        for i in range(V):
            bayes = marginal(a_s, m) * transition(a_t, a_s)[:, i]
            bayes = bayes / bayes.sum()
            x = torch.nn.functional.one_hot(torch.tensor(m), V).double().view(1, 1, V)
            got = usdm_posterior(x, torch.tensor([[i]]), a_t, a_s)[0, 0]
            torch.testing.assert_close(got, bayes, rtol=0, atol=1e-12)
            final = usdm_posterior(x, torch.tensor([[i]]), a_t, 1.0)[0, 0]
            torch.testing.assert_close(final, x.view(V), rtol=0, atol=1e-12)


@TORCH_FORWARD_AD_JIT
def test_corruption_and_the_gaussian_relaxation_have_the_uniform_state_law():
    """Keep rate α + (1 − α)/V, from 40,000 positions, within 4.5 standard errors; the relaxation's arg-max the same
    with its own α; the window's ends are α 0.95 and 0.05; the slope is dα/dt by a central difference (1e-3)."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (400, 100), generator=g)
    for a in (0.2, 0.7):
        z = corrupt(tokens, torch.full((400,), a), V, g)
        rate, want = (z == tokens).double().mean().item(), a + (1 - a) / V
        assert abs(rate - want) <= 4.5 * math.sqrt(want * (1 - want) / z.numel())
    curriculum = Curriculum()
    for t in (0.0, 0.4, 1.0):
        soft, z, a, slope = curriculum.relax(tokens, torch.full((400,), t), V, g)
        want = a[0].item() + (1 - a[0].item()) / V
        rate = (z == tokens).double().mean().item()
        assert abs(rate - want) <= 4.5 * math.sqrt(want * (1 - want) / z.numel()), (t, rate, want)
        assert soft.shape == (400, 100, V) and torch.allclose(soft.sum(-1), torch.ones(400, 100))
        h = 1e-4
        up = curriculum.relax(tokens[:1], torch.tensor([t + h]), V, g)[2].double()
        down = curriculum.relax(tokens[:1], torch.tensor([t - h]), V, g)[2].double()
        assert slope[0].item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-3)
        if t in (0.0, 1.0):
            assert a[0].item() == pytest.approx(0.95 if t == 0.0 else 0.05, abs=1e-4)


PI = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05], dtype=torch.float64)


class PosteriorMean(torch.nn.Module):
    """The posterior mean E[x | z] of data with independent positions x_ℓ ~ π: ∝ π_x·(α·[x = z] + (1 − α)/V)."""

    def forward(self, z, a, **_):
        a = a.double().view(-1, 1, 1)
        like = a * torch.nn.functional.one_hot(z, V).double() + (1 - a) / V
        return (PI.log() + like.log()).float()


class Marginal(torch.nn.Module):
    """x_θ ≡ π whatever the input."""

    def forward(self, z, a, **_):
        return PI.log().float().expand(*z.shape, V)


def chain_law(steps: int, tail: str, tempering: Tempering, net=None) -> torch.Tensor:
    """The exact output law [V] of the sampler's chain on one position, by matrix products."""
    law = torch.full((V,), 1.0 / V, dtype=torch.float64)
    net = PosteriorMean() if net is None else net
    for k in range(steps):
        t_now, t_next = 1 - k / steps, 1 - (k + 1) / steps
        a_t = float(alpha(torch.tensor(t_now, dtype=torch.float64)))
        a_s = 1.0 if k == steps - 1 else float(alpha(torch.tensor(t_next, dtype=torch.float64)))
        z = torch.arange(V).view(V, 1)
        probs = tempering.probs(net(z, torch.full((V,), a_t)).double())
        if k == steps - 1 and tail == "greedy":
            step = torch.nn.functional.one_hot(probs.argmax(-1).view(-1), V).double()
        else:
            step = usdm_posterior(probs, z, a_t, a_s).view(V, V)
        law = law @ step
    return law


@pytest.mark.parametrize("steps, tail, tempering", [(1, "ancestral", OFF), (4, "ancestral", OFF),
                                                    (4, "greedy", OFF), (4, "ancestral", Tempering(0.5, 0.9))])
def test_sampler_output_is_the_law_of_its_chain(steps, tail, tempering):
    """12,000 positions (independent under the exact per-position denoiser): frequencies within 4.5 standard errors
    of the chain's exact law."""
    out = duo_sample(PosteriorMean(), 2000, 6, V, steps, torch.Generator().manual_seed(2), tail=tail,
                     tempering=tempering).reshape(-1)  # fmt: skip
    freq = torch.bincount(out, minlength=V).double() / out.numel()
    law = chain_law(steps, tail, tempering)
    se = (law * (1 - law) / out.numel()).sqrt()
    assert bool(((freq - law).abs() <= 4.5 * se + 1e-12).all()), (freq.tolist(), law.tolist())


def test_the_data_marginal_makes_every_step_exact():
    """For independent positions, plugging x = π into the posterior is Bayes' rule with the data's marginals
    (q(z | π) is the marginal of z), so the chain's law is π at any step count (exact laws; 1e-5 covers the float32
    logits, 1e-7, and the start at uniform instead of the t = 1 marginal, whose first-order effect cancels:
    α_1² = 1e-6). The posterior mean E[x | z_t] is not that plug-in: its chain ends elsewhere (the sampler plugs in
    whatever x_θ the NELBO taught it, which for this process need not be the posterior mean)."""
    for n in (1, 2, 8):
        torch.testing.assert_close(chain_law(n, "ancestral", OFF, Marginal()), PI, rtol=0, atol=1e-5)
    assert 0.5 * (chain_law(8, "ancestral", OFF) - PI).abs().sum().item() > 0.05


def test_nelbo_estimator_against_quadrature():
    """duo_nelbo's mean over 4,000 stratified draws of one block [0, 3] (the TABLE denoiser, positions independent)
    equals (1/(1 − t_min))·∫_{t_min}^1 E_z[Σ_ℓ loss_ℓ] dt by a 2,000-point midpoint rule, within 4 standard errors."""

    class Table(torch.nn.Module):
        def forward(self, z, a, **_):
            return TABLE.log()[z].float()

    block = torch.tensor([[0, 3]])
    draws = duo_nelbo(Table(), block, V, draws=4000, generator=torch.Generator().manual_seed(3))
    grid = 1e-3 + (1 - 1e-3) * (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
    values = []
    for t in grid.tolist():
        a = float(alpha(torch.tensor(t)))
        total = 0.0
        for m in block[0].tolist():
            z = torch.arange(V).view(V, 1)
            per = nelbo_per_position(TABLE.log()[z].float(), z, torch.full((V, 1), m), torch.full((V,), a),
                                     alpha_slope(torch.full((V,), t)))  # fmt: skip
            total += (marginal(a, m) * per.double().view(-1)).sum().item()
        values.append(total)
    integral = sum(values) / len(values)
    se = draws.std().item() / math.sqrt(draws.numel())
    assert abs(draws.mean().item() - integral) <= 4 * se, (draws.mean().item(), integral, se)


@TORCH_FORWARD_AD_JIT
def test_loss_runs_with_clean_positions_and_the_curriculum():
    from test_likelihood import random_dit

    net = random_dit(V, 6, 8, logit_cap=None).train().requires_grad_(True)
    tokens = torch.randint(0, V, (4, 6), generator=torch.Generator().manual_seed(4))
    clean = torch.zeros(4, 6, dtype=torch.bool)
    clean[:, :2] = True
    for curriculum in (None, Curriculum()):
        out = duo_loss(net, tokens, V, torch.Generator().manual_seed(5), clean=clean, curriculum=curriculum)
        out["loss"].backward()
        assert math.isfinite(out["loss"].item()) and out["loss"].item() > 0
    # rows: the slices of one batch reproduce it
    whole = duo_loss(net.eval(), tokens, V, torch.Generator().manual_seed(6))["nll_bound"]
    parts = [duo_loss(net, tokens[a:b], V, torch.Generator().manual_seed(6), rows=(a, 4))["nll_bound"] * (b - a)
             for a, b in ((0, 1), (1, 4))]  # fmt: skip
    assert (parts[0] + parts[1]).item() / 4 == pytest.approx(whole.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def duo_run(tmp_path_factory):
    from test_e2e import TINY, cli

    root = tmp_path_factory.mktemp("duo")
    cli("train", *TINY, f"data.cache_dir={root / 'cache'}", "--method", "duo", "--steps", "4", "--out", str(root))
    return root


def test_cli_trains_samples_and_scores_duo(duo_run, tmp_path):
    """``flowlm train --method duo`` (curriculum for its first 2 of 4 steps), its logged NELBO and perplexity, the
    sampler through the CLI and the API (same seed, same tokens; both tails; a prompt kept), and ``flowlm nll``."""
    import csv
    import json

    from test_e2e import cli

    import flowlm

    meta = json.loads((duo_run / "model" / "flowlm.json").read_text())
    assert meta["method"] == "duo" and not meta["model"]["mask_input"] and meta["model"]["logit_cap"] is None
    assert meta["run"]["duo"]["curriculum_frac"] == 0.5
    with (duo_run / "logs" / "session-0" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r.get("val/nll_bound")]
    ppl = [float(r["val/ppl_bound"]) for r in rows if r.get("val/ppl_bound")]
    assert val and ppl and math.isclose(ppl[0], math.exp(float(val[0]["val/nll_bound"])), rel_tol=1e-5)
    out = tmp_path / "s.jsonl"
    cli("sample", str(duo_run), "--steps", "3", "-n", "3", "--seed", "4", "--tail", "ancestral", "--out", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and lines[0]["provenance"]["sampler"] == "ancestral-uniform"
    model = flowlm.load(duo_run)
    assert model.sample_tokens(3, 3, seed=4, tail="ancestral").tolist() == [line["tokens"] for line in lines]
    greedy = model.sample_tokens(3, 3, seed=4)
    assert greedy.shape == (3, 32) and not torch.equal(greedy, model.sample_tokens(3, 3, seed=4, tail="ancestral"))
    known = torch.tensor([7, 8, 9] + [0] * 29)
    mask = torch.arange(32) < 3
    prompt = model.sample_tokens(2, 3, seed=5, known=known, known_mask=mask)
    assert prompt[:, :3].tolist() == [[7, 8, 9], [7, 8, 9]]
    result = flowlm.nll(duo_run, num_blocks=3, batch_size=2, draws=4, progress=False, cache_dir=duo_run / "cache")
    assert result["method"] == "duo" and result["bound"] == "nelbo" and math.isfinite(result["nats_per_token"])
    proc = cli("sample", str(duo_run), "--steps", "2", "--tail", "sideways", check=False)
    assert proc.returncode == 2 and "tail='sideways'" in proc.stderr and "Traceback" not in proc.stderr
