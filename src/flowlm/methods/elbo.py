"""FLM's diffusion ELBO: a variational bound on ``−log p(x)`` that stays informative when ``V ≫ d``. No I/O.

Derivation (SPEC notation; also docs/likelihood.md)
---------------------------------------------------
A block ``x ∈ {0..V−1}^L`` has one-hot ``x₁ ∈ R^{L×V}``; the forward path is ``x_t = t·x₁ + (1 − t)·x₀``,
``x₀ ~ N(0, I)``, i.e. ``q(x_t | x) = N(α_t·x₁, σ_t²·I)`` with ``α_t = t``, ``σ_t = 1 − t`` and signal-to-noise ratio

    SNR(t) = α_t²/σ_t² = t²/(1 − t)²,      SNR'(t) = 2t/(1 − t)³   (increasing: t = 0 noise, t = 1 data).

**The generative model** is the *stochastic* sampler with FLM's marginals: start at ``x₀ ~ N(0, I)``, step from ``t``
to ``u > t`` by the forward process's posterior with the data replaced by the denoiser,
``p(x_u | x_t) = q(x_u | x_t, x₁ = D(x_t, τ_t))`` (``τ_t = T_V(t)``: the network reads the τ clock, the path uses
t), up to ``t₁ = t_max < 1``; then decode ``p(x | x_{t₁}) = Π_ℓ D(x_{t₁}, τ₁)[ℓ, x_ℓ]``.

**It lives in the network's space.** A flowlm DiT sees a state only through ``h = x @ W`` (``W`` [V, d] its input
matrix). Each step above is linear in ``x`` with ``D`` a function of ``h``, so ``h`` follows a Markov chain of its own
(noise covariance ``Σ = WᵀW`` per position) and the tokens depend on ``h`` alone: the sampler's law of tokens is that
of the ``h``-chain, and the ``V − d`` directions of ``x`` that ``W`` does not see are noise the model carries along but
never reads. The ELBO of the ``h``-chain, with the projected forward process ``h_t = t·x₁W + (1 − t)·x₀W`` as the
inference path, is therefore a bound on the same ``−log p(x)``:

    −log p(x) ≤ prior + diffusion + decoder,
        prior     = KL(q(h_0 | x) ‖ N(0, Σ)) = 0   (SNR(0) = 0: the path starts at pure noise, whatever x is),
        diffusion = ½ ∫₀^{t₁} SNR'(t) · E_q ‖(x₁ − D(x_t, τ_t))·Q‖² dt = ½ ∫_{SNR=0}^{SNR(t₁)} E_q ‖(x₁ − D)·Q‖² dSNR,
        decoder   = E_q [ −Σ_ℓ log D(x_{t₁}, τ₁)[ℓ, x_ℓ] ],

with ``Q`` [V, r] an orthonormal basis of ``W``'s column space. The diffusion term is the sum over steps of
``KL = ½·(SNR(u) − SNR(t))·‖(x₁ − D)·W‖²_{Σ⁺}`` (two Gaussians of covariance ∝ Σ whose means differ by a multiple
of ``(x₁ − D)·W``; Kingma et al., "Variational Diffusion Models", 2021, eq. 13, which holds for any α, σ — checked
for this path in the tests), and ``‖r·W‖²_{Σ⁺} = ‖r·Q‖²``. Where ``W`` has full row rank (``V ≤ d``), ``Q·Qᵀ = I`` and
this is the ELBO of the chain in ``x`` itself; in general the ``x``-space ELBO (``full_space=True``) adds
``‖(x₁ − D)(I − QQᵀ)‖²``, the cost of generating the unseen directions, and is never smaller. A denoiser that is not
a flowlm DiT (a callable on full states) has ``Q = I``.

With the exact denoiser of a law whose positions are independent, the bound is ``−log p(x)`` exactly for every
``t₁`` (the model then has the data's path law, and given ``x_{t₁}`` the noisier states say nothing more about x); with
correlated positions the gap is the factorized decoder's (the posterior's total correlation at ``t₁``), as for the ODE
bound. Only ``D`` enters, never a density of the network's flow.

Estimator
---------
Each *draw* is one unbiased estimate per block: the decoder term at one noise draw, plus the diffusion integral
stratified over ``K`` strata (``time_points``) of ``[0, t₁]``. Strata are equal in τ (``grid='tau'``, default: the
network clock, where the denoising happens evenly) or in t; inside a stratum ``[t_a, t_b]`` the time is drawn
uniformly in SNR, so the draw of that stratum is ``½·(SNR(t_b) − SNR(t_a))·‖(x₁ − D(x_t, τ_t))·Q‖²`` (no density
ratio, and the ``(1 − t)⁻³`` weight is absorbed exactly). Every stratum has its own noise. Draws are independent, so
their spread gives the Monte-Carlo error. Cost per draw: ``K + 1`` network calls (forward only).

States live where the training loss's do (:mod:`flowlm.methods.lowrank`): for a flowlm DiT with ``V > d`` the
low-rank path builds ``h`` [.., d] directly, with no ``L×V`` state; only the head's output is ``L×V``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flowlm.errors import ConfigError
from flowlm.methods.common import check_rows, interpolate
from flowlm.methods.lowrank import input_matrix, input_space
from flowlm.schedule import get_schedule, t_max_of, time_nodes

ELBO_GRIDS = ("tau", "t")
DEFAULT_ELBO_TAU_MAX = 0.9  # measured: docs/likelihood.md
DEFAULT_TIME_POINTS = 16  # measured: docs/likelihood.md (variance × cost)
ROWS_PER_CALL = 64  # network rows per forward call (memory: rows·L·V float32 logits)


@dataclass(frozen=True)
class ElboOptions:
    """Options of the diffusion ELBO.

    ``t_max``: t₁, where the decoder takes over; None derives it from ``tau_max`` (``t₁ = T_V⁻¹(tau_max)``);
    ``time_points``: strata of ``[0, t₁]`` per draw (network calls per draw: this + 1); ``grid``: strata equal in
    ``tau`` (the network clock) or in ``t``. Defaults: docs/likelihood.md (measured).
    """

    t_max: float | None = None
    tau_max: float = DEFAULT_ELBO_TAU_MAX
    time_points: int = DEFAULT_TIME_POINTS
    grid: str = "tau"

    def check(self) -> ElboOptions:
        if self.t_max is not None and not 0.0 < self.t_max < 1.0:
            raise ConfigError(f"t_max={self.t_max}: pick a time strictly between 0 and 1 (or leave it unset)")
        if not 0.0 < self.tau_max < 1.0:
            raise ConfigError(f"tau_max={self.tau_max}: pick a value strictly between 0 and 1")
        if not isinstance(self.time_points, int) or isinstance(self.time_points, bool) or self.time_points < 1:
            raise ConfigError(f"time_points={self.time_points!r}: use an integer >= 1 (time strata per draw)")
        if self.grid not in ELBO_GRIDS:
            raise ConfigError(f"grid={self.grid!r}: use tau (strata equal in the network clock) or t")
        return self

    def resolve_t_max(self, vocab_size: int) -> float:
        """t₁: ``t_max`` if given, else ``T_V⁻¹(tau_max)`` (float64 host value)."""
        return self.t_max if self.t_max is not None else t_max_of(vocab_size, self.tau_max)


def snr(t: torch.Tensor) -> torch.Tensor:
    """``SNR(t) = t²/(1 − t)²`` of the path ``x_t = t·x₁ + (1 − t)·x₀`` (any shape; t < 1)."""
    return (t / (1.0 - t)).square()


def t_from_snr(s: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`snr` on ``[0, ∞)``: ``t = √s/(1 + √s)``."""
    root = s.sqrt()
    return root / (1.0 + root)


def strata(vocab_size: int, t_max: float, points: int, grid: str = "tau") -> torch.Tensor:
    """Stratum edges ``0 = t_0 < … < t_K = t_max`` [K + 1] (float64): equal steps of τ (``grid='tau'``) or of t
    (:func:`~flowlm.schedule.time_nodes`, the ODE bound's grid)."""
    return torch.tensor(time_nodes(vocab_size, t_max, points, grid), dtype=torch.float64)


def stratified_times(
    rows: int, edges: torch.Tensor, generator: torch.Generator | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One time per stratum and row, uniform in SNR inside its stratum: ``(t [rows, K], ½·ΔSNR [rows, K])``, float64.

    ``edges`` [K + 1] from :func:`strata`. ``Σ_k ½ΔSNR_k·f(t_k)`` is then unbiased for ``½∫ f dSNR`` over
    ``[edges_0, edges_K]``, with one draw in each stratum.
    """
    edges = edges.to(device=device, dtype=torch.float64)
    low, high = snr(edges[:-1]), snr(edges[1:])
    u = torch.rand(rows, len(edges) - 1, generator=generator, device=device, dtype=torch.float64)
    t = t_from_snr(low + u * (high - low))
    return t, (0.5 * (high - low)).expand(rows, -1)




def whitening(matrix: torch.Tensor) -> torch.Tensor:
    """``A = U_r·Λ_r^{−1/2}`` [d, r] (float64) from ``WᵀW = U·Λ·Uᵀ`` (eigenvalues above ``1e-10·λ_max``), so that
    ``Q = W·A`` [V, r] is an orthonormal basis of the column space of ``matrix`` W [V, d], and ``‖v·Q‖ = ‖(v·W)·A‖``:
    coordinates of an input-space vector ``v·W`` in which the noise ``x₀·W`` is white."""
    w = matrix.detach().double()
    eigenvalues, vectors = torch.linalg.eigh(w.T @ w)
    keep = eigenvalues > 1e-10 * eigenvalues.max()
    return vectors[:, keep] / eigenvalues[keep].sqrt()


class Whitener:
    """``‖r·Q‖²`` per position for residuals ``r = x₁ − D`` given as (ids, probabilities), ``Q`` an orthonormal basis
    of the column space of ``matrix`` W [V, d] (None, or ``full_space``: ``Q = I``).

    ``r·W`` is formed as ``(1 − D_y)·W[y] − D_{¬y}·W`` (``1 − D_y = −expm1(log D_y)``, ``D_{¬y}`` the probabilities
    with ``y``'s zeroed), so nothing cancels when the denoiser is sure; then ``‖r·W·A‖²`` with ``A = U_r·Λ_r^{−1/2}``
    from the eigendecomposition ``WᵀW = U·Λ·Uᵀ`` (eigenvalues above ``1e-10·λ_max``; float64).
    """

    def __init__(self, matrix: torch.Tensor | None, full_space: bool = False):
        self.matrix = None if matrix is None or full_space else matrix.detach().float()
        if self.matrix is not None:
            self.whiten = whitening(self.matrix)

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [N, L, V] and ids [N, L] -> ``‖(x₁ − D)·Q‖²`` [N, L] (float64)."""
        log_p = torch.log_softmax(logits.float(), dim=-1)
        miss = -torch.expm1(log_p.gather(-1, tokens.unsqueeze(-1)))  # 1 − D_y [N, L, 1]
        others = log_p.scatter(-1, tokens.unsqueeze(-1), -math.inf).exp()  # D with D_y := 0
        if self.matrix is None:
            return miss.squeeze(-1).double().square() + others.square().sum(-1).double()
        residual = miss * self.matrix[tokens] - others @ self.matrix  # (x₁ − D)·W [N, L, d]
        return (residual.double() @ self.whiten.to(residual.device)).square().sum(-1)


def decoder_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``−log softmax(logits)[y]`` per position [N, L] (float64)."""
    return -torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).double()


def diffusion_elbo(
    net,
    tokens: torch.Tensor,
    vocab_size: int,
    draws: int = 1,
    options: ElboOptions | None = None,
    generator: torch.Generator | None = None,
    two_times: bool = False,
    input_noise: str = "auto",
    full_space: bool = False,
    rows: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """``draws`` independent estimates of the ELBO of each block [B, L], nats per block: a dict of float64 [B, draws]
    with ``bound`` = ``decoder`` + ``diffusion`` (the prior term is 0 exactly; module docstring).

    ``net`` is a denoiser network ``net(x, tau) -> logits`` (a flowlm DiT, or any callable on full [.., V] states);
    ``two_times``: a flow map, called on its diagonal ``δ_{t,t}`` (``τ_end = τ``). ``input_noise`` as for training
    (``auto``: the low-rank path for a DiT with V > d). ``full_space``: the ELBO of the chain in x (``Q = I``), never
    below the default. ``rows = (first, total)``: ``tokens`` are rows [first, first + B) of ``total`` blocks whose
    times and noise are all drawn and sliced (data parallelism: every rank gets the numbers one process would).
    Draw order: the times [total·draws, K], then per stratum (the decoder's last) the noise of all rows.
    Forward passes only.
    """
    options = (options or ElboOptions()).check()
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise ConfigError(f"draws={draws!r}: use an integer >= 1 (Monte-Carlo draws per block)")
    batch, length = tokens.shape
    first, total = check_rows(rows, batch)
    device = tokens.device
    t1 = options.resolve_t_max(vocab_size)
    points = options.time_points
    mine = slice(first * draws, (first + batch) * draws)  # block b's draws are adjacent rows
    ids = tokens.repeat_interleave(draws, dim=0)  # [B·draws, L]
    t, half_dsnr = stratified_times(total * draws, strata(vocab_size, t1, points, options.grid), generator, device)
    t, half_dsnr = t[mine], half_dsnr[mine]
    space = input_space(input_noise, [net], vocab_size, tokens=len(ids) * (points + 1) * length)
    whitener = Whitener(input_matrix(net), full_space)
    schedule = get_schedule(vocab_size, device)
    clean = space.tokens(ids, vocab_size)

    def stratum(when: torch.Tensor, score) -> torch.Tensor:
        """``score(logits, tokens)`` summed over positions [B·draws] at times ``when`` [B·draws]."""
        x0 = space.noise(total * draws, length, vocab_size, generator, device)[mine]
        h = interpolate(x0, clean, when.float())
        tau = schedule.tau_from_t(when).float()
        out = []
        for start in range(0, len(ids), ROWS_PER_CALL):
            part = slice(start, start + ROWS_PER_CALL)
            logits = space.logits(net, h[part], tau[part], tau[part] if two_times else None)
            out.append(score(logits, ids[part]).sum(-1))
        return torch.cat(out)

    with torch.no_grad():
        errors = torch.stack([stratum(t[:, k], whitener) for k in range(points)], dim=1)
        decoder = stratum(torch.full((len(ids),), t1, dtype=torch.float64, device=device), decoder_nll)
    diffusion = (errors * half_dsnr).sum(-1)
    terms = {"bound": decoder + diffusion, "decoder": decoder, "diffusion": diffusion}
    return {name: value.view(batch, draws) for name, value in terms.items()}
