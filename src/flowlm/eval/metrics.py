"""Sample-quality metrics: unigram entropy, distinct-n, self-BLEU, the EOS rule and Gen PPL aggregation.

Pure functions over token ids (numpy / the standard library only; torch tensors are accepted as input).
Every function states its exact definition, because generative perplexity is only comparable between
papers when the judge, the re-tokenization, the EOS rule, the aggregation and the precision are the same.

The EOS rule (SPEC §6) and what is done with BOS, for one generated block of flowlm ids:

1. a BOS at position 0 is removed (wrapped packing puts BOS at the start of every block, so a sample
   almost always begins with one; it carries no text). Only position 0 is looked at, and it is looked at
   *before* the EOS rule, so for tokenizers whose BOS and EOS are the same id (GPT-2: both
   ``<|endoftext|>``) the leading token counts as BOS, not as an immediate end;
2. the first EOS ends the sample: every id after it is dropped ("masked"); the EOS itself is kept and
   *counted*: the judge scores its own end-of-text token in its place (see
   :meth:`flowlm.eval.judges.CausalLMJudge.score_texts`, argument ``ended``);
3. the ids between are decoded to text with the flowlm tokenizer, special tokens skipped, and that text
   is what the judge re-tokenizes.

Unigram entropy, in the convention of the paper and of MDLM / DUO, is computed on the *whole* generated
block (BOS, EOS and everything after the first EOS included), not on the truncated text: pass the raw
sample ids to :func:`mean_unigram_entropy`.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from flowlm.errors import ConfigError, DataError

__all__ = [
    "GEN_PPL_AGGREGATION",
    "GenPPLResult",
    "decode_for_judge",
    "distinct_n",
    "gen_ppl_from_nll",
    "mean_unigram_entropy",
    "self_bleu",
    "split_sample",
    "strip_leading_bos",
    "truncate_at_eos",
    "unigram_entropy",
]

GEN_PPL_AGGREGATION = (
    "Gen PPL = exp(sum of NLL over all scored judge tokens of all samples / number of those tokens): "
    "token-weighted over the whole sample set (not a mean of per-sample perplexities), NLL in nats "
    "accumulated in float64, no sample dropped"
)


def _ids(ids: Any) -> list[int]:
    """One sample as a list of Python ints (accepts lists, tuples, numpy arrays, 1-D torch tensors)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    out = [int(i) for i in ids]
    return out


def _samples(samples: Any) -> list[list[int]]:
    """Many samples as lists of ints (accepts a list of sequences, a 2-D array or a 2-D tensor)."""
    if hasattr(samples, "tolist"):
        samples = samples.tolist()
    if isinstance(samples, (str, bytes)):
        raise DataError("samples must be sequences of token ids, got a string: tokenize the text first")
    out = []
    for s in samples:
        if isinstance(s, (int, np.integer)):
            raise DataError(
                "samples must be a list of id sequences (or a 2-D array), got a flat list of ids: "
                "wrap a single sample as [ids]"
            )
        out.append(_ids(s))
    return out


# --------------------------------------------------------------------------------------------- entropy


def unigram_entropy(ids: Sequence[int]) -> float:
    """Entropy, in nats, of the empirical token distribution of one sample.

    ``H = -sum_v p_v ln p_v`` with ``p_v = count(v) / len(ids)`` over the distinct ids ``v`` of the sample.
    Examples: ``[1, 1, 1, 1]`` -> 0; ``[1, 2, 1, 2]`` -> ln 2; ``[1, 2, 3, 4]`` -> ln 4. The maximum is
    ``ln(len(ids))``, so it is only comparable between samples of the same length.

    Args:
        ids: shape ``(L,)``, ``L >= 1`` token ids (list, numpy array or 1-D tensor).
    Returns:
        the entropy as a Python float (computed in float64).
    Raises:
        DataError: ``ids`` is empty.
    """
    arr = np.asarray(_ids(ids), dtype=np.int64)
    if arr.size == 0:
        raise DataError("unigram_entropy of an empty sample is undefined: pass the full generated block of ids")
    _, counts = np.unique(arr, return_counts=True)
    p = counts.astype(np.float64) / float(arr.size)
    h = float(-(p * np.log(p)).sum())
    return max(h, 0.0)  # -0.0 for a single distinct id


def mean_unigram_entropy(samples: Iterable[Sequence[int]]) -> float:
    """Mean over samples of :func:`unigram_entropy` (nats): SPEC §6's "mean per-sample unigram entropy".

    Each sample's entropy is computed on its own ids, then the per-sample values are averaged with equal
    weight. Pass the raw generated blocks (not EOS-truncated), as the paper does.

    Args:
        samples: ``N >= 1`` sequences of ids, or an array / tensor of shape ``(N, L)``.
    """
    rows = _samples(samples)
    if not rows:
        raise DataError("mean_unigram_entropy needs at least one sample, got none: generate samples first")
    return math.fsum(unigram_entropy(r) for r in rows) / len(rows)


# ------------------------------------------------------------------------------------------ diversity


def _check_n(n: int, label: str = "n") -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ConfigError(f"{label} must be a whole number >= 1, got {n!r}: use e.g. {label}=2")
    return int(n)


def _ngrams(ids: list[int], n: int) -> Iterable[tuple[int, ...]]:
    return (tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))


def distinct_n(samples: Iterable[Sequence[int]], n: int) -> float:
    """Distinct-n over a whole sample set: (number of distinct n-grams) / (total number of n-grams).

    The n-grams of every sample are pooled (a sample of length ``L`` has ``max(L - n + 1, 0)`` n-grams,
    n-grams never cross sample boundaries); an n-gram repeated within a sample or across samples counts
    once in the numerator and every time in the denominator. 1.0 means no n-gram repeats anywhere.

    Args:
        samples: ``N`` sequences of ids, or an array / tensor of shape ``(N, L)``.
        n: the n-gram order, ``>= 1``.
    Raises:
        DataError: no sample has ``n`` or more ids (there is no n-gram to count).
    """
    n = _check_n(n)
    seen: set[tuple[int, ...]] = set()
    total = 0
    for ids in _samples(samples):
        grams = list(_ngrams(ids, n))
        total += len(grams)
        seen.update(grams)
    if total == 0:
        raise DataError(f"distinct_n: no sample has {n} or more ids, so there is no {n}-gram: use a smaller n")
    return len(seen) / total


def self_bleu(samples: Iterable[Sequence[int]], max_n: int = 4, smoothing_epsilon: float = 0.1) -> float:
    """Self-BLEU of a sample set (lower = more diverse), on token ids.

    For each sample ``i`` (the hypothesis) with all *other* samples as references, BLEU is
    ``BP * exp(mean_{k=1..max_n} ln p_k)`` where ``p_k`` is the modified (clipped) k-gram precision: each
    k-gram of the hypothesis counts at most as often as it occurs in the single reference where it is most
    frequent, divided by the number of k-grams of the hypothesis. A zero numerator is replaced by
    ``smoothing_epsilon`` (NLTK's ``SmoothingFunction().method1``); a hypothesis shorter than ``k`` has
    ``p_k = 0`` and BLEU 0. ``BP = 1`` if the hypothesis is longer than the reference length closest to its
    own (ties: the shorter reference), else ``exp(1 - r / c)``. Self-BLEU is the mean over the samples.
    Counting is linear in the total number of n-grams (largest and second-largest count per n-gram), so
    thousands of samples are fine.

    Args:
        samples: ``N >= 2`` sequences of ids, or an array / tensor of shape ``(N, L)``.
        max_n: the highest n-gram order (4 is BLEU-4).
        smoothing_epsilon: the numerator used for a precision with no match.
    """
    max_n = _check_n(max_n, "max_n")
    rows = _samples(samples)
    if len(rows) < 2:
        raise DataError(f"self_bleu needs at least 2 samples (each is compared with the others), got {len(rows)}")
    if not smoothing_epsilon > 0:
        raise ConfigError(f"smoothing_epsilon must be > 0, got {smoothing_epsilon!r}: use the default 0.1")
    # per n-gram: the two largest per-sample counts and the sample holding the largest
    top: dict[tuple[int, ...], list[int]] = {}  # gram -> [best_count, best_sample, second_count]
    counts_per_sample: list[list[Counter]] = []
    for i, ids in enumerate(rows):
        per_order = []
        for k in range(1, max_n + 1):
            c = Counter(_ngrams(ids, k))
            per_order.append(c)
            for g, m in c.items():
                t = top.get(g)
                if t is None:
                    top[g] = [m, i, 0]
                elif m > t[0]:
                    top[g] = [m, i, t[0]]
                elif m > t[2]:
                    t[2] = m
        counts_per_sample.append(per_order)
    lengths = sorted(len(r) for r in rows)
    scores = []
    for i, ids in enumerate(rows):
        c_len = len(ids)
        log_p = 0.0
        zero = False
        for k in range(1, max_n + 1):
            denom = c_len - k + 1
            if denom <= 0:
                zero = True
                break
            matched = 0
            for g, m in counts_per_sample[i][k - 1].items():
                best, holder, second = top[g]
                ref_max = second if holder == i else best
                matched += min(m, ref_max)
            log_p += math.log((matched if matched > 0 else smoothing_epsilon) / denom)
        if zero:
            scores.append(0.0)
            continue
        r = _closest_other_length(lengths, c_len)
        bp = 1.0 if c_len > r else math.exp(1.0 - r / c_len)
        scores.append(bp * math.exp(log_p / max_n))
    return math.fsum(scores) / len(scores)


def _closest_other_length(sorted_lengths: list[int], own: int) -> int:
    """The length closest to ``own`` in ``sorted_lengths`` once one copy of ``own`` is removed (ties: shorter)."""
    lo = bisect_left(sorted_lengths, own)
    hi = bisect_right(sorted_lengths, own)
    if hi - lo >= 2:  # another sample has exactly this length
        return own
    below = sorted_lengths[lo - 1] if lo > 0 else None
    above = sorted_lengths[hi] if hi < len(sorted_lengths) else None
    if below is None:
        return above
    if above is None or own - below <= above - own:
        return below
    return above


# ------------------------------------------------------------------------------------------- EOS rule


def truncate_at_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """SPEC §6's EOS rule on one sample: keep everything up to and including the first ``eos_id``.

    Ids after the first EOS are dropped; the first EOS itself stays (it is counted). Without any EOS the
    sample is returned unchanged. Nothing is done about BOS here: call :func:`strip_leading_bos` first
    (see the module docstring for why the order matters when BOS == EOS).

    Args:
        ids: shape ``(L,)`` token ids. eos_id: the flowlm tokenizer's EOS id.
    Returns:
        a new list of ``k + 1`` ids where ``k`` is the index of the first EOS, or all ``L`` ids.
    """
    out = _ids(ids)
    eos_id = int(eos_id)
    for k, t in enumerate(out):
        if t == eos_id:
            return out[: k + 1]
    return out


def strip_leading_bos(ids: Sequence[int], bos_id: int | None) -> list[int]:
    """``ids`` without its first element if that is ``bos_id`` (only position 0 is looked at)."""
    out = _ids(ids)
    if bos_id is not None and out and out[0] == int(bos_id):
        return out[1:]
    return out


def split_sample(ids: Sequence[int], *, bos_id: int | None, eos_id: int) -> tuple[list[int], bool]:
    """One generated block -> (the ids to decode, whether it ended with an EOS).

    Applies the rule of the module docstring: strip a BOS at position 0, truncate at the first EOS, then
    remove that EOS from the ids (the judge scores its own end-of-text token in its place when ``ended``).
    E.g. with BOS = 8, EOS = 9: ``[8, 1, 2, 9, 3, 9]`` -> ``([1, 2], True)``; ``[8, 1, 2]`` ->
    ``([1, 2], False)``; ``[8, 9, 4]`` -> ``([], True)``.
    """
    body = truncate_at_eos(strip_leading_bos(ids, bos_id), eos_id)
    ended = bool(body) and body[-1] == int(eos_id)
    return (body[:-1] if ended else body), ended


class _Decoder(Protocol):
    bos_id: int | None
    eos_id: int

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str: ...


def decode_for_judge(samples: Iterable[Sequence[int]], tokenizer: _Decoder) -> tuple[list[str], list[bool]]:
    """Generated blocks -> the texts a judge scores and their ``ended`` flags (SPEC §6 EOS rule).

    Each sample goes through :func:`split_sample` with the tokenizer's ``bos_id`` / ``eos_id``, then
    ``tokenizer.decode(ids, skip_special=True)`` (so PAD, MASK or a stray BOS inside the text vanish).
    ``tokenizer`` is a :class:`flowlm.data.Tokenizer` (anything with ``decode``, ``bos_id``, ``eos_id``).

    Args:
        samples: ``N`` sequences of ids, or an array / tensor of shape ``(N, L)``.
    Returns:
        ``(texts, ended)``, both of length ``N``, in the order of ``samples``.
    """
    texts, ended = [], []
    for ids in _samples(samples):
        body, end = split_sample(ids, bos_id=getattr(tokenizer, "bos_id", None), eos_id=tokenizer.eos_id)
        texts.append(tokenizer.decode(body, skip_special=True))
        ended.append(end)
    return texts, ended


# -------------------------------------------------------------------------------------------- Gen PPL


def gen_ppl_from_nll(total_nll: float, total_tokens: int) -> float:
    """``exp(total_nll / total_tokens)``: the perplexity of a token-weighted mean NLL (nats).

    Args:
        total_nll: the sum of the NLL, in nats, of every scored judge token of every sample.
        total_tokens: how many tokens that sum covers (``>= 1``).
    Returns:
        the perplexity; ``inf`` if the mean NLL is too large for a float.
    """
    if int(total_tokens) != total_tokens or total_tokens < 1:
        raise DataError(
            f"Gen PPL needs at least one scored token, got total_tokens={total_tokens!r}: "
            "the samples are all empty; check the sampler output"
        )
    mean = float(total_nll) / int(total_tokens)
    if math.isnan(mean):
        raise DataError("the judge's NLL is NaN: the judge model or its inputs are broken; check the judge")
    try:
        return math.exp(mean)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class GenPPLResult:
    """A generative-perplexity measurement with everything needed to reproduce or compare it.

    Attributes:
        gen_ppl: ``exp(total_nll / total_tokens)``.
        total_nll: the float64 sum of the NLL (nats) of every scored judge token of every sample.
        total_tokens: the number of scored judge tokens (over all samples).
        num_samples: the number of samples scored (every one given, empty ones included).
        judge: the judge's name or path and its fingerprint, e.g. ``"gpt2-large [3f2a...]"``.
        definition: the full rule (re-tokenization, prefix, EOS, windows, aggregation, precision).
        judge_fingerprint: the fingerprint alone (see :attr:`CausalLMJudge.fingerprint`).
        sample_nll, sample_tokens: per-sample sums / counts, in sample order (for bootstraps and
            per-sample analysis; their sums are ``total_nll`` / ``total_tokens``).
    """

    gen_ppl: float
    total_nll: float
    total_tokens: int
    num_samples: int
    judge: str
    definition: str
    judge_fingerprint: str = ""
    sample_nll: tuple[float, ...] = field(default=(), repr=False)
    sample_tokens: tuple[int, ...] = field(default=(), repr=False)

    @property
    def mean_nll(self) -> float:
        """The token-weighted mean NLL in nats, ``ln(gen_ppl)``."""
        return self.total_nll / self.total_tokens

    @classmethod
    def from_samples(
        cls,
        sample_nll: Sequence[float],
        sample_tokens: Sequence[int],
        *,
        judge: str,
        definition: str,
        judge_fingerprint: str = "",
    ) -> GenPPLResult:
        """Aggregate per-sample NLL sums and token counts, token-weighted (see :data:`GEN_PPL_AGGREGATION`).

        ``sample_nll[i]`` is the summed NLL of the ``sample_tokens[i]`` scored tokens of sample ``i``; a
        sample with 0 tokens adds nothing to either sum but still counts in ``num_samples``.
        """
        nll = tuple(float(x) for x in sample_nll)
        tokens = tuple(int(x) for x in sample_tokens)
        if len(nll) != len(tokens):
            raise DataError(
                f"{len(nll)} per-sample NLL sums but {len(tokens)} token counts: pass one of each per sample"
            )
        if any(t < 0 for t in tokens):
            raise DataError("a per-sample token count is negative: token counts must be >= 0")
        total_nll = math.fsum(nll)
        total_tokens = sum(tokens)
        return cls(
            gen_ppl=gen_ppl_from_nll(total_nll, total_tokens),
            total_nll=total_nll,
            total_tokens=total_tokens,
            num_samples=len(nll),
            judge=judge,
            definition=definition,
            judge_fingerprint=judge_fingerprint,
            sample_nll=nll,
            sample_tokens=tokens,
        )

    def bootstrap_interval(self, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """A percentile-bootstrap interval of Gen PPL over *samples*: ``resamples`` times, draw
        ``num_samples`` samples with replacement (a fixed-seed numpy generator) and recompute the
        token-weighted Gen PPL; returns the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.

        Samples, not tokens, are resampled because a sample's tokens are not independent. The interval says
        how much the number moves with another draw of the same number of samples from the same model (judge
        and model fixed); differences inside it are not evidence.

        Raises:
            DataError: no per-sample values (a result built without them) or no scored token at all.
        """
        if not self.sample_nll or self.total_tokens == 0:
            raise DataError("a bootstrap interval needs per-sample NLL sums and at least one scored token")
        if not 0 < level < 1:
            raise ConfigError(f"interval level {level!r}: use a number strictly between 0 and 1")
        nll = np.asarray(self.sample_nll, dtype=np.float64)
        tokens = np.asarray(self.sample_tokens, dtype=np.float64)
        picks = np.random.default_rng(seed).integers(0, len(nll), size=(resamples, len(nll)))
        with np.errstate(divide="ignore", invalid="ignore"):  # a draw of only empty samples has no tokens
            ppl = np.exp(nll[picks].sum(axis=1) / tokens[picks].sum(axis=1))
        ppl = ppl[np.isfinite(ppl)]
        lo, hi = np.quantile(ppl, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def to_dict(self, per_sample: bool = False) -> dict:
        """A JSON-ready dict; per-sample lists only when ``per_sample``."""
        d = asdict(self)
        d["sample_nll"], d["sample_tokens"] = list(self.sample_nll), list(self.sample_tokens)
        if not per_sample:
            del d["sample_nll"], d["sample_tokens"]
        return d

    def __str__(self) -> str:
        return (
            f"Gen PPL {self.gen_ppl:.3f} (mean NLL {self.mean_nll:.4f} nats over {self.total_tokens} tokens "
            f"of {self.num_samples} samples; judge {self.judge})"
        )
