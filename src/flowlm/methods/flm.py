"""FLM: flow language model (SPEC §2). Loss and Euler sampler; no I/O, no training harness.

The network is any callable ``model(x [B, L, V], tau [B]) -> logits [B, L, V]``; the denoiser is
``D = softmax(logits)`` (logits already soft-capped by the backbone). ``input_noise`` picks where the
states live (:mod:`flowlm.methods.lowrank`): ``naive`` builds full [B, L, V] states, ``lowrank`` the
exact projections ``x @ W`` [B, L, d] of a flowlm DiT, ``auto`` (default) the latter when V > d and a call
sees at least d/2 tokens.

Self-conditioning (a DiT with ``self_condition``; issue 26): the network also reads its previous estimate of the
clean sequence, the denoiser's distribution ``p`` projected by the input matrix, ``p @ W`` [B, L, d]
(:meth:`flowlm.nn.dit.DiT.project_estimate`; no estimate = zeros). Training uses the two-pass scheme: each sequence
with probability :data:`SELF_CONDITION_SHARE` gets the estimate of a first, gradient-free pass at the same state,
the others zeros; the loss is the cross-entropy of the second pass. The samplers carry the estimate from step to
step (the first step has none). Self-conditioning guidance ``w`` (``sc_guidance``) extrapolates in logit space from
the prediction without the estimate to the one with it, ``ℓ_0 + w·(ℓ_p − ℓ_0)`` (``w = 1``: the plain
self-conditioned prediction; two network calls a step), as FMLM*'s guidance does in its velocity space.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from flowlm.errors import ConfigError
from flowlm.methods.common import (
    LossWeighting,
    check_rows,
    interpolate,
    masked_mean,
    per_sequence_mean,
    stratified_times,
    velocity,
)
from flowlm.methods.condition import Condition
from flowlm.methods.lowrank import NaiveInputs, input_space
from flowlm.methods.tempering import OFF, Tempering
from flowlm.schedule import get_schedule

SELF_CONDITION_SHARE = 0.5  # share of training sequences that get a first pass's estimate (the rest: zeros)
ESTIMATE_CHUNK = 1 << 25  # logits entries per chunk of the first pass (bounds its [rows, L, V] memory)


def self_conditioned(model) -> bool:
    """Whether ``model`` reads a self-conditioning estimate (a DiT trained with ``model.self_condition``)."""
    return bool(getattr(getattr(model, "config", None), "self_condition", False))


@torch.no_grad()
def first_pass_estimate(model, space, x_t: torch.Tensor, tau: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """The two-pass scheme's estimate [B, L, d]: ``project_estimate(softmax(logits))`` of a gradient-free pass at the
    states ``x_t`` for the rows where ``use`` [B] is true, zeros elsewhere. Computed in row chunks."""
    rows = use.nonzero().squeeze(-1)
    width = model.config.hidden_size
    out = torch.zeros(*x_t.shape[:2], width, device=x_t.device, dtype=model.vocab_embed.embedding.dtype)
    chunk = max(1, ESTIMATE_CHUNK // (x_t.shape[1] * model.config.vocab_size))
    for part in rows.split(chunk):
        probs = torch.softmax(space.logits(model, x_t[part], tau[part]).float(), dim=-1)
        out[part] = model.project_estimate(probs).to(out.dtype)
    return out


def flm_loss(
    model,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    weighting: LossWeighting | None = None,
    input_noise: str = "auto",
    rows: tuple[int, int] | None = None,
    clean: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Denoising cross-entropy of one batch of tokens [B, L].

    τ is stratified over the batch, the state uses ``t = T_V⁻¹(τ)``, the network sees τ.
    ``rows = (first, total)``: τ and the noise are drawn for a global micro-batch of ``total`` rows and
    rows [first, first + B) are kept (data parallelism; None: this batch alone).
    ``clean`` [B, L] (bool, conditional training): those positions are given clean (their one-hot, t = 1)
    and left out of the loss, so the network learns to use clean context.
    A self-conditioned model is trained with the two-pass scheme (module docstring); the share of sequences given
    an estimate is drawn per sequence of the global micro-batch, after the noise.
    Returns ``loss`` (what to minimize), ``ce`` (the unweighted token cross-entropy, detached),
    ``per_sequence`` (its per-sequence means [B], detached) and ``tau`` [B].
    """
    batch, seq = tokens.shape
    device = tokens.device
    first, total = check_rows(rows, batch)
    space = input_space(input_noise, [model], vocab_size, tokens=batch * seq)
    tau = stratified_times(total, generator, device)[first : first + batch]
    t = get_schedule(vocab_size, device).t_from_tau(tau)
    x0 = space.noise(total, seq, vocab_size, generator, device)[first : first + batch]
    x1 = space.tokens(tokens, vocab_size)
    x_t = interpolate(x0, x1, t)
    if clean is not None:
        x_t = torch.where(clean[..., None], x1.to(x_t.dtype), x_t)
        mask = ~clean if mask is None else mask & ~clean
    estimate = None
    if self_conditioned(model):
        use = (torch.rand(total, generator=generator, device=device) < SELF_CONDITION_SHARE)[first : first + batch]
        estimate = first_pass_estimate(model, space, x_t, tau, use)
    ce = space.cross_entropy(model, x_t, tau, tokens, self_cond=estimate)
    mean_ce = masked_mean(ce, mask)
    per_sequence = per_sequence_mean(ce, mask)
    loss = mean_ce if weighting is None else LossWeighting.apply(per_sequence, weighting(tau))
    return {"loss": loss, "ce": mean_ce.detach(), "per_sequence": per_sequence.detach(), "tau": tau}


def check_steps(steps: int) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps={steps!r}: the number of sampling steps must be an integer >= 1")
    return steps


@contextmanager
def dropout_active(model: nn.Module):
    """Temporarily put every dropout layer of ``model`` in training mode (the autoguidance weak model)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    modes = [m.training for m in layers]
    for m in layers:
        m.train(True)
    try:
        yield
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)


def flm_logits(model, x: torch.Tensor, tau: torch.Tensor, inputs, estimate=None, sc_guidance=None) -> torch.Tensor:
    """The network's logits [B, L, V] at states ``x`` and times ``tau`` [B] (``inputs``: their state space), given
    a self-conditioning ``estimate`` [B, L, d] (None: none); with ``sc_guidance`` w and an estimate,
    ``ℓ_0 + w·(ℓ_p − ℓ_0)`` (module docstring)."""
    logits = inputs.logits(model, x, tau, self_cond=estimate)
    if sc_guidance is None or estimate is None:
        return logits
    plain = inputs.logits(model, x, tau)
    return plain + sc_guidance * (logits - plain)


def flm_denoise(
    model,
    x: torch.Tensor,
    tau: float,
    guidance: float | None = None,
    inputs=None,
    tempering: Tempering = OFF,
    estimate: torch.Tensor | None = None,
    sc_guidance: float | None = None,
) -> torch.Tensor:
    """Denoiser ``D(x, τ)`` [B, L, V] at one scalar τ; with autoguidance
    ``D_weak + η·(D − D_weak)`` where the weak model is the same network with dropout active.
    ``inputs``: the state space of ``x`` (default: full [B, L, V] states). ``tempering``: temperature and top-p of
    the returned distribution (:mod:`flowlm.methods.tempering`; of the guided mixture, clamped at 0, with guidance).
    ``estimate``, ``sc_guidance``: self-conditioning (:func:`flm_logits`)."""
    inputs = NaiveInputs() if inputs is None else inputs
    tau_vec = torch.full((x.shape[0],), float(tau), device=x.device)
    logits = flm_logits(model, x, tau_vec, inputs, estimate, sc_guidance)
    if guidance is None:
        return tempering.probs(logits)
    probs = torch.softmax(logits, dim=-1)
    with dropout_active(model):
        weak = torch.softmax(flm_logits(model, x, tau_vec, inputs, estimate, sc_guidance), dim=-1)
    return tempering.reshape(weak + guidance * (probs - weak))


def embed_step(model, inputs, denoised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A sampler step's denoiser output [B, L, V] as a state (``inputs.embed``) and as the estimate the next step
    gives a self-conditioned model (None for other models). On the low-rank path of one network the two are the
    same product ``p @ W``, computed once."""
    embedded = inputs.embed(denoised)
    if not self_conditioned(model):
        return embedded, None
    if inputs.lowrank and inputs.width == model.config.hidden_size:
        return embedded, embedded
    return embedded, model.project_estimate(denoised)


def time_grid(vocab_size: int, steps: int) -> tuple[list[float], list[float]]:
    """Sampling grid as host floats: ``τ_k = k/N`` and ``t_k = T⁻¹(τ_k)``, k = 0..N (one host computation
    before the loop, so a sampling step never copies between host and device)."""
    taus = torch.arange(steps + 1, dtype=torch.float64) / steps
    return taus.tolist(), get_schedule(vocab_size, "cpu").t_from_tau(taus).tolist()


@torch.no_grad()
def flm_endpoint(model, x: torch.Tensor, tau_start: float, vocab_size: int, steps: int, inputs=None,
                 hold=None) -> torch.Tensor:  # fmt: skip
    """The sampler of :func:`flm_sample` started from states ``x`` [B, L, V] (or [B, L, k] in the space of ``inputs``)
    at network time ``τ_start``: Euler steps on ``τ_k = τ_start + k·(1 − τ_start)/N`` for k < N − 1, then the
    denoiser at ``τ_{N−1}``, whose distribution [B, L, V] (float32) is returned (its arg-max is the sampler's
    output). From ``τ_start = 0`` and the same noise this is :func:`flm_sample`'s grid and trajectory. ``hold``: a
    callable applied to every intermediate state (e.g. to keep clean positions clean). The model's mode is the
    caller's."""
    inputs = NaiveInputs() if inputs is None else inputs
    taus = tau_start + (1.0 - tau_start) * torch.arange(steps + 1, dtype=torch.float64) / steps
    ts = get_schedule(vocab_size, "cpu").t_from_tau(taus).tolist()
    estimate = None
    for k in range(steps - 1):
        denoised = flm_denoise(model, x, float(taus[k]), None, inputs, estimate=estimate)
        embedded, estimate = embed_step(model, inputs, denoised)
        x = x + (ts[k + 1] - ts[k]) * velocity(embedded.to(x.dtype), x, ts[k])
        x = x if hold is None else hold(x)
    return flm_denoise(model, x, float(taus[steps - 1]), None, inputs, estimate=estimate).float()


@torch.no_grad()
def flm_sample(
    model,
    num_samples: int,
    seq_len: int,
    vocab_size: int,
    steps: int,
    generator: torch.Generator | None = None,
    device=None,
    guidance: float | None = None,
    x0: torch.Tensor | None = None,
    input_noise: str = "auto",
    condition: Condition | None = None,
    tempering: Tempering = OFF,
    sc_guidance: float | None = None,
) -> torch.Tensor:
    """Euler sampler with the last-step jump; returns tokens [num_samples, seq_len].

    Grid ``τ_k = k/N``, ``t_k = T⁻¹(τ_k)``. For k < N−1: ``x ← x + (t_{k+1} − t_k)·b(x, t_k)``
    with D evaluated at τ_k; the last step outputs ``D(x, τ_{N−1})`` and takes the arg-max.
    N = 1 is one network call on pure noise. Deterministic given ``x0`` [n, L, V] (drawn from
    ``generator`` when not given). In the low-rank space the state is ``h = x @ W`` and the step
    ``h ← h + Δ·(D @ W − h)/(1 − t)``; a given ``x0`` is projected, so both paths follow the same trajectory.
    ``condition`` (:mod:`flowlm.methods.condition`): known positions are on their exact path whenever the
    network sees the state, and keep their ids in the output. ``tempering`` (off by default): every step's denoiser
    is tempered, and the last step draws each token from it instead of the arg-max (:mod:`flowlm.methods.tempering`).
    A self-conditioned model gets each step's denoiser output as the next step's estimate; ``sc_guidance`` w
    (module docstring) needs such a model.
    """
    check_steps(steps)
    if sc_guidance is not None and not self_conditioned(model):
        raise ConfigError("sc_guidance needs a self-conditioned model (trained with model.self_condition=true)")
    space = input_space(input_noise, [model], vocab_size, tokens=num_samples * seq_len * steps)
    if x0 is None:
        x = space.noise(num_samples, seq_len, vocab_size, generator, device)
    else:
        x = space.embed(x0)
    if condition is not None:
        start, target = x, space.tokens(condition.ids, vocab_size)
    taus, ts = time_grid(vocab_size, steps)
    estimate = None
    for k in range(steps - 1):
        if condition is not None:
            x = condition.hold(x, start, target, ts[k])
        denoised = flm_denoise(model, x, taus[k], guidance, space, tempering, estimate, sc_guidance)
        embedded, estimate = embed_step(model, space, denoised)
        x = x + (ts[k + 1] - ts[k]) * velocity(embedded, x, ts[k])
    if condition is not None:
        x = condition.hold(x, start, target, ts[steps - 1])
    last = flm_denoise(model, x, taus[steps - 1], guidance, space, tempering, estimate, sc_guidance)
    tokens = tempering.tokens(last, generator)
    return tokens if condition is None else condition.fill(tokens)
