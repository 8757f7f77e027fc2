"""A known synthetic language for statistical tests: a first-order Markov chain on K symbols.

From symbol i the chain moves to (i + 1) mod K with probability ``p_step`` and to (i + 3) mod K
otherwise; the first symbol is uniform. Its statistics are known in closed form: every valid
transition is one of those two moves, the +1 share among moves is ``p_step``, and the stationary
distribution is uniform.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

import torch

THREADS_VARIABLE = "FLOWLM_TEST_THREADS"


class MarkovChain:
    def __init__(self, k: int = 8, p_step: float = 0.7, jump: int = 3):
        self.k, self.p_step, self.jump = k, p_step, jump

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """n sequences [n, length] of symbols in [0, K)."""
        seq = torch.empty(n, length, dtype=torch.long)
        seq[:, 0] = torch.randint(0, self.k, (n,), generator=generator)
        for i in range(1, length):
            step = torch.rand(n, generator=generator) < self.p_step
            seq[:, i] = (seq[:, i - 1] + torch.where(step, 1, self.jump)) % self.k
        return seq

    def statistics(self, seq: torch.Tensor) -> dict[str, float]:
        """invalid: share of adjacent pairs that are not a chain move; step_share: +1 share among
        valid moves; unigram_tv: total variation of the symbol histogram from uniform;
        distinct: share of distinct sequences."""
        delta = (seq[:, 1:] - seq[:, :-1]) % self.k
        is_step, is_jump = delta == 1, delta == self.jump % self.k
        valid = is_step | is_jump
        hist = torch.bincount(seq.flatten(), minlength=self.k).float() / seq.numel()
        return {
            "invalid": 1.0 - valid.float().mean().item(),
            "step_share": (is_step.sum() / valid.sum().clamp(min=1)).item(),
            "n_valid": int(valid.sum()),
            "unigram_tv": 0.5 * (hist - 1.0 / self.k).abs().sum().item(),
            "distinct": len({tuple(r) for r in seq.tolist()}) / len(seq),
        }

    def binomial_tolerance(self, n: int, z: float = 4.0) -> float:
        """z standard errors of the +1 share estimated from n independent moves."""
        return z * math.sqrt(self.p_step * (1 - self.p_step) / max(n, 1))


def pinned_threads() -> int:
    """Intra-op threads for the tests that pin them: 1, unless FLOWLM_TEST_THREADS says otherwise (read when a
    test runs; CI's float-sensitive step reruns those tests with 2 threads, see tests/conftest.py)."""
    return int(os.environ.get(THREADS_VARIABLE, "1"))


@contextmanager
def single_thread():
    """Run tiny-tensor training on one intra-op thread: faster, and immune to the stalls two OpenMP
    threads suffer on a shared 2-core machine (measured under load: 1.8 s vs 0.04 s per step).
    FLOWLM_TEST_THREADS overrides the count (:func:`pinned_threads`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(pinned_threads())
    try:
        yield
    finally:
        torch.set_num_threads(n)
