"""Statistical test of FLM on a known language (tests/markov.py), trained for a few CPU minutes.

Budget: 1,500 AdamW steps of batch 128 on a 2-block, width-64 DiT (about 2 minutes on 2 cores).
Samples: 1,000 sequences of 16 symbols, 128 Euler steps vs 1 step, both from the EMA weights.

Tolerances. Sampling error is derived from the sample size: the +1 share of n valid moves has
standard error sqrt(p(1-p)/n) and we allow 4 of them; the first symbol of each sample is an
independent draw, so its histogram is checked with a chi-square test at level 0.001. A network this
small, trained this briefly, is not exact, so two allowances are fixed a priori and stated here
rather than tuned: the +1 share may be off by 0.03 beyond the sampling error, and at most 5% of
adjacent pairs may be invalid (the data has none). One-step samples must be clearly worse: their
invalid share must exceed the many-step one by more than 10 standard errors.
"""

import math

import pytest
import torch
from conftest import MARKOV_K as K
from conftest import MARKOV_LENGTH as LENGTH
from markov import single_thread

from flowlm.methods.flm import flm_sample

SAMPLES = 1000
CHI2_7DOF_P001 = 24.32  # upper 0.1% point of the chi-square distribution with K - 1 = 7 degrees of freedom


@pytest.fixture(scope="module")
def trained(markov_flm):
    chain, net, seconds = markov_flm
    with single_thread():
        many = flm_sample(net, SAMPLES, LENGTH, K, 128, generator=torch.Generator().manual_seed(1))
        one = flm_sample(net, SAMPLES, LENGTH, K, 1, generator=torch.Generator().manual_seed(1))
    print(f"\nFLM trained in {seconds:.0f} s")
    return chain, chain.statistics(many), chain.statistics(one), many


@pytest.mark.slow
def test_many_step_samples_match_the_language(trained):
    chain, many, one, tokens = trained
    print(f"\n128 steps: {many}\n  1 step:  {one}")
    assert many["invalid"] <= 0.05
    assert abs(many["step_share"] - chain.p_step) <= chain.binomial_tolerance(many["n_valid"]) + 0.03
    counts = torch.bincount(tokens[:, 0], minlength=K).float()
    expected = SAMPLES / K
    assert ((counts - expected) ** 2 / expected).sum().item() <= CHI2_7DOF_P001
    assert many["distinct"] >= 0.9


@pytest.mark.slow
def test_many_steps_clearly_beat_one_step(trained):
    _, many, one, _ = trained
    pairs = SAMPLES * (LENGTH - 1)
    se = math.sqrt((many["invalid"] * (1 - many["invalid"]) + one["invalid"] * (1 - one["invalid"])) / pairs)
    assert one["invalid"] - many["invalid"] > 10 * se
