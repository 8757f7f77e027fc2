"""FLM: flow language model (SPEC §2). Loss and Euler sampler; no I/O, no training harness.

The network is any callable ``model(x [B, L, V], tau [B]) -> logits [B, L, V]``; the denoiser is
``D = softmax(logits)`` (logits already soft-capped by the backbone).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from flowlm.errors import ConfigError
from flowlm.methods.common import (
    LossWeighting,
    interpolate,
    masked_mean,
    one_hot,
    stratified_times,
    token_cross_entropy,
    velocity,
)
from flowlm.schedule import get_schedule


def flm_loss(
    model,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    weighting: LossWeighting | None = None,
) -> dict[str, torch.Tensor]:
    """Denoising cross-entropy of one batch of tokens [B, L].

    τ is stratified over the batch, the state uses ``t = T_V⁻¹(τ)``, the network sees τ.
    Returns ``loss`` (what to minimize), ``ce`` (the unweighted token cross-entropy, detached)
    and ``tau`` [B].
    """
    batch, seq = tokens.shape
    device = tokens.device
    tau = stratified_times(batch, generator, device)
    t = get_schedule(vocab_size, device).t_from_tau(tau)
    x0 = torch.randn(batch, seq, vocab_size, generator=generator, device=device)
    x_t = interpolate(x0, one_hot(tokens, vocab_size), t)
    ce = token_cross_entropy(model(x_t, tau), tokens)
    mean_ce = masked_mean(ce, mask)
    if weighting is None:
        loss = mean_ce
    else:
        per_sequence = ce.mean(-1) if mask is None else (ce * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        loss = LossWeighting.apply(per_sequence, weighting(tau))
    return {"loss": loss, "ce": mean_ce.detach(), "tau": tau}


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


def flm_denoise(model, x: torch.Tensor, tau: float, guidance: float | None = None) -> torch.Tensor:
    """Denoiser ``D(x, τ)`` [B, L, V] at one scalar τ; with autoguidance
    ``D_weak + η·(D − D_weak)`` where the weak model is the same network with dropout active."""
    tau_vec = torch.full((x.shape[0],), float(tau), device=x.device)
    probs = torch.softmax(model(x, tau_vec), dim=-1)
    if guidance is None:
        return probs
    with dropout_active(model):
        weak = torch.softmax(model(x, tau_vec), dim=-1)
    return weak + guidance * (probs - weak)


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
) -> torch.Tensor:
    """Euler sampler with the last-step jump; returns tokens [num_samples, seq_len].

    Grid ``τ_k = k/N``, ``t_k = T⁻¹(τ_k)``. For k < N−1: ``x ← x + (t_{k+1} − t_k)·b(x, t_k)``
    with D evaluated at τ_k; the last step outputs ``D(x, τ_{N−1})`` and takes the arg-max.
    N = 1 is one network call on pure noise. Deterministic given ``x0`` (drawn from ``generator``
    when not given).
    """
    check_steps(steps)
    if x0 is None:
        x0 = torch.randn(num_samples, seq_len, vocab_size, generator=generator, device=device)
    taus = torch.arange(steps + 1, dtype=torch.float64) / steps
    ts = get_schedule(vocab_size, "cpu").t_from_tau(taus).tolist()
    x = x0
    for k in range(steps - 1):
        denoised = flm_denoise(model, x, taus[k].item(), guidance)
        x = x + (ts[k + 1] - ts[k]) * velocity(denoised, x, ts[k])
    return flm_denoise(model, x, taus[steps - 1].item(), guidance).argmax(dim=-1)
