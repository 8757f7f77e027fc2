"""The reference's Lagrangian self-distillation (LSD) of a flow map, as its own recipe (``distill.recipe=lsd-ref``).

This is the ``distillation_method: LSD`` branch of the reference code (the June 2026 code, ``menetn/glm`` at commit
03fbff6, file ``algo.py``, class ``FMLM``; line numbers below are that file's), written for flowlm's pairs, states and
networks. It is not flowlm's older ``lsd-teacher`` recipe (formerly ``lsd``; :mod:`flowlm.methods.lsd`), which asks
the teacher at the landing point and takes a finite difference.

What the reference does
-----------------------
Notation of :mod:`flowlm.methods.fmlm`: interpolation times s < t (clock ``t``), network times ``τ = T_V(t)``,
``X_{s,t}(x) = ((1 − t)/(1 − s))·x + ((t − s)/(1 − s))·δ_{s,t}(x)``, ``δ̂_{s,t}(x) = softmax(cap(f(x, τ_s, τ_t)))``.

* Pairs (``loss``, 1253–1297): a deterministic split of each batch into diagonal rows (``τ_s = τ_t`` drawn
  uniformly, antithetic), boundary rows ``(τ_s, τ_t) = (0, 1)`` and off-diagonal rows (``uniform_diff``, 1260–1265:
  ``d ~ U[0, 1]``, ``τ_s = U[0, 1]·(1 − d)``, ``τ_t = τ_s + d``). ``_get_split_indices`` gets the ratios
  ``(diagonal_fraction, (1 − diagonal_fraction)/boundary_prob)`` (1268–1272) with ``configs/algo/fmlm.yaml``'s
  ``diagonal_fraction: 0.5`` and ``boundary_prob: 32``: half diagonal, 1/64 boundary, the rest off-diagonal, as PSD.
  The boundary rows are then merged into the off-diagonal ones (1285) and get the LSD target below (at t = 1 its
  coefficient vanishes and the target is ``sparsemax(δ̂_{1,1}(δ̂_{0,1}(x₀)))``). States ``x_s = (1 − s)·x₀ + s·x₁``
  with ``s = T⁻¹(τ_s)`` (1293–1297).
* Diagonal rows (1299–1303, 1425–1428): target = the teacher's ``D_s(x_s) = exp(teacher_forward(x_s, τ_s))``, the
  teacher in eval mode (``_load_teacher_model``, 997) and under ``no_grad`` (1145–1152); prediction = the student's
  ``log δ̂_{s,s}(x_s)`` from a plain forward pass (``use_jvp_attn=False``).
* Off-diagonal rows (1433–1482); ``δ̂ = softmax(30·tanh(f/30))`` as everywhere in FLM/FMLM (816–819):

  1. One forward-mode pass (1441–1449): ``log δ̂_{s,t}, ∂_{τ_t} log δ̂_{s,t} = torch.func.jvp(τ_t ↦ log δ̂(x_s, τ_s,
     τ_t), (τ_t,), (1,))`` (the tangent is the constant 1 in the *network* clock τ_t; the attention is the
     reference's JVP-capable one, ``use_jvp_attn=True``). The primal is the prediction (gradient flows through it);
     the tangent is detached (``stopgrad``, 1449).
  2. Chain rule to the interpolation clock (1451–1452): ``∂_t log δ̂ = ∂_{τ_t} log δ̂ · dτ/dt``, ``dτ/dt =
     _d_tau_by_d_t(t)`` evaluated at the *end time t* (interpolation clock) through the spline ``lut_g2a`` of
     ``t ↦ τ`` (``utils.d_alpha_by_d_gamma(t, self.lut_g2a)``, 1154–1155; "alpha" is τ, "gamma" is t).
  3. Under ``no_grad`` (1454–1480): ``D_st = exp(log δ̂_{s,t})`` (the primal of the same pass, same dropout draw),
     ``∂_t D_st = D_st ⊙ ∂_t log δ̂``; landing point ``X_st = ((1 − t)/(1 − s + 1e-8))·x_s + ((t − s)/(1 − s +
     1e-8))·D_st``; ``D_t(X_st)`` from the *student's own diagonal* ``δ̂_{t,t}(X_st) = exp(forward(X_st, τ_t, τ_t))``
     because ``use_teacher_for_D_t_lsd: False`` (fmlm.yaml line 23; the teacher is used only when that flag is set,
     1459–1463); target (1468–1471)

         target = sparsemax( D_t(X_st) − (t − s)·((1 − t)/(1 − s + 1e-8))·∂_t D_st ),

     all times in the interpolation clock. The projection is ``entmax_bisect(·, α = entmax_temp_lsd = 2.0, dim=-1)``
     (1472–1479; fmlm.yaml line 17; package ``entmax`` 1.3): at α = 2, ``p = [z − θ]_+`` with θ found by 50
     bisection steps and the result renormalized, i.e. sparsemax (the Euclidean projection onto the simplex) to
     float rounding. α must lie in [1, 2] and is not learned (1122–1126).
  4. The bracket is the Lagrangian condition ``∂_t X_{s,t}(x) = b_t(X_{s,t}(x))``, ``b_t(y) = (D_t(y) − y)/(1 − t)``,
     solved for δ: with ``X_{s,t}`` as above,
     ``δ_{s,t}(x) = D_t(X_{s,t}(x)) − ((t − s)(1 − t)/(1 − s))·∂_t δ_{s,t}(x)``, so the exact flow map is its fixed
     point.
* Loss (1428, 1482, 1491–1506 and ``FLMBase._loss`` 840–842): cross-entropy ``−Σ_v target_v·log δ̂_{s,t}(x_s)_v`` per
  token on every row (diagonal and off-diagonal alike), summed over valid tokens and divided by their number. No
  time weighting (``learnable_loss_weighting: False``; when on, ``exp(−w(τ_s, τ_t))·ℓ + w``, 1508–1512).
* Modes: the loss runs inside ``training_step`` with the student in train mode, so all three student passes (the
  diagonal forward, the JVP pass and the landing pass ``δ̂_{t,t}(X_st)``) have dropout active; the teacher is in
  eval mode. Targets come from the current student (no EMA).
* The reference's LSD branch cannot run as published: ``utils.d_alpha_by_d_gamma`` (1155) is defined nowhere in the
  repository (neither at 03fbff6 nor at its latest commit), so ``_d_tau_by_d_t`` raises ``AttributeError``. Its name,
  its argument ``lut_g2a`` (the t → τ spline, ``utils.build_luts``, utils.py 565–585) and the chain rule it serves
  leave one reading, ``dτ/dt`` at t, which is what this module computes (from flowlm's exact ``T_V`` tables).

What flowlm does here (and where it differs)
--------------------------------------------
The above, on the pairs, states and cross-entropy of :func:`flowlm.methods.fmlm.psd_loss` (its deterministic split
with the reference's default shares 1/2 diagonal and 1/64 boundary; ``distill.pairs`` draws as there, ``uniform``
being the reference's). Differences, none of them in the formulas:

* ``dτ/dt`` is the derivative of flowlm's exact ``T_V`` (:func:`dtau_dt`, forward-mode through its C¹ Hermite table)
  instead of a spline of a 100-node Gauss–Hermite rule; the time conversions are flowlm's (SPEC §7).
* Sparsemax is computed in closed form (sort and threshold, :func:`sparsemax`) instead of by bisection: the same
  projection, without the bisection's ~1e-7 residual.
* Guards: ``1 − s`` is clamped at 1e-5 (flowlm's velocity guard) where the reference adds 1e-8; only rows with
  ``s`` within 1e-5 of 1 can tell the two apart, and an off-diagonal pair has ``s < t <= 1``.
* The JVP pass calls the network's body and head (``forward_features``, ``output_layer``) and applies the logit cap
  ``cap·tanh(·/cap)`` itself, and runs the attention with flowlm's ``math`` backend, because the fused logit cap
  (``flowlm.nn.dit._LogitCap``) has no forward-mode rule and neither has PyTorch's CPU ``scaled_dot_product_attention``
  (nor flash-attn). The same function is computed; ``math`` is the analogue of the reference's ``use_jvp_attn``.
* The landing pass runs in train mode (dropout active, the reference's) by default; ``distill.target_dropout=false``
  runs it in eval mode. The prediction passes run in the student's own mode (train mode while training).
* The low-rank input path (:mod:`flowlm.methods.lowrank`) is supported: the state ``x_s @ M`` is a constant of the
  JVP (only ``τ_t`` carries a tangent), and ``X_st`` is formed in that space with ``δ̂ @ M``, as PSD's ``X_{s,u}``.
* Conditional training (``clean`` positions) as in PSD: clean in every pass and in ``X_st``, out of the loss.

Cost per off-diagonal row: one forward-mode pass (about two to three forward passes' work, and its activations kept
for backward) and one student forward pass; per diagonal row one student and one teacher forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from flowlm.methods.fmlm import (
    PSD_BOUNDARY_FRAC,
    PSD_DIAG_FRAC,
    _clock,
    _eval_mode,
    _hold_clean,
    _mode,
    _pairs_and_states,
    _probs,
    _without_clean,
    flow_map_step,
    split_cross_entropy,
)
from flowlm.methods.lowrank import NaiveInputs, input_space
from flowlm.methods.lsd import lagrangian_coefficient
from flowlm.nn.dit import DiT, soft_cap
from flowlm.schedule import dtau_dt

__all__ = [
    "REFERENCE_BOUNDARY_FRAC",
    "REFERENCE_DIAG_FRAC",
    "dtau_dt",
    "end_time_derivative",
    "lagrangian_target",
    "lsd_reference_loss",
    "offdiagonal_target",
    "sparsemax",
]

REFERENCE_DIAG_FRAC = PSD_DIAG_FRAC  # fmlm.yaml diagonal_fraction: 0.5
REFERENCE_BOUNDARY_FRAC = PSD_BOUNDARY_FRAC  # (1 − 0.5)/boundary_prob, boundary_prob: 32 -> 1/64
SPARSEMAX_CHUNK = 1 << 22  # elements per sorted block: bounds the sort's [rows, V] values + int64 indices


# --- the math -----------------------------------------------------------------------------------------


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``z`` [..., V] onto the probability simplex: ``argmin_p ‖p − z‖²`` over
    ``p >= 0``, ``Σ p = 1`` (Martins & Astudillo 2016), in closed form: with ``z_(1) >= z_(2) >= ...`` sorted and
    ``k = max{j : 1 + j·z_(j) > Σ_{i<=j} z_(i)}``, ``θ = (Σ_{i<=k} z_(i) − 1)/k`` and ``p = max(z − θ, 0)``.

    The reference's ``entmax_bisect(z, 2.0)`` computes the same projection by bisection. Returns [..., V] in the dtype
    of ``z`` (a row already on the simplex is returned as it is, up to rounding). Rows are sorted in blocks of
    :data:`SPARSEMAX_CHUNK` elements.
    """
    shape = z.shape
    flat = z.reshape(-1, shape[-1])
    out = torch.empty_like(flat)
    ranks = torch.arange(1, shape[-1] + 1, device=z.device, dtype=z.dtype)
    step = max(1, SPARSEMAX_CHUNK // max(shape[-1], 1))
    for start in range(0, flat.shape[0], step):
        rows = flat[start : start + step]
        ordered = torch.sort(rows, dim=-1, descending=True).values
        cumulative = ordered.cumsum(-1)
        support = (1 + ranks * ordered > cumulative).sum(-1, keepdim=True)  # k >= 1: the top entry always counts
        theta = (cumulative.gather(-1, support - 1) - 1) / support.to(z.dtype)
        out[start : start + step] = torch.clamp(rows - theta, min=0)
    return out.view(shape)


def lagrangian_target(landed: torch.Tensor, d_delta_dt: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The reference's LSD target ``sparsemax(D_t(X_{s,t}(x)) − c·∂_t δ_{s,t}(x))`` [B, L, V].

    Args:
        landed: ``D_t(X_{s,t}(x))`` [B, L, V], the denoiser at the landing point (in the recipe: the student's own
            diagonal ``δ̂_{t,t}``).
        d_delta_dt: ``∂_t δ_{s,t}(x)`` [B, L, V], derivative in the interpolation clock t (:func:`end_time_derivative`).
        s, t: interpolation times [B] (any float dtype; the coefficient is formed in theirs, then cast).

    Returns float32 rows on the simplex. With the exact flow map of the velocity whose denoiser is ``D``, the argument
    of the projection is ``δ_{s,t}(x)`` itself, so the target is a fixed point.
    """
    c = lagrangian_coefficient(s, t).to(torch.float32).view(-1, 1, 1)
    return sparsemax(landed.float() - c * d_delta_dt.float())


@contextmanager
def _jvp_attention(net: DiT):
    """The ``math`` attention backend in every block (forward-mode rules exist for it); restored on exit."""
    saved = [block.backend for block in net.blocks]
    for block in net.blocks:
        block.backend = "math"
    try:
        yield
    finally:
        for block, backend in zip(net.blocks, saved, strict=True):
            block.backend = backend


def _end_time_function(model, x: torch.Tensor, tau_s: torch.Tensor, inputs):
    """``τ_t ↦ capped logits of model(x, τ_s, τ_t)`` [B, L, V] written with forward-mode-capable operations."""
    net = getattr(model, "_orig_mod", model)  # the eager module behind torch.compile
    if not isinstance(net, DiT):  # a plain callable (tests, toys): it must support forward-mode AD itself
        return lambda tau_t: inputs.logits(model, x, tau_s, tau_t)
    h = x[..., inputs.slots[id(model)]] if inputs.lowrank else x

    def logits(tau_t):
        with _jvp_attention(net):
            features, cond = net.forward_features(h, tau_s, tau_t, embedded=inputs.lowrank)
            return soft_cap(net.output_layer(features, cond).float(), net.config.logit_cap)

    return logits


def end_time_derivative(
    model, x: torch.Tensor, tau_s: torch.Tensor, tau_t: torch.Tensor, vocab_size: int, inputs=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's logits and ``∂_t δ̂_{s,t}(x)`` from one forward-mode pass (reference algo.py 1441–1456).

    Args:
        model: two-time network ``model(x, τ_s, τ_t) -> logits`` (a flowlm DiT, or a callable that supports
            ``torch.func.jvp``).
        x: states [B, L, V] (or [B, L, k] in the low-rank space of ``inputs``); a constant of the derivative.
        tau_s, tau_t: network times [B].
        vocab_size: V (for the clock).
        inputs: the state space of ``x`` (default: full states).

    Returns ``(logits, d_delta_dt)``: the logits [B, L, V] of ``δ̂_{s,t}(x)`` (float32, differentiable: the
    prediction, in the model's current mode) and ``∂_t δ̂ = δ̂ ⊙ (ż − Σ_v δ̂_v ż_v)·T_V'(t)`` [B, L, V] (float32,
    detached), ż the tangent of the logits along ``τ_t`` and ``t = T_V^{-1}(τ_t)``: the derivative in the
    interpolation clock, the tangent being 1 in the network clock τ_t.
    """
    inputs = NaiveInputs() if inputs is None else inputs
    logits, tangent = torch.func.jvp(_end_time_function(model, x, tau_s, inputs), (tau_t,), (torch.ones_like(tau_t),))
    with torch.no_grad():
        delta = torch.softmax(logits.float(), dim=-1)
        tangent = tangent.float()
        d_log_delta = tangent - (delta * tangent).sum(-1, keepdim=True)  # ∂_τ log δ̂
        chain = dtau_dt(_clock(tau_t, vocab_size), vocab_size).to(torch.float32).view(-1, 1, 1)
        d_delta_dt = delta * d_log_delta * chain
    return logits.float(), d_delta_dt


def offdiagonal_target(
    student,
    x: torch.Tensor,
    tau_s: torch.Tensor,
    tau_t: torch.Tensor,
    vocab_size: int,
    inputs=None,
    clean: torch.Tensor | None = None,
    target_dropout: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and target of the reference's LSD off-diagonal rows (module docstring).

    Args:
        student: the two-time network.
        x: states ``x_s`` [B, L, V] (or [B, L, k] in the low-rank space of ``inputs``).
        tau_s, tau_t: network times [B], ``τ_s <= τ_t``.
        vocab_size: V.
        inputs: the state space of ``x`` (default: full states).
        clean: [B, L] bool, positions held at their rows of ``x`` in the landing state ``X_{s,t}`` (conditional
            training).
        target_dropout: the landing pass ``δ̂_{t,t}(X_{s,t})`` in train mode (dropout active, the reference's) or in
            eval mode.

    Returns ``(logits, target)``: the student's logits [B, L, V] of ``δ̂_{s,t}(x)`` (differentiable) and the target
    ``sparsemax(δ̂_{t,t}(X_{s,t}(x)) − c·∂_t δ̂_{s,t}(x))`` [B, L, V] (float32, no gradient).
    """
    inputs = NaiveInputs() if inputs is None else inputs
    logits, d_delta_dt = end_time_derivative(student, x, tau_s, tau_t, vocab_size, inputs)
    with torch.no_grad():
        s, t = _clock(tau_s, vocab_size), _clock(tau_t, vocab_size)
        delta = torch.softmax(logits.detach(), dim=-1)
        x_st = flow_map_step(x.detach(), inputs.embed(delta).to(x.dtype), s.to(x.dtype), t.to(x.dtype))
        x_st = _hold_clean(x_st, x.detach(), clean)
        with _mode(target_dropout, student):
            landed = _probs(inputs, student, x_st, tau_t, tau_t)
        target = lagrangian_target(landed, d_delta_dt, s, t)
    return logits, target


def lsd_reference_loss(
    student,
    teacher,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    sample_offset: int = 0,
    diag_frac: float = REFERENCE_DIAG_FRAC,
    boundary_frac: float = REFERENCE_BOUNDARY_FRAC,
    weighting=None,
    mask: torch.Tensor | None = None,
    input_noise: str = "auto",
    rows: tuple[int, int] | None = None,
    target_dropout: bool = True,
    clean: torch.Tensor | None = None,
    draw: str = "uniform",
    max_jump: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The reference's LSD loss on tokens [B, L] (module docstring).

    Pairs and states as :func:`flowlm.methods.fmlm.psd_loss` (rows ``[diagonal | boundary | off-diagonal]``).
    Diagonal rows: the student's plain forward pass against the teacher's ``D_s(x_s)`` (teacher in eval mode, no
    gradient). Other rows: :func:`offdiagonal_target`. Loss ``−Σ_v target_v·log δ̂_{s,t}(x_s)_v`` averaged over valid
    tokens, or ``exp(−w(τ_s, τ_t))·ℓ + w`` per sequence with ``weighting``. ``input_noise``, ``rows``, ``clean``,
    ``draw``, ``max_jump`` as in :func:`~flowlm.methods.fmlm.psd_loss`.

    Returns ``loss``, ``ce`` (unweighted, detached), ``ce_diag`` / ``ce_off`` (over diagonal / other rows, 0 when
    there are none), ``per_sequence`` [B] (detached), ``tau_s``, ``tau_t``.
    """
    inputs = input_space(input_noise, [student, teacher], vocab_size, tokens=tokens.numel())
    tau_s, tau_t, n_diag, x_s = _pairs_and_states(
        inputs, tokens, vocab_size, generator, sample_offset, diag_frac, boundary_frac, rows, draw, max_jump,
        clean=clean,
    )  # fmt: skip
    logits, targets = [], []
    if n_diag > 0:
        logits.append(inputs.logits(student, x_s[:n_diag], tau_s[:n_diag], tau_t[:n_diag]).float())
        with torch.no_grad(), _eval_mode(teacher):
            targets.append(_probs(inputs, teacher, x_s[:n_diag], tau_s[:n_diag]))
    if n_diag < x_s.shape[0]:
        held = None if clean is None else clean[n_diag:]
        pair = offdiagonal_target(
            student, x_s[n_diag:], tau_s[n_diag:], tau_t[n_diag:], vocab_size, inputs, held, target_dropout
        )
        logits.append(pair[0])
        targets.append(pair[1])
    logits, target = torch.cat(logits), torch.cat(targets)
    return split_cross_entropy(logits, target, n_diag, _without_clean(mask, clean), weighting, tau_s, tau_t)
