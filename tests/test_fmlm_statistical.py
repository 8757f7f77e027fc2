"""Statistical test of FMLM (PSD distillation, SPEC §3) on a known language (tests/markov.py).

Budget. Teacher: the FLM of tests/test_statistical.py with the same settings (2-block, width-64 DiT,
1,500 AdamW steps of batch 128 at lr 2e-3, EMA 0.99). Student: :func:`init_student` of the teacher's
EMA weights, then 1,000 PSD steps of batch 128 (default split: half diagonal, 1/64 boundary; AdamW lr
1e-3, betas (0.9, 0.95), grad clip 1, EMA 0.99). About 2 minutes on 2 idle cores (teacher ~50 s, PSD
~55 s, sampling ~12 s). Samples: 1,000 sequences of 16 symbols per sampler, from the EMA weights.

Tolerances, fixed before looking at results. Sampling error is derived from the sample size, counting
the 15,000 adjacent pairs of a sampler as independent (as tests/test_statistical.py does): the share of
invalid pairs has standard error sqrt(p(1-p)/15000) and the +1 share among n valid moves
sqrt(p(1-p)/n); the first symbol of each sample is an independent draw, checked with a chi-square test
at level 0.001. On top of that, two allowances for a small network distilled briefly:

* one step: the 1-step FMLM must beat the 1-step teacher FLM on the invalid share by more than 10
  standard errors (the paper's claim in miniature: the flow map makes one step usable), and its first
  symbol must be uniform (chi-square);
* few steps: with 4 steps and churn γ = 1 (the paper's OWT setting) the invalid share may exceed the
  128-step teacher's by at most 0.05, and the +1 share may be off by 4 standard errors + 0.03 (the
  allowance of the FLM test); deterministic (γ = 0) sampling must improve with steps: invalid share
  1 step > 2 steps > 4 steps, each by more than 4 standard errors.
"""

import math
import time

import pytest
import torch
from conftest import MARKOV_K as K
from conftest import MARKOV_LENGTH as LENGTH
from conftest import MARKOV_PSD_STEPS as PSD_STEPS
from conftest import MARKOV_TEACHER_STEPS as TEACHER_STEPS
from markov import single_thread

from flowlm.methods.flm import flm_sample
from flowlm.methods.fmlm import fmlm_sample

SAMPLES = 1000
CHI2_7DOF_P001 = 24.32  # upper 0.1% point of the chi-square distribution with K - 1 = 7 degrees of freedom
PAIRS = SAMPLES * (LENGTH - 1)


@pytest.fixture(scope="module")
def results(markov_flm, markov_fmlm):
    with single_thread():
        return sample_teacher_and_student(*markov_flm, *markov_fmlm)


def sample_teacher_and_student(chain, teacher, teacher_seconds, student, psd_seconds):
    """Sample the teacher and the student of conftest's ``markov_fmlm`` (distilled once per session, also sampled
    by tests/test_conditioning_statistical.py)."""
    start = time.perf_counter()

    def seed():
        return torch.Generator().manual_seed(1)

    samples = {}
    for steps in (1, 128):
        samples[f"FLM {steps} steps"] = flm_sample(teacher, SAMPLES, LENGTH, K, steps, generator=seed())
    for steps, gamma in [(1, 0.0), (2, 0.0), (4, 0.0), (2, 1.0), (4, 1.0)]:
        samples[f"FMLM {steps} steps γ={gamma:g}"] = fmlm_sample(
            student, SAMPLES, LENGTH, K, steps, gamma=gamma, generator=seed()
        )
    stats = {name: chain.statistics(tokens) for name, tokens in samples.items()}
    total = time.perf_counter() - start + teacher_seconds + psd_seconds
    print(
        f"\nbudget: teacher {TEACHER_STEPS} steps {teacher_seconds:.0f} s, PSD {PSD_STEPS} steps {psd_seconds:.0f} s, "
        f"total with sampling {total:.0f} s"
    )
    for name, s in stats.items():
        chi2 = first_symbol_chi2(samples[name])
        print(
            f"{name:>20}: invalid {s['invalid']:.4f}  step_share {s['step_share']:.4f}  "
            f"unigram_tv {s['unigram_tv']:.4f}  distinct {s['distinct']:.3f}  first-symbol chi2 {chi2:.1f}"
        )
    return chain, stats, samples


def first_symbol_chi2(tokens: torch.Tensor) -> float:
    counts = torch.bincount(tokens[:, 0], minlength=K).float()
    expected = tokens.shape[0] / K
    return ((counts - expected) ** 2 / expected).sum().item()


def invalid_se(*shares: float) -> float:
    """Standard error of a difference of invalid shares (or of one share), each over PAIRS pairs."""
    return math.sqrt(sum(p * (1 - p) for p in shares) / PAIRS)


@pytest.mark.slow
def test_one_step_flow_map_beats_one_step_flm(results):
    _, stats, samples = results
    flm, fmlm = stats["FLM 1 steps"]["invalid"], stats["FMLM 1 steps γ=0"]["invalid"]
    assert flm - fmlm > 10 * invalid_se(flm, fmlm)
    assert first_symbol_chi2(samples["FMLM 1 steps γ=0"]) <= CHI2_7DOF_P001


@pytest.mark.slow
def test_few_step_flow_map_comes_close_to_many_step_flm(results):
    chain, stats, samples = results
    reference, few = stats["FLM 128 steps"], stats["FMLM 4 steps γ=1"]
    assert few["invalid"] <= reference["invalid"] + 0.05
    assert abs(few["step_share"] - chain.p_step) <= chain.binomial_tolerance(few["n_valid"]) + 0.03
    assert first_symbol_chi2(samples["FMLM 4 steps γ=1"]) <= CHI2_7DOF_P001
    assert few["distinct"] >= 0.9


@pytest.mark.slow
def test_deterministic_flow_map_improves_with_steps(results):
    _, stats, _ = results
    shares = [stats[f"FMLM {n} steps γ=0"]["invalid"] for n in (1, 2, 4)]
    for more, fewer in zip(shares[1:], shares[:-1], strict=True):
        assert fewer - more > 4 * invalid_se(fewer, more)
