"""The categorical draw of the MDLM and AR samplers: a float64 exponential race."""

from __future__ import annotations

import math

import torch

from flowlm.methods.common import sample_categorical


def test_draw_frequencies_match_the_probabilities_including_a_rare_token():
    probs = torch.tensor([0.6, 0.3, 0.0999, 1e-4])
    n = 200_000
    draws = sample_categorical(probs.expand(n, 4), torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).double()
    for v, p in enumerate(probs.double().tolist()):
        sd = math.sqrt(n * p * (1 - p))  # binomial standard deviation (≈ 4.5 for the rare token: 20 expected)
        assert abs(counts[v] - n * p) < 5 * sd, (v, counts[v].item(), n * p)


def test_unnormalized_rows_and_zero_probabilities():
    probs = torch.tensor([[0.0, 2.0, 6.0], [5.0, 0.0, 0.0]])
    draws = sample_categorical(probs.repeat(20_000, 1), torch.Generator().manual_seed(1)).view(20_000, 2)
    assert (draws[:, 1] == 0).all() and (draws[:, 0] != 0).all()  # zero-probability ids are never drawn
    share = (draws[:, 0] == 2).double().mean().item()  # 6 / 8 = 0.75, sd sqrt(0.75·0.25/20000) ≈ 0.0031
    assert abs(share - 0.75) < 5 * 0.0031


def test_the_race_is_run_in_float64_whatever_the_input_dtype():
    """The draws equal a float64 race written out here on the same generator stream, for float32 and float64
    inputs. (On CPU torch's float32 exponentials come from the same stream, so this alone does not tell the
    precisions apart; the next test does.)"""
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(64, 1000, generator=g) * 4, dim=-1)
    e = torch.empty(64, 1000, dtype=torch.float64).exponential_(generator=torch.Generator().manual_seed(3))
    expected = (probs.double() / e).argmax(-1)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(sample_categorical(probs.to(dtype), torch.Generator().manual_seed(3)), expected)


def test_float64_keeps_ratios_that_float32_cannot_represent():
    """Weights 1e-45 : 3e-45 (float64) are the float32 denormals 1.4e-45 : 2.8e-45, a 1 : 2 ratio: a race in
    float32 would draw the second id with probability 2/3, the float64 race with 3/4. n = 20,000 draws: the
    standard deviation of the share is sqrt(0.75·0.25/n) ≈ 0.0031, and 0.75 − 2/3 is 27 of them."""
    probs = torch.tensor([[1e-45, 3e-45]], dtype=torch.float64).expand(20_000, 2)
    assert torch.equal(probs.float()[0], torch.tensor([1.401298464324817e-45, 2.802596928649634e-45]))
    share = sample_categorical(probs, torch.Generator().manual_seed(4)).double().mean().item()
    assert abs(share - 0.75) < 5 * 0.0031
