"""FMLM: flow-map language model (SPEC §3, §4). Losses and samplers; no I/O, no training harness.

Flow map and two-time denoiser
------------------------------
``X_{s,t}(x_s) = x_t`` moves a state along the FLM probability-flow ODE from time s to time t (both in
the interpolation clock ``t``). It is parameterized by a two-time denoiser ``δ_{s,t}`` on the simplex:

    X_{s,t}(x) = ((1 − t)/(1 − s))·x + ((t − s)/(1 − s))·δ_{s,t}(x)  =  x + ((t − s)/(1 − s))·(δ_{s,t}(x) − x)

with ``δ_{t,t} = D_t`` (the FLM denoiser) and ``δ_{s,1} = X_{s,1}``. The network sees the τ clock:
``δ̂_{s,t}(x) = softmax(model(x, τ_s, τ_t))`` with ``τ = T_V(t)``. Composing two maps through u gives
the semigroup identity ``δ_{s,t}(x) = λ·δ_{s,u}(x) + (1 − λ)·δ_{u,t}(X_{s,u}(x))`` with
``λ = (1 − t)(u − s)/((1 − u)(t − s))`` (:func:`semigroup_lambda`).

Networks are callables ``model(x [B, L, V], tau [B], tau_end [B] | None) -> logits [B, L, V]`` (the
:class:`~flowlm.nn.dit.DiT` with ``time_inputs=2`` for flow maps, ``time_inputs=1`` for the FLM teacher).

States and ``input_noise``
--------------------------
Every state below is a linear combination of noise, one-hot rows and network outputs, so the losses and
samplers are written once against a state space (:mod:`flowlm.methods.lowrank`): ``naive`` keeps full
[B, L, V] states, ``lowrank`` keeps their exact projections onto the input matrices of every network that
sees them (student and teacher: [B, L, 2d]), ``auto`` (default) picks the latter for DiTs when V exceeds
that width. Quantities that are compared in V-space (the v1 map residuals) are written without the state,
in which they are affine with coefficient 0 (see :func:`v1_stage1_loss`), so no V-sized state is needed.

Pairs of times (PSD and the v1 recipe)
--------------------------------------
Each micro-batch is split deterministically into diagonal pairs (``τ_s = τ_t``), boundary pairs
(``(τ_s, τ_t) = (0, 1)``) and off-diagonal pairs. The split depends only on the global index of the
samples (``sample_offset``), never on how a global batch is cut into micro-batches or devices: over the
first n samples of a run there are exactly ``floor(n·boundary_frac)`` boundary pairs and
``floor((n − floor(n·boundary_frac))·diag_frac/(1 − boundary_frac))`` diagonal pairs (exact rational
arithmetic), so the shares are the configured ones up to one sample at every point of training. Pass
``sample_offset`` = the number of samples this run has already drawn before this micro-batch (for data
parallelism: ``step·global_batch + rank·micro_batches·micro_batch + micro_index·micro_batch``). Within a
micro-batch the rows are laid out ``[diagonal | boundary | off-diagonal]``; the data rows are i.i.d., so
the layout carries no information and lets the loss use slices instead of masks (no host sync).
With ``rows = (first, total)`` a loss call holds rows [first, first + B) of a global micro-batch of
``total`` rows starting at ``sample_offset``: pairs and noise are drawn for all ``total`` rows and sliced.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from contextlib import contextmanager
from fractions import Fraction

import torch
from torch import nn

from flowlm.errors import ConfigError
from flowlm.methods.common import (
    VELOCITY_GUARD,
    LossWeighting,
    check_rows,
    interpolate,
    masked_mean,
    per_sequence_mean,
    stratified_times,
    token_cross_entropy,
)
from flowlm.methods.condition import Condition
from flowlm.methods.flm import check_steps, flm_endpoint, time_grid
from flowlm.methods.lowrank import NaiveInputs, input_space
from flowlm.methods.tempering import OFF, Tempering
from flowlm.nn.dit import DiT, zero_last_time_layer
from flowlm.schedule import get_schedule

__all__ = [
    "BOUNDARY",
    "DIAGONAL",
    "OFF_DIAGONAL",
    "GAMMA_MODES",
    "check_gamma",
    "churn_step",
    "churn_times",
    "fmlm_denoise",
    "fmlm_sample",
    "flow_map_step",
    "init_stage1",
    "init_student",
    "PAIR_DRAWS",
    "curriculum_jump",
    "pair_counts",
    "pair_times",
    "psd_loss",
    "psd_target",
    "semigroup_lambda",
    "v1_stage1_loss",
    "v1_stage1_map",
    "v1_stage1_sample",
    "v1_stage2_loss",
]

DIAGONAL, BOUNDARY, OFF_DIAGONAL = 0, 1, 2
PSD_DIAG_FRAC = 0.5
PSD_BOUNDARY_FRAC = 0.5 / 32
V1_STAGE1_BOUNDARY_FRAC = 1 / 64
V1_STAGE2_BOUNDARY_FRAC = 1 / 128
PAIR_DRAWS = ("uniform", "stratified", "curriculum")
CURRICULUM_START = 1 / 16


# --- formulas -------------------------------------------------------------------------------------


def _as_time(value, like: torch.Tensor) -> torch.Tensor:
    """A time (float, () or [B] tensor) as a tensor broadcastable against ``like`` [B, ...]."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim:
        value = value.view(-1, *([1] * (like.ndim - 1)))
    return value


def flow_map_step(x: torch.Tensor, delta: torch.Tensor, s, t) -> torch.Tensor:
    """``X_{s,t}(x) = ((1 − t)/(1 − s))·x + ((t − s)/(1 − s))·δ``, written as ``x + ((t − s)/(1 − s))·(δ − x)``.

    Args:
        x: state [B, L, V] at interpolation time s.
        delta: two-time denoiser ``δ_{s,t}(x)`` [B, L, V] (with ``δ = D_s`` this is the Euler step
            ``x + (t − s)·b(x, s)`` of the FLM velocity).
        s, t: interpolation times (floats, or tensors of shape () or [B]), ``s <= t``.

    Returns the state [B, L, V] at time t. ``1 − s`` has the velocity's 1e-5 guard, so ``s = t``
    returns ``x`` even at ``s = 1``; ``t = 1`` returns ``δ``.
    """
    if not isinstance(s, torch.Tensor) and not isinstance(t, torch.Tensor):  # grid times: no tensor, no copy
        return x + (t - s) / max(1.0 - s, VELOCITY_GUARD) * (delta - x)
    s, t = _as_time(s, x), _as_time(t, x)
    return x + (t - s) / torch.clamp(1 - s, min=VELOCITY_GUARD) * (delta - x)


def semigroup_lambda(s: torch.Tensor, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Weight of the semigroup identity ``δ_{s,t} = λ·δ_{s,u} + (1 − λ)·δ_{u,t}∘X_{s,u}`` (s <= u <= t).

    ``λ = (1 − t)(u − s) / ((1 − u)(t − s))`` in the interpolation clock; it lies in [0, 1] and is 0 at
    t = 1. Where ``t = s`` (then u = s and both terms are ``δ_{s,s}``) any weight gives the same target;
    0.5 is returned there. All arguments broadcast; computed in their dtype (pass float64 for accuracy).
    """
    span = t - s
    ok = span > 0
    lam = (1 - t) * (u - s) / (torch.clamp(1 - u, min=VELOCITY_GUARD) * torch.where(ok, span, torch.ones_like(span)))
    return torch.where(ok, lam, torch.full_like(lam, 0.5)).clamp(0.0, 1.0)


# --- initialization --------------------------------------------------------------------------------


def _two_time_copy(teacher: DiT, **overrides) -> DiT:
    if not isinstance(teacher, DiT):
        raise ConfigError(f"the teacher must be a flowlm DiT (got {type(teacher).__name__})")
    if teacher.config.time_inputs != 1:
        raise ConfigError("the teacher must be an FLM (time_inputs=1): distill flow maps from an FLM checkpoint")
    # A self-conditioned teacher is distilled as the distillation calls it, without an estimate: the student reads
    # none, so it has no self-conditioning map.
    cfg = dataclasses.replace(teacher.config, time_inputs=2, self_condition=False, **overrides)
    ref = next(teacher.parameters())
    net = DiT(cfg).to(device=ref.device, dtype=ref.dtype)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("self_cond.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(("sigma_map_prime.", "end_map.")) for k in missing):
        raise ConfigError(f"teacher weights do not fit a flow-map DiT (missing {missing}, unexpected {unexpected})")
    with torch.no_grad():
        # Second time embedder: first layer copied from the first embedder (so the copy is fully
        # determined by the teacher), last layer zero so that it adds nothing at initialization.
        net.sigma_map_prime.mlp[0].load_state_dict(teacher.sigma_map.mlp[0].state_dict())
    zero_last_time_layer(net.sigma_map_prime)
    net.train(teacher.training)
    return net


def init_student(teacher: DiT, end_stretch: bool = False) -> DiT:
    """Flow-map student (SPEC §3): a DiT with ``time_inputs=2`` holding a copy of the teacher's weights.

    Pass the teacher with its EMA weights loaded. The second time embedder's last layer is zero, so at
    initialization ``student(x, τ_s, τ_t) == teacher(x, τ_s)`` for every τ_t, i.e. ``δ̂_{s,t} = D_s``.
    The copy shares no storage with the teacher and lives on its device and dtype. ``end_stretch``: add the third
    time embedding of :func:`flowlm.nn.dit.end_stretch_clock` (its last layer zero too, so the identity above holds).
    """
    return _two_time_copy(teacher, end_stretch=end_stretch)


def init_stage1(teacher: DiT, end_stretch: bool = False) -> DiT:
    """Raw-output network ``g(x, τ_s, τ_t)`` of the v1 recipe (SPEC §4), initialized from the teacher.

    Same as :func:`init_student` but without the logit soft-cap (``logit_cap=None``) and with the output
    linear layer zeroed, so ``g ≡ 0`` at initialization.
    """
    net = _two_time_copy(teacher, logit_cap=None, end_stretch=end_stretch)
    with torch.no_grad():
        nn.init.zeros_(net.output_layer.linear.weight)
        nn.init.zeros_(net.output_layer.linear.bias)
    return net


@contextmanager
def _mode(training: bool, *models):
    """Put every ``nn.Module`` among ``models`` in train (dropout active) or eval mode; restore all flags on exit."""
    saved = [(m, m.training) for model in models if isinstance(model, nn.Module) for m in model.modules()]
    for model in models:
        if isinstance(model, nn.Module):
            model.train(training)
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def _eval_mode(*models):
    """Eval mode (no dropout) for ``models`` within the block; modes restored on exit."""
    return _mode(False, *models)


# --- pairs of times ----------------------------------------------------------------------------------


def _check_fraction(name: str, value) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name}={value!r}: use a fraction of the batch in [0, 1]")
    return Fraction(float(value))


def _cumulative_counts(n: int, diag: Fraction, boundary: Fraction) -> tuple[int, int]:
    """(diagonal, boundary) counts among the first n samples of a run (exact integer arithmetic)."""
    n_boundary = math.floor(n * boundary)
    n_diag = 0 if boundary == 1 else math.floor((n - n_boundary) * diag / (1 - boundary))
    return n_diag, n_boundary


def pair_counts(
    batch_size: int,
    sample_offset: int = 0,
    diag_frac: float = PSD_DIAG_FRAC,
    boundary_frac: float = PSD_BOUNDARY_FRAC,
) -> tuple[int, int, int]:
    """Numbers of (diagonal, boundary, off-diagonal) pairs in the micro-batch of samples
    ``[sample_offset, sample_offset + batch_size)`` of a run.

    Deterministic and additive: the counts of consecutive micro-batches add up to those of the union,
    and over the first n samples there are ``floor(n·boundary_frac)`` boundary pairs and
    ``floor((n − #boundary)·diag_frac/(1 − boundary_frac))`` diagonal ones (see the module docstring).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ConfigError(f"batch_size={batch_size!r}: use a non-negative integer")
    if isinstance(sample_offset, bool) or not isinstance(sample_offset, int) or sample_offset < 0:
        raise ConfigError(f"sample_offset={sample_offset!r}: use the number of samples drawn so far (an int >= 0)")
    diag, boundary = _check_fraction("diag_frac", diag_frac), _check_fraction("boundary_frac", boundary_frac)
    if diag + boundary > 1:
        raise ConfigError(f"diag_frac + boundary_frac = {float(diag + boundary)} > 1: the fractions must leave room")
    d0, b0 = _cumulative_counts(sample_offset, diag, boundary)
    d1, b1 = _cumulative_counts(sample_offset + batch_size, diag, boundary)
    n_diag, n_boundary = d1 - d0, b1 - b0
    return n_diag, n_boundary, batch_size - n_diag - n_boundary


def curriculum_jump(sample_offset: int, total_samples: int, frac: float) -> float:
    """Longest off-diagonal jump ``τ_t − τ_s`` of the ``curriculum`` draw at sample ``sample_offset`` of a run of
    ``total_samples``: ``min(1, max(1/16, n/(frac·N)))``, growing linearly from short jumps to the full clock over
    the first ``frac`` of the run (``frac = 0``: 1 from the start)."""
    if frac <= 0 or total_samples <= 0:
        return 1.0
    return min(1.0, max(CURRICULUM_START, sample_offset / (frac * total_samples)))


def pair_times(
    batch_size: int,
    sample_offset: int = 0,
    diag_frac: float = PSD_DIAG_FRAC,
    boundary_frac: float = PSD_BOUNDARY_FRAC,
    generator: torch.Generator | None = None,
    device=None,
    draw: str = "uniform",
    max_jump: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs ``(τ_s, τ_t)`` for one micro-batch, laid out ``[diagonal | boundary | off-diagonal]``.

    Counts from :func:`pair_counts`. Diagonal: ``τ_s = τ_t`` stratified over the diagonal rows in [0, 1).
    Boundary: ``(0, 1)``. Off-diagonal: a jump ``d`` in (0, 1], ``τ_s = U[0, 1)·(1 − d)``, ``τ_t = τ_s + d``, so
    ``0 <= τ_s < τ_t <= 1``. ``draw`` says how d is drawn: ``uniform`` ``d = 1 − U[0, 1)`` (SPEC §3),
    ``stratified`` one d in each interval ``(1 − (i+1)/n, 1 − i/n]`` of the n off-diagonal rows (shuffled), or
    ``curriculum`` ``d = max_jump·(1 − U[0, 1))`` (``max_jump`` from :func:`curriculum_jump`).

    Returns ``tau_s`` [B], ``tau_t`` [B] (float32) and ``kind`` [B] (int64: DIAGONAL, BOUNDARY,
    OFF_DIAGONAL).
    """
    if draw not in PAIR_DRAWS:
        raise ConfigError(f"distill.pairs={draw!r}: choose one of {', '.join(PAIR_DRAWS)}")
    counts = pair_counts(batch_size, sample_offset, diag_frac, boundary_frac)
    n_diag, n_boundary, n_off = counts
    diag = stratified_times(n_diag, generator, device)
    if draw == "stratified":
        d = 1.0 - stratified_times(n_off, generator, device)
    else:  # (0, 1]: never a diagonal pair
        d = 1.0 - torch.rand(n_off, generator=generator, device=device)
        if draw == "curriculum":
            d = d * max_jump
    start = torch.rand(n_off, generator=generator, device=device) * (1.0 - d)
    zeros, ones = torch.zeros(n_boundary, device=device), torch.ones(n_boundary, device=device)
    tau_s = torch.cat([diag, zeros, start])
    tau_t = torch.cat([diag, ones, torch.clamp(start + d, max=1.0)])
    kinds = (DIAGONAL, BOUNDARY, OFF_DIAGONAL)
    kind = torch.cat([torch.full((n,), k, device=device) for n, k in zip(counts, kinds, strict=True)])
    return tau_s, tau_t, kind


def _time_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _clock(tau: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``t = T_V^{-1}(τ)`` computed in float64 (float32 on MPS), shape of ``tau``."""
    return get_schedule(vocab_size, tau.device).t_from_tau(tau.to(_time_dtype(tau.device)))


def _pairs_and_states(
    inputs, tokens, vocab_size, generator, sample_offset, diag_frac, boundary_frac, rows, draw="uniform", max_jump=1.0,
    clean=None,
):
    """Pairs for a global micro-batch of ``total`` rows (``draw``, ``max_jump``: :func:`pair_times`), its noise,
    both sliced to this call's rows.

    Returns ``tau_s``, ``tau_t`` [B], the number of diagonal rows among them and the states
    ``x_s = (1 − s)·x₀ + s·x₁`` with ``s = T⁻¹(τ_s)`` (in the space of ``inputs``); positions of ``clean``
    [B, L] (bool, conditional training) hold their one-hot row ``x₁`` instead (t = 1, no noise).
    """
    batch, seq = tokens.shape
    first, total = check_rows(rows, batch)
    n_diag = pair_counts(total, sample_offset, diag_frac, boundary_frac)[0]
    tau_s, tau_t, _ = pair_times(
        total, sample_offset, diag_frac, boundary_frac, generator, tokens.device, draw=draw, max_jump=max_jump
    )
    x0 = inputs.noise(total, seq, vocab_size, generator, tokens.device)
    keep = slice(first, first + batch)
    tau_s, tau_t = tau_s[keep], tau_t[keep]
    x1 = inputs.tokens(tokens, vocab_size)
    x_s = interpolate(x0[keep], x1, _clock(tau_s, vocab_size))
    if clean is not None:
        x_s = torch.where(clean[..., None], x1.to(x_s.dtype), x_s)
    return tau_s, tau_t, min(max(n_diag - first, 0), batch), x_s


def _hold_clean(x: torch.Tensor, x_s: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
    """``x`` [B, L, k] with the clean positions [B, L] put back to their rows of ``x_s`` (their one-hot rows):
    an intermediate state of a target keeps the context clean, as the conditional sampler does."""
    return x if clean is None else torch.where(clean[..., None], x_s, x)


def _without_clean(mask: torch.Tensor | None, clean: torch.Tensor | None) -> torch.Tensor | None:
    """The loss mask [B, L] without the clean positions (they are given, not predicted)."""
    if clean is None:
        return mask
    return ~clean if mask is None else mask.bool() & ~clean


def _weighted(per_token, mask, weighting, tau_s, tau_t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, unweighted masked mean, per-sequence means [B]) of a per-token loss [B, L]."""
    mean = masked_mean(per_token, mask)
    per_sequence = per_sequence_mean(per_token, mask)
    if weighting is None:
        return mean, mean, per_sequence
    return LossWeighting.apply(per_sequence, weighting(tau_s, tau_t)), mean, per_sequence


# --- PSD distillation (main recipe) ------------------------------------------------------------------


def _probs(inputs, model, x: torch.Tensor, tau: torch.Tensor, tau_end: torch.Tensor | None = None) -> torch.Tensor:
    return torch.softmax(inputs.logits(model, x, tau, tau_end).float(), dim=-1)


@torch.no_grad()
def psd_target(
    student,
    teacher,
    x_s: torch.Tensor,
    tau_s: torch.Tensor,
    tau_t: torch.Tensor,
    n_diag: int,
    vocab_size: int,
    inputs=None,
    target_dropout: bool = True,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """PSD targets [B, L, V] (no gradient), rows laid out as :func:`pair_times` does.

    Rows ``[:n_diag]`` (diagonal): the teacher's denoiser ``D_s(x_s) = softmax(teacher(x_s, τ_s))``.
    Other rows (boundary and off-diagonal alike): the midpoint composition through ``τ_u = (τ_s + τ_t)/2``
    with the current student, ``λ·δ̂_{s,u}(x_s) + (1 − λ)·δ̂_{u,t}(X_{s,u}(x_s))``, ``s, u, t = T⁻¹(τ_s, τ_u,
    τ_t)``; at the boundary ``(0, 1)`` that is ``δ̂_{½,1}(X_{0,u}(x_0))`` since λ = 0 at t = 1.
    The teacher runs in eval mode (no dropout). The two student passes run in train mode, dropout active, as
    in the reference (``target_dropout=True``, default), or in eval mode (``target_dropout=False``); modes are
    restored afterwards. ``inputs``: the state space of ``x_s`` (default: full [B, L, V] states); ``X_{s,u}`` is
    formed in it with ``δ̂_{s,u} @ W``. ``clean`` [B, L] (bool, conditional training): positions whose rows of ``x_s``
    are their clean one-hot rows; ``X_{s,u}(x_s)`` keeps them there, so the student's second pass sees the same
    clean context as the first (the teacher sees it in ``x_s``).
    """
    inputs = NaiveInputs() if inputs is None else inputs
    target = torch.empty((*x_s.shape[:2], vocab_size), dtype=torch.float32, device=x_s.device)
    if n_diag > 0:
        with _eval_mode(teacher):
            target[:n_diag] = _probs(inputs, teacher, x_s[:n_diag], tau_s[:n_diag])
    if n_diag < x_s.shape[0]:
        x, ts, tt = x_s[n_diag:], tau_s[n_diag:], tau_t[n_diag:]
        tu = (ts + tt) / 2
        s, u, t = (_clock(tau, vocab_size) for tau in (ts, tu, tt))
        lam = semigroup_lambda(s, u, t).to(torch.float32).view(-1, 1, 1)
        with _mode(target_dropout, student):
            d_su = _probs(inputs, student, x, ts, tu)
            x_su = flow_map_step(x, inputs.embed(d_su).to(x.dtype), s.to(x.dtype), u.to(x.dtype))
            x_su = _hold_clean(x_su, x, None if clean is None else clean[n_diag:])
            d_ut = _probs(inputs, student, x_su, tu, tt)
        target[n_diag:] = lam * d_su + (1 - lam) * d_ut
    return target


def _boundary_slice(batch: int, rows, sample_offset: int, diag_frac: float, boundary_frac: float) -> slice:
    """The boundary rows ``(τ_s, τ_t) = (0, 1)`` of this call's ``batch`` rows (laid out as :func:`pair_times`
    does them in the global micro-batch of ``rows = (first, total)``), as a slice."""
    first, total = check_rows(rows, batch)
    n_diag, n_boundary, _ = pair_counts(total, sample_offset, diag_frac, boundary_frac)
    start = min(max(n_diag - first, 0), batch)
    return slice(start, min(max(n_diag + n_boundary - first, start), batch))


def anchor_boundary(target: torch.Tensor, teacher, x_s: torch.Tensor, edge: slice, vocab_size: int, steps: int,
                    inputs=None, clean: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Targets [B, L, V] whose boundary rows ``edge`` (pairs (0, 1), states ``x_s = x₀``) are the teacher's own
    ``steps``-step sampler output from the same state (:func:`~flowlm.methods.flm.flm_endpoint`, teacher in eval
    mode, no gradient, clean positions of ``clean`` [B, L] held clean) instead of the student's composition.

    Why: PSD's composition target at (s, 1) is met exactly by a map that writes one constant sequence from every
    start (distill.end_stretch collapsed so on two of three data sets); the teacher's sampler is an anchor the
    student cannot move. Cost: ``steps`` teacher forwards per boundary row (1/64 of the rows by default).
    """
    if steps <= 0 or edge.start == edge.stop:
        return target
    x = x_s[edge]
    held = None if clean is None else clean[edge]
    hold = None if held is None else (lambda state: _hold_clean(state, x, held))
    with torch.no_grad(), _eval_mode(teacher):
        target[edge] = flm_endpoint(teacher, x, 0.0, vocab_size, steps, inputs, hold)
    return target


def psd_loss(
    student,
    teacher,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    sample_offset: int = 0,
    diag_frac: float = PSD_DIAG_FRAC,
    boundary_frac: float = PSD_BOUNDARY_FRAC,
    weighting: LossWeighting | None = None,
    mask: torch.Tensor | None = None,
    input_noise: str = "auto",
    rows: tuple[int, int] | None = None,
    target_dropout: bool = True,
    clean: torch.Tensor | None = None,
    draw: str = "uniform",
    max_jump: float = 1.0,
    boundary_teacher_steps: int = 0,
) -> dict[str, torch.Tensor]:
    """PSD (semigroup self-distillation from a frozen FLM teacher, SPEC §3) on tokens [B, L].

    Pairs from :func:`pair_times` (``sample_offset`` = samples drawn before this micro-batch), states
    ``x_s = (1 − s)·x₀ + s·x₁`` with ``s = T⁻¹(τ_s)``, targets from :func:`psd_target` (teacher under
    ``no_grad``: no gradient ever reaches it), loss ``−Σ_v target_v·log δ̂_{s,t}(x_s)_v`` averaged over
    valid tokens; with ``weighting`` (a ``LossWeighting(two_times=True)``) the per-sequence mean ℓ is
    replaced by ``exp(−w(τ_s, τ_t))·ℓ + w``.

    ``input_noise`` (auto | lowrank | naive) and ``rows`` (first, total): see the module docstring.
    ``target_dropout``: the student passes of the off-diagonal targets with dropout (default, the reference's)
    or without (:func:`psd_target`). ``draw``, ``max_jump``: how off-diagonal jumps are drawn (:func:`pair_times`).
    ``clean`` [B, L] (bool, conditional training, as :func:`~flowlm.methods.flm.flm_loss`): those positions are
    given clean (their one-hot, t = 1, no noise) to the student and to every network building the target, and
    left out of the loss. ``boundary_teacher_steps`` > 0: the boundary rows' targets are the teacher's sampler
    output with that many steps (:func:`anchor_boundary`) instead of the composition.

    Returns ``loss`` (to minimize), ``ce`` (unweighted cross-entropy, detached), ``ce_diag`` /
    ``ce_off`` (the same over diagonal / other rows, 0 when there are none), ``per_sequence`` [B]
    (detached), ``tau_s``, ``tau_t`` [B].
    """
    inputs = input_space(input_noise, [student, teacher], vocab_size, tokens=tokens.numel())
    tau_s, tau_t, n_diag, x_s = _pairs_and_states(
        inputs, tokens, vocab_size, generator, sample_offset, diag_frac, boundary_frac, rows, draw, max_jump,
        clean=clean,
    )  # fmt: skip
    logits = inputs.logits(student, x_s, tau_s, tau_t)
    target = psd_target(student, teacher, x_s, tau_s, tau_t, n_diag, vocab_size, inputs, target_dropout, clean)
    if boundary_teacher_steps > 0:
        edge = _boundary_slice(tokens.shape[0], rows, sample_offset, diag_frac, boundary_frac)
        target = anchor_boundary(target, teacher, x_s, edge, vocab_size, boundary_teacher_steps, inputs, clean)
    return split_cross_entropy(logits, target, n_diag, _without_clean(mask, clean), weighting, tau_s, tau_t)


def split_cross_entropy(logits, target, n_diag, mask, weighting, tau_s, tau_t) -> dict[str, torch.Tensor]:
    """The flow-map losses' result from logits and targets [B, L, V] whose first ``n_diag`` rows are diagonal pairs:
    ``loss`` (:func:`_weighted` of the token cross-entropy under ``mask`` [B, L]), ``ce`` (unweighted, detached),
    ``ce_diag`` / ``ce_off`` (over diagonal / other rows, 0 when there are none), ``per_sequence`` [B] (detached),
    ``tau_s``, ``tau_t``."""
    ce = token_cross_entropy(logits, target)
    loss, mean_ce, per_sequence = _weighted(ce, mask, weighting, tau_s, tau_t)
    with torch.no_grad():
        m = torch.ones_like(ce) if mask is None else mask.to(ce.dtype)
        parts = [
            (ce[rows] * m[rows]).sum() / m[rows].sum().clamp(min=1) for rows in (slice(0, n_diag), slice(n_diag, None))
        ]
    return {
        "loss": loss,
        "ce": mean_ce.detach(),
        "ce_diag": parts[0],
        "ce_off": parts[1],
        "per_sequence": per_sequence.detach(),
        "tau_s": tau_s,
        "tau_t": tau_t,
    }


# --- sampling ----------------------------------------------------------------------------------------


GAMMA_MODES = ("paper", "exact")


def check_gamma(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0.0 <= float(gamma) <= 1.0:
        raise ConfigError(f"gamma={gamma!r}: the churn of the flow-map sampler must be a number in [0, 1]")
    return float(gamma)


def check_gamma_mode(mode) -> str:
    if mode not in GAMMA_MODES:
        raise ConfigError(f"gamma_mode={mode!r}: choose 'paper' (the reference's sampler) or 'exact'")
    return mode


def churn_times(t_next: float, gamma: float, mode: str = "paper") -> tuple[float, float, float]:
    """One step of the γ-sampler to the grid time ``t' = t_next`` (``σ = 1 − t'``): ``(t̃, a, c)`` such that the next
    state is ``x' = a·X_{t,t̃}(x) + c·δ̂_{t,t̃}(x) + γσ·ξ`` (``ξ ~ N(0, I)``, one network call at ``(τ_k, T(t̃))``).

    ``paper`` (SPEC §3, the reference's formula): ``σ̃ = σ√(1 − γ²)``, ``t̃ = 1 − σ̃``, ``a = 1``, ``c = σ̃ − σ``.
    With the exact ``δ`` this keeps the law of ``x_{t'}`` only for γ ∈ {0, 1}: the mean correction ``c·δ`` stands in
    for ``c·x₁``, so the noise it leaves has the wrong size when δ is uncertain.

    ``exact``: ``r = σ√(1 − γ²)``, ``t̃ = t'/(t' + r)``, ``a = t'/t̃``, ``c = 0``. If ``x ~ t·x₁ + (1 − t)·ε`` then
    ``X_{t,t̃}(x) ~ t̃·x₁ + (1 − t̃)·ε``, and ``(t'/t̃)(1 − t̃) = r``, so ``x' ~ t'·x₁ + r·ε + γσ·ξ`` whose noise
    has variance ``r² + γ²σ² = σ²``: the law of ``x_{t'}`` for any data law. ``t' <= t̃ <= 1`` (as ``r <= σ``).
    Both modes give ``t̃ = t'``, ``x' = X_{t,t'}(x)`` at γ = 0 and ``t̃ = 1``, ``x' = t'·δ̂_{t,1} + σξ`` at γ = 1.
    """
    sigma = 1.0 - t_next
    if check_gamma_mode(mode) == "paper":
        sigma_tilde = sigma * math.sqrt(1.0 - gamma * gamma)
        return 1.0 - sigma_tilde, 1.0, sigma_tilde - sigma
    r = sigma * math.sqrt(1.0 - gamma * gamma)
    t_tilde = t_next / (t_next + r)
    return t_tilde, t_next / t_tilde, 0.0


def churn_step(
    x: torch.Tensor,
    delta: torch.Tensor,
    t: float,
    t_next: float,
    gamma: float,
    noise: torch.Tensor | float,
    mode: str = "paper",
) -> torch.Tensor:
    """``x' = a·X_{t,t̃}(x) + c·δ + γσ·ξ`` (:func:`churn_times`) for ``x``, ``delta = δ̂_{t,t̃}(x)`` and the standard
    normal ``noise`` ξ, all of one shape (any: [B, L, V] states, or a toy's [N])."""
    t_tilde, a, c = churn_times(t_next, gamma, mode)
    x = flow_map_step(x, delta, t, t_tilde)
    if a != 1.0:
        x = a * x
    if c != 0.0:
        x = x + c * delta
    return x + gamma * (1.0 - t_next) * noise if gamma > 0.0 else x


def fmlm_denoise(
    model, x: torch.Tensor, tau_s: float, tau_t: float, inputs=None, tempering: Tempering = OFF
) -> torch.Tensor:
    """``δ̂_{s,t}(x) = softmax(model(x, τ_s, τ_t))`` [B, L, V] at scalar network times τ_s, τ_t
    (``inputs``: the state space of ``x``, default full [B, L, V] states; ``tempering``: its temperature / top-p)."""
    full = lambda v: torch.full((x.shape[0],), float(v), device=x.device)  # noqa: E731
    inputs = NaiveInputs() if inputs is None else inputs
    return tempering.probs(inputs.logits(model, x, full(tau_s), full(tau_t)).float())


@torch.no_grad()
def fmlm_sample(
    model,
    num_samples: int,
    seq_len: int,
    vocab_size: int,
    steps: int,
    gamma: float = 0.0,
    generator: torch.Generator | None = None,
    device=None,
    x0: torch.Tensor | None = None,
    input_noise: str = "auto",
    gamma_mode: str = "paper",
    condition: Condition | None = None,
    tempering: Tempering = OFF,
) -> torch.Tensor:
    """Flow-map sampler with churn γ (SPEC §3); returns tokens [num_samples, seq_len].

    Grid ``τ_k = k/N``. Step k: ``t = T⁻¹(τ_k)``, ``t' = T⁻¹(τ_{k+1})``, ``σ = 1 − t'``; ``t̃`` from
    :func:`churn_times` (``gamma_mode``), ``τ̃ = T(t̃)`` (``τ̃ = τ_{k+1}`` exactly when γ = 0), ``δ = δ̂_{τ_k, τ̃}(x)``;
    the last step returns arg-max δ, the others :func:`churn_step`. ``paper`` (default, the paper's numbers):
    ``σ̃ = σ·√(1 − γ²)``, ``t̃ = 1 − σ̃``, ``x ← X_{t,t̃}(x) + (σ̃ − σ)·δ + γσ·ξ``; ``exact``: ``t̃ = t'/(t' + σ√(1 − γ²))``,
    ``x ← (t'/t̃)·X_{t,t̃}(x) + γσ·ξ``, which keeps the law of ``x_{t'}`` for every γ. ``ξ ~ N(0, I)`` is drawn from
    ``generator``. γ = 0 is the deterministic chain of flow maps ``X_{t_k, t_{k+1}}`` (both modes); γ = 1 re-noises
    the clean estimate ``δ̂_{τ_k,1}`` to time ``t_{k+1}``. N = 1 is one call: arg-max ``δ̂_{0,1}(x₀)``.
    ``x0`` (default: drawn from ``generator``) is the starting noise [n, L, V]. In the low-rank space
    (``input_noise``) the state is ``x @ W``, δ enters as ``δ @ W`` and ξ is drawn as ``ε·Cᵀ``.
    ``condition``: known positions are put on their exact path (their own x₀) at every step's start time and
    keep their ids in the output (:mod:`flowlm.methods.condition`). ``tempering`` (off by default): every δ is
    tempered, and the last step draws each token from it instead of the arg-max (:mod:`flowlm.methods.tempering`).
    """
    check_steps(steps)
    gamma = check_gamma(gamma)
    check_gamma_mode(gamma_mode)
    inputs = input_space(input_noise, [model], vocab_size, tokens=num_samples * seq_len * steps)
    x = inputs.noise(num_samples, seq_len, vocab_size, generator, device) if x0 is None else inputs.embed(x0)
    if condition is not None:
        start, target = x, inputs.tokens(condition.ids, vocab_size)
    taus, ts = time_grid(vocab_size, steps)
    if gamma == 0.0:
        tau_tildes = taus[1:]
    else:  # τ̃ = T(t̃), computed on the host before the loop
        t_tildes = torch.tensor([churn_times(t, gamma, gamma_mode)[0] for t in ts[1:]], dtype=torch.float64)
        tau_tildes = get_schedule(vocab_size, "cpu").tau_from_t(t_tildes).tolist()
    for k in range(steps):
        if condition is not None:
            x = condition.hold(x, start, target, ts[k])
        delta = fmlm_denoise(model, x, taus[k], tau_tildes[k], inputs, tempering)
        if k == steps - 1:
            tokens = tempering.tokens(delta, generator)
            return tokens if condition is None else condition.fill(tokens)
        delta = inputs.embed(delta).to(x.dtype)
        noise = inputs.noise(x.shape[0], x.shape[1], vocab_size, generator, x.device).to(x.dtype) if gamma else 0.0
        x = churn_step(x, delta, ts[k], ts[k + 1], gamma, noise, gamma_mode)
    raise AssertionError("unreachable")  # pragma: no cover


# --- seed-version recipe (SPEC §4) ---------------------------------------------------------------------


def v1_stage1_map(
    g_net, teacher, x: torch.Tensor, tau_s: torch.Tensor, tau_t: torch.Tensor, s, t, inputs=None
) -> torch.Tensor:
    """Stage-1 map ``X_{s,t}(x) = x + Δ·b_T(x, s) + ½Δ²·g(x, τ_s, τ_t)``, ``Δ = t − s`` [B, L, V].

    ``tau_s, tau_t`` [B] are what the networks see; ``s, t`` the matching interpolation times (floats or
    tensors () / [B]). At t = 1 the map is ``D_T(x, τ_s) + ½(1 − s)²·g``. Gradients flow to whatever
    network has them enabled (use under ``torch.no_grad`` for targets and sampling). ``inputs``: the state
    space of ``x`` (default full [B, L, V] states); the result is in the same space (``D_T @ W``, ``g @ W``).
    """
    inputs = NaiveInputs() if inputs is None else inputs
    denoised = inputs.embed(_probs(inputs, teacher, x, tau_s)).to(x.dtype)
    raw = inputs.embed(inputs.logits(g_net, x, tau_s, tau_t).to(x.dtype))
    return flow_map_step(x, denoised, s, t) + _half_square(s, t, x) * raw


def _half_square(s, t, like: torch.Tensor):
    """``½(t − s)²`` as a float (grid times) or a tensor broadcastable against ``like``."""
    if not isinstance(s, torch.Tensor) and not isinstance(t, torch.Tensor):
        return 0.5 * (t - s) ** 2
    span = _as_time(t, like) - _as_time(s, like)
    return 0.5 * span * span


def _v1_pairs(inputs, tokens, vocab_size, generator, sample_offset, boundary_frac, rows, clean):
    """Off-diagonal and boundary pairs with their τ-midpoint; float64 clocks s, u, t [B]; states x_s (the positions
    of ``clean`` at their one-hot rows)."""
    tau_s, tau_t, _, x_s = _pairs_and_states(
        inputs, tokens, vocab_size, generator, sample_offset, 0.0, boundary_frac, rows, clean=clean
    )
    tau_u = (tau_s + tau_t) / 2
    s, u, t = (_clock(tau, vocab_size) for tau in (tau_s, tau_u, tau_t))
    return tau_s, tau_u, tau_t, s, u, t, x_s


def v1_stage1_loss(
    g_net,
    teacher,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    sample_offset: int = 0,
    boundary_frac: float = V1_STAGE1_BOUNDARY_FRAC,
    weighting: LossWeighting | None = None,
    mask: torch.Tensor | None = None,
    input_noise: str = "auto",
    rows: tuple[int, int] | None = None,
    clean: torch.Tensor | None = None,
    target_dropout: bool = True,
) -> dict[str, torch.Tensor]:
    """Stage 1 of the v1 recipe (SPEC §4): semigroup-bootstrapped MSE for the raw network ``g``.

    Pairs: off-diagonal ``d ~ U(0, 1]``, ``τ_s ~ U[0, 1 − d)``, ``τ_t = τ_s + d`` and the boundary pair
    (0, 1) for a ``boundary_frac`` share of the samples (the deterministic split of :func:`pair_counts`
    rather than an independent coin per sample: same expected share, exact at every step). With
    ``τ_u = (τ_s + τ_t)/2``, ``Δ₁ = u − s``, ``Δ₂ = t − u``, ``Δ = t − s`` (interpolation clock):

    * target (no grad): ``v̂_{s,u} = b_T(x_s, s) + ½Δ₁·g(x_s, τ_s, τ_u)``, ``y = x_s + Δ₁·v̂_{s,u}``,
      ``v̂_{u,t} = b_T(y, u) + ½Δ₂·g(y, τ_u, τ_t)``, ``v̄ = (Δ₁·v̂_{s,u} + Δ₂·v̂_{u,t})/Δ``,
      target ``x_s + (1 − s)·v̄``;
    * prediction: ``D_T(x_s, τ_s) + ½·Δ·(1 − s)·g(x_s, τ_s, τ_t)`` (= ``x_s + (1 − s)·v̂_{s,t}``);
    * loss: squared error summed over V, averaged over valid tokens, or ``exp(−w(τ_s))·ℓ + w(τ_s)`` per sequence
      with ``weighting`` (a one-time ``LossWeighting()``, its parameters trained with g's): it sees τ_s only,
      as the reference's learnable weighting, which ignores the end time.

    The target is affine in x_s with coefficient 0, and is computed in that form (exactly equal, and no
    V-sized state needed): with ``A = D_T(x_s, τ_s) + ½Δ₁(1 − s)·g(x_s, τ_s, τ_u)`` (so that
    ``(1 − s)·v̂_{s,u} = A − x_s`` and ``y = X_{s,u}`` of :func:`flow_map_step` with A in place of δ) and
    ``B = ((1 − s)·D_T(y, τ_u) − Δ₁·A)/(1 − u) + ½Δ₂(1 − s)·g(y, τ_u, τ_t)`` (so that
    ``(1 − s)·v̂_{u,t} = B − x_s``), the target is ``(Δ₁/Δ)·A + (Δ₂/Δ)·B``.

    The teacher runs under ``no_grad`` in eval mode; the target's g calls in train mode, dropout active, as in the
    reference (``target_dropout=True``, default), or in eval mode (``target_dropout=False``). ``input_noise`` and
    ``rows``: see the module docstring. ``clean`` [B, L] (conditional training): those positions are given as
    their one-hot rows in ``x_s`` and in ``y`` (held there after the half step) and left out of the loss.
    Returns ``loss``, ``mse`` (unweighted, detached), ``per_sequence`` [B] (detached), ``tau_s``, ``tau_t``.
    """
    inputs = input_space(input_noise, [g_net, teacher], vocab_size, tokens=tokens.numel())
    tau_s, tau_u, tau_t, s64, u64, t64, x_s = _v1_pairs(
        inputs, tokens, vocab_size, generator, sample_offset, boundary_frac, rows, clean
    )
    mask = _without_clean(mask, clean)
    col = lambda v: v.to(torch.float32).view(-1, 1, 1)  # noqa: E731
    span = t64 - s64
    w1 = torch.where(span > 0, (u64 - s64) / torch.where(span > 0, span, 1.0), 0.5)  # Δ₁/Δ
    s, d1, d2, dt, w1 = col(s64), col(u64 - s64), col(t64 - u64), col(span), col(w1)
    one_minus_u = torch.clamp(1 - col(u64), min=VELOCITY_GUARD)
    with torch.no_grad(), _eval_mode(teacher):
        denoised = _probs(inputs, teacher, x_s, tau_s)
        with _mode(target_dropout, g_net):
            a = denoised + 0.5 * d1 * (1 - s) * inputs.logits(g_net, x_s, tau_s, tau_u).float()
            y = flow_map_step(x_s, inputs.embed(a).to(x_s.dtype), s64.to(x_s.dtype), u64.to(x_s.dtype))
            y = _hold_clean(y, x_s, clean)
            b = ((1 - s) * _probs(inputs, teacher, y, tau_u) - d1 * a) / one_minus_u
            b = b + 0.5 * d2 * (1 - s) * inputs.logits(g_net, y, tau_u, tau_t).float()
        target = w1 * a + (1 - w1) * b
    pred = denoised + 0.5 * dt * (1 - s) * inputs.logits(g_net, x_s, tau_s, tau_t).float()
    err = (pred - target).pow(2).sum(-1)
    loss, mean, per_sequence = _weighted(err, mask, weighting, tau_s, None)
    return {"loss": loss, "mse": mean.detach(), "per_sequence": per_sequence.detach(), "tau_s": tau_s, "tau_t": tau_t}


@torch.no_grad()
def v1_stage1_sample(
    g_net,
    teacher,
    num_samples: int,
    seq_len: int,
    vocab_size: int,
    steps: int,
    generator: torch.Generator | None = None,
    device=None,
    x0: torch.Tensor | None = None,
    input_noise: str = "auto",
    condition: Condition | None = None,
) -> torch.Tensor:
    """Sampler of the stage-1 map: ``x ← X_{t_k, t_{k+1}}(x)`` on the grid ``τ_k = k/N`` (two network
    calls per step, teacher and g), tokens = arg-max of the final state, which at t = 1 is
    ``D_T + ½(1 − t_{N−1})²·g`` (computed in that form: no V-sized state is needed). With ``g ≡ 0``
    this is exactly :func:`~flowlm.methods.flm.flm_sample`. Returns tokens [num_samples, seq_len].
    ``condition`` holds known positions as in :func:`fmlm_sample`."""
    check_steps(steps)
    inputs = input_space(input_noise, [g_net, teacher], vocab_size, tokens=num_samples * seq_len * steps)
    x = inputs.noise(num_samples, seq_len, vocab_size, generator, device) if x0 is None else inputs.embed(x0)
    hold = (lambda x, t: x) if condition is None else _holder(condition, x, inputs.tokens(condition.ids, vocab_size))
    taus, ts = time_grid(vocab_size, steps)
    full = lambda v: torch.full((x.shape[0],), float(v), device=x.device)  # noqa: E731
    with _eval_mode(teacher, g_net):
        for k in range(steps - 1):
            x = hold(x, ts[k])
            x = v1_stage1_map(g_net, teacher, x, full(taus[k]), full(taus[k + 1]), ts[k], ts[k + 1], inputs)
        x = hold(x, ts[steps - 1])
        tau_s, tau_t = full(taus[steps - 1]), full(taus[steps])
        final = (
            _probs(inputs, teacher, x, tau_s)
            + _half_square(ts[steps - 1], 1.0, x) * inputs.logits(g_net, x, tau_s, tau_t).float()
        )
    return final.argmax(dim=-1) if condition is None else condition.fill(final.argmax(dim=-1))


def _holder(condition: Condition, start: torch.Tensor, target: torch.Tensor):
    """``hold(x, t)``: ``x`` with the known positions of ``condition`` on their path from ``start`` at time t."""
    return lambda x, t: condition.hold(x, start, target, t)


def v1_stage2_loss(
    student,
    teacher,
    g_net,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    sample_offset: int = 0,
    boundary_frac: float = V1_STAGE2_BOUNDARY_FRAC,
    weighting: LossWeighting | None = None,
    mask: torch.Tensor | None = None,
    input_noise: str = "auto",
    rows: tuple[int, int] | None = None,
    clean: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Stage 2 of the v1 recipe (SPEC §4): regress the student's map onto the stage-1 map.

    Pairs as in :func:`v1_stage1_loss` (boundary share 1/128 by default). Prediction
    ``x_s + Δ·(δ̂ − x_s)/(1 − s)`` with ``δ̂ = softmax(student(x_s, τ_s, τ_t))`` — the same map as
    :func:`flow_map_step`, so the student samples with :func:`fmlm_sample`; target (no grad)
    ``v1_stage1_map(g, teacher, x_s, ...)``; loss: squared error summed over V, averaged over valid
    tokens (optionally weighted as in stage 1). Both maps move x_s by the same ``−Δ/(1 − s)·x_s``, so the
    residual is computed as ``Δ/(1 − s)·(δ̂ − D_T(x_s)) − ½Δ²·g(x_s)`` (exactly equal; no V-sized state).
    ``input_noise`` and ``rows``: see the module docstring; ``clean`` [B, L] (conditional training): those positions
    are one-hot rows in ``x_s`` and left out of the loss. Returns ``loss``, ``mse`` (detached),
    ``per_sequence`` [B] (detached), ``tau_s``, ``tau_t``.
    """
    inputs = input_space(input_noise, [student, teacher, g_net], vocab_size, tokens=tokens.numel())
    tau_s, _, tau_t, s64, _, t64, x_s = _v1_pairs(
        inputs, tokens, vocab_size, generator, sample_offset, boundary_frac, rows, clean
    )
    mask = _without_clean(mask, clean)
    col = lambda v: v.to(torch.float32).view(-1, 1, 1)  # noqa: E731
    s, dt = col(s64), col(t64 - s64)
    with torch.no_grad(), _eval_mode(teacher, g_net):
        denoised = _probs(inputs, teacher, x_s, tau_s)
        target = (
            denoised / torch.clamp(1 - s, min=VELOCITY_GUARD) * dt
            + 0.5 * dt * dt * inputs.logits(g_net, x_s, tau_s, tau_t).float()
        )
    pred = _probs(inputs, student, x_s, tau_s, tau_t) / torch.clamp(1 - s, min=VELOCITY_GUARD) * dt
    err = (pred - target).pow(2).sum(-1)
    loss, mean, per_sequence = _weighted(err, mask, weighting, tau_s, None)
    return {"loss": loss, "mse": mean.detach(), "per_sequence": per_sequence.detach(), "tau_s": tau_s, "tau_t": tau_t}
