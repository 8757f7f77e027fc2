"""SDTT: self-distillation through time for MDLM (Deschenaux & Gulcehre, arXiv 2410.21035; the reference is github
jdeschena/sdtt). Loss only; no I/O, no training harness. Written from the paper and a reading of the reference.

The MDLM sampler with ``N`` steps (:func:`flowlm.methods.mdlm.mdlm_sample`) goes down the grid ``t_k = 1 − k/N``
and at each step reveals every still-masked position with probability ``(t − s)/t``, drawing its token from
``p_θ(x_ℓ | z_t)``. One round of SDTT teaches a student to do in one step of size ``2Δ`` what its teacher does in two
steps of size ``Δ`` (``Δ = 1/teacher_steps``), so the student samples with half the teacher's steps:

1. ``t`` uniform on ``[2Δ, 1]`` (stratified over the batch), ``z_t``: each position masked with probability ``t``.
2. Teacher (frozen, eval mode), two stochastic sub-steps: ``p₁ = p_T(· | z_t)``; reveal each masked position with
   probability ``Δ/t``, drawing from ``p₁``, giving ``z'``; ``p₂ = p_T(· | z')``. The target of a position masked in
   ``z_t`` is ``p₁`` where it was revealed in the first sub-step, else ``p₂`` (revealed in the second, or still
   masked: the teacher's last prediction). The second sub-step's own draws never enter the target, so it is not made.
3. Loss: the mean over the positions masked in ``z_t`` of ``KL(p_S ‖ target)`` (``divergence='kl-reverse'``, the
   reference's default and the paper's best) or ``KL(target ‖ p_S)`` (``'kl-forward'``); no time weighting.

Sub-step times: the two teacher steps go ``t → t − Δ → t − 2Δ``, whose reveal probabilities ``Δ/t`` and
``Δ/(t − Δ)`` compose exactly to the student's ``2Δ/t``. The reference's released code computes its first sub-step's
time as ``t + (1 − t)(t − 2Δ)`` (its comment describes the evenly spaced times above; the released checkpoints were
trained with the code as written); flowlm implements the times the comment and the sampler describe.
"""

from __future__ import annotations

import torch

from flowlm.methods.common import (
    categorical_divergence,
    check_divergence,
    check_rows,
    sample_categorical,
    stratified_times,
)
from flowlm.methods.mdlm import mask_tokens, subs_log_probs


def sdtt_times(batch: int, step: float, generator=None, device=None) -> torch.Tensor:
    """Student step start times [B] on ``[2Δ, 1)``, stratified over the batch (``step`` = Δ)."""
    return 2 * step + (1 - 2 * step) * stratified_times(batch, generator, device)


@torch.no_grad()
def sdtt_target(teacher, z: torch.Tensor, t: torch.Tensor, step: float, vocab_size: int, generator=None,
                rows: tuple[int, int] | None = None) -> torch.Tensor:  # fmt: skip
    """The teacher's two-step target log-probabilities [B, L, V] at noisy ids ``z`` [B, L] and times ``t`` [B]
    (module docstring, step 2). ``rows``: the reveal draws are made for ``total`` rows and sliced."""
    first, total = check_rows(rows, z.shape[0])
    part = slice(first, first + z.shape[0])
    mask_id = vocab_size
    zeros = torch.zeros(z.shape[0], device=z.device)
    log_p1 = subs_log_probs(teacher(z, zeros), z, mask_id)
    u = torch.rand((total, z.shape[1]), generator=generator, device=z.device)[part]
    revealed = (z == mask_id) & (u * t.unsqueeze(-1) < step)  # probability Δ/t
    flat = log_p1.exp().reshape(-1, vocab_size)
    draws = sample_categorical(flat, generator).view_as(z)
    z_next = torch.where(revealed, draws, z)
    log_p2 = subs_log_probs(teacher(z_next, zeros), z_next, mask_id)
    return torch.where(revealed.unsqueeze(-1), log_p1, log_p2)


def sdtt_loss(
    student,
    teacher,
    tokens: torch.Tensor,
    vocab_size: int,
    teacher_steps: int,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
    divergence: str = "kl-reverse",
) -> dict[str, torch.Tensor]:
    """One SDTT loss of clean tokens [B, L] (module docstring): ``loss`` (to minimize), ``kl`` (detached) and ``t``."""
    check_divergence(divergence)
    batch = tokens.shape[0]
    first, total = check_rows(rows, batch)
    step = 1.0 / teacher_steps
    t = sdtt_times(total, step, generator, tokens.device)[first : first + batch]
    z, masked = mask_tokens(tokens, t, vocab_size, generator, rows)
    target = sdtt_target(teacher, z, t, step, vocab_size, generator, rows)
    log_student = subs_log_probs(student(z, torch.zeros(batch, device=z.device)), z, vocab_size)
    # only masked positions enter; their SUBS log-probs are finite over the V real tokens
    m = masked.unsqueeze(-1)
    per_position = categorical_divergence(log_student.masked_fill(~m, 0.0), target.masked_fill(~m, 0.0), divergence)
    count = masked.sum().clamp(min=1)
    loss = (per_position * masked).sum() / count
    return {"loss": loss, "kl": loss.detach(), "t": t}
