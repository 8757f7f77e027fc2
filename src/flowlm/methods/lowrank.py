"""Where the methods' states live: the full ``[.., V]`` space (naive) or an exact ``k``-dimensional one.

Why this is exact
-----------------
A network never sees a state ``x`` [B, L, V] itself, only ``x @ W`` with ``W`` [V, d] its input matrix
(``vocab_embed.embedding``, SPEC §5). Every state the methods build is a linear combination of the
Gaussian noise ``x₀ ~ N(0, I_V)``, one-hot rows, probability vectors ``p`` (denoisers, flow-map outputs)
and raw outputs (the v1 network g), with scalar coefficients. So each network's view of a state is the
same linear combination of ``x₀ @ W``, ``W[y]`` and ``p @ W``, and only the noise term needs care.

Let ``M = [W_1 | ... | W_m]`` [V, k] stack the input matrices of the distinct networks that see the states
(``k = Σ d_n``: d for FLM, 2d for PSD and v1 stage 1, 3d for v1 stage 2), ``G = MᵀM + j·I`` (fp32) and
``C = chol(G)``. Draw ``ε ~ N(0, I_k)`` and use the virtual noise ``x̃₀ = ε·C⁻¹·Mᵀ`` [V] in place of
``x₀``: its projections are

    x̃₀ @ M = ε·N,   N = C⁻¹·(MᵀM)   [k, k]     (= ε·Cᵀ when j = 0)

whose covariance ``Nᵀ N = MᵀM·G⁻¹·MᵀM`` equals ``MᵀM`` when ``j = 0`` and differs from it by at most
``j`` in operator norm otherwise. ``j`` starts at 0 for one network (``MᵀM`` is positive definite
whenever W has rank d, V > d) and at ``1e-6·mean(diag MᵀM)`` for several (a freshly initialized
student *equals* its teacher, so ``MᵀM`` is singular); if the fp32 Cholesky still fails, it is retried
with ``j`` raised 100-fold, twice (no host synchronisation: ``cholesky_ex`` and ``torch.where``).

Gradients flow to each trainable W through both terms: ``W[y]`` directly, and the noise term as
``ε·C⁻¹·(M_detachedᵀ·W)`` with ``C`` and the left factor detached. That gradient is
``x̃₀ᵀ·∂ℓ/∂h`` — the naive gradient ``x₀ᵀ·∂ℓ/∂h`` with ``x₀`` replaced by its projection onto the
column space of M, i.e. its conditional expectation given everything the networks see. It is therefore
unbiased for the naive gradient for every loss here, including the stop-gradient PSD and v1 targets
(where differentiating through ``chol(WᵀW)`` would not be), and has lower variance.

States in the low-rank space are ``h = x @ M`` [B, L, k]; network n sees its slice ``h[..., n·d:(n+1)·d]``
through ``model(h_n, tau, tau_end, embedded=True)``. The factor is recomputed on every construction,
i.e. once per loss call or sampler call, so it always matches the current weights.

Random stream: the low-rank path draws ``ε`` [B, L, k] where the naive one draws ``x₀`` [B, L, V], so
for the same seed the two give different (equally distributed) samples and losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from flowlm.errors import ConfigError
from flowlm.methods.common import model_cross_entropy, one_hot
from flowlm.nn.dit import DiT

INPUT_NOISE = ("auto", "lowrank", "naive")
JITTER_SINGLE = 0.0
JITTER_SEVERAL = 1e-6
JITTER_RETRY_FACTOR = 100.0
JITTER_RETRIES = 2
# ``auto`` picks the naive path below this many tokens per call per unit of k: measured crossovers of an FLM
# training call (loss + backward) at V = 30,522 on the shared 2-core CPU lie between 0.33·k and 1·k for
# d = 128, 384 and 768 (benchmarks/bench_lowrank.py, section "crossover"; noisy, and the two paths differ by
# < 15% in that range).
AUTO_MIN_TOKENS_PER_WIDTH = 0.5


def check_input_noise(mode) -> str:
    if mode not in INPUT_NOISE:
        raise ConfigError(
            f"input_noise={mode!r}: use one of {', '.join(INPUT_NOISE)} (auto: lowrank when V > k and enough tokens)"
        )
    return mode


def input_matrix(model) -> torch.Tensor | None:
    """The ``V x d`` input matrix of a flowlm DiT (also behind ``torch.compile``), else None."""
    net = getattr(model, "_orig_mod", model)
    return net.vocab_embed.embedding if isinstance(net, DiT) else None


def factor_gram(gram: torch.Tensor, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower Cholesky factor C [k, k] of ``gram + j·I`` with ``j = jitter·mean(diag gram)``.

    fp32 (callers pass an fp32 ``gram``). Where that factorization fails, ``j`` is raised by
    ``JITTER_RETRY_FACTOR`` (at least to ``JITTER_SEVERAL·mean diag``), up to ``JITTER_RETRIES`` times,
    without a host synchronisation (every level is factored, ``torch.where`` picks). Returns C and the
    jitter ``j`` actually used (a 0-d tensor).
    """
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal().mean()
    level = torch.full((), jitter, dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(gram + level * scale * eye)
    for _ in range(JITTER_RETRIES):
        raised = torch.clamp(level * JITTER_RETRY_FACTOR, min=JITTER_SEVERAL)
        level = torch.where(info > 0, raised, level)
        factor, info = torch.linalg.cholesky_ex(gram + level * scale * eye)
    return factor, level * scale


def _extra(self_cond, guidance) -> dict:
    """The optional keyword arguments of a network call: only those given (plain callables take neither)."""
    extra = {} if self_cond is None else {"self_cond": self_cond}
    return extra if guidance is None else {**extra, "guidance": guidance}


class NaiveInputs:
    """States are full tensors [B, L, V]; each network projects ``x @ W`` itself (the oracle path)."""

    lowrank = False

    def noise(self, batch: int, seq: int, vocab_size: int, generator=None, device=None) -> torch.Tensor:
        """``x₀ ~ N(0, I)`` [batch, seq, V]."""
        return torch.randn(batch, seq, vocab_size, generator=generator, device=device)

    def tokens(self, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """One-hot rows [B, L, V] of tokens [B, L]."""
        return one_hot(tokens, vocab_size)

    def embed(self, values: torch.Tensor) -> torch.Tensor:
        """A [.., V] vector (probabilities, raw outputs, a given x₀) as a state: itself."""
        return values

    def logits(self, model, x: torch.Tensor, tau: torch.Tensor, tau_end=None, self_cond=None,
               guidance=None) -> torch.Tensor:  # fmt: skip
        """The model's logits at state x (``self_cond``: a self-conditioning estimate; ``guidance``: the guidance
        scale w [B] of a model that reads one; each passed on when given)."""
        extra = _extra(self_cond, guidance)
        return model(x, tau, **extra) if tau_end is None else model(x, tau, tau_end, **extra)

    def cross_entropy(self, model, x: torch.Tensor, tau: torch.Tensor, targets: torch.Tensor, tau_end=None,
                      self_cond=None):  # fmt: skip
        """Per-token cross-entropy [B, L] of the model's logits at state x against token ids (chunked head)."""
        return model_cross_entropy(model, x, tau, targets, tau_end, self_cond=self_cond)


class LowRankInputs:
    """States are ``h = x @ M`` [B, L, k] for the stacked input matrices M of ``models`` (module docstring).

    Build one per loss or sampler call (the factor follows the current weights). ``models`` lists every
    network that sees the states; networks sharing an input matrix (a model and its compiled wrapper)
    share a slot.
    """

    lowrank = True

    def __init__(self, models: Sequence):
        self.slots: dict[int, slice] = {}
        matrices, seen = [], {}
        for model in models:
            weight = input_matrix(model)
            if weight is None:
                raise ConfigError(
                    f"input_noise='lowrank' needs flowlm DiT networks (got {type(model).__name__}): "
                    "use input_noise='naive' for other callables"
                )
            if id(weight) not in seen:
                start = sum(w.shape[1] for w in matrices)
                seen[id(weight)] = slice(start, start + weight.shape[1])
                matrices.append(weight)
            self.slots[id(model)] = seen[id(weight)]
        with torch.autocast(matrices[0].device.type, enabled=False):
            # M [V, k]; one fp32 matrix is used as it is (no V×k copy, the common single-network case)
            stacked = matrices[0].float() if len(matrices) == 1 else torch.cat([w.float() for w in matrices], dim=1)
            cross = stacked.detach().T @ stacked  # MᵀM [k, k]; gradient only through the right factor
            self.factor, self.jitter = factor_gram(
                cross.detach(), JITTER_SINGLE if len(matrices) == 1 else JITTER_SEVERAL
            )
            self.noise_map = torch.linalg.solve_triangular(self.factor, cross, upper=False)  # N = C⁻¹·MᵀM
        self.matrix = stacked
        self.width = stacked.shape[1]

    def noise(self, batch: int, seq: int, vocab_size: int, generator=None, device=None) -> torch.Tensor:
        """Projected noise ``ε·N`` [batch, seq, k], ``ε ~ N(0, I_k)`` from ``generator``."""
        eps = torch.randn(batch, seq, self.width, generator=generator, device=device)
        with torch.autocast(eps.device.type, enabled=False):
            return eps @ self.noise_map

    def tokens(self, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """``one_hot(y) @ M = M[y]`` [B, L, k] (a lookup, with gradient to M)."""
        return F.embedding(tokens, self.matrix)

    def embed(self, values: torch.Tensor) -> torch.Tensor:
        """``values @ M`` [.., k] for a [.., V] tensor (the only V-sized matmul: the head's cost)."""
        return values @ self.matrix.to(values.dtype)

    def logits(self, model, h: torch.Tensor, tau: torch.Tensor, tau_end=None, self_cond=None,
               guidance=None) -> torch.Tensor:  # fmt: skip
        """The model's logits at state h (``self_cond``, ``guidance``: as :meth:`NaiveInputs.logits`)."""
        return model(h[..., self.slots[id(model)]], tau, tau_end, embedded=True, **_extra(self_cond, guidance))

    def cross_entropy(self, model, h: torch.Tensor, tau: torch.Tensor, targets: torch.Tensor, tau_end=None,
                      self_cond=None):  # fmt: skip
        """Per-token cross-entropy [B, L] of the model's logits at state h against token ids (chunked head)."""
        return model_cross_entropy(model, h[..., self.slots[id(model)]], tau, targets, tau_end, embedded=True,
                                   self_cond=self_cond)  # fmt: skip


def input_space(mode: str, models: Sequence, vocab_size: int, tokens: int | None = None) -> NaiveInputs | LowRankInputs:
    """The state space for ``models`` (every network that sees the states).

    ``mode``: ``naive`` (full [.., V] states), ``lowrank`` (exact k-dimensional states; needs flowlm DiTs),
    ``auto`` (lowrank when every model is a DiT, ``V > k`` and, if ``tokens`` is given, ``tokens >=
    AUTO_MIN_TOKENS_PER_WIDTH·k``; else naive). k is the summed width of the distinct input matrices — d for
    FLM and its samplers, 2d for PSD and v1 stage 1, 3d for v1 stage 2. ``tokens``: how many token positions
    go through the networks per construction of this space (B·L for a loss call, samples·L·steps for a
    sampler call): the low-rank path pays ~V·k² once per construction (the Gram matrix, and its gradient),
    the naive one ~V·k plus a few [V]-sized elementwise passes per token.
    """
    check_input_noise(mode)
    if mode == "naive":
        return NaiveInputs()
    if mode == "auto":
        weights = [input_matrix(m) for m in models]
        if any(w is None for w in weights):
            return NaiveInputs()
        width = sum(w.shape[1] for w in {id(w): w for w in weights}.values())
        if vocab_size <= width or (tokens is not None and tokens < AUTO_MIN_TOKENS_PER_WIDTH * width):
            return NaiveInputs()
    return LowRankInputs(models)
