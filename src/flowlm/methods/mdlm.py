"""MDLM: masked diffusion language model (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language
Models"), the discrete-diffusion baseline. Loss and ancestral sampler; no I/O, no training harness.

Forward process (absorbing state): every position of a clean block ``x`` [B, L] is replaced, independently,
by the mask id ``m = V`` with probability ``1 − α_t``. The schedule is log-linear, ``α_t = 1 − t``, so at time
``t ∈ (0, 1]`` a position is masked with probability ``t`` (t = 1: everything masked).

Network: any callable ``model(z [B, L] ids in 0..V, tau [B]) -> logits [B, L, V]`` (a DiT built with
``mask_input=True``: V + 1 input ids, V output logits). It is time-independent: it is always called with
``τ = 0``, so the DiT's adaLN holds constant, learned shifts and scales. Nothing is lost: under the absorbing
process the posterior of a masked position given ``z_t`` does not depend on ``t`` (``z_t`` already says which
positions are masked), and a constant network lets the sampler reuse its output while no position changes.

SUBS parameterization: the mask id gets no probability (the network has no logit for it), and an unmasked
position keeps its token (carry-over): ``p_θ(x_ℓ | z) = one_hot(z_ℓ)`` where ``z_ℓ ≠ m``.
"""

from __future__ import annotations

import torch

from flowlm.methods.common import check_rows, model_cross_entropy, sample_categorical, stratified_times
from flowlm.methods.condition import Condition
from flowlm.methods.flm import check_steps
from flowlm.methods.tempering import OFF, Tempering

T_MIN = 1e-3  # smallest training / validation time, as MDLM's reference code (its ``sampling_eps``)


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_id: int) -> torch.Tensor:
    """``log p_θ(x_ℓ | z)`` [B, L, V] under SUBS from logits [B, L, V] and the noisy ids ``z`` [B, L].

    Masked positions (``z_ℓ = mask_id``): ``log_softmax(logits)`` over the V real tokens (the mask has no
    logit, so zero probability). Unmasked positions: 0 at ``z_ℓ`` and −inf elsewhere (the token is carried over).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    masked = (z == mask_id).unsqueeze(-1)
    carry = torch.full_like(logp, float("-inf")).scatter_(-1, z.clamp(max=logp.shape[-1] - 1).unsqueeze(-1), 0.0)
    return torch.where(masked, logp, carry)


def mdlm_times(batch: int, generator: torch.Generator | None = None, device=None, t_min: float = T_MIN) -> torch.Tensor:
    """Diffusion times [B] on [t_min, 1): ``t = t_min + (1 − t_min)·u`` with ``u`` stratified over the batch."""
    return t_min + (1 - t_min) * stratified_times(batch, generator, device)


def mask_tokens(
    tokens: torch.Tensor,
    t: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``z_t``: each position of ``tokens`` [B, L] becomes ``mask_id`` with probability ``t`` [B].

    ``rows = (first, total)``: the uniforms are drawn for ``total`` rows and rows [first, first + B) kept.
    Returns ``(z [B, L], masked [B, L] bool)``.
    """
    first, total = check_rows(rows, tokens.shape[0])
    u = torch.rand((total, tokens.shape[1]), generator=generator, device=tokens.device)[first : first + len(tokens)]
    masked = u < t.unsqueeze(-1)
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


def mdlm_loss(
    model,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    t_min: float = T_MIN,
    rows: tuple[int, int] | None = None,
    clean: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The continuous-time NELBO estimate of one batch of clean tokens [B, L], in nats per token.

    With ``α_t = 1 − t`` the NELBO of a block is ``∫₀¹ (1/t) E_{z_t}[ Σ_ℓ 1[z_ℓ = m] · (−log p_θ(x_ℓ | z_t)) ] dt``
    (Sahoo et al. eq. 10: weight ``α'_t / (1 − α_t) = −1/t``). One draw of ``t`` (stratified over the batch)
    and of ``z_t`` per sequence gives, per sequence, ``(1/t)·Σ_ℓ masked CE_ℓ``; this is divided by ``L`` (every
    position of the block counts as a token, BOS and EOS included) and averaged over the batch.

    ``t`` is drawn on ``[t_min, 1)`` as in MDLM's code (the plain ``1/t`` estimator has infinite variance near
    ``t = 0``), so the expectation is ``(1/(1 − t_min))·∫_{t_min}^1`` of the integrand: the full NELBO plus
    ``t_min·(mean of the integrand on [t_min, 1] − its mean on [0, t_min])``, an O(t_min) term that is ≥ 0 when
    the per-masked-token loss grows with the masking rate, as it does for a good model.

    ``rows = (first, total)``: ``t`` and the masks are drawn for a global micro-batch of ``total`` rows
    and rows [first, first + B) kept (data parallelism: every rank reproduces its slice of one process).

    ``clean`` [B, L] (bool, conditional training): those positions are never masked, so they are given and
    never scored (the bound is then one of the other positions given them).

    Returns ``loss`` (to minimize), ``nll_bound`` (the same, detached) and ``t`` [B].
    """
    batch = tokens.shape[0]
    first, total = check_rows(rows, batch)
    t = mdlm_times(total, generator, tokens.device, t_min)[first : first + batch]
    z, masked = mask_tokens(tokens, t, vocab_size, generator, rows)
    if clean is not None:
        z, masked = torch.where(clean, tokens, z), masked & ~clean
    # Under SUBS the unmasked positions contribute log 1 = 0, so only the masked ones enter.
    ce = model_cross_entropy(model, z, torch.zeros(batch, device=tokens.device), tokens) * masked
    loss = (ce.sum(-1) / (t * tokens.shape[1])).mean()
    return {"loss": loss, "nll_bound": loss.detach(), "t": t}


@torch.no_grad()
def mdlm_sample(
    model,
    num_samples: int,
    seq_len: int,
    vocab_size: int,
    steps: int,
    generator: torch.Generator | None = None,
    device=None,
    condition: Condition | None = None,
    tempering: Tempering = OFF,
) -> torch.Tensor:
    """Ancestral sampler with ``N = steps`` steps; returns tokens [num_samples, seq_len].

    Starts from all masks at ``t_0 = 1`` and goes down the grid ``t_k = 1 − k/N``. Step ``k`` (from
    ``t = t_k`` to ``s = t_{k+1}``) reveals each still-masked position with probability
    ``(t − s)/t = 1/(N − k)``, drawing its token from ``p_θ(· | z_t)``; revealed tokens never change. The last
    step reveals everything, so N = 1 draws every position independently from ``p_θ(x_ℓ | all masked)``.
    The network is called again only after a step that revealed something in some row of the batch (it does
    not depend on ``t``) and not at all once every position is revealed: at most ``min(N, B·L)`` calls for a
    batch of B samples, so the saving is real for one sample (at most L calls) but small for a large batch
    (a batch of 64 samples of 64 tokens at N = 1,024 reveals something at nearly every step). Tokens are drawn
    in float64 (:func:`~flowlm.methods.common.sample_categorical`). Deterministic given ``generator``.
    ``condition``: its known positions start unmasked (so they are never drawn). ``tempering``: temperature and
    top-p of ``p_θ`` (:mod:`flowlm.methods.tempering`; off by default).
    """
    check_steps(steps)
    mask_id = vocab_size
    z = torch.full((num_samples, seq_len), mask_id, dtype=torch.long, device=device)
    if condition is not None:
        z = condition.fill(z)
    tau = torch.zeros(num_samples, device=device)
    probs = None
    for k in range(steps):
        if probs is None:
            if not bool((z == mask_id).any()):
                break  # everything is revealed: the remaining steps would change nothing
            probs = tempering.probs(model(z, tau).double()).view(-1, vocab_size)
        u = torch.rand(num_samples, seq_len, generator=generator, device=z.device)
        rows = ((z == mask_id) & (u * (steps - k) < 1)).view(-1).nonzero().squeeze(-1)  # positions to reveal
        if rows.numel():
            draw = sample_categorical(probs[rows], generator)
            z = z.view(-1).index_put((rows,), draw).view(num_samples, seq_len)
            probs = None
    return z
