"""MDLM baseline: the SUBS parameterization, the NELBO estimator against its exact value, the ancestral sampler
(1 step = independent positions, the reveal schedule), and the CLI round trip."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from test_e2e import TINY, cli
from tolerances import assert_close_up_to_rounding

import flowlm
from flowlm.methods.mdlm import T_MIN, mask_tokens, mdlm_loss, mdlm_sample, mdlm_times, subs_log_probs
from flowlm.nn.dit import DiT, DiTConfig


class MaskCountModel:
    """Logits that depend only on how many positions of the row are masked: ``W[k]`` at every position."""

    def __init__(self, vocab: int, length: int, seed: int = 0, spread: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.table = spread * torch.randn(length + 1, vocab, generator=g)

    def __call__(self, z, tau):
        k = (z == self.vocab).sum(-1)
        return self.table[k][:, None, :].expand(z.shape[0], z.shape[1], self.vocab)


def exact_expected_loss(model: MaskCountModel, tokens: list[int], t_min: float) -> tuple[float, float]:
    """(expectation of mdlm_loss for one fixed block, the full NELBO per token), both exact.

    With k masked positions out of L (a uniformly random k-subset, P(k | t) = C(L,k) t^k (1−t)^(L−k)), each masked
    position ℓ costs c_k(x_ℓ) = −log softmax(W[k])[x_ℓ], so E[Σ masked CE | k] = (k/L)·S_k with S_k = Σ_ℓ c_k(x_ℓ).
    The estimator's expectation is (1/(1−t_min))·(1/L)·Σ_k C(L,k)(k/L)S_k ∫_{t_min}^1 t^(k−1)(1−t)^(L−k) dt (a
    polynomial integral, exact by Gauss–Legendre with L + 2 nodes); with t_min = 0 the integral is the Beta
    function and the sum collapses to the full NELBO (1/L²)·Σ_k S_k.
    """
    length = len(tokens)
    logp = torch.log_softmax(model.table.double(), dim=-1)
    s = [-sum(float(logp[k, x]) for x in tokens) for k in range(length + 1)]
    nodes, weights = np.polynomial.legendre.leggauss(length + 2)
    t = t_min + (1 - t_min) * (nodes + 1) / 2
    w = weights * (1 - t_min) / 2
    total = 0.0
    for k in range(1, length + 1):
        integral = float(np.sum(w * t ** (k - 1) * (1 - t) ** (length - k)))
        total += math.comb(length, k) * (k / length) * s[k] * integral
    return total / ((1 - t_min) * length), sum(s[1:]) / length**2


@pytest.mark.parametrize("t_min", [T_MIN, 0.3])
def test_loss_estimator_matches_exact_expectation(t_min):
    vocab, tokens = 3, [0, 2, 1, 1, 2]
    model = MaskCountModel(vocab, len(tokens))
    exact, full = exact_expected_loss(model, tokens, t_min)
    batch, n_batches = 256, 200
    x = torch.tensor([tokens] * batch)
    g = torch.Generator().manual_seed(1)
    means = torch.tensor(
        [float(mdlm_loss(model, x, vocab, generator=g, t_min=t_min)["loss"]) for _ in range(n_batches)]
    )
    # Batches are independent draws (strata are within a batch), so the standard error of the overall mean is
    # std(batch means)/sqrt(n_batches); 4 standard errors bound a chance failure at ~1e-4.
    se = float(means.std()) / math.sqrt(n_batches)
    assert abs(float(means.mean()) - exact) < 4 * se, (float(means.mean()), exact, se)
    if t_min == T_MIN:  # the truncation moves the expectation by O(t_min) only (see mdlm_loss)
        assert abs(exact - full) < 2 * t_min * float(-torch.log_softmax(model.table, -1).min())
    else:  # and it is visible when t_min is large: the test can tell the truncated from the full NELBO
        assert abs(exact - full) > 10 * se


def test_input_independent_model_bound_is_its_exact_nll():
    """A network that ignores its input is a product of per-position distributions; its NELBO is tight and equal
    to its NLL, −(1/L)·Σ_ℓ log p(x_ℓ), by hand: c·∫(1/t)·t dt per position."""
    vocab, tokens = 4, [3, 0, 1]
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    nll = -sum(math.log(probs[x]) for x in tokens) / len(tokens)

    def model(z, tau):
        return probs.log().expand(z.shape[0], z.shape[1], vocab)

    g = torch.Generator().manual_seed(0)
    x = torch.tensor([tokens] * 512)
    means = torch.tensor([float(mdlm_loss(model, x, vocab, generator=g)["loss"]) for _ in range(100)])
    se = float(means.std()) / math.sqrt(len(means))
    assert abs(float(means.mean()) - nll) < 4 * se


def test_subs_carries_unmasked_tokens_and_never_predicts_the_mask():
    vocab, mask = 5, 5
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, vocab, generator=g)
    z = torch.tensor([[mask, 2, mask, 0], [4, mask, mask, mask]])
    logp = subs_log_probs(logits, z, mask)
    assert logp.shape == (2, 4, vocab)  # no column for the mask id: it has probability zero
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 4))
    masked = z == mask
    torch.testing.assert_close(logp[masked], torch.log_softmax(logits, -1)[masked])
    carried = logp[~masked]
    assert torch.equal(carried.argmax(-1), z[~masked]) and torch.all(carried.max(-1).values == 0)
    assert torch.all(torch.isinf(carried).sum(-1) == vocab - 1)


def test_loss_is_subs_weighted_cross_entropy_and_ignores_unmasked_logits():
    vocab, batch, length = 6, 8, 7
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, vocab, (batch, length), generator=g)
    table = torch.randn(batch, length, vocab, generator=g)

    def model(z, tau):
        assert torch.all(tau == 0)  # the time-independent network always sees τ = 0
        return table

    def garbage_where_unmasked(z, tau):  # different logits at unmasked positions only
        return torch.where((z == vocab)[..., None], table, table + 100 * torch.randn(table.shape, generator=g))

    # The same draws by hand: t first, then the masks (the order mdlm_loss uses).
    gh = torch.Generator().manual_seed(11)
    t = mdlm_times(batch, gh)
    z, masked = mask_tokens(x, t, vocab, gh)
    logp = subs_log_probs(table, z, vocab)
    by_hand = (-logp.gather(-1, x[..., None]).squeeze(-1).sum(-1) / (t * length)).mean()
    out = mdlm_loss(model, x, vocab, generator=torch.Generator().manual_seed(11))
    # float32 log-softmaxes over V, then weighted sums over B·L positive terms: n = B·L·V at S = the loss
    products = batch * length * vocab
    assert_close_up_to_rounding(out["loss"], by_hand, products)
    torch.testing.assert_close(out["t"], t)
    other = mdlm_loss(garbage_where_unmasked, x, vocab, generator=torch.Generator().manual_seed(11))
    assert_close_up_to_rounding(other["loss"], by_hand, products)


def test_masking_rate_is_t_and_times_are_stratified():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    _, masked = mask_tokens(torch.zeros(1, n, dtype=torch.long), torch.tensor([0.3]), 9, g)
    assert abs(masked.float().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)  # 5 binomial SEs
    t = mdlm_times(16, g)
    assert t.min() >= T_MIN and t.max() < 1
    strata = ((t - T_MIN) / (1 - T_MIN) * 16).floor().long()
    assert sorted(strata.tolist()) == list(range(16))


class CopyModel:
    """Two positions, three tokens. All masked: position ℓ has the distribution ``P[ℓ]``. Otherwise every
    position puts (almost) all mass on the revealed token, so any sampler that conditions copies it."""

    P = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])

    def __init__(self):
        self.calls = 0

    def __call__(self, z, tau):
        self.calls += 1
        vocab = 3
        revealed = z != vocab
        token = torch.where(revealed, z, 0).max(-1).values
        copy = torch.full((z.shape[0], 2, vocab), -30.0).scatter(-1, token[:, None, None].expand(-1, 2, 1), 30.0)
        fresh = self.P.log().expand(z.shape[0], 2, vocab)
        return torch.where(revealed.any(-1)[:, None, None], copy, fresh)


def test_one_step_draws_positions_independently_from_the_all_masked_marginals():
    n = 40_000
    samples = mdlm_sample(CopyModel(), n, 2, 3, steps=1, generator=torch.Generator().manual_seed(0))
    joint = torch.zeros(3, 3)
    joint.index_put_((samples[:, 0], samples[:, 1]), torch.ones(n), accumulate=True)
    joint /= n
    expected = torch.outer(CopyModel.P[0], CopyModel.P[1])
    # each cell frequency is a binomial proportion: within 5 standard errors of p0(a)·p1(b)
    tolerance = 5 * torch.sqrt(expected * (1 - expected) / n)
    assert torch.all((joint - expected).abs() < tolerance), (joint, expected)


def test_two_steps_reveal_half_then_condition_on_it():
    """N = 2: step 0 reveals each position with probability (t−s)/t = 1/2; if exactly one was revealed (prob. 1/2)
    the other copies it at step 1. So P(x0 = x1) = 1/2 + 1/2·Σ_a p0(a)p1(a) (0.65 here, 0.30 if independent)."""
    n = 40_000
    model = CopyModel()
    samples = mdlm_sample(model, n, 2, 3, steps=2, generator=torch.Generator().manual_seed(1))
    agree = (samples[:, 0] == samples[:, 1]).float().mean().item()
    p = 0.5 + 0.5 * float((CopyModel.P[0] * CopyModel.P[1]).sum())
    assert abs(agree - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert model.calls == 2


def test_reveal_schedule_follows_the_time_grid():
    """Before step k of N the expected masked share is Π_{j<k} (1 − 1/(N−j)) = (N−k)/N = t_k."""
    steps, batch, length, vocab = 4, 64, 64, 5
    seen = []

    def model(z, tau):
        seen.append((z == vocab).float().mean().item())
        return torch.zeros(z.shape[0], z.shape[1], vocab)

    out = mdlm_sample(model, batch, length, vocab, steps, generator=torch.Generator().manual_seed(2))
    assert len(seen) == steps and torch.all(out < vocab)
    n = batch * length
    for k, share in enumerate(seen):
        p = (steps - k) / steps
        assert abs(share - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (k, share, p)


def test_many_steps_call_the_network_only_when_something_changed():
    model = CopyModel()
    out = mdlm_sample(model, 1, 2, 3, steps=1000, generator=torch.Generator().manual_seed(0))
    assert torch.all(out < 3) and model.calls <= 2  # one call per reveal at most, none once all are revealed


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    cfg = DiTConfig(vocab_size=7, seq_len=10, hidden_size=32, n_blocks=1, n_heads=2, cond_dim=16, mask_input=True)
    net = DiT(cfg).eval()
    with torch.no_grad():  # a non-zero output layer, so the samples depend on the input
        torch.nn.init.normal_(net.output_layer.linear.weight, std=1.0)
    return net


def test_mask_input_dit_has_one_extra_input_row_only(dit):
    assert dit.vocab_embed.embedding.shape == (8, 32) and dit.output_layer.linear.weight.shape == (7, 32)
    z = torch.full((2, 10), 7)
    assert dit(z, torch.zeros(2)).shape == (2, 10, 7)
    flm = DiT(DiTConfig(vocab_size=7, seq_len=10, hidden_size=32, n_blocks=1, n_heads=2, cond_dim=16))
    assert flm.vocab_embed.embedding.shape == (7, 32)  # FLM/FMLM checkpoints keep their shapes
    old = {k: v for k, v in flm.config.to_dict().items() if k not in ("causal", "mask_input")}
    assert DiTConfig(**old) == flm.config  # configs written before these fields load unchanged


@pytest.mark.parametrize("steps", [1, 3, 25])
def test_sampler_reveals_everything_and_is_seeded(dit, steps):
    def draw(seed):
        return mdlm_sample(dit, 6, 10, 7, steps, generator=torch.Generator().manual_seed(seed))

    out = draw(0)
    assert out.shape == (6, 10) and out.min() >= 0 and out.max() < 7
    assert torch.equal(out, draw(0)) and not torch.equal(out, draw(1))


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def mdlm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mdlm")
    cli("train", *TINY, f"data.cache_dir={root / 'cache'}", "--method", "mdlm", "--steps", "3", "--out", str(root))
    return root


def test_cli_trains_and_samples_mdlm(mdlm_run, tmp_path):
    meta = json.loads((mdlm_run / "model" / "flowlm.json").read_text())
    assert meta["method"] == "mdlm" and meta["model"]["mask_input"] and not meta["model"]["causal"]
    with (mdlm_run / "logs" / "session-0" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r.get("val/nll_bound")]
    assert val and "val/denoising_ce" not in rows[0]
    ppl = [float(r["val/ppl_bound"]) for r in rows if r.get("val/ppl_bound")]
    assert ppl and math.isclose(ppl[0], math.exp(float(val[0]["val/nll_bound"])), rel_tol=1e-5)

    out = tmp_path / "s.jsonl"
    cli("sample", str(mdlm_run), "--steps", "2", "-n", "3", "--seed", "4", "--out", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and len(lines[0]["tokens"]) == 32
    assert lines[0]["provenance"]["sampler"] == "ancestral" and lines[0]["provenance"]["steps"] == 2
    model = flowlm.load(mdlm_run)
    assert model.sample_tokens(3, 2, seed=4).tolist() == [line["tokens"] for line in lines]
    assert model.sample_tokens(2, seed=1).max() < model.net.config.vocab_size  # default steps: 64


def test_distilling_an_mdlm_model_is_refused(mdlm_run):
    proc = cli("distill", "--teacher", str(mdlm_run), "--steps", "1", "--out", str(mdlm_run / "x"), check=False)
    assert proc.returncode == 2 and "mdlm model" in proc.stderr and "--method flm" in proc.stderr
    assert "Traceback" not in proc.stderr
