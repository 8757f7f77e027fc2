"""Lagrangian flow-map distillation on the simplex (the ``lsd-teacher`` recipe, called ``lsd`` before): a
teacher-anchored alternative to PSD.

PSD (SPEC §3) builds the target of a jump s → t from the student's own two half-jumps, so the error of short
jumps is compounded into long ones. The Lagrangian condition of a flow map (Boffi, Albergo & Vanden-Eijnden,
arXiv 2505.18825), ``∂_t X_{s,t}(x) = b_t(X_{s,t}(x))`` with the teacher velocity ``b_t(y) = (D_t(y) − y)/(1 − t)``,
asks the teacher about the point the student's map lands on instead. Written for the two-time denoiser of
:mod:`flowlm.methods.fmlm` (``X_{s,t}(x) = x + ((t − s)/(1 − s))·(δ_{s,t}(x) − x)``, so that
``∂_t X = (δ − x)/(1 − s) + ((t − s)/(1 − s))·∂_t δ`` and ``X + (1 − t)(δ − x)/(1 − s) = δ``) it reads

    δ_{s,t}(x) = D_t(X_{s,t}(x)) − c·∂_t δ_{s,t}(x),      c = (1 − t)(t − s)/(1 − s),

in the interpolation clock t. The right-hand side is a point of the affine hull of the simplex (its entries sum to
1; the derivative term sums to 0), the geometry that the Discrete Flow Maps paper (arXiv 2604.09784) argues flow
maps over tokens should respect; it is projected onto the simplex (negative entries clipped, then renormalized) and
used as the cross-entropy target of ``δ̂_{s,t}(x_s)``, exactly where PSD uses its semigroup target. Diagonal rows
keep the teacher's ``D_s(x_s)`` (c = 0 there, and the condition reduces to it). ``∂_t δ`` is a backward difference
quotient in t of two student calls at end times ``τ_t`` and ``τ' = τ_t − η`` (``η`` a fixed share of the jump in τ,
at least ``LSD_MIN_TAU_STEP``, never past ``τ_s``) divided by ``t − T⁻¹(τ')``, so the clock of the derivative is t
whatever the network's clock. No JVP: three forward passes per off-diagonal target (two student, one teacher).

Known failure (docs/results.md, distillation study): on WikiText-2 (V = 4,096, d = 128) the 1-step map collapses
to one repeated token from the first quarter of the budget on. For a jump that ends near t = 1 the coefficient c
vanishes and ``X_{s,t}(x)`` is nearly the student's own output ``δ``, so the target is about ``D_t(δ)``: the teacher,
which treats a state near t = 1 as almost clean, sharpens whatever distribution the student writes, and a student
that writes the most frequent token everywhere is a fixed point. On the small synthetic languages (V = 8) it is not
reached and ``lsd-teacher`` beats PSD. PSD, whose off-diagonal targets compose the student's own shorter jumps (tied
to the teacher by the diagonal rows) instead of asking the teacher at the landing point, does not collapse there.

This is not the reference code's LSD (its ``algo.py``, ``distillation_method: LSD``), which flowlm now has as the
``lsd-ref`` recipe (:mod:`flowlm.methods.lsd_reference`). Both use the same Lagrangian identity; they differ in how
its three ingredients are obtained. The landing-point denoiser ``D_t(X_{s,t})``: here the frozen teacher's, there
the student's own diagonal ``δ̂_{t,t}`` (``use_teacher_for_D_t_lsd: False``). The derivative ``∂_t δ``: here a
backward difference quotient of two student calls in eval mode, there one forward-mode JVP along ``τ_t`` (tangent
1, times ``dτ/dt`` at t) of the prediction pass itself, in train mode. The projection: here negative entries clipped
and the row renormalized, there sparsemax (the Euclidean projection onto the simplex). The split: here a quarter
diagonal and an eighth boundary rows by default, there the reference's half and 1/64. Dropout: here every pass that
builds the target runs in eval mode; there the derivative comes from the (train-mode) prediction pass and the landing
pass keeps dropout too.
"""

from __future__ import annotations

import torch

from flowlm.methods.common import VELOCITY_GUARD, token_cross_entropy
from flowlm.methods.fmlm import (
    PSD_BOUNDARY_FRAC,
    PSD_DIAG_FRAC,
    _clock,
    _eval_mode,
    _hold_clean,
    _pairs_and_states,
    _probs,
    _weighted,
    _without_clean,
    flow_map_step,
)
from flowlm.methods.lowrank import NaiveInputs, input_space

__all__ = ["LSD_FD_SHARE", "LSD_MIN_TAU_STEP", "lagrangian_coefficient", "lsd_loss", "lsd_target", "simplex_projection"]

LSD_FD_SHARE = 1 / 16  # the difference step as a share of the jump τ_t − τ_s
LSD_MIN_TAU_STEP = 1e-3  # in τ: float32 times keep ~7 digits, so the quotient keeps ~4


def lagrangian_coefficient(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``c = (1 − t)(t − s)/(1 − s)`` [B] (interpolation clock; 0 on the diagonal and at t = 1)."""
    return (1 - t) * (t - s) / torch.clamp(1 - s, min=VELOCITY_GUARD)


def simplex_projection(q: torch.Tensor) -> torch.Tensor:
    """Rows [..., V] summing to 1 with possibly negative entries -> clipped at 0 and renormalized (a row
    without positive mass becomes uniform)."""
    q = q.clamp(min=0)
    total = q.sum(-1, keepdim=True)
    uniform = torch.full_like(q, 1.0 / q.shape[-1])
    return torch.where(total > 0, q / total.clamp(min=torch.finfo(q.dtype).tiny), uniform)


@torch.no_grad()
def lsd_target(
    student,
    teacher,
    x_s: torch.Tensor,
    tau_s: torch.Tensor,
    tau_t: torch.Tensor,
    n_diag: int,
    vocab_size: int,
    inputs=None,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lagrangian targets [B, L, V] (no gradient), rows laid out as :func:`flowlm.methods.fmlm.pair_times` does.

    Rows ``[:n_diag]``: the teacher's ``D_s(x_s)``. Other rows: ``Π(D_t(X_{s,t}(x_s)) − c·∂_tδ̂_{s,t}(x_s))`` with
    ``Π`` :func:`simplex_projection`, ``c`` :func:`lagrangian_coefficient`, the student's ``δ̂`` and the teacher in
    eval mode (module docstring). ``inputs``: the state space of ``x_s`` (default: full [B, L, V] states).
    ``clean`` [B, L] (bool, conditional training): those positions stay at their rows of ``x_s`` (their one-hot
    rows) in the intermediate state ``X_{s,t}`` the teacher sees.
    """
    inputs = NaiveInputs() if inputs is None else inputs
    target = torch.empty((*x_s.shape[:2], vocab_size), dtype=torch.float32, device=x_s.device)
    with _eval_mode(teacher, student):
        if n_diag > 0:
            target[:n_diag] = _probs(inputs, teacher, x_s[:n_diag], tau_s[:n_diag])
        if n_diag < x_s.shape[0]:
            x, ts, tt = x_s[n_diag:], tau_s[n_diag:], tau_t[n_diag:]
            step = torch.clamp(torch.clamp((tt - ts) * LSD_FD_SHARE, min=LSD_MIN_TAU_STEP), max=tt - ts)
            tp = tt - step
            s, t, t_prev = (_clock(tau, vocab_size) for tau in (ts, tt, tp))
            delta = _probs(inputs, student, x, ts, tt)
            dt = (t - t_prev).to(torch.float32).view(-1, 1, 1)  # 0 only where τ_t = τ_s in float32 (then c = 0)
            slope = torch.where(dt > 0, (delta - _probs(inputs, student, x, ts, tp)) / dt.clamp(min=1e-30), 0.0)
            x_st = flow_map_step(x, inputs.embed(delta).to(x.dtype), s.to(x.dtype), t.to(x.dtype))
            x_st = _hold_clean(x_st, x, None if clean is None else clean[n_diag:])
            landed = _probs(inputs, teacher, x_st, tt)
            c = lagrangian_coefficient(s, t).to(torch.float32).view(-1, 1, 1)
            target[n_diag:] = simplex_projection(landed - c * slope)
    return target


def lsd_loss(
    student,
    teacher,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    sample_offset: int = 0,
    diag_frac: float = PSD_DIAG_FRAC,
    boundary_frac: float = PSD_BOUNDARY_FRAC,
    weighting=None,
    mask: torch.Tensor | None = None,
    input_noise: str = "auto",
    rows: tuple[int, int] | None = None,
    draw: str = "uniform",
    max_jump: float = 1.0,
    clean: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The ``lsd-teacher`` loss on tokens [B, L]: pairs, states and the cross-entropy exactly as
    :func:`flowlm.methods.fmlm.psd_loss`, with :func:`lsd_target` in place of the semigroup target; ``clean``
    positions (conditional training) as there: clean in every network call, left out of the loss.

    Returns ``loss``, ``ce`` (unweighted, detached), ``per_sequence`` [B] (detached), ``tau_s``, ``tau_t``.
    """
    inputs = input_space(input_noise, [student, teacher], vocab_size, tokens=tokens.numel())
    tau_s, tau_t, n_diag, x_s = _pairs_and_states(
        inputs, tokens, vocab_size, generator, sample_offset, diag_frac, boundary_frac, rows, draw, max_jump,
        clean=clean,
    )  # fmt: skip
    logits = inputs.logits(student, x_s, tau_s, tau_t)
    target = lsd_target(student, teacher, x_s, tau_s, tau_t, n_diag, vocab_size, inputs, clean)
    mask = _without_clean(mask, clean)
    ce = token_cross_entropy(logits, target)
    loss, mean_ce, per_sequence = _weighted(ce, mask, weighting, tau_s, tau_t)
    return {"loss": loss, "ce": mean_ce.detach(), "per_sequence": per_sequence.detach(), "tau_s": tau_s, "tau_t": tau_t}
