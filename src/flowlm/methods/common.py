"""Pieces shared by the continuous-state methods (FLM, FMLM): time draws, the interpolant,
the velocity, and the optional learnable loss weighting.

Clocks (SPEC §1): ``t`` is the interpolation time of the state ``x_t = (1 − t)·x₀ + t·x₁``;
``τ = T_V(t)`` is what the network is conditioned on and what grids are uniform in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowlm.errors import ConfigError
from flowlm.nn.dit import DiT, TimestepEmbedder

VELOCITY_GUARD = 1e-5


def stratified_times(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Stratified uniform draws on [0, 1): ``τ_i = (u_i/n + i/n) mod 1``, shuffled. Shape [n].

    One draw lands in each interval [i/n, (i+1)/n), so a batch covers the clock evenly.
    """
    u = torch.rand(n, generator=generator, device=device)
    tau = (u / n + torch.arange(n, device=device) / n) % 1.0
    return tau[torch.randperm(n, generator=generator, device=device)]


def check_rows(rows: tuple[int, int] | None, batch: int) -> tuple[int, int]:
    """``rows = (first, total)``: this call's batch is rows [first, first + batch) of a global micro-batch
    of ``total`` rows whose random quantities are all drawn (and then sliced). None means (0, batch)."""
    if rows is None:
        return 0, batch
    ok = isinstance(rows, (tuple, list)) and len(rows) == 2 and all(isinstance(v, int) for v in rows)
    if not ok or rows[0] < 0 or rows[0] + batch > rows[1]:
        raise ConfigError(
            f"rows={rows!r} for a batch of {batch}: pass (first, total) with 0 <= first and first + {batch} <= total"
        )
    return rows[0], rows[1]


def per_sequence_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of [B, L] values over each sequence's valid positions -> [B]."""
    if mask is None:
        return values.mean(-1)
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def one_hot(tokens: torch.Tensor, vocab_size: int, dtype=torch.float32) -> torch.Tensor:
    """tokens [B, L] -> one-hot [B, L, V]."""
    return F.one_hot(tokens, vocab_size).to(dtype)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 − t)·x₀ + t·x₁``; x0, x1 [B, L, V], t [B] (broadcast over positions and V)."""
    t = t.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * x1


def velocity(denoised: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``b(x, t) = (D(x) − x) / (1 − t)`` with a 1e-5 guard; D, x [B, L, V], t a tensor [B] or a float."""
    if not isinstance(t, torch.Tensor):  # a grid time: plain float arithmetic, no host-to-device copy
        return (denoised - x) / max(1.0 - float(t), VELOCITY_GUARD)
    t = t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (denoised - x) / torch.clamp(1 - t, min=VELOCITY_GUARD)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """``−Σ_v target_v·log softmax(z)_v`` per row, keeping only ``z``, its log-sum-exp and the target for the
    backward pass (``∂/∂z = Σ_v target_v·softmax(z) − target``): no [N, V] log-probabilities are stored, which
    halves what the head holds between forward and backward. No gradient flows to the target."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        if target.dtype in (torch.int32, torch.int64):
            loss = lse - logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        else:
            loss = lse * target.sum(-1) - (target * logits).sum(-1)
        ctx.save_for_backward(logits, lse, target)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse, target = ctx.saved_tensors
        out = torch.sub(logits, lse.unsqueeze(-1)).exp_()  # softmax in one [N, V] allocation
        if target.dtype in (torch.int32, torch.int64):
            out.scatter_add_(-1, target.unsqueeze(-1), -torch.ones_like(lse).unsqueeze(-1))
        else:
            out.mul_(target.sum(-1, keepdim=True)).sub_(target)
        return out.mul_(grad.unsqueeze(-1)), None


def token_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [B, L] of logits [B, L, V] (half precision is computed in float32); ``target``
    is token ids [B, L] or distributions [B, L, V] (treated as constants: no gradient reaches them)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if target.dtype not in (torch.int32, torch.int64):
        target = target.detach().to(logits.dtype)
    return _SoftmaxCrossEntropy.apply(logits, target)


def model_cross_entropy(
    model,
    x: torch.Tensor,
    tau: torch.Tensor,
    targets: torch.Tensor,
    tau_end: torch.Tensor | None = None,
    embedded: bool = False,
    self_cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token cross-entropy [B, L] of ``model(x, tau[, tau_end], embedded=...)`` against token ids [B, L]
    (``self_cond``: a self-conditioning estimate, passed on when given; :meth:`flowlm.nn.dit.DiT.forward`).

    A flowlm :class:`~flowlm.nn.dit.DiT` is called with ``targets`` and computes its output layer, cap and
    cross-entropy in row chunks (no [B·L, V] logits kept for backward). Other callables, and a DiT behind
    ``torch.compile`` (whose compiled graph is kept as it was), go through the logits and
    :func:`token_cross_entropy`; both give the same values and gradients.
    """
    extra = {} if self_cond is None else {"self_cond": self_cond}
    if isinstance(model, DiT):
        return model(x, tau, tau_end, embedded=embedded, targets=targets, **extra)
    if embedded:
        return token_cross_entropy(model(x, tau, tau_end, embedded=True, **extra), targets)
    return token_cross_entropy(model(x, tau, **extra) if tau_end is None else model(x, tau, tau_end, **extra), targets)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of [B, L] values over valid positions (all when ``mask`` is None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


class LossWeighting(nn.Module):
    """Learnable time weighting ``exp(−w)·ℓ + w`` (SPEC §2, §4); zero-initialized so w = 0 at start.

    ``forward(tau [B], tau_end [B] | None) -> w [B]``. The reference's weighting reads one time: τ for FLM, τ_s
    for its flow maps. ``two_times=True`` is flowlm's variant for the flow-map losses (methods with
    ``weighting_times = 2``: PSD and ``lsd`` call ``w(τ_s, τ_t)``, a second time embedding of τ_t added to τ_s's),
    so a pair's weight can depend on its end time; it is what ``train.loss_weighting=true`` trains for those recipes,
    and the existing runs and checkpoints of it hold the second embedder. The v1 recipe keeps the reference's
    ``w(τ_s)`` (SPEC §7): stage 1 builds a one-time weighting, stage 2 passes no end time (its second embedder,
    built because it is a flow map, stays unused).
    """

    def __init__(self, cond_dim: int = 128, hidden: int = 128, two_times: bool = False):
        super().__init__()
        self.embed = TimestepEmbedder(cond_dim)
        self.embed_end = TimestepEmbedder(cond_dim) if two_times else None
        self.mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tau: torch.Tensor, tau_end: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(tau)
        if self.embed_end is not None and tau_end is not None:
            emb = emb + self.embed_end(tau_end)
        return self.mlp(emb).squeeze(-1)

    @staticmethod
    def apply(per_sequence_loss: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``exp(−w_i)·ℓ_i + w_i``; both [B]."""
        return (torch.exp(-w) * per_sequence_loss + w).mean()


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of the categorical ``probs`` [..., V] (non-negative, not necessarily normalized); ids [...].

    Exponential race in float64: with ``E_v ~ Exp(1)`` independent, ``argmax_v p_v / E_v`` is ``v`` with probability
    ``p_v / Σ p`` (``E_v / p_v ~ Exp(p_v)``, and the smallest of independent exponentials is ``v`` with that
    probability). Float64 because a float32 race (what ``torch.multinomial`` does on CUDA for one sample) has too
    coarse a resolution for ``E_v`` near 0, where a rare token has to land to win, so rare tokens are drawn less
    often than their probability (lower entropy, a flattering Gen PPL); the reference draws in float64 too. The
    same numbers are drawn on every device for a given ``generator``, ``V`` per row.
    """
    p = probs.to(torch.float64)
    race = torch.empty_like(p).exponential_(generator=generator).clamp_(min=torch.finfo(torch.float64).tiny)
    return (p / race).argmax(-1)


DIVERGENCES = ("kl-reverse", "kl-forward")


def check_divergence(value: object) -> str:
    """A distillation divergence: ``kl-reverse`` (KL(student ‖ target)) or ``kl-forward`` (KL(target ‖ student))."""
    if value not in DIVERGENCES:
        raise ConfigError(f"distill.divergence={value!r}: use kl-reverse (KL(student ‖ teacher)) or kl-forward")
    return value


def categorical_divergence(log_student: torch.Tensor, log_target: torch.Tensor, divergence: str) -> torch.Tensor:
    """Per-row KL [..] between categorical laws given as log-probabilities [.., V] (finite where they matter):
    ``KL(student ‖ target)`` for ``kl-reverse``, ``KL(target ‖ student)`` for ``kl-forward``."""
    if divergence == "kl-reverse":
        return (log_student.exp() * (log_student - log_target)).sum(-1)
    return (log_target.exp() * (log_target - log_student)).sum(-1)
