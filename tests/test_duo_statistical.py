"""Statistical test of DUO on the Markov language of tests/markov.py, trained for about a CPU minute.

Budget (conftest ``markov_discrete``): 1,000 AdamW steps of batch 128 (lr 2e-3) on the FLM tests' 2-block, width-64
DiT, the first half with the Gaussian-relaxation curriculum (DUO's default share), the rest on the NELBO with discrete
inputs; EMA weights.
Samples: 1,000 sequences of 16 symbols at 64 steps and at 1 step (greedy tail). NELBO: 48 held-out blocks, 16
stratified draws each.

Tolerances, fixed before measuring and stated here rather than tuned: sampling error as in test_statistical (4
standard errors of the +1 share); a network this small, trained this briefly, may be off by 0.05 beyond it, and at
most 10% of adjacent pairs may be invalid (the data has none; DUO's allowance is twice FLM's, a uniform-state model
resamples every position at every step). The NELBO must be at least the true entropy up to 4 standard errors and at
most 0.3 nats per token above it. One-step samples must be clearly worse: their invalid share must exceed the
64-step one by more than 10 standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MARKOV_K, MARKOV_LENGTH
from known_warnings import TORCH_FORWARD_AD_JIT
from markov import single_thread

from flowlm.methods.duo import duo_nelbo, duo_sample

pytestmark = [pytest.mark.slow, TORCH_FORWARD_AD_JIT]

SAMPLES, BLOCKS = 1000, 48


@pytest.fixture(scope="module")
def duo(markov_discrete):
    chain, nets = markov_discrete
    model = nets["duo"]
    with single_thread():
        many = duo_sample(model, SAMPLES, MARKOV_LENGTH, MARKOV_K, 64, torch.Generator().manual_seed(1))
        one = duo_sample(model, SAMPLES, MARKOV_LENGTH, MARKOV_K, 1, torch.Generator().manual_seed(1))
        blocks = chain.sample(BLOCKS, MARKOV_LENGTH, torch.Generator().manual_seed(123))
        nelbo = duo_nelbo(model, blocks, MARKOV_K, 16, torch.Generator().manual_seed(2))
    return chain, chain.statistics(many), chain.statistics(one), nelbo


def test_many_step_samples_match_the_language(duo):
    chain, many, one, _ = duo
    print(f"\nDUO 64 steps: {many}\n  1 step: {one}")
    assert many["invalid"] <= 0.10
    assert abs(many["step_share"] - chain.p_step) <= chain.binomial_tolerance(many["n_valid"]) + 0.05


def test_many_steps_clearly_beat_one_step(duo):
    _, many, one, _ = duo
    pairs = SAMPLES * (MARKOV_LENGTH - 1)
    se = math.sqrt((many["invalid"] * (1 - many["invalid"]) + one["invalid"] * (1 - one["invalid"])) / pairs)
    assert one["invalid"] - many["invalid"] > 10 * se


def test_nelbo_bounds_the_true_entropy_within_its_margin(duo):
    """A block's entropy is log K + (L − 1)·H(p); per token = / (L − 1), as flowlm nll counts."""
    chain, _, _, nelbo = duo
    entropy = math.log(MARKOV_K) + (MARKOV_LENGTH - 1) * -(
        chain.p_step * math.log(chain.p_step) + (1 - chain.p_step) * math.log(1 - chain.p_step)
    )
    per_block = nelbo.mean(1)
    mean, se = per_block.mean().item(), per_block.std().item() / math.sqrt(len(per_block))
    tokens = MARKOV_LENGTH - 1
    print(f"\nDUO NELBO {mean / tokens:.4f} ± {se / tokens:.4f} nats/token, truth {entropy / tokens:.4f}")
    assert mean >= entropy - 4 * se
    assert mean - entropy <= 0.3 * tokens + 4 * se
