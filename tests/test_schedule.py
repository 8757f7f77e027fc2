"""Tests for the t <-> tau time reparameterization (flowlm.schedule)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from known_warnings import TORCH_INDUCTOR_JIT
from tolerances import assert_close_up_to_rounding, rounding_atol

from flowlm.errors import ConfigError
from flowlm.schedule import (
    TimeSchedule,
    exact_t_from_tau,
    exact_tau_from_t,
    get_schedule,
    t_from_tau,
    tau_from_t,
)

F64 = torch.float64
# Vocabulary sizes checked against the quadrature: edge cases, common tokenizers, and seeded random ones.
_RANDOM_V = random.Random(20260219).sample(range(2, 50259), 3)
VOCABS = [2, 3, 27, 1000, 4096, 30522, 50257, 50258, *_RANDOM_V]


def _t_points(seed: int = 0) -> torch.Tensor:
    """Test times (float64 values that are exactly representable in float32): random, uniform,
    clustered at 0 and 1, and dense in the steep region of large vocabularies."""
    g = torch.Generator().manual_seed(seed)
    t = torch.cat(
        [
            torch.rand(800, generator=g, dtype=F64),
            torch.linspace(0.0, 1.0, 501, dtype=F64),
            torch.logspace(-12, -0.3, 100, dtype=F64),
            1.0 - torch.logspace(-7, -0.3, 100, dtype=F64),
            0.55 + 0.4 * torch.rand(600, generator=g, dtype=F64),
        ]
    )
    return t.float().double()


def _tau_points(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tau = torch.cat(
        [
            torch.rand(800, generator=g, dtype=F64),
            torch.linspace(0.0, 1.0, 501, dtype=F64),
            torch.logspace(-14, -0.3, 100, dtype=F64),
            1.0 - torch.logspace(-7, -0.3, 100, dtype=F64),
        ]
    )
    return tau.float().double()


def _erf_closed_form(t: torch.Tensor) -> torch.Tensor:
    """T_2(t) = 2 Phi(a / sqrt 2) - 1 = erf(a / 2), a = t / (1 - t)."""
    return torch.special.erf(t / (1.0 - t) / 2.0)


# --- check values from the spec ------------------------------------------------------------------


@pytest.mark.parametrize(("vocab", "t", "expected", "tol"), [(2, 0.5, 0.5205, 5e-5), (30522, 0.5, 0.00124, 5e-6)])
def test_forward_check_values(vocab, t, expected, tol):
    x = torch.tensor(t, dtype=F64)
    assert abs(exact_tau_from_t(x, vocab).item() - expected) <= tol
    assert abs(tau_from_t(x, vocab).item() - expected) <= tol


@pytest.mark.parametrize(
    ("vocab", "expected", "tol"),
    [(27, 0.669, 5e-4), (4096, 0.784, 5e-4), (30522, 0.8045, 5e-5), (50257, 0.809, 5e-4)],
)
def test_inverse_check_values(vocab, expected, tol):
    half = torch.tensor(0.5, dtype=F64)
    assert abs(exact_t_from_tau(half, vocab).item() - expected) <= tol
    assert abs(t_from_tau(half, vocab).item() - expected) <= tol
    assert abs(t_from_tau(half.float(), vocab).item() - expected) <= tol


def test_closed_form_v2():
    t = _t_points()
    t = t[t < 1.0]
    ref = _erf_closed_form(t)
    assert (exact_tau_from_t(t, 2) - ref).abs().max().item() <= 1e-13
    assert (tau_from_t(t, 2) - ref).abs().max().item() <= 1e-8
    tau = _tau_points()
    tau = tau[(tau > 0) & (tau < 1)]
    t_inv = t_from_tau(tau, 2)
    assert (_erf_closed_form(t_inv) - tau).abs().max().item() <= 1e-8
    # Closed-form inverse: a = 2 erfinv(tau), t = a / (1 + a); compare where erfinv is well conditioned.
    mid = tau < 0.999
    a = 2.0 * torch.special.erfinv(tau[mid])
    assert (t_inv[mid] - a / (1.0 + a)).abs().max().item() <= 1e-8


# --- the quadrature itself -------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [2, 27, 4096, 50257])
def test_quadrature_matches_independent_fine_rule(vocab):
    """exact_tau_from_t (composite Gauss-Legendre, log-space) vs a trapezoid rule on 57k points of
    E[Phi(z + a)^(V-1)] computed directly with ndtr and pow."""
    t = torch.cat([torch.linspace(0.0, 0.95, 40, dtype=F64), torch.linspace(0.6, 0.9, 25, dtype=F64)])
    z = torch.linspace(-14.0, 14.0, 57345, dtype=F64)
    h = (z[1] - z[0]).item()
    w = torch.full_like(z, h)
    w[0] = w[-1] = h / 2
    w = w * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    a = (t / (1.0 - t))[:, None]
    q = (torch.special.ndtr(z + a).pow(vocab - 1) * w).sum(-1)
    ref = vocab / (vocab - 1) * (q - 1.0 / vocab)
    assert (exact_tau_from_t(t, vocab) - ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize("vocab", [2, 50257])
def test_exact_inverse_inverts_exact_forward(vocab):
    tau = torch.cat([torch.linspace(0.0, 1.0, 101, dtype=F64), torch.logspace(-12, -1, 12, dtype=F64)])
    t = exact_t_from_tau(tau, vocab)
    assert (exact_tau_from_t(t, vocab) - tau).abs().max().item() <= 1e-12
    assert torch.all(t[1:101] > t[:100])


# --- tables vs quadrature --------------------------------------------------------------------------

# A float32 call is ~16 elementwise float32 operations on values <= 1 (the logit enters through a sigmoid of slope
# <= 1/4), vectorised or scalar depending on the CPU, plus its input's rounding (<= eps/2 relative, times
# dτ/dt <~ 4): rounding_atol(float32, 16, 2) = 3.8e-6 (tests/tolerances.py), on top of the tables' own 2e-9. A
# wrong clock or table index is off by > 1e-3.
F32_CALL = rounding_atol(torch.float32, 16, 2.0)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("vocab", VOCABS)
def test_tables_match_quadrature(vocab):
    t = _t_points(vocab)
    exact = exact_tau_from_t(t, vocab)
    assert (tau_from_t(t, vocab) - exact).abs().max().item() <= 1e-8
    assert (tau_from_t(t.float(), vocab).double() - exact).abs().max().item() <= F32_CALL

    tau = _tau_points(vocab)
    t_exact = exact_t_from_tau(tau, vocab)
    t64 = t_from_tau(tau, vocab)
    t32 = t_from_tau(tau.float(), vocab)
    assert (t64 - t_exact).abs().max().item() <= 1e-8
    assert (t32.double() - t_exact).abs().max().item() <= F32_CALL
    # Round trips, through the table and through the exact forward map (spec: <= 1e-5).
    assert (tau_from_t(t64, vocab) - tau).abs().max().item() <= 1e-8
    assert (exact_tau_from_t(t64, vocab) - tau).abs().max().item() <= 1e-8
    assert (tau_from_t(t32, vocab).double() - tau).abs().max().item() <= 1e-5
    assert (exact_tau_from_t(t32, vocab) - tau).abs().max().item() <= 1e-5


@pytest.mark.parametrize("vocab", [2, 30522, 50258])
def test_monotone(vocab):
    t = torch.linspace(0.0, 1.0, 200001, dtype=F64)
    tau = tau_from_t(t, vocab)
    assert torch.all(tau[1:] >= tau[:-1])
    unsaturated = tau[1:] < 1.0 - 1e-9
    assert torch.all(tau[1:][unsaturated] > tau[:-1][unsaturated])
    tau_grid = torch.linspace(0.0, 1.0, 200001, dtype=F64)
    t_inv = t_from_tau(tau_grid, vocab)
    assert torch.all(t_inv[1:] > t_inv[:-1])
    t32 = t_from_tau(tau_grid.float(), vocab)
    assert torch.all(t32[1:] >= t32[:-1])


def test_large_vocab_is_not_identity_clock():
    """Catches a t/tau mix-up: for BERT's vocabulary the two clocks are far apart at 0.5."""
    half = torch.tensor(0.5)
    assert tau_from_t(half, 30522).item() < 0.01
    assert t_from_tau(half, 30522).item() > 0.8
    assert abs(tau_from_t(half, 30522).item() - 0.5) > 0.4


# --- endpoints, clamping, NaN ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [2, 50257])
def test_endpoints_and_clamping(dtype, vocab):
    x = torch.tensor([-0.5, 0.0, 1.0, 1.5], dtype=dtype)
    expected = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype)
    assert torch.equal(tau_from_t(x, vocab), expected)
    assert torch.equal(t_from_tau(x, vocab), expected)


def test_nan_propagates():
    x = torch.tensor([float("nan"), 0.5])
    for fn in (tau_from_t, t_from_tau):
        y = fn(x, 30522)
        assert torch.isnan(y[0]) and torch.isfinite(y[1])


# --- API contract: shape, dtype, device, caching, errors ------------------------------------------


@pytest.mark.float_sensitive
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (7,), (3, 5)])
def test_shape_dtype_device_preserved(dtype, shape):
    g = torch.Generator().manual_seed(3)
    x64 = torch.rand(shape, generator=g, dtype=F64)
    x = x64.to(dtype)
    # float32: F32_CALL's operations without the input rounding (ref sees the same rounded input); bfloat16 is
    # computed in float32 and rounded once (eps/2 = 3.9e-3 at values <= 1); float64: the tables' error (<= 2e-9).
    tol = {torch.float32: rounding_atol(torch.float32, 16, 1.0), torch.float64: 1e-8, torch.bfloat16: 1e-2}[dtype]
    for fn in (tau_from_t, t_from_tau):
        y = fn(x, 50257)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        ref = fn(x.double(), 50257)
        assert (y.double() - ref).abs().max().item() <= tol


def test_schedule_object_matches_functions_and_is_cached():
    sched = get_schedule(4096, "cpu")
    assert sched is get_schedule(4096, torch.device("cpu"))
    assert sched is get_schedule(4096)
    assert isinstance(sched, TimeSchedule) and sched.vocab_size == 4096
    x = torch.rand(11, dtype=F64)
    assert torch.equal(sched.tau_from_t(x), tau_from_t(x, 4096))
    assert torch.equal(sched.t_from_tau(x), t_from_tau(x, 4096))
    fresh = TimeSchedule(4096)
    assert torch.equal(fresh.tau_from_t(x), sched.tau_from_t(x))
    assert torch.equal(fresh.t_from_tau(x), sched.t_from_tau(x))


def test_schedule_routes_other_devices():
    """A schedule whose tables live elsewhere serves tensors from the tensors' own device."""
    meta_sched = get_schedule(27, "meta")
    x = torch.rand(5)
    assert torch.equal(meta_sched.tau_from_t(x), tau_from_t(x, 27))


@pytest.mark.parametrize("bad", [1, 0, -5, 2.0, 2.5, "30522", None, True])
def test_bad_vocab_size_raises_config_error(bad):
    x = torch.tensor([0.5])
    for call in (
        lambda: tau_from_t(x, bad),
        lambda: t_from_tau(x, bad),
        lambda: TimeSchedule(bad),
        lambda: get_schedule(bad, "cpu"),
        lambda: exact_tau_from_t(x, bad),
    ):
        with pytest.raises(ConfigError, match="vocab_size"):
            call()


def test_huge_vocab_sizes():
    t = _t_points(7)[::10]
    exact = exact_tau_from_t(t, 128256)  # Llama 3
    assert (tau_from_t(t, 128256) - exact).abs().max().item() <= 1e-8
    with pytest.raises(ConfigError, match="vocab_size"):
        tau_from_t(t, 10**12)


# --- no host synchronisation ---------------------------------------------------------------------


def test_runs_on_meta_device():
    """Meta tensors have no data: any .item()/.cpu()/data-dependent branch would raise."""
    x = torch.empty(4, 3, device="meta")
    for fn in (tau_from_t, t_from_tau):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            y = fn(x.to(dtype), 30522)
            assert y.device.type == "meta" and y.shape == x.shape and y.dtype == dtype


def test_traces_as_single_graph():
    """torch.compile(fullgraph=True) fails on any graph break (host sync, data-dependent branch)."""
    get_schedule(30522, "cpu")  # the table build itself is not traceable; build before compiling

    def both(t, tau):
        return tau_from_t(t, 30522), t_from_tau(tau, 30522)

    compiled = torch.compile(both, fullgraph=True, backend="eager")
    t = torch.rand(6, 2)
    for got, want in zip(compiled(t, t), both(t, t), strict=True):
        assert torch.equal(got, want)


@pytest.mark.slow
@TORCH_INDUCTOR_JIT
def test_inductor_compile_matches_eager():
    get_schedule(50257, "cpu")

    def both(t, tau):
        return tau_from_t(t, 50257), t_from_tau(tau, 50257)

    compiled = torch.compile(both, fullgraph=True)
    t = torch.rand(64)
    for got, want in zip(compiled(t, t), both(t, t), strict=True):
        # Inductor fuses and may contract (FMA) the ~16 float32 operations per element: a chain of n = 16 on values
        # <= 1 (t, τ, the Hermite terms; the logit enters through a sigmoid of slope <= 1/4, which scales its
        # larger absolute error down): rounding_atol(float32, 16, 1) = 1.9e-6 (tests/tolerances.py).
        assert_close_up_to_rounding(got, want, n=16, scale=1.0)
