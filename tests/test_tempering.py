"""Temperature and nucleus sampling (flowlm.methods.tempering) in every sampler.

- the nucleus by hand (kept set, renormalization, the edge), temperature as softmax(logits / T);
- off is the old sampler bit for bit, and MDLM / AR at T = 1 without top-p are too;
- a network whose prediction ignores its input makes every sampler's output law known in closed form: each position
  is drawn from nucleus(softmax(c / T)), so the empirical frequencies of 12,000 draws must match it within 4.5
  standard errors per token (FLM and flow maps: through their last-step draw; MDLM, AR: directly).
"""

from __future__ import annotations

import math

import pytest
import torch

from flowlm.methods.ar import ar_sample
from flowlm.methods.flm import flm_sample
from flowlm.methods.fmlm import fmlm_sample
from flowlm.methods.mdlm import mdlm_sample
from flowlm.methods.tempering import OFF, Tempering, nucleus

pytestmark = pytest.mark.usefixtures("one_thread")

PROBS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
VOCAB = len(PROBS)


def test_nucleus_by_hand():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    torch.testing.assert_close(nucleus(p, 0.7), torch.tensor([0.625, 0.375, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(nucleus(p, 0.5), torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(nucleus(p, 1.0), p)
    shuffled = p[[2, 0, 3, 1]]  # the kept set follows the probabilities, not the positions
    torch.testing.assert_close(nucleus(shuffled, 0.7), torch.tensor([0.0, 0.625, 0.0, 0.375], dtype=torch.float64))


def test_temperature_is_softmax_of_scaled_logits_and_off_is_softmax():
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(OFF.probs(logits), torch.softmax(logits, dim=-1))
    torch.testing.assert_close(Tempering(2.0).probs(logits), torch.softmax(logits / 2.0, dim=-1))
    assert not OFF.active and Tempering(top_p=0.9).active
    assert torch.equal(OFF.tokens(torch.softmax(logits, -1)), logits.argmax(-1))
    # a distribution given as probabilities (FLM's guided mixture) is tempered like its logits
    tempered = Tempering(0.7, 0.9)
    torch.testing.assert_close(tempered.reshape(torch.softmax(logits, -1)), tempered.probs(logits))
    assert torch.equal(OFF.reshape(logits), logits)


def expected_law(temperature: float, top_p: float | None) -> torch.Tensor:
    law = Tempering(temperature, top_p).probs(PROBS.log())
    return law


class Constant(torch.nn.Module):
    """A network whose logits are log PROBS at every position, whatever its input and times."""

    def forward(self, x, tau, tau_end=None, **_):
        return PROBS.log().float().expand(x.shape[0], x.shape[1], VOCAB)


SAMPLERS = {
    "flm": lambda n, g, tempering: flm_sample(Constant(), n, 6, VOCAB, 3, g, tempering=tempering),
    "fmlm": lambda n, g, tempering: fmlm_sample(Constant(), n, 6, VOCAB, 1, generator=g, tempering=tempering),
    "mdlm": lambda n, g, tempering: mdlm_sample(Constant(), n, 6, VOCAB, 4, g, tempering=tempering),
    "ar": lambda n, g, tempering: ar_sample(Constant(), n, 7, 0, g, use_cache=False, tempering=tempering)[:, 1:],
}


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("temperature, top_p", [(0.5, 0.8), (1.0, None), (2.0, 0.95)])
def test_every_sampler_draws_from_the_tempered_nucleus(name, temperature, top_p):
    """Output law = nucleus(softmax(log π / T)) per position (π = PROBS): (0.5, 0.8) keeps the two most probable
    tokens with 0.64 / 0.36; (2.0, 0.95) keeps all four. Tokens outside the nucleus never appear."""
    draws = SAMPLERS[name](2000, torch.Generator().manual_seed(1), Tempering(temperature, top_p)).reshape(-1)
    n = draws.numel()
    freq = torch.bincount(draws, minlength=VOCAB).double() / n
    law = expected_law(temperature, top_p)
    se = (law * (1 - law) / n).sqrt()
    assert bool(((freq - law).abs() <= 4.5 * se + 1e-12).all()), (name, freq.tolist(), law.tolist())
    assert bool((freq[law == 0] == 0).all())


def test_off_is_the_old_sampler_and_unit_temperature_changes_nothing_for_mdlm_and_ar():
    """Off: the samplers' old outputs (the golden ids cover the real networks; here the flow samplers' arg-max of
    the constant law is token 0 everywhere). MDLM and AR at T = 1 without top-p draw the same tokens as off."""
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert bool((SAMPLERS["flm"](50, g(), OFF) == 0).all()) and bool((SAMPLERS["fmlm"](50, g(), OFF) == 0).all())
    for name in ("mdlm", "ar"):
        assert torch.equal(SAMPLERS[name](50, g(), OFF), SAMPLERS[name](50, g(), Tempering(1.0)))
        assert not torch.equal(SAMPLERS[name](50, g(), OFF), SAMPLERS[name](50, g(), Tempering(0.5)))


def test_lower_temperature_lowers_the_entropy_of_a_real_network():
    """A random DiT FLM at 4 steps: the unigram entropy of its samples falls from T = 2 to T = 0.5 (a trend, by a
    margin of many standard errors of the plug-in entropy on 2,048 tokens)."""
    from test_likelihood import random_dit

    net = random_dit(16, 8, 16)

    def entropy(temperature):
        tokens = flm_sample(net, 256, 8, 16, 4, torch.Generator().manual_seed(3), tempering=Tempering(temperature))
        p = torch.bincount(tokens.reshape(-1), minlength=16).double() / tokens.numel()
        return -(p[p > 0] * p[p > 0].log()).sum().item()

    low, high = entropy(0.5), entropy(2.0)
    assert high - low > 0.1 and high <= math.log(16), (low, high)
