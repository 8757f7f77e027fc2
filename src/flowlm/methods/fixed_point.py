"""Fixed-point distillation of a self-conditioned FLM (issue 26, part 2): loss and target; no I/O, no harness.

A self-conditioned FLM teacher (:mod:`flowlm.methods.flm`) with self-conditioning guidance ``w`` defines, at a fixed
state ``x`` and time ``τ``, the map of estimates

    F_w(p) = softmax(ℓ₀ + w·(ℓ_p − ℓ₀))        ℓ₀ = teacher(x, τ),  ℓ_p = teacher(x, τ, estimate = p @ W)

on the simplex [L, V] per sequence (the sampler's guided prediction given the estimate ``p``). Its fixed point
``p* = F_w(p*)`` is what a sampler that kept re-reading its own prediction at one state would converge to. The
*fixed-point denoiser* ``D*_w(x, τ)`` learns ``p*`` in one forward pass that reads no estimate and takes ``w`` as an
input (a DiT with ``guidance_input``). Sampling it is the plain FLM sampler with ``w`` bound: one call a step, nothing
carried across steps, which is what makes it a teacher that PSD can distill into a flow map taking ``w``.

Port decisions (docs/self_conditioning.md):

* Damped Picard iteration ``p_{j+1} = (1 − β)·p_j + β·F_w(p_j)`` from the zero estimate (``p_1 = F_w(0) =
  softmax(ℓ₀)``), ``K`` teacher calls in all; the reference runs 20 Anderson-accelerated steps with mixing 0.9. The
  iterates stay on the simplex (an Anderson mix of distributions with signed weights need not). Plain Picard (β = 1)
  oscillates on a Markov-language teacher at w ≥ 3 (residual 0.45 at w = 5 for any K), β = ½ converges there
  (docs/results.md). The fixed-point residual is returned so a run shows whether K sufficed.
* The student is trained on the cold path only (one forward from no estimate, the path it is sampled on) with the
  cross-entropy against ``p*`` (= KL(p* ‖ D*) plus the target's entropy), where the reference regresses latent
  vectors with a mean-square error and also trains warm-started phases of its own iteration.
* ``w`` per sequence with ``1 + w`` log-uniform on ``[1 + w_min, 1 + w_max]`` (the reference: [1.5, 6], w ∈ [0.5, 5]),
  shared by the teacher's iteration and the student.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from flowlm.errors import ConfigError
from flowlm.methods.common import (
    LossWeighting,
    check_rows,
    interpolate,
    masked_mean,
    per_sequence_mean,
    stratified_times,
    token_cross_entropy,
)
from flowlm.methods.flm import self_conditioned
from flowlm.methods.lowrank import input_space
from flowlm.nn.dit import DiT, zero_last_time_layer
from flowlm.schedule import get_schedule

FIXED_POINT_ITERATIONS = 8
FIXED_POINT_DAMPING = 0.5
GUIDANCE_RANGE = (0.5, 5.0)  # the reference's training range of w


def check_guidance_range(low, high) -> tuple[float, float]:
    """``(w_min, w_max)``: finite, ``0 <= w_min <= w_max``."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not ok or not 0 <= low <= high:
        raise ConfigError(
            f"distill.sc_guidance_min={low!r}, distill.sc_guidance_max={high!r}: the range of the self-conditioning "
            "guidance scale w drawn in training needs finite numbers with 0 <= min <= max (the reference: 0.5 and 5)"
        )
    return float(low), float(high)


def check_damping(value) -> float:
    """β, the step of the damped iteration: a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(
            f"distill.fp_damping={value!r}: the step of the damped fixed-point iteration, in (0, 1] (1: plain Picard; "
            f"default {FIXED_POINT_DAMPING})"
        )
    return float(value)


def check_iterations(value) -> int:
    """K, the teacher calls of the fixed-point target: a whole number in [2, 256]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 256:
        raise ConfigError(
            f"distill.fp_iterations={value!r}: the teacher calls per fixed-point target, a whole number from 2 to 256 "
            f"(default {FIXED_POINT_ITERATIONS})"
        )
    return value


def guidance_draws(n: int, low: float, high: float, generator=None, device=None) -> torch.Tensor:
    """``n`` guidance scales [n] with ``1 + w`` log-uniform on ``[1 + low, 1 + high]``."""
    u = torch.rand(n, generator=generator, device=device)
    return torch.expm1(math.log1p(low) + u * (math.log1p(high) - math.log1p(low)))


@torch.no_grad()
def fixed_point_target(
    teacher,
    space,
    x: torch.Tensor,
    tau: torch.Tensor,
    w: torch.Tensor,
    iterations: int = FIXED_POINT_ITERATIONS,
    damping: float = FIXED_POINT_DAMPING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Picard iterate ``p_K`` [B, L, V] (float32) of ``F_w`` (module docstring) at states ``x`` (in the space of
    ``space``), times ``tau`` [B] and scales ``w`` [B], and the fixed-point residual of the last mapped iterate: the
    total-variation distance ``½·|F_w(p_{K−1}) − p_{K−1}|₁`` averaged over each sequence's positions [B] (0 at a fixed
    point). ``iterations`` = K teacher calls. ``damping`` β
    in (0, 1]: each step is ``p ← (1 − β)·p + β·F_w(p)`` (1: plain Picard), a mix of distributions, so still one; it
    has the same fixed points and converges where an undamped iteration oscillates. The teacher's mode is the caller's
    (eval: no dropout)."""
    plain = space.logits(teacher, x, tau).float()
    p = torch.softmax(plain, dim=-1)
    scale = w.to(plain.dtype).view(-1, 1, 1)
    residual = torch.zeros(x.shape[0], device=x.device)
    for _ in range(iterations - 1):
        with_estimate = space.logits(teacher, x, tau, self_cond=teacher.project_estimate(p)).float()
        mapped = torch.softmax(plain + scale * (with_estimate - plain), dim=-1)
        residual = 0.5 * (mapped - p).abs().sum(-1).mean(-1)
        p = mapped if damping == 1.0 else torch.lerp(p, mapped, damping)
    return p, residual


def init_fixed_point_student(teacher: DiT) -> DiT:
    """The fixed-point denoiser to train: the teacher's network without its self-conditioning map and with a guidance
    input (``guidance_input``; first layer copied from the time embedder, last layer zero), on the teacher's device and
    dtype, sharing no storage with it. At initialization ``student(x, τ, guidance=w) == teacher(x, τ)`` for every w."""
    if not isinstance(teacher, DiT) or not self_conditioned(teacher):
        raise ConfigError(
            "the fixed-point recipe distills a self-conditioned FLM (trained with model.self_condition=true): pass "
            "such a teacher, or use --recipe psd for a plain FLM"
        )
    cfg = dataclasses.replace(teacher.config, self_condition=False, guidance_input=True)
    ref = next(teacher.parameters())
    net = DiT(cfg).to(device=ref.device, dtype=ref.dtype)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("self_cond.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("guidance_map.") for k in missing):
        raise ConfigError(f"teacher weights do not fit a fixed-point DiT (missing {missing}, unexpected {unexpected})")
    with torch.no_grad():
        net.guidance_map.mlp[0].load_state_dict(teacher.sigma_map.mlp[0].state_dict())
    zero_last_time_layer(net.guidance_map)
    net.train(teacher.training)
    return net


def fixed_point_loss(
    student,
    teacher,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    iterations: int = FIXED_POINT_ITERATIONS,
    damping: float = FIXED_POINT_DAMPING,
    guidance_range: tuple[float, float] = GUIDANCE_RANGE,
    weighting: LossWeighting | None = None,
    mask: torch.Tensor | None = None,
    input_noise: str = "auto",
    rows: tuple[int, int] | None = None,
    clean: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Fixed-point distillation on tokens [B, L]: the student ``D*_w(x_t, τ)`` (no estimate, ``w`` as input) against
    the teacher's fixed-point target :func:`fixed_point_target` at the same state.

    τ stratified over the global micro-batch and ``x_t`` drawn as in :func:`~flowlm.methods.flm.flm_loss`, then
    ``w`` [B] (:func:`guidance_draws` on ``guidance_range``); the teacher runs in eval mode under ``no_grad``.
    ``rows``, ``clean``, ``mask``, ``weighting`` as for the FLM loss. Loss: the token cross-entropy against ``p*``.
    Returns ``loss``, ``ce`` and ``kl`` (the cross-entropy less the target's entropy, KL(p* ‖ D*); detached),
    ``fixed_point_residual`` (the target's, mean total variation; detached), ``per_sequence`` [B] and ``tau``.
    """
    batch, seq = tokens.shape
    device = tokens.device
    first, total = check_rows(rows, batch)
    keep = slice(first, first + batch)
    space = input_space(input_noise, [student, teacher], vocab_size, tokens=batch * seq)
    tau = stratified_times(total, generator, device)[keep]
    t = get_schedule(vocab_size, device).t_from_tau(tau)
    x0 = space.noise(total, seq, vocab_size, generator, device)[keep]
    x1 = space.tokens(tokens, vocab_size)
    x_t = interpolate(x0, x1, t)
    if clean is not None:
        x_t = torch.where(clean[..., None], x1.to(x_t.dtype), x_t)
        mask = ~clean if mask is None else mask & ~clean
    w = guidance_draws(total, *guidance_range, generator=generator, device=device)[keep]
    was_training = teacher.training
    teacher.eval()
    try:
        target, residual = fixed_point_target(teacher, space, x_t, tau, w, iterations, damping)
    finally:
        teacher.train(was_training)
    logits = space.logits(student, x_t, tau, guidance=w)
    ce = token_cross_entropy(logits, target)
    mean_ce = masked_mean(ce, mask)
    per_sequence = per_sequence_mean(ce, mask)
    loss = mean_ce if weighting is None else LossWeighting.apply(per_sequence, weighting(tau))
    with torch.no_grad():
        entropy = -(target * torch.log(target.clamp_min(torch.finfo(target.dtype).tiny))).sum(-1)
        kl = masked_mean(ce.detach() - entropy, mask)
    return {"loss": loss, "ce": mean_ce.detach(), "kl": kl, "fixed_point_residual": residual.mean(), "per_sequence":
            per_sequence.detach(), "tau": tau}  # fmt: skip
