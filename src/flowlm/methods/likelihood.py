"""Likelihoods: an upper bound on ``−log p(x)`` per block for every method that has one. No I/O.

AR: exact. MDLM: its NELBO, ``K`` stratified time draws per block. FLM (and a flow map's own diagonal): the
diffusion ELBO (:mod:`flowlm.methods.elbo`, the default) or a variational bound through the probability-flow ODE
(below). All numbers are nats per *block* [B] or [B, K]; the
command (:mod:`flowlm.eval.likelihood`) divides by tokens and aggregates.

FLM bound (SPEC notation; derivation also in docs/likelihood.md)
-------------------------------------------------------------------
A block ``x ∈ {0..V−1}^L`` has one-hot ``x₁ ∈ R^{L×V}``. Pick ``t₁ = t_max < 1`` and let
``z = t₁·x₁ + (1 − t₁)·ε``, ``ε ~ N(0, I_{LV})``, i.e. ``q(z | x) = N(t₁·x₁, (1 − t₁)²·I)``. The generative
model is ``z ~ p_ODE`` (the law at ``t₁`` of the model's ODE ``dx/dt = b(x, t) = (D(x, τ) − x)/(1 − t)``,
``τ = T_V(t)``, started from ``x₀ ~ N(0, I)``), then ``x ~ p(x | z) = Π_ℓ D(z, τ₁)[ℓ, x_ℓ]`` (the denoiser at
``τ₁ = T_V(t₁)`` as a factorized decoder). Jensen:

    −log p(x) ≤ E_{z~q(z|x)}[ −log p_ODE(z) − log p(x | z) + log q(z | x) ].

Instantaneous change of variables along the ODE path through ``z`` (``x_t`` solved backward from ``z``):

    log p_ODE(z) = log N(x₀; 0, I) − ∫₀^{t₁} div_x b(x_t, t) dt.

**Divergence in ``d`` dimensions.** The network sees the state only through ``h = x @ W`` (W the ``V × d``
input matrix), so ``∂D/∂x = (∂D/∂h)(I_L ⊗ Wᵀ)`` and ``tr(∂D/∂x) = tr(J)`` with ``J = ∂(D(h) @ W)/∂h``
(``L·d × L·d``; cyclic trace). Hence ``div_x b = (tr J − L·V)/(1 − t)``.

**The ``L·V`` terms cancel.** ``∫₀^{t₁} L·V/(1 − t) dt = −L·V·log(1 − t₁)`` and
``log q(z | x) = −(LV/2)·log 2π − L·V·log(1 − t₁) − ‖ε‖²/2``, so per draw

    bound = −Σ_ℓ log D(z, τ₁)[ℓ, x_ℓ] + (‖x₀‖² − ‖ε‖²)/2 + ∫₀^{t₁} tr J(h_t, τ_t)/(1 − t) dt.

**``x₀`` without the V-dimensional state.** ``d/dt [x/(1 − t)] = D/(1 − t)²`` along the ODE, so
``x₀ = z/(1 − t₁) − ∫₀^{t₁} D/(1 − s)² ds``, and with ``z/(1 − t₁) = ε + x₁·t₁/(1 − t₁)``:

    x₀ − ε = δ := ∫₀^{t₁} (x₁ − D(h_s, τ_s))/(1 − s)² ds,   ‖x₀‖² − ‖ε‖² = 2⟨ε, δ⟩ + ‖δ‖².

So the solver carries ``h = x @ W`` [B, L, d] (which evolves on its own: ``dh/dt = (D @ W − h)/(1 − t)``), the
integral ``δ`` [B, L, V] and the trace integral [B], in float64; δ vanishes where the denoiser is sure of
the data, so nothing large cancels. With the exact denoiser of a data distribution, ``p_ODE = p_{t₁}``, so one
draw of the bound is ``−log p(x) + log p(x | z) − Σ_ℓ log p(x_ℓ | z)``: the only gap left is the factorized
decoder's (the posterior's total correlation), zero for independent positions and vanishing as ``t₁ → 1``
(the toy tests). For a trained network the gap also holds its ODE's error as a density.

Solvers: a fixed grid uniform in τ (``t_k = T_V⁻¹(τ₁·k/N)``, default) or in t, integrated backward from
``t₁`` to 0 by ``euler``, ``heun`` (2 network calls per step) or ``rk4`` (4). Each call evaluates D and an
estimate of ``tr J``: exact (a basis of the smaller of the two spaces) or Hutchinson with Rademacher probes,
fixed per block along the path, in h-space (``e ∈ {±1}^{L×d}``: ``eᵀJe``) or V-space (``v ∈ {±1}^{L×V}``:
``vᵀ(∂D/∂x)v``). Both are unbiased, so the bound's estimate stays unbiased; their variances differ
(docs/likelihood.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flowlm.errors import ConfigError
from flowlm.methods.common import model_cross_entropy
from flowlm.methods.elbo import ElboOptions, diffusion_elbo, whitening
from flowlm.methods.lowrank import input_matrix
from flowlm.methods.mdlm import T_MIN, mask_tokens
from flowlm.schedule import get_schedule, t_max_of, time_nodes

# A denoiser's logits at a state: ``logits_fn(h [N, L, k] float32, tau [N]) -> logits [N, L, V]``.
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SOLVERS = {"euler": 1, "heun": 2, "rk4": 4}  # network calls per step
GRIDS = ("tau", "t")
DIVERGENCES = ("auto", "h", "v")  # which space the probes (or the exact basis) live in
DEFAULT_TAU_MAX = 0.9  # measured: docs/likelihood.md
EXACT_CHUNK = 256  # basis vectors per batched backward pass of the exact trace (at most)
EXACT_CHUNK_ELEMENTS = 2**24  # ... and at most this many L·V elements per chunk (64 MB of float32)


@dataclass(frozen=True)
class FlowBoundOptions:
    """Options of the ODE bound.

    ``t_max``: t₁, where the decoder takes over; None (default) derives it per vocabulary from ``tau_max``
    (``t₁ = T_V⁻¹(tau_max)``: the same clock value means the same identifiability for every V);
    ``steps``: solver steps on ``[0, t₁]``; ``solver``: euler / heun / rk4; ``grid``: ``tau`` (uniform in
    the network clock) or ``t``; ``probes``: Hutchinson probes per network call, 0 = exact trace;
    ``divergence``: ``h`` (probes in the network's input space, L·d), ``v`` (in the one-hot space, L·V) or
    ``auto`` (:func:`resolve_space`). Defaults: docs/likelihood.md (measured trade-off).
    """

    t_max: float | None = None
    tau_max: float = DEFAULT_TAU_MAX
    steps: int = 32
    solver: str = "rk4"
    grid: str = "tau"
    probes: int = 1
    divergence: str = "auto"

    def check(self) -> FlowBoundOptions:
        if self.t_max is not None and not 0.0 < self.t_max < 1.0:
            raise ConfigError(f"t_max={self.t_max}: pick a time strictly between 0 and 1 (or leave it unset)")
        if not 0.0 < self.tau_max < 1.0:
            raise ConfigError(f"tau_max={self.tau_max}: pick a value strictly between 0 and 1 (default 0.9)")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"ode steps={self.steps!r}: use an integer >= 1")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver={self.solver!r}: use one of {', '.join(SOLVERS)}")
        if self.grid not in GRIDS:
            raise ConfigError(f"grid={self.grid!r}: use tau (uniform in the network clock) or t")
        if not isinstance(self.probes, int) or self.probes < 0:
            raise ConfigError(f"probes={self.probes!r}: use an integer >= 1, or 0 for the exact trace")
        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"divergence={self.divergence!r}: use one of {', '.join(DIVERGENCES)}")
        return self

    def resolve_t_max(self, vocab_size: int) -> float:
        """t₁: ``t_max`` if given, else ``T_V⁻¹(tau_max)``."""
        return self.t_max if self.t_max is not None else t_max_of(vocab_size, self.tau_max)


def probe_pairs(
    batch: int, length: int, vocab_size: int, matrix: torch.Tensor | None, probes: int, space: str,
    generator: torch.Generator | None, device,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Rademacher probes as pairs ``(a [P, B, L, V], b [P, B, L, k])`` with ``E[⟨∇_h⟨D, a⟩, b⟩] = tr J``.

    h-space (``space='h'``): ``e ∈ {±1}^{L×k}``, ``a = e @ Wᵀ``, ``b = e``. V-space (``'v'``): ``v ∈ {±1}^{L×V}``,
    ``a = v``, ``b = v @ W``. ``matrix`` W [V, k]; None means the state is the one-hot space itself (k = V).
    """
    width = vocab_size if matrix is None or space == "v" else matrix.shape[1]
    signs = torch.randint(0, 2, (probes, batch, length, width), generator=generator, device=device)
    e = signs.to(torch.float32).mul_(2).sub_(1)
    if matrix is None:
        return e, e
    w = matrix.detach().float()
    return (e @ w.T, e) if space == "h" else (e, e @ w)


def basis_pairs(length: int, vocab_size: int, matrix: torch.Tensor | None, space: str, device):
    """The exact trace as a sum over basis vectors: yields chunks ``(a [n, L, V], b [n, L, k])`` of the pairs
    of :func:`probe_pairs` for the unit vectors of the h-space (``'h'``) or V-space (``'v'``)."""
    width = vocab_size if matrix is None or space == "v" else matrix.shape[1]
    total = length * width
    w = None if matrix is None else matrix.detach().float()
    chunk = max(1, min(EXACT_CHUNK, EXACT_CHUNK_ELEMENTS // (length * vocab_size)))
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(start + chunk, total), device=device)
        unit = torch.zeros(len(idx), length * width, device=device)
        unit[torch.arange(len(idx), device=device), idx] = 1.0
        unit = unit.view(len(idx), length, width)
        if w is None:
            yield unit, unit
        elif space == "h":
            yield unit @ w.T, unit
        else:
            yield unit, unit @ w


def resolve_space(divergence: str, vocab_size: int, matrix: torch.Tensor | None, exact: bool) -> str:
    """``h`` or ``v``. ``auto``: for the exact trace the smaller space (fewer basis vectors: L·min(V, d) backward
    passes); for probes V-space, whose per-probe variance was lower on both models measured (the demo FLM,
    V = 1,024 > d = 128, at τ <= 0.9, and the Markov FLM, V = 8 < d = 64; docs/likelihood.md): a probe costs
    one backward pass in either space."""
    if matrix is None:
        return "v"
    if divergence == "auto":
        return ("v" if vocab_size <= matrix.shape[1] else "h") if exact else "v"
    return divergence


def denoise_and_trace(
    logits_fn: LogitsFn, h: torch.Tensor, tau: float, pairs, exact: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D(h, τ) [B, L, V], estimate of tr J [B])`` at one scalar τ.

    ``pairs``: ``(a [P, B, L, V], b [P, B, L, k])`` probes (mean over P) or, with ``exact``, an iterable of
    basis chunks ``(a [n, L, V], b [n, L, k])`` shared by every row (sum over the basis). One batched forward
    and backward per chunk of ``P·B`` (or ``n·B``) rows.
    """
    batch = h.shape[0]
    base = h.detach().float()
    chunks = pairs if exact else [pairs]
    total = torch.zeros(batch, dtype=torch.float64, device=h.device)
    probs = None
    for a, b in chunks:
        if exact:  # [n, L, *] shared by the rows -> [n, B, L, *]
            a = a.unsqueeze(1).expand(-1, batch, -1, -1)
            b = b.unsqueeze(1).expand(-1, batch, -1, -1)
        n = a.shape[0]
        with torch.enable_grad():
            x = base.unsqueeze(0).expand(n, -1, -1, -1).reshape(n * batch, *base.shape[1:]).requires_grad_(True)
            tau_vec = torch.full((n * batch,), float(tau), device=h.device)
            p = torch.softmax(logits_fn(x, tau_vec).float(), dim=-1)
            contraction = (p * a.reshape(p.shape)).sum()
            # a denoiser that ignores its input (a constant) has J = 0 and no graph to differentiate
            grad = torch.autograd.grad(contraction, x)[0] if contraction.requires_grad else torch.zeros_like(x)
        terms = (grad.view(n, batch, *base.shape[1:]) * b).sum((-1, -2)).double()
        total += terms.sum(0) if exact else terms.mean(0)
        if probs is None:
            probs = p.detach()[:batch]
    return probs, total


def integrate_flow(
    logits_fn: LogitsFn,
    matrix: torch.Tensor | None,
    h1: torch.Tensor,
    target: torch.Tensor,
    vocab_size: int,
    nodes: list[float],
    solver: str,
    pairs,
    exact: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve the ODE backward from ``h(t_N) = h1`` [B, L, k] to ``t_0 = 0`` on ``nodes``; returns
    ``(h(0) [B, L, k], ∫₀^{t_N} (target − D)/(1 − s)² ds [B, L, V], ∫₀^{t_N} tr J/(1 − s) ds [B])``, all float64.

    ``target`` [B, L, V] (one-hot rows, or zeros for the plain integral of ``−D/(1 − s)²``). The network is
    called at ``τ = T_V(t)`` of each stage's ``t``; increments use ``t``.
    """
    schedule = get_schedule(vocab_size, "cpu")
    w = None if matrix is None else matrix.detach().double()
    target = target.double()

    def field(h: torch.Tensor, t: float):
        tau = float(schedule.tau_from_t(torch.tensor(t, dtype=torch.float64)))
        probs, trace = denoise_and_trace(logits_fn, h, tau, pairs, exact)
        d = probs.double()
        dw = d if w is None else d @ w
        return (dw - h) / (1.0 - t), (target - d) / (1.0 - t) ** 2, trace / (1.0 - t)

    h = h1.double()
    delta = torch.zeros_like(target)
    div = torch.zeros(h.shape[0], dtype=torch.float64, device=h.device)
    for k in range(len(nodes) - 1, 0, -1):
        ta, tb = nodes[k], nodes[k - 1]
        step = tb - ta  # negative: backward in time
        k1 = field(h, ta)
        if solver == "euler":
            incs = k1
        elif solver == "heun":
            k2 = field(h + step * k1[0], tb)
            incs = tuple((u + v) / 2 for u, v in zip(k1, k2, strict=True))
        else:
            tm = (ta + tb) / 2
            k2 = field(h + 0.5 * step * k1[0], tm)
            k3 = field(h + 0.5 * step * k2[0], tm)
            k4 = field(h + step * k3[0], tb)
            incs = tuple((a + 2 * b + 2 * c + d) / 6 for a, b, c, d in zip(k1, k2, k3, k4, strict=True))
        h = h + step * incs[0]
        delta = delta + step * incs[1]
        div = div + step * incs[2]
    # the accumulators ran from t_N down to 0: the integrals from 0 to t_N are their negatives
    return h, -delta, -div


class _Basis:
    """The chunks of :func:`basis_pairs`, generated afresh on every iteration."""

    def __init__(self, *args):
        self.args = args

    def __iter__(self):
        return basis_pairs(*self.args)


def _pairs_for(batch, length, vocab_size, matrix, options, generator, device):
    space = resolve_space(options.divergence, vocab_size, matrix, exact=options.probes == 0)
    if options.probes == 0:  # re-iterable: the chunks are rebuilt at each call instead of all held in memory
        return _Basis(length, vocab_size, matrix, space, device), True
    return probe_pairs(batch, length, vocab_size, matrix, options.probes, space, generator, device), False


def flow_nll_bound(
    logits_fn: LogitsFn,
    matrix: torch.Tensor | None,
    tokens: torch.Tensor,
    vocab_size: int,
    options: FlowBoundOptions | None = None,
    generator: torch.Generator | None = None,
    full_space: bool = False,
) -> dict[str, torch.Tensor]:
    """One draw of the ODE bound on ``−log p(x)`` for each block of ``tokens`` [B, L] (module docstring).

    ``logits_fn(h [N, L, k], τ [N])``: the denoiser's logits at a state ``h = x @ W``; ``matrix`` W [V, k] (None:
    ``h`` is the one-hot space itself, k = V). Draws ``ε`` [B, L, V] and then the probes from ``generator``.
    Returns float64 [B] tensors: ``bound`` (nats per block) = ``decoder + prior + divergence`` with
    ``decoder = −Σ_ℓ log D(z, τ₁)[ℓ, x_ℓ]``, ``prior = (‖x₀Q‖² − ‖εQ‖²)/2`` (Q an orthonormal basis of W's
    columns: the density of the flow of ``h``; ``full_space`` or no W: ``Q = I``, the density in x) and
    ``divergence = ∫ tr J/(1 − t) dt``.
    """
    options = (options or FlowBoundOptions()).check()
    batch, length = tokens.shape
    device = tokens.device
    t1 = options.resolve_t_max(vocab_size)
    nodes = time_nodes(vocab_size, t1, options.steps, options.grid)
    tau1 = float(get_schedule(vocab_size, "cpu").tau_from_t(torch.tensor(t1, dtype=torch.float64)))
    eps = torch.randn(batch, length, vocab_size, generator=generator, device=device, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(tokens, vocab_size).double()
    z = t1 * onehot + (1.0 - t1) * eps
    h1 = z if matrix is None else z @ matrix.detach().double()
    pairs, exact = _pairs_for(batch, length, vocab_size, matrix, options, generator, device)
    with torch.no_grad():
        logits = logits_fn(h1.float(), torch.full((batch,), tau1, device=device)).float()
        decoder = -torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).double().sum(-1)
    _, delta, div = integrate_flow(logits_fn, matrix, h1, onehot, vocab_size, nodes, options.solver, pairs, exact)
    if matrix is not None and not full_space:  # white coordinates of the input space: (v @ W) @ A = v @ Q
        w, a = matrix.detach().double(), whitening(matrix)
        eps, delta = (eps @ w) @ a, (delta @ w) @ a
    prior = (eps * delta).sum((-1, -2)) + 0.5 * delta.square().sum((-1, -2))
    return {"bound": decoder + prior + div, "decoder": decoder, "prior": prior, "divergence": div}


def ode_log_density(
    logits_fn: LogitsFn,
    matrix: torch.Tensor | None,
    z: torch.Tensor,
    vocab_size: int,
    t_max: float,
    options: FlowBoundOptions | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``log p_ODE(z)`` [B] (float64) of states ``z`` [B, L, V] at time ``t_max``: the ODE solved back to 0,
    ``log N(x₀; 0, I) − ∫₀^{t_max} (tr J − L·V)/(1 − t) dt`` with ``x₀ = z/(1 − t_max) − ∫₀^{t_max} D/(1 − s)² ds``.
    ``options.t_max`` / ``tau_max`` are ignored (``t_max`` is given)."""
    options = (options or FlowBoundOptions()).check()
    batch, length, _ = z.shape
    nodes = time_nodes(vocab_size, t_max, options.steps, options.grid)
    h1 = z.double() if matrix is None else z.double() @ matrix.detach().double()
    pairs, exact = _pairs_for(batch, length, vocab_size, matrix, options, generator, z.device)
    zeros = torch.zeros_like(z, dtype=torch.float64)
    _, minus_a, div = integrate_flow(logits_fn, matrix, h1, zeros, vocab_size, nodes, options.solver, pairs, exact)
    x0 = z.double() / (1.0 - t_max) + minus_a
    lv = length * vocab_size
    log_prior = -0.5 * x0.square().sum((-1, -2)) - 0.5 * lv * math.log(2 * math.pi)
    return log_prior - div - lv * math.log(1.0 - t_max)


def repeat_draws(tokens: torch.Tensor, draws: int) -> torch.Tensor:
    """[B, L] -> [B·K, L], block b's K copies adjacent (rows b·K .. b·K + K − 1)."""
    if not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws={draws!r}: use an integer >= 1 (Monte-Carlo draws per block)")
    return tokens.repeat_interleave(draws, dim=0)


def mdlm_nelbo(
    model, tokens: torch.Tensor, vocab_size: int, draws: int = 16, generator=None, t_min: float = T_MIN
) -> torch.Tensor:
    """MDLM's NELBO of each block [B, L] in nats per block, ``draws`` estimates each: [B, K] (float64).

    Per block the K times are stratified on ``[t_min, 1)``: ``t_k = t_min + (1 − t_min)(k + u_k)/K``; each draw
    is ``(1/t)·Σ_{masked ℓ} −log p_θ(x_ℓ | z_t)`` (the estimator of :func:`~flowlm.methods.mdlm.mdlm_loss`, summed
    over the L positions instead of averaged). Their mean is unbiased for ``(1/(1 − t_min))·∫_{t_min}^1`` of
    the NELBO's integrand, which differs from the NELBO by O(t_min) (see ``mdlm_loss``).
    """
    rows = repeat_draws(tokens, draws)
    u = torch.rand(tokens.shape[0], draws, generator=generator, device=tokens.device)
    strata = (torch.arange(draws, device=tokens.device) + u) / draws
    t = (t_min + (1 - t_min) * strata).reshape(-1)
    z, masked = mask_tokens(rows, t, vocab_size, generator)
    with torch.no_grad():
        ce = model_cross_entropy(model, z, torch.zeros(len(rows), device=tokens.device), rows) * masked
    return (ce.double().sum(-1) / t.double()).view(tokens.shape[0], draws)


def ar_nll(model, tokens: torch.Tensor) -> torch.Tensor:
    """Exact ``−log p(x_1..x_{L−1} | x_0)`` of each block [B, L], nats per block: [B, 1] (float64)."""
    with torch.no_grad():
        ce = model_cross_entropy(model, tokens[:, :-1], torch.zeros(len(tokens), device=tokens.device), tokens[:, 1:])
    return ce.double().sum(-1, keepdim=True)


def flow_nll_draws(
    logits_fn: LogitsFn,
    matrix: torch.Tensor | None,
    tokens: torch.Tensor,
    vocab_size: int,
    draws: int = 2,
    options: FlowBoundOptions | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``draws`` independent draws (noise and probes) of :func:`flow_nll_bound` per block: [B, K] float64."""
    rows = repeat_draws(tokens, draws)
    out = flow_nll_bound(logits_fn, matrix, rows, vocab_size, options, generator)["bound"]
    return out.view(tokens.shape[0], draws)


def network_denoiser(net, two_times: bool = False) -> tuple[LogitsFn, torch.Tensor | None]:
    """``(logits_fn, W)`` for :func:`flow_nll_bound`: a flowlm DiT is called on ``h = x @ W`` (``embedded=True``)
    with W its input matrix; another callable on the full state (W = None). ``two_times``: a flow map, called on
    its diagonal ``δ_{t,t}`` (``τ_end = τ``)."""
    matrix = input_matrix(net)
    if matrix is None:
        if two_times:
            return (lambda x, tau: net(x, tau, tau)), None
        return (lambda x, tau: net(x, tau)), None
    if two_times:
        return (lambda h, tau: net(h, tau, tau, embedded=True)), matrix
    return (lambda h, tau: net(h, tau, embedded=True)), matrix


def flow_bound_draws(
    net,
    tokens: torch.Tensor,
    vocab_size: int,
    draws: int,
    options: ElboOptions | FlowBoundOptions | None,
    generator: torch.Generator | None = None,
    two_times: bool = False,
) -> torch.Tensor:
    """``draws`` estimates per block [B, draws] of an FLM's (or a flow map's diagonal's, ``two_times``) bound: the
    diffusion ELBO for :class:`ElboOptions` or None, the ODE bound for :class:`FlowBoundOptions`."""
    if isinstance(options, FlowBoundOptions):
        logits_fn, matrix = network_denoiser(net, two_times=two_times)
        return flow_nll_draws(logits_fn, matrix, tokens, vocab_size, draws, options, generator)
    return diffusion_elbo(net, tokens, vocab_size, draws, options, generator, two_times=two_times)["bound"]


def validation_elbo(
    net, tokens: torch.Tensor, ctx, generator=None, rows=None, two_times: bool = False
) -> dict[str, torch.Tensor]:
    """``{"nll_bound": ELBO / L}`` (nats per token over all L positions, as MDLM's ``val/nll_bound``) of a validation
    batch [B, L]: one draw with ``train.val_bound_points`` time strata (``{}`` when that is 0); ``rows`` as for the
    loss, so every world size logs the same number."""
    points = ctx.cfg.train.val_bound_points
    if not points:
        return {}
    out = diffusion_elbo(net, tokens, ctx.vocab_size, 1, ElboOptions(time_points=points), generator, two_times,
                         ctx.cfg.train.input_noise, rows=rows)  # fmt: skip
    return {"nll_bound": out["bound"].mean().float() / tokens.shape[1]}
