"""Time reparameterization of flow language models (arXiv 2602.16813).

Two clocks
----------
A flow language model moves a token from Gaussian noise ``x0 ~ N(0, I_V)`` to its one-hot encoding
``x1 = e_k`` along the straight line

    x_t = (1 - t) * x0 + t * x1,        t in [0, 1]            (interpolation time ``t``)

The interpolation time is a poor clock for a vocabulary of size ``V``: the token is not recoverable
from ``x_t`` until ``t`` is large (for ``V = 30522``, ``tau`` goes from 0.01 to 0.99 while ``t`` goes
from 0.63 to 0.87). The model is therefore conditioned on, and its training/sampling grids are
uniform in, a second clock ``tau`` that measures how identifiable the clean token is:

    a       = t / (1 - t)                          (signal-to-noise of x_t / (1 - t) = x0 + a * e_k)
    q_V(t)  = P(argmax_j x_t[j] = k) = E_{z ~ N(0,1)}[ Phi(z + a) ** (V - 1) ]
    tau     = T_V(t) = V / (V - 1) * (q_V(t) - 1 / V)

``Phi`` is the standard normal CDF. ``T_V`` is strictly increasing with ``T_V(0) = 0`` (argmax at
chance level ``1/V``) and ``T_V(1) = 1``; for ``V = 2`` it has the closed form
``T_2(t) = 2 * Phi(a / sqrt(2)) - 1``. Use :func:`tau_from_t` / :func:`t_from_tau` (or a
:class:`TimeSchedule`) to convert between the clocks; e.g. sample ``tau ~ U[0, 1]`` for training
and build ``x_t`` at ``t = t_from_tau(tau, V)``.

Implementation
--------------
``T_V`` is evaluated by quadrature once per vocabulary size (float64 on the CPU, composite
Gauss-Legendre with 768 nodes over ``z in [-16, 16]``, log-space integrands, relative accuracy
~1e-13 or better) and stored as two small cubic-Hermite tables that are then moved to the device:

* forward ``t -> tau``: ``tau`` as a function of ``a = t / (1 - t)`` on a uniform grid over
  ``[0, 16]`` with step 1/32 (513 knots; for ``a >= 16``, ``tau == 1`` in float64 for any
  supported ``V``, i.e. ``V <= 1e11``);
* inverse ``tau -> t``: ``logit(t) = log(a)`` as a function of ``s = logit(tau)`` on a uniform grid
  over ``[-20, 40]`` with step 1/16 (961 knots), extrapolated linearly below ``s = -20``
  (``tau < 2e-9``, where ``log a`` is asymptotically linear in ``s``; error < 1e-12 in ``t``).

Both tables hold exact values and exact derivatives, so the interpolant is C1 and its error is
``O(h^4)``: measured over V in [2, 50258], <= 2e-9 in ``tau`` (forward, float64) and <= 1e-9 in ``t``
(inverse, float64); float32 calls are limited by float32 rounding (~1e-7). A call is pure
elementwise/gather tensor code on the input's device: the table index is computed arithmetically (no
search, no host synchronisation, no data-dependent Python control flow), so it works under
``torch.compile(fullgraph=True)`` and on CUDA.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import threading

import numpy as np
import torch

from flowlm.errors import ConfigError

__all__ = [
    "TimeSchedule",
    "exact_t_from_tau",
    "exact_tau_from_t",
    "get_schedule",
    "t_from_tau",
    "tau_from_t",
]

# --- grids -------------------------------------------------------------------------------------
_A_MAX = 16.0  # forward table covers a = t / (1 - t) in [0, _A_MAX]
_A_STEPS_PER_UNIT = 32  # forward step h_a = 1/32
_S_MIN = -20.0  # inverse table covers s = logit(tau) in [_S_MIN, _S_MAX]
_S_MAX = 40.0
_S_STEPS_PER_UNIT = 16  # inverse step h_s = 1/16

# --- quadrature: composite Gauss-Legendre over z in [-_Z_MAX, _Z_MAX] ----------------------------
_Z_MAX = 16.0
_Z_PANELS = 48  # 768 nodes, panel width 2/3: agrees with 6000 nodes to ~1e-13 relative
_Z_NODES_PER_PANEL = 16
_CHUNK = 64  # rows (values of a) per quadrature block: ~50k elements, ~0.4 MB per temporary

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_vocab_size(vocab_size: object) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
        raise ConfigError(
            f"vocab_size must be an int >= 2 (got {vocab_size!r} of type {type(vocab_size).__name__}); "
            "pass the tokenizer's vocabulary size as an integer"
        )
    v = int(vocab_size)
    if v < 2:
        raise ConfigError(f"vocab_size must be >= 2 (got {v}); pass the tokenizer's vocabulary size")
    return v


@functools.lru_cache(maxsize=1)
def _quadrature_nodes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes ``z`` (K,), log-weights ``log(w * phi(z))`` (K,), and ``log Phi(z)`` (K,), float64 CPU."""
    x, w = np.polynomial.legendre.leggauss(_Z_NODES_PER_PANEL)
    edges = np.linspace(-_Z_MAX, _Z_MAX, _Z_PANELS + 1)
    mid = 0.5 * (edges[1:] + edges[:-1])
    half = 0.5 * (edges[1:] - edges[:-1])
    z = torch.from_numpy((mid[:, None] + half[:, None] * x[None, :]).ravel())
    w = torch.from_numpy((half[:, None] * w[None, :]).ravel())
    log_w = torch.log(w) - 0.5 * z * z - _LOG_SQRT_2PI
    return z, log_w, torch.special.log_ndtr(z)


@contextlib.contextmanager
def _single_threaded():
    """Run the table-build quadrature on one intra-op thread.

    Its ops are small (chunks of ~50k elements), so extra threads buy little, and when the CPU is
    shared with another busy process every parallel region can stall for a scheduler time slice
    (measured on 2 cores with one of them busy: 3 s per build with 2 threads vs 0.13 s with 1).
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _quad(a: torch.Tensor, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quadrature of the three integrals behind ``T_V`` at ``a >= 0``.

    Args:
        a: (N,) float64 CPU, signal-to-noise ``t / (1 - t)``; must be finite and >= 0.
        v: vocabulary size.

    Returns:
        ``(D, C, Q)``, each (N,) float64 with

        * ``D = q_V - 1/V = E[Phi(z+a)^(V-1) - Phi(z)^(V-1)]`` (accurate relative to itself near a=0),
        * ``C = 1 - q_V   = E[1 - Phi(z+a)^(V-1)]``           (accurate relative to itself for large a),
        * ``Q = dq_V/da   = (V-1) E[Phi(z+a)^(V-2) phi(z+a)]``  (positive integrand, relative accuracy),

        so ``tau = V/(V-1) D``, ``1 - tau = V/(V-1) C`` and ``dtau/da = V/(V-1) Q``.
    """
    z, log_w, log_cdf_z = _quadrature_nodes()
    lg0 = (v - 1) * log_cdf_z  # log Phi(z)^(V-1)
    log_vm1 = math.log(v - 1)
    outs: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
    with _single_threaded():
        for start in range(0, a.numel(), _CHUNK):
            x = z + a[start : start + _CHUNK, None]  # (n, K)
            log_cdf = torch.special.log_ndtr(x)
            lg = (v - 1) * log_cdf  # log Phi(z+a)^(V-1), <= 0
            # Phi(z+a)^(V-1) - Phi(z)^(V-1) = Phi(z+a)^(V-1) * (1 - exp(lg0 - lg)), both factors finite.
            d = torch.exp(lg + log_w) * -torch.expm1(lg0 - lg)
            c = torch.exp(log_w) * -torch.expm1(lg)
            q = torch.exp(lg - log_cdf + log_vm1 - 0.5 * x * x - _LOG_SQRT_2PI + log_w)
            for out, val in zip(outs, (d, c, q), strict=True):
                out.append(val.sum(-1))
    return tuple(torch.cat(o) for o in outs)  # type: ignore[return-value]


def _as_float64_cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(device="cpu", dtype=torch.float64)


def exact_tau_from_t(t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Direct quadrature of ``tau = T_V(t)`` (slow; the oracle the tables are built from).

    ``T_V(t) = V/(V-1) * (E_z[Phi(z + t/(1-t))^(V-1)] - 1/V)``, evaluated in float64 on the CPU
    (absolute error ~1e-15). Values are clamped to ``[0, 1]``; ``t = 1`` gives ``tau = 1``.

    Args:
        t: tensor of any shape and floating dtype, on any device (except MPS).
        vocab_size: ``V >= 2``.

    Returns:
        float64 tensor with the shape and device of ``t``.
    """
    v = _check_vocab_size(vocab_size)
    tt = _as_float64_cpu(t).clamp(0.0, 1.0)
    flat = tt.reshape(-1)
    interior = flat < 1.0
    a = torch.where(interior, flat / (1.0 - torch.where(interior, flat, 0.0)), 0.0)
    d, c, _ = _quad(a, v)
    scale = v / (v - 1)
    tau = torch.where(d <= c, scale * d, 1.0 - scale * c).clamp(0.0, 1.0)
    tau = torch.where(interior, tau, 1.0)
    return tau.reshape(tt.shape).to(t.device)


def _solve_log_a(s_target: torch.Tensor, log_a0: torch.Tensor, v: int, iters: int):
    """Newton iterations for ``logit(T_V) = s_target`` in the variable ``log a`` (all (N,) float64).

    Returns ``(log_a, residual, ds/dlog_a)`` where the last two are evaluated at the previous
    iterate (the final update is below 1e-12 in practice, see the build-time check).
    """
    log_a = log_a0.clone()
    resid = slope = torch.empty_like(log_a)
    for _ in range(iters):
        a = torch.exp(log_a)
        d, c, q = _quad(a, v)
        d = d.clamp_min(1e-300)
        c = c.clamp_min(1e-300)
        resid = torch.log(d) - torch.log(c) - s_target
        slope = a * q * (1.0 / d + 1.0 / c)  # d logit(tau) / d log(a)
        log_a = log_a - resid / slope
    return log_a, resid, slope


def exact_t_from_tau(tau: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Direct inverse ``t = T_V^{-1}(tau)`` by Newton iterations on the quadrature (slow oracle).

    Args:
        tau: tensor of any shape and floating dtype, on any device (except MPS); clamped to [0, 1].
        vocab_size: ``V >= 2``.

    Returns:
        float64 tensor with the shape and device of ``tau``; ``tau = 0 -> 0``, ``tau = 1 -> 1``.
    """
    v = _check_vocab_size(vocab_size)
    tables = _build_tables(v)
    x = _as_float64_cpu(tau).clamp(0.0, 1.0)
    flat = x.reshape(-1)
    s = (torch.log(flat) - torch.log1p(-flat)).clamp(-700.0, 700.0)
    log_a0 = torch.logit(_inverse(tables["inv"], tables["inv_tail"], flat))
    log_a0 = log_a0.clamp(-700.0, math.log(_A_MAX))
    log_a, _, _ = _solve_log_a(s, log_a0, v, iters=3)
    t = torch.sigmoid(log_a)
    t = torch.where(flat <= 0.0, 0.0, torch.where(flat >= 1.0, 1.0, t))
    return t.reshape(x.shape).to(tau.device)


def _hermite_coefficients(y: torch.Tensor, dy: torch.Tensor, h: float) -> torch.Tensor:
    """Per-segment cubic coefficients (N-1, 4) of the C1 Hermite interpolant of samples ``y``
    with slopes ``dy`` on a uniform grid of step ``h``, in the local variable ``f in [0, 1]``:
    ``p(f) = c0 + f (c1 + f (c2 + f c3))``."""
    y0, y1 = y[:-1], y[1:]
    m0, m1 = h * dy[:-1], h * dy[1:]
    c2 = 3.0 * (y1 - y0) - 2.0 * m0 - m1
    c3 = 2.0 * (y0 - y1) + m0 + m1
    return torch.stack([y0, m0, c2, c3], dim=-1)


def _eval_table(coef: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Evaluate a Hermite table at fractional grid coordinates ``u`` (any shape, already clamped
    to ``[0, N-1]``; NaN allowed and propagated). Pure elementwise/gather code, no host sync."""
    i = torch.floor(u).to(torch.long).clamp(0, coef.shape[0] - 1)
    f = u - i.to(u.dtype)
    c = coef[i]  # (..., 4)
    return c[..., 0] + f * (c[..., 1] + f * (c[..., 2] + f * c[..., 3]))


def _forward(coef: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """tau from t with the forward table; ``t`` already in the compute dtype and device."""
    tc = t.clamp(0.0, 1.0)  # NaN stays NaN (and gives NaN)
    a = tc / (1.0 - tc).clamp_min(1e-30)  # t = 1 -> 1e30, clamped to the table end where tau == 1
    u = a.clamp(0.0, _A_MAX) * float(_A_STEPS_PER_UNIT)
    tau = _eval_table(coef, u).clamp(0.0, 1.0)
    return torch.where(tc >= 1.0, torch.ones_like(tau), tau)


def _inverse(coef: torch.Tensor, tail: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """t from tau with the inverse table; ``tau`` already in the compute dtype and device.

    ``tail`` = (log_a at s_min, d log_a / ds at s_min) for the linear extrapolation below s_min.
    """
    x = tau.clamp(0.0, 1.0)  # NaN stays NaN (and gives NaN)
    at_end = (x <= 0.0) | (x >= 1.0)
    xs = torch.where(at_end, 0.5, x)  # keeps log/log1p (and their gradients) finite at the ends
    s = torch.log(xs) - torch.log1p(-xs)  # logit(tau)
    u = (s.clamp(_S_MIN, _S_MAX) - _S_MIN) * float(_S_STEPS_PER_UNIT)
    log_a = _eval_table(coef, u)
    log_a = torch.where(s < _S_MIN, tail[0] + tail[1] * (s - _S_MIN), log_a)
    t = torch.sigmoid(log_a)  # t = a / (1 + a)
    return torch.where(at_end, x, t)  # tau = 0 -> t = 0, tau = 1 -> t = 1


@functools.lru_cache(maxsize=64)
def _build_tables(v: int) -> dict[str, torch.Tensor]:
    """Quadrature-built float64 CPU tables for vocabulary size ``v`` (cached per ``v``)."""
    # Forward table: tau and dtau/da on a uniform a-grid.
    n_a = int(_A_MAX * _A_STEPS_PER_UNIT) + 1
    a = torch.linspace(0.0, _A_MAX, n_a, dtype=torch.float64)
    d, c, q = _quad(a, v)
    scale = v / (v - 1)
    tau = torch.where(d <= c, scale * d, 1.0 - scale * c).clamp(0.0, 1.0)
    if tau[-1].item() != 1.0:
        raise ConfigError(f"vocab_size={v} is too large for the time-schedule tables; use V <= 1e11")
    fwd = _hermite_coefficients(tau, scale * q, 1.0 / _A_STEPS_PER_UNIT)

    # Seeds (s, log a) for the inverse: a geometric head below the first grid point + the a-grid.
    head = torch.linspace(-30.0, math.log(a[1].item()), 48, dtype=torch.float64)[:-1]
    dh, ch, _ = _quad(torch.exp(head), v)
    seed_log_a = torch.cat([head, torch.log(a[1:])])
    seed_s = torch.cat([torch.log(dh) - torch.log(ch), torch.log(d[1:]) - torch.log(c[1:])])
    if not (seed_s[0].item() < _S_MIN and seed_s[-1].item() > _S_MAX):
        raise ConfigError(f"vocab_size={v} is too large for the time-schedule tables; use V <= 1e11")

    # Inverse table: log a (= logit t) and d log a / ds on a uniform s-grid, solved by Newton.
    n_s = int((_S_MAX - _S_MIN) * _S_STEPS_PER_UNIT) + 1
    s_grid = torch.linspace(_S_MIN, _S_MAX, n_s, dtype=torch.float64)
    k = torch.searchsorted(seed_s, s_grid).clamp(1, seed_s.numel() - 1)
    w = (s_grid - seed_s[k - 1]) / (seed_s[k] - seed_s[k - 1])
    log_a0 = seed_log_a[k - 1] + w * (seed_log_a[k] - seed_log_a[k - 1])
    log_a, resid, slope = _solve_log_a(s_grid, log_a0, v, iters=3)
    # Size of the last Newton update, in t = sigmoid(log a). (In log a it is ~1e-8 near s_min, where
    # q_V - 1/V ~ 1e-9 carries ~1e-8 relative rounding noise, i.e. ~1e-17 in t.)
    t_grid = torch.sigmoid(log_a)
    err = ((resid / slope).abs() * t_grid * (1.0 - t_grid)).max().item()
    if not err < 1e-12:
        raise RuntimeError(f"time-schedule inverse table did not converge for vocab_size={v} (step {err:.1e})")
    inv = _hermite_coefficients(log_a, 1.0 / slope, 1.0 / _S_STEPS_PER_UNIT)
    inv_tail = torch.stack([log_a[0], 1.0 / slope[0]])
    return {"fwd": fwd, "inv": inv, "inv_tail": inv_tail}


def _normalize_device(device: torch.device | str | None) -> torch.device:
    """``'cuda'`` -> ``cuda:<current>`` etc., so that it compares equal to tensors' ``.device``."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type in ("cpu", "meta"):
        return torch.device(dev.type)
    return torch.empty(0, device=dev).device


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class TimeSchedule:
    """The maps ``t <-> tau`` for one vocabulary size, as on-device lookup tables.

    ``tau = T_V(t) = V/(V-1) * (E_{z~N(0,1)}[Phi(z + t/(1-t))^(V-1)] - 1/V)`` (see module docstring).
    Tables (~1.5k knots) are built once per ``V`` by quadrature on the CPU (~0.1 s) and copied to
    ``device`` in float32 and float64; a call is a pure on-device interpolation (max error ~1e-9).

    Args:
        vocab_size: ``V >= 2``.
        device: where the tables live; tensors on another device are routed to the cached schedule
            for their device (see :func:`get_schedule`).
    """

    def __init__(self, vocab_size: int, device: torch.device | str | None = None) -> None:
        self.vocab_size = _check_vocab_size(vocab_size)
        self.device = _normalize_device(device)
        tables = _build_tables(self.vocab_size)
        dtypes = [torch.float32] if self.device.type == "mps" else [torch.float32, torch.float64]
        self._tables = {
            dt: {name: tab.to(device=self.device, dtype=dt) for name, tab in tables.items()} for dt in dtypes
        }

    def __repr__(self) -> str:
        return f"TimeSchedule(vocab_size={self.vocab_size}, device={str(self.device)!r})"

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dt = _compute_dtype(x.dtype)
        if dt not in self._tables:
            dt = torch.float32
        return x.to(dt), self._tables[dt]

    def tau_from_t(self, t: torch.Tensor) -> torch.Tensor:
        """Network clock from interpolation time: ``tau = T_V(t)``.

        Args:
            t: tensor of any shape (e.g. () or (B,) or (B, L)), floating dtype; clamped to [0, 1].

        Returns:
            ``tau`` with the shape, dtype and device of ``t`` (integer inputs give the default dtype);
            ``t = 0 -> 0``, ``t = 1 -> 1``.
        """
        if t.device != self.device:
            return get_schedule(self.vocab_size, t.device).tau_from_t(t)
        out_dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        x, tables = self._prepare(t)
        return _forward(tables["fwd"], x).to(out_dtype)

    def t_from_tau(self, tau: torch.Tensor) -> torch.Tensor:
        """Interpolation time from network clock: ``t = T_V^{-1}(tau)``.

        Args:
            tau: tensor of any shape, floating dtype; clamped to [0, 1].

        Returns:
            ``t`` with the shape, dtype and device of ``tau`` (integer inputs give the default dtype);
            ``tau = 0 -> 0``, ``tau = 1 -> 1``.
        """
        if tau.device != self.device:
            return get_schedule(self.vocab_size, tau.device).t_from_tau(tau)
        out_dtype = tau.dtype if tau.is_floating_point() else torch.get_default_dtype()
        x, tables = self._prepare(tau)
        return _inverse(tables["inv"], tables["inv_tail"], x).to(out_dtype)


_SCHEDULES: dict[tuple[int, str], TimeSchedule] = {}
_SCHEDULES_LOCK = threading.Lock()


def get_schedule(vocab_size: int, device: torch.device | str | None = None) -> TimeSchedule:
    """The cached :class:`TimeSchedule` for ``(vocab_size, device)`` (built on first use).

    The first call for a given ``(vocab_size, device)`` runs the quadrature (~0.1 s on the CPU) and
    cannot be traced by ``torch.compile``; under ``torch.compile(fullgraph=True)`` call
    ``get_schedule(V, device)`` once beforehand. Later calls are a dictionary lookup.

    Args:
        vocab_size: ``V >= 2``.
        device: device of the tables (default CPU).
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    # Exact-int fast path (a float 2.0 or True would otherwise hit the cache entry for the int).
    sched = _SCHEDULES.get((vocab_size, str(dev))) if type(vocab_size) is int else None
    if sched is None:
        sched = _create_schedule(vocab_size, dev)
    return sched


@torch.compiler.disable
def _create_schedule(vocab_size: int, device: torch.device) -> TimeSchedule:
    v = _check_vocab_size(vocab_size)
    dev = _normalize_device(device)
    with _SCHEDULES_LOCK:
        sched = _SCHEDULES.get((v, str(dev)))
        if sched is None:
            sched = TimeSchedule(v, dev)
            _SCHEDULES[(v, str(dev))] = sched
        _SCHEDULES[(v, str(device))] = sched  # also under the spelling asked for, e.g. "cuda"
    return sched


def tau_from_t(t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``tau = T_V(t)`` elementwise (see :meth:`TimeSchedule.tau_from_t`); same shape/dtype/device."""
    return get_schedule(vocab_size, t.device).tau_from_t(t)


def t_from_tau(tau: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``t = T_V^{-1}(tau)`` elementwise (see :meth:`TimeSchedule.t_from_tau`); same shape/dtype/device."""
    return get_schedule(vocab_size, tau.device).t_from_tau(tau)


def dtau_dt(t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``dτ/dt = T_V'(t)`` at interpolation times ``t`` (any shape), by forward-mode differentiation of the C¹ table of
    ``T_V`` (float64; float32 on MPS). 0 at t = 1 (and wherever ``T_V`` is 1 to the table's precision)."""
    schedule = get_schedule(vocab_size, t.device)
    t = t.to(torch.float32 if t.device.type == "mps" else torch.float64)
    return torch.func.jvp(schedule.tau_from_t, (t,), (torch.ones_like(t),))[1]


def time_nodes(vocab_size: int, t_max: float, steps: int, grid: str = "tau") -> list[float]:
    """Grid ``0 = t_0 < … < t_N = t_max`` as host floats: uniform in τ (``t_k = T⁻¹(τ₁·k/N)``) or in t."""
    if grid == "t":
        return [t_max * k / steps for k in range(steps)] + [t_max]
    schedule = get_schedule(vocab_size, "cpu")
    tau_max = float(schedule.tau_from_t(torch.tensor(t_max, dtype=torch.float64)))
    taus = torch.arange(steps + 1, dtype=torch.float64) * (tau_max / steps)
    nodes = schedule.t_from_tau(taus).tolist()
    nodes[-1] = t_max
    return nodes


def t_max_of(vocab_size: int, tau_max: float) -> float:
    """``t₁ = T_V⁻¹(τ₁)`` as a host float."""
    return float(get_schedule(vocab_size, "cpu").t_from_tau(torch.tensor(tau_max, dtype=torch.float64)))
