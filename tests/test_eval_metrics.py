"""Tests of flowlm.eval.metrics: closed-form cases for entropy, distinct-n, self-BLEU, the EOS rule and
the token-weighted Gen PPL aggregation. Pure Python, milliseconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowlm.errors import ConfigError, DataError
from flowlm.eval.metrics import (
    GenPPLResult,
    decode_for_judge,
    distinct_n,
    gen_ppl_from_nll,
    mean_unigram_entropy,
    self_bleu,
    split_sample,
    strip_leading_bos,
    truncate_at_eos,
    unigram_entropy,
)

# --------------------------------------------------------------------------------------------- entropy


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([1, 1, 1, 1], 0.0),
        ([7], 0.0),
        ([1, 2, 1, 2], math.log(2)),
        ([1, 2, 3, 4], math.log(4)),
        ([5, 5, 5, 9], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))),
    ],
)
def test_unigram_entropy_closed_form(ids, expected):
    assert unigram_entropy(ids) == pytest.approx(expected, abs=1e-12)


def test_unigram_entropy_accepts_arrays_and_tensors():
    assert unigram_entropy(np.array([1, 2, 3, 4])) == pytest.approx(math.log(4))
    assert unigram_entropy(torch.tensor([1, 2, 1, 2])) == pytest.approx(math.log(2))


def test_unigram_entropy_is_order_invariant_and_id_invariant():
    assert unigram_entropy([3, 1, 2, 1]) == pytest.approx(unigram_entropy([1, 1, 2, 3]))
    assert unigram_entropy([100, 200, 100]) == pytest.approx(unigram_entropy([0, 1, 0]))


def test_unigram_entropy_empty_raises():
    with pytest.raises(DataError, match="empty"):
        unigram_entropy([])


def test_mean_unigram_entropy_is_per_sample_mean():
    samples = [[1, 1, 1, 1], [1, 2, 1, 2], [1, 2, 3, 4]]
    assert mean_unigram_entropy(samples) == pytest.approx((0 + math.log(2) + math.log(4)) / 3)
    # per-sample, not the entropy of the pooled ids (which would be higher here)
    pooled = unigram_entropy([t for s in samples for t in s])
    assert mean_unigram_entropy(samples) < pooled
    assert mean_unigram_entropy(torch.tensor(samples)) == pytest.approx(mean_unigram_entropy(samples))


def test_mean_unigram_entropy_input_errors():
    with pytest.raises(DataError, match="at least one sample"):
        mean_unigram_entropy([])
    with pytest.raises(DataError, match="flat list"):
        mean_unigram_entropy([1, 2, 3])


# ------------------------------------------------------------------------------------------ diversity


def test_distinct_n_hand_cases():
    assert distinct_n([[1, 2, 3, 4]], 1) == 1.0
    assert distinct_n([[1, 1, 1, 1]], 1) == pytest.approx(1 / 4)
    # bigrams: (1,2) (2,1) (1,2) | (1,2) (2,3) -> distinct {(1,2),(2,1),(2,3)} = 3 of 5
    assert distinct_n([[1, 2, 1, 2], [1, 2, 3]], 2) == pytest.approx(3 / 5)
    # n-grams never cross sample boundaries; too-short samples add none
    assert distinct_n([[1, 2], [3], [2, 1]], 2) == pytest.approx(2 / 2)
    # identical samples pooled across the set
    assert distinct_n([[4, 5, 6], [4, 5, 6]], 3) == pytest.approx(1 / 2)
    assert distinct_n(np.array([[1, 2, 1, 2], [1, 2, 1, 2]]), 2) == pytest.approx(2 / 6)


def test_distinct_n_errors():
    with pytest.raises(ConfigError, match="n must be"):
        distinct_n([[1, 2]], 0)
    with pytest.raises(DataError, match="no sample has 5"):
        distinct_n([[1, 2], [3]], 5)


def test_self_bleu_hand_cases():
    # identical samples: every precision 1, BP 1
    assert self_bleu([[1, 2, 3, 4, 5]] * 3) == pytest.approx(1.0)
    # [1,2,3,4] vs [1,2,3,5], max_n=2: p1 = 3/4, p2 = 2/3, BP = 1 -> sqrt(1/2), symmetric
    assert self_bleu([[1, 2, 3, 4], [1, 2, 3, 5]], max_n=2) == pytest.approx(math.sqrt(0.5))
    # clipping: hyp [7,7,7,7] vs ref [7,8,9,10]: p1 = 1/4; reverse p1 = 1/4; max_n=1
    assert self_bleu([[7, 7, 7, 7], [7, 8, 9, 10]], max_n=1) == pytest.approx(0.25)
    # smoothing: no match at all -> epsilon / count
    assert self_bleu([[1, 2], [3, 4]], max_n=1) == pytest.approx(0.1 / 2)
    # brevity penalty: hyp [1,2] vs ref [1,2,3,4] (r=4, c=2): exp(1 - 2) * 1; reverse: p1 = 2/4, BP = 1
    expected = (math.exp(1 - 4 / 2) * 1.0 + 0.5) / 2
    assert self_bleu([[1, 2], [1, 2, 3, 4]], max_n=1) == pytest.approx(expected)


def test_self_bleu_excludes_self_and_clips_per_reference():
    # sample 0 must not match itself: its only partner is disjoint
    assert self_bleu([[1, 2, 3], [4, 5, 6]], max_n=1) == pytest.approx(0.1 / 3)
    # clipping uses the single best reference: hyp [1,1] vs refs [1,2] and [1,3] -> p1 = 1/2 (not 2/2)
    samples = [[1, 1], [1, 2], [1, 3]]
    s0 = 0.5
    s1 = 0.5  # [1,2] vs [1,1],[1,3]: "1" matches, "2" does not
    s2 = 0.5
    assert self_bleu(samples, max_n=1) == pytest.approx((s0 + s1 + s2) / 3)


def test_self_bleu_errors():
    with pytest.raises(DataError, match="at least 2"):
        self_bleu([[1, 2, 3]])
    with pytest.raises(ConfigError):
        self_bleu([[1, 2], [1, 2]], max_n=0)


# ------------------------------------------------------------------------------------------- EOS rule

EOS, BOS = 9, 8


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([1, 2, EOS, 3, 4], [1, 2, EOS]),  # first EOS kept, the rest dropped
        ([1, 2, EOS, 3, EOS], [1, 2, EOS]),  # only the first EOS matters
        ([1, 2, 3], [1, 2, 3]),  # no EOS: unchanged
        ([EOS, 1, 2], [EOS]),
        ([], []),
        ([1, 2, 3, EOS], [1, 2, 3, EOS]),
    ],
)
def test_truncate_at_eos(ids, expected):
    assert truncate_at_eos(ids, EOS) == expected
    assert truncate_at_eos(torch.tensor(ids, dtype=torch.long), EOS) == expected


def test_strip_leading_bos_only_position_zero():
    assert strip_leading_bos([BOS, 1, BOS, 2], BOS) == [1, BOS, 2]
    assert strip_leading_bos([1, 2], BOS) == [1, 2]
    assert strip_leading_bos([BOS, BOS], BOS) == [BOS]
    assert strip_leading_bos([BOS, 1], None) == [BOS, 1]


@pytest.mark.parametrize(
    ("ids", "body", "ended"),
    [
        ([BOS, 1, 2, EOS, 3, EOS], [1, 2], True),
        ([BOS, 1, 2], [1, 2], False),
        ([BOS, EOS, 4], [], True),
        ([1, 2, EOS], [1, 2], True),  # no leading BOS: nothing stripped
        ([BOS, 1, BOS, 2, EOS], [1, BOS, 2], True),  # a later BOS stays (decode skips it)
    ],
)
def test_split_sample(ids, body, ended):
    assert split_sample(ids, bos_id=BOS, eos_id=EOS) == (body, ended)


def test_split_sample_bos_equal_eos_like_gpt2():
    eot = 50256  # GPT-2: BOS == EOS; position 0 is read as BOS, not as an immediate end
    assert split_sample([eot, 5, 6, eot, 7], bos_id=eot, eos_id=eot) == ([5, 6], True)
    assert split_sample([eot, 5, 6], bos_id=eot, eos_id=eot) == ([5, 6], False)


class _FakeTokenizer:
    bos_id, eos_id = BOS, EOS

    def decode(self, ids, skip_special=True):
        return " ".join(f"w{i}" for i in ids if not (skip_special and i in (BOS, EOS)))


def test_decode_for_judge():
    samples = torch.tensor([[BOS, 1, 2, EOS, 3], [BOS, 4, 5, 6, 7], [BOS, EOS, 1, 1, 1]])
    texts, ended = decode_for_judge(samples, _FakeTokenizer())
    assert texts == ["w1 w2", "w4 w5 w6 w7", ""]
    assert ended == [True, False, True]


# -------------------------------------------------------------------------------------------- Gen PPL


def test_gen_ppl_from_nll():
    assert gen_ppl_from_nll(0.0, 5) == 1.0
    assert gen_ppl_from_nll(10 * math.log(50), 10) == pytest.approx(50.0)
    assert gen_ppl_from_nll(1e6, 1) == math.inf
    with pytest.raises(DataError, match="at least one scored token"):
        gen_ppl_from_nll(1.0, 0)
    with pytest.raises(DataError, match="NaN"):
        gen_ppl_from_nll(float("nan"), 3)


def test_gen_ppl_is_token_weighted_not_per_sample():
    # sample A: 1 token, NLL 4.0; sample B: 9 tokens, NLL 0.5 each (4.5 in total)
    r = GenPPLResult.from_samples([4.0, 4.5], [1, 9], judge="j", definition="d")
    token_weighted = math.exp((4.0 + 4.5) / 10)
    per_sample_ppl_mean = (math.exp(4.0) + math.exp(0.5)) / 2
    per_sample_nll_mean = math.exp((4.0 + 0.5) / 2)
    assert r.gen_ppl == pytest.approx(token_weighted, rel=1e-12)
    assert abs(r.gen_ppl - per_sample_ppl_mean) > 1.0
    assert abs(r.gen_ppl - per_sample_nll_mean) > 1.0
    assert r.mean_nll == pytest.approx(0.85)
    assert (r.total_tokens, r.num_samples) == (10, 2)


def test_gen_ppl_no_dropped_samples():
    nll = [float(i) for i in range(7)]
    tokens = [1, 2, 3, 0, 5, 6, 7]  # an empty sample counts in num_samples, adds no token
    r = GenPPLResult.from_samples(nll[:3] + [0.0] + nll[4:], tokens, judge="j", definition="d")
    assert r.num_samples == 7
    assert r.total_tokens == sum(tokens)
    assert r.total_nll == pytest.approx(sum(nll) - 3.0)
    assert len(r.sample_nll) == len(r.sample_tokens) == 7


def test_gen_ppl_float64_accumulation():
    # many tiny NLLs next to a large one: a float32 running sum would lose them
    nll = [1e8] + [1e-3] * 100_000
    r = GenPPLResult.from_samples(nll, [1] * len(nll), judge="j", definition="d")
    assert r.total_nll == pytest.approx(1e8 + 100.0, rel=1e-15)


def test_gen_ppl_result_errors_and_dict():
    with pytest.raises(DataError, match="one of each"):
        GenPPLResult.from_samples([1.0], [1, 2], judge="j", definition="d")
    with pytest.raises(DataError, match="at least one scored token"):
        GenPPLResult.from_samples([0.0, 0.0], [0, 0], judge="j", definition="d")
    r = GenPPLResult.from_samples([2.0, 4.0], [2, 2], judge="judge-x [abc]", definition="def", judge_fingerprint="abc")
    d = r.to_dict()
    assert d["judge"] == "judge-x [abc]" and d["definition"] == "def" and d["num_samples"] == 2
    assert "sample_nll" not in d
    assert r.to_dict(per_sample=True)["sample_tokens"] == [2, 2]
    assert "judge-x" in str(r) and "2 samples" in str(r)


def _result(nll, tokens) -> GenPPLResult:
    return GenPPLResult.from_samples(nll, tokens, judge="j", definition="d")


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    tokens = rng.integers(20, 60, size=64)
    nll = tokens * rng.normal(5.0, 0.8, size=64)
    r = _result(nll, tokens)
    lo, hi = r.bootstrap_interval()
    assert lo < r.gen_ppl < hi
    assert r.bootstrap_interval() == (lo, hi)  # fixed seed: the same numbers every call
    assert r.bootstrap_interval(seed=1) != (lo, hi)
    assert r.bootstrap_interval(level=0.5)[0] > lo and r.bootstrap_interval(level=0.5)[1] < hi
    same = _result([10.0] * 8, [4] * 8)  # identical samples: nothing to resample
    assert same.bootstrap_interval() == pytest.approx((same.gen_ppl, same.gen_ppl), rel=1e-12)
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        r.bootstrap_interval(level=1.0)


def test_bootstrap_interval_matches_the_delta_method_over_samples():
    """For n = 400 samples the bootstrap of the ratio sum(nll) / sum(tokens) is close to normal: its 95% half-width
    in log space must match the delta-method one, 1.96 * sd(nll_i - R * tokens_i) / (sqrt(n) * mean(tokens)).
    Resampling tokens instead of samples (or ignoring the per-sample mean shifts) gives a much narrower interval.
    Tolerance 12%: the Monte-Carlo error of 2.5% / 97.5% quantiles from 2,000 resamples is ~5%, the
    skew of the ratio at n = 400 a few % more."""
    rng = np.random.default_rng(2)
    n = 400
    tokens = rng.integers(10, 80, size=n).astype(float)
    per_token = rng.normal(4.0, 1.0, size=n)  # samples differ in quality: correlated tokens within a sample
    nll = tokens * per_token
    r = _result(nll, tokens)
    ratio = nll.sum() / tokens.sum()
    delta = 1.96 * np.std(nll - ratio * tokens, ddof=1) / (math.sqrt(n) * tokens.mean())
    lo, hi = r.bootstrap_interval()
    half = (math.log(hi) - math.log(lo)) / 2
    assert half == pytest.approx(delta, rel=0.12)
    token_level = 1.96 * 1.0 / math.sqrt(tokens.sum())  # what treating tokens as independent would give
    assert half > 3 * token_level
