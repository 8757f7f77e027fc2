"""DUO: uniform-state discrete diffusion with its Gaussian-relaxation curriculum (Sahoo et al. 2025, "The Diffusion
Duality", arXiv 2506.10892; the reference is github s-sahoo/duo, branch ch-1). Loss, NELBO and ancestral sampler; no
I/O, no training harness. Written from the paper and a reading of the reference, not copied.

Forward process (uniform state). Every position of a clean block ``x`` [B, L] is kept with probability ``α_t`` and
otherwise replaced by a uniform draw over all ``V`` ids (which may be ``x`` again):
``q(z_t | x) = Cat(α_t·x + (1 − α_t)/V)``. The schedule is log-linear, ``α_t = 1 − (1 − ε)·t`` with ``ε = 10⁻³``
(so ``α_1 = ε``, not 0), and training and the NELBO draw ``t`` on ``[t_min, 1]``, ``t_min = 10⁻³``.

Network: a DiT ``model(z, a) -> logits [B, L, V]`` with one time input, fed ``a = α_t`` (flowlm's time embedding
reads a clock in [0, 1] with 0 the noise end, and ``α_t`` is exactly that; the reference feeds ``σ = −log α_t``,
which carries the same information). ``z`` is token ids [B, L], or during the curriculum a soft state [B, L, V].
The denoiser ``x_θ = softmax(logits)`` over all V ids: unlike MDLM there is no constraint (no mask id, no carry-over).

NELBO (continuous time, the UDLM integrand as DUO computes it): per position, with ``i = z_ℓ``, ``m = x_ℓ``,
``x̄ = V·α·e_m + (1 − α)`` (the true posterior weights) and ``x̄_θ = V·α·x_θ + (1 − α)``,

    loss_ℓ = (−α'_t / (V·α_t)) · D,   D = Σ_j r_j·log(r_j / ρ_j) − Σ_j r_j + Σ_j ρ_j ≥ 0,
    r = x̄ / x̄_i,   ρ = x̄_θ / x̄_θ[i],

a generalized KL between ratio vectors, 0 iff ``x_θ = e_m``. It is the limit of the discrete-time ELBO's per-step
``KL(q(z_s | z_t, x) ‖ q(z_s | z_t, x_θ))`` divided by the step (checked in the tests against that sum). The prior
term ``KL(q(z_1 | x) ‖ uniform)`` is O(ε) and left out, as in the reference.

Curriculum (the "duality"). A Gaussian latent on one-hot vectors, ``w = α̃·x + σ̃·ε`` (variance preserving:
``α̃² = sigmoid(−γ)``, ``σ̃² = sigmoid(γ)``), has ``argmax(w)`` distributed as ``q(z_t | x)`` with
``α_t = T_V(α̃/(α̃ + σ̃))`` — ``T_V`` is flowlm's own time reparameterization (SPEC §1: the probability that arg-max
decodes the clean token, rescaled), because ``w`` has the arg-max law of FLM's ``t·x + (1 − t)·ε`` at
``t/(1 − t) = α̃/σ̃``. For the first ``curriculum_frac`` of training the network is fed the tempered softmax
``softmax(w / τ)`` (τ = 10⁻³) instead of ``argmax(w)``, a low-variance relaxation, and the loss is the NELBO above at
``z = argmax(w)`` with ``γ`` linear in ``t`` over the window where ``α_t`` runs from 0.95 to 0.05 (the reference's
choice, which avoids the flat ends of ``T_V``), ``α'_t`` by the chain rule through ``T_V``. It is biased (τ > 0, a
narrowed window); after it, training uses the NELBO with discrete inputs, and validation always does.

Sampler (ancestral, N network calls): from uniform noise at ``t_0 = 1``, step ``t_k = 1 − k/N`` to ``t_{k+1}`` with
the exact posterior of the uniform-state process given ``x = x_θ(z_t)``,

    q(z_s | z_t, x) ∝ V·α_t·x ⊙ z_t + (α_{t|s} − α_t)·z_t + (α_s − α_t)·x + (1 − α_{t|s})(1 − α_s)/V,

``α_{t|s} = α_t/α_s``, in float64; the last step ends at ``t = 0`` (``α_s = 1``): a Bayes update
``z ∝ x_θ ⊙ (V·α_t·z_t + 1 − α_t)`` (``tail='ancestral'``) or the arg-max of ``x_θ`` (``tail='greedy'``, the paper's
"Greedy-Tail"). So N steps cost N calls (the reference counts an extra noise-removal call beyond its N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowlm.errors import ConfigError
from flowlm.methods.common import check_rows, sample_categorical, stratified_times
from flowlm.methods.condition import Condition
from flowlm.methods.flm import check_steps
from flowlm.methods.tempering import OFF, Tempering
from flowlm.schedule import dtau_dt, get_schedule

SCHEDULE_EPS = 1e-3  # α_1 = ε (the reference's LogLinear)
T_MIN = 1e-3  # smallest training / NELBO time (the reference's sampling_eps)
CURRICULUM_ALPHAS = (0.95, 0.05)  # α_t at the two ends of the curriculum's γ window
CURRICULUM_TEMPERATURE = 1e-3
TAILS = ("greedy", "ancestral")


def alpha(t: torch.Tensor) -> torch.Tensor:
    """``α_t = 1 − (1 − ε)·t`` (any shape)."""
    return 1.0 - (1.0 - SCHEDULE_EPS) * t


def alpha_slope(t: torch.Tensor) -> torch.Tensor:
    """``α'_t = −(1 − ε)``, shaped like ``t``."""
    return torch.full_like(t, -(1.0 - SCHEDULE_EPS))


def corrupt(
    tokens: torch.Tensor, keep: torch.Tensor, vocab_size: int, generator=None, rows: tuple[int, int] | None = None
) -> torch.Tensor:
    """``z ~ q(z | x)``: each position of ``tokens`` [B, L] is kept with probability ``keep`` [B], else a uniform id.
    ``rows = (first, total)``: the draws are made for ``total`` rows and rows [first, first + B) kept."""
    first, total = check_rows(rows, tokens.shape[0])
    part = slice(first, first + tokens.shape[0])
    u = torch.rand((total, tokens.shape[1]), generator=generator, device=tokens.device)[part]
    fresh = torch.randint(0, vocab_size, (total, tokens.shape[1]), generator=generator, device=tokens.device)[part]
    return torch.where(u < keep.to(u.dtype).unsqueeze(-1), tokens, fresh)


def nelbo_per_position(
    logits: torch.Tensor, z: torch.Tensor, tokens: torch.Tensor, a: torch.Tensor, slope: torch.Tensor
) -> torch.Tensor:
    """The NELBO integrand [B, L] (nats) at noisy ids ``z`` [B, L] of clean ``tokens`` [B, L], ``α_t = a`` [B] and
    ``α'_t = slope`` [B], from the network's logits [B, L, V] (module docstring). Float32 on [B, L, V]."""
    v = logits.shape[-1]
    a = a.float().view(-1, 1, 1)
    log_bar_model = torch.log(v * a * torch.softmax(logits.float(), dim=-1) + (1.0 - a))  # log x̄_θ
    log_rho = log_bar_model - log_bar_model.gather(-1, z.unsqueeze(-1))  # log ρ_j
    bar = (1.0 - a) + v * a * torch.nn.functional.one_hot(tokens, v).float()  # x̄ (the true weights)
    r = bar / bar.gather(-1, z.unsqueeze(-1))
    d = (r * (r.log() - log_rho)).sum(-1) - r.sum(-1) + log_rho.exp().sum(-1)
    weight = (-slope.float() / (v * a.view(-1))).view(-1, 1)
    return weight * d.clamp(min=0.0)


def gamma_window(vocab_size: int, alphas: tuple[float, float]) -> tuple[float, float]:
    """``(γ_min, γ_max)``: the Gaussian log-SNR values at which the uniform-state ``α`` is ``alphas`` for this
    vocabulary (``α = T_V(t)`` at ``t/(1 − t) = α̃/σ̃ = e^{−γ/2}``)."""
    ts = get_schedule(vocab_size, "cpu").t_from_tau(torch.tensor(alphas, dtype=torch.float64))
    low, high = (-2 * (ts / (1 - ts)).log()).tolist()
    return low, high


def gaussian_argmax_latent(onehot: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor, vocab_size: int):
    """``(w [B, L, V], α [B])``: the variance-preserving latent ``w = α̃·x + σ̃·ε`` at log-SNR ``gamma`` [B]
    (``α̃² = sigmoid(−γ)``, ``σ̃² = sigmoid(γ)``) and the ``α`` of the uniform-state law of ``argmax(w)``."""
    scale = torch.sqrt(torch.sigmoid(-gamma)).float().view(-1, 1, 1)
    spread = torch.sqrt(torch.sigmoid(gamma)).float().view(-1, 1, 1)
    ratio = torch.exp(-gamma / 2)
    a = get_schedule(vocab_size, onehot.device).tau_from_t(ratio / (1 + ratio))
    return scale * onehot + spread * noise, a


@dataclass(frozen=True)
class Curriculum:
    """The Gaussian relaxation of the first ``curriculum_frac`` of training (module docstring)."""

    temperature: float = CURRICULUM_TEMPERATURE

    def relax(self, tokens: torch.Tensor, t: torch.Tensor, vocab_size: int, generator=None, rows=None):
        """``(soft input [B, L, V], z = argmax(w) [B, L], α_t [B], α'_t [B])`` at training times ``t`` [B]."""
        first, total = check_rows(rows, tokens.shape[0])
        low, high = gamma_window(vocab_size, CURRICULUM_ALPHAS)
        gamma = low + t.double() * (high - low)
        noise = torch.randn((total, *tokens.shape[1:], vocab_size), generator=generator, device=tokens.device)
        onehot = torch.nn.functional.one_hot(tokens, vocab_size).float()
        w, a = gaussian_argmax_latent(onehot, noise[first : first + tokens.shape[0]], gamma, vocab_size)
        # dα/dt = T_V'(t_flm) · dt_flm/dratio · dratio/dγ · dγ/dt, with ratio = e^{−γ/2} and t_flm = ratio/(1 + ratio)
        ratio = torch.exp(-gamma / 2)
        slope = dtau_dt(ratio / (1 + ratio), vocab_size).double() / (1 + ratio) ** 2 * (-ratio / 2) * (high - low)
        return torch.softmax(w / self.temperature, dim=-1), w.argmax(-1), a.float(), slope.float()


def duo_times(batch: int, generator=None, device=None, t_min: float = T_MIN) -> torch.Tensor:
    """Training times [B] on ``[t_min, 1)``, stratified over the batch."""
    return t_min + (1 - t_min) * stratified_times(batch, generator, device)


def duo_loss(
    model,
    tokens: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
    clean: torch.Tensor | None = None,
    curriculum: Curriculum | None = None,
) -> dict[str, torch.Tensor]:
    """The NELBO estimate of one batch of clean tokens [B, L] in nats per token (``curriculum``: its relaxed,
    biased version). ``rows``: data parallelism as for MDLM. ``clean`` [B, L] (conditional training): those positions
    are given clean and left out of the loss. Returns ``loss``, ``nll_bound`` (detached) and ``t`` [B]."""
    batch = tokens.shape[0]
    first, total = check_rows(rows, batch)
    t = duo_times(total, generator, tokens.device)[first : first + batch]
    if curriculum is None:
        a, slope = alpha(t), alpha_slope(t)
        z = corrupt(tokens, a, vocab_size, generator, rows)
        inputs = z if clean is None else torch.where(clean, tokens, z)
    else:
        soft, z, a, slope = curriculum.relax(tokens, t, vocab_size, generator, rows)
        inputs = soft
        if clean is not None:
            inputs = torch.where(clean.unsqueeze(-1), torch.nn.functional.one_hot(tokens, vocab_size).float(), soft)
    logits = model(inputs, a.float())
    per_position = nelbo_per_position(logits, z, tokens, a, slope)
    if clean is not None:
        per_position = per_position * (~clean)
    loss = per_position.mean()
    return {"loss": loss, "nll_bound": loss.detach(), "t": t}


def duo_nelbo(model, tokens: torch.Tensor, vocab_size: int, draws: int = 16, generator=None,
              t_min: float = T_MIN) -> torch.Tensor:  # fmt: skip
    """The NELBO of each block [B, L] in nats per block, ``draws`` estimates each [B, K] (float64): per block the K
    times are stratified on ``[t_min, 1)`` and each draw is ``Σ_ℓ loss_ℓ`` at one ``z_t ~ q(z_t | x)``. Their mean
    is unbiased for ``(1/(1 − t_min))·∫_{t_min}^1`` of the integrand (O(t_min) from the full NELBO, as MDLM's)."""
    from flowlm.methods.likelihood import repeat_draws

    rows = repeat_draws(tokens, draws)
    u = torch.rand(tokens.shape[0], draws, generator=generator, device=tokens.device)
    t = (t_min + (1 - t_min) * (torch.arange(draws, device=tokens.device) + u) / draws).reshape(-1)
    a = alpha(t)
    z = corrupt(rows, a, vocab_size, generator)
    with torch.no_grad():
        per_position = nelbo_per_position(model(z, a.float()), z, rows, a, alpha_slope(t))
    return per_position.double().sum(-1).view(tokens.shape[0], draws)


def usdm_posterior(probs: torch.Tensor, z: torch.Tensor, a_t: float, a_s: float) -> torch.Tensor:
    """``q(z_s | z_t = z, x = probs)`` [B, L, V] (float64, normalized) for ``α_t = a_t < α_s = a_s`` (module
    docstring); ``a_s = 1`` is the final Bayes update."""
    v = probs.shape[-1]
    x = probs.double()
    onehot = torch.nn.functional.one_hot(z, v).double()
    ratio = a_t / a_s
    out = v * a_t * x * onehot + (ratio - a_t) * onehot + (a_s - a_t) * x + (1 - ratio) * (1 - a_s) / v
    return out / out.sum(-1, keepdim=True)


def check_tail(tail: object) -> str:
    if tail not in TAILS:
        raise ConfigError(f"tail={tail!r}: use greedy (arg-max of the last prediction) or ancestral (one more draw)")
    return tail


@torch.no_grad()
def duo_sample(
    model,
    num_samples: int,
    seq_len: int,
    vocab_size: int,
    steps: int,
    generator: torch.Generator | None = None,
    device=None,
    condition: Condition | None = None,
    tempering: Tempering = OFF,
    tail: str = "greedy",
) -> torch.Tensor:
    """Ancestral sampler with ``N = steps`` network calls; tokens [num_samples, seq_len] (module docstring).

    ``t_k = 1 − k/N``; step k calls the network at ``α_{t_k}`` and draws ``z`` from the posterior at ``t_{k+1}``; the
    last step ends at α = 1 with ``tail``. ``tempering`` reshapes ``x_θ`` before the posterior. ``condition``: known
    positions are held at their ids at every step (the network sees them clean) and kept in the output.
    Categorical draws in float64 (:func:`~flowlm.methods.common.sample_categorical`). Deterministic given
    ``generator``.
    """
    check_steps(steps)
    check_tail(tail)
    z = torch.randint(0, vocab_size, (num_samples, seq_len), generator=generator, device=device)
    for k in range(steps):
        if condition is not None:
            z = condition.fill(z)
        t_now, t_next = 1.0 - k / steps, 1.0 - (k + 1) / steps
        a_t = float(alpha(torch.tensor(t_now, dtype=torch.float64)))
        a_s = 1.0 if k == steps - 1 else float(alpha(torch.tensor(t_next, dtype=torch.float64)))
        probs = tempering.probs(model(z, torch.full((num_samples,), a_t, device=z.device)).double())
        if k == steps - 1 and tail == "greedy":
            z = probs.argmax(-1)
        else:
            z = sample_categorical(usdm_posterior(probs, z, a_t, a_s), generator)
    return z if condition is None else condition.fill(z)

