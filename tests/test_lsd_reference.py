"""The ``lsd-ref`` recipe (flowlm.methods.lsd_reference), the reference code's LSD: sparsemax is the Euclidean
projection onto the simplex, the forward-mode derivative is the end-time derivative in the interpolation clock t (not
the network clock τ), the target is a fixed point of the exact flow map of a known velocity field, and the recipe
trains through the registry."""

import pytest
import torch
from known_warnings import TORCH_FORWARD_AD_JIT
from test_lsd import V as TOY_V  # the ODE-integrated exact flow map of a known velocity field (test_lsd.py)
from test_lsd import clock, exact_delta, student

from flowlm.config import RunConfig
from flowlm.methods import lsd_reference, registry
from flowlm.methods.base import LossContext
from flowlm.methods.fmlm import init_student
from flowlm.methods.lowrank import LowRankInputs
from flowlm.methods.lsd_reference import (
    dtau_dt,
    end_time_derivative,
    lagrangian_target,
    lsd_reference_loss,
    offdiagonal_target,
    sparsemax,
)
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.schedule import exact_tau_from_t, tau_from_t

pytestmark = [pytest.mark.usefixtures("one_thread"), TORCH_FORWARD_AD_JIT]


def bisection_projection(z: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """Projection onto the simplex by bisection on the threshold θ of ``Σ max(z − θ, 0) = 1`` (float64): the
    algorithm of the reference's ``entmax_bisect`` at α = 2, run to convergence."""
    z = z.double()
    lo, hi = z.max(-1, keepdim=True).values - 1, z.max(-1, keepdim=True).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        over = torch.clamp(z - mid, min=0).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    return torch.clamp(z - (lo + hi) / 2, min=0)


def test_sparsemax_closed_form_and_projection(monkeypatch):
    z = torch.tensor([[0.7, 0.5, -0.2, 0.05], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.4, 0.1],
                      [1.0, 1.0, -5.0, 0.25], [0.3, -0.1, 0.3, 0.2]])  # fmt: skip
    expected = torch.tensor([[0.6, 0.4, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25] * 4, [0.2, 0.3, 0.4, 0.1],
                             [0.5, 0.5, 0.0, 0.0], [11 / 30, 0.0, 11 / 30, 8 / 30]])  # fmt: skip
    assert torch.allclose(sparsemax(z), expected, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(4, 5, 37, generator=g, dtype=torch.float64)
    p = sparsemax(z)
    assert p.shape == z.shape and bool((p >= 0).all())
    assert torch.allclose(p.sum(-1), torch.ones(4, 5, dtype=torch.float64))
    assert 0 < (p == 0).double().mean() < 1  # sparse but not one-hot: the test exercises both parts of the support
    # the Euclidean projection: the same as bisection, shift-invariant, and p satisfies the variational inequality
    # <z − p, q − p> <= 0 for every q of the simplex (enough: for every vertex q = e_j)
    assert torch.allclose(p, bisection_projection(z), atol=1e-12)
    assert torch.allclose(sparsemax(z + 5.0), p, atol=1e-12)
    r = z - p
    assert bool((r.max(-1).values <= (r * p).sum(-1) + 1e-12).all())
    # float32, and rows sorted in several blocks
    monkeypatch.setattr(lsd_reference, "SPARSEMAX_CHUNK", 3 * 37)
    assert torch.allclose(sparsemax(z.float()), p.float(), atol=1e-6)


def test_dtau_dt_is_the_derivative_of_the_schedule():
    t = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=torch.float64)
    h = 1e-6
    fd = (exact_tau_from_t(t + h, 64) - exact_tau_from_t(t - h, 64)) / (2 * h)
    assert torch.allclose(dtau_dt(t, 64), fd, rtol=1e-5)
    assert dtau_dt(torch.tensor([1.0], dtype=torch.float64), 64).item() == 0.0


CLOCK_V = 64  # T_64 is far from the identity: dτ/dt runs from 0.1 to 4 over the test's times


def smooth_map(x: torch.Tensor, tau: torch.Tensor, tau_end: torch.Tensor) -> torch.Tensor:
    """A smooth two-time toy network (float64 logits [B, L, V]) that depends nonlinearly on its end time."""
    w = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=torch.float64)
    e, b = tau_end.view(-1, 1, 1), tau.view(-1, 1, 1)
    return x * (1 + e * e) + torch.sin(3 * e + b) * w + e * w * w


def test_end_time_derivative_matches_a_finite_difference_in_t_not_in_tau():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, CLOCK_V, generator=g, dtype=torch.float64)
    t = torch.tensor([0.25, 0.68, 0.75], dtype=torch.float64)
    tau_t = tau_from_t(t, CLOCK_V)
    tau_s = torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
    logits, derivative = end_time_derivative(smooth_map, x, tau_s, tau_t, CLOCK_V)
    assert torch.allclose(logits, smooth_map(x, tau_s, tau_t).float())

    def delta_at(t_end):
        return torch.softmax(smooth_map(x, tau_s, tau_from_t(t_end, CLOCK_V)), -1)

    h = 1e-6
    in_t = (delta_at(t + h) - delta_at(t - h)) / (2 * h)  # ∂_t δ, the derivative the target needs
    assert (derivative.double() - in_t).abs().max().item() < 1e-5 * in_t.abs().max().item() + 1e-7
    # The clock matters at these times: the derivative in τ (no chain rule) differs from ∂_t δ by far more than the
    # tolerance, so a τ where t is meant would fail above.
    in_tau = (
        torch.softmax(smooth_map(x, tau_s, tau_t + h), -1) - torch.softmax(smooth_map(x, tau_s, tau_t - h), -1)
    ) / (2 * h)
    chain = dtau_dt(t, CLOCK_V)
    assert bool(((chain - 1).abs() > 0.5).all())
    assert (in_tau - in_t).abs().max().item() > 0.1 * in_t.abs().max().item()


def toy_pairs():
    g = torch.Generator().manual_seed(0)
    tau_s = torch.tensor([0.05, 0.2, 0.3, 0.1], dtype=torch.float32)
    tau_t = torch.tensor([0.5, 0.7, 0.6, 0.9], dtype=torch.float32)
    s, t = clock(tau_s), clock(tau_t)
    x1 = torch.nn.functional.one_hot(torch.randint(0, TOY_V, (4, 2), generator=g), TOY_V).double()
    x = (1 - s).view(-1, 1, 1) * torch.randn(4, 2, TOY_V, generator=g, dtype=torch.float64) + s.view(-1, 1, 1) * x1
    return x.float(), tau_s, tau_t, s, t


def test_target_is_a_fixed_point_of_the_exact_flow_map():
    x, tau_s, tau_t, s, t = toy_pairs()
    exact = exact_delta(x, s, t).float()
    logits, target = offdiagonal_target(student, x, tau_s, tau_t, TOY_V)
    assert torch.allclose(torch.softmax(logits, -1), exact, atol=1e-6)
    # No difference quotient: the error is float32 rounding of the network's logits and of RK4 (~1e-11).
    tol = 2e-5
    assert (target - exact).abs().max().item() < tol
    # Each ingredient matters here, so a mistake in any fails the test above: the derivative term ...
    _, d_delta_dt = end_time_derivative(student, x, tau_s, tau_t, TOY_V)
    x_st = x + ((t - s) / (1 - s)).float().view(-1, 1, 1) * (exact - x)
    landed = torch.softmax(student(x_st, tau_t, tau_t), -1)
    assert (lagrangian_target(landed, 0 * d_delta_dt, s, t) - exact).abs().max().item() > 100 * tol
    # ... its clock (∂_τ δ in place of ∂_t δ, i.e. without dτ/dt) ...
    per_tau = d_delta_dt / dtau_dt(t, TOY_V).float().view(-1, 1, 1)
    assert (lagrangian_target(landed, per_tau, s, t) - exact).abs().max().item() > 100 * tol
    # ... and the clock of its coefficient (τ in place of t).
    assert (lagrangian_target(landed, d_delta_dt, tau_s, tau_t) - exact).abs().max().item() > 100 * tol


def tiny_teacher(vocab_size=11, hidden=32, seed=0) -> DiT:
    """A small FLM DiT whose zero-initialized layers are randomized, so its output depends on x and τ."""
    torch.manual_seed(seed)
    dit = DiT(DiTConfig(vocab_size=vocab_size, seq_len=6, hidden_size=hidden, n_blocks=2, n_heads=4, cond_dim=16))
    with torch.no_grad():
        for block in dit.blocks:
            block.adaLN_modulation.weight.normal_(0, 0.2)
        for layer in (dit.output_layer.linear, dit.output_layer.adaLN_modulation):
            layer.weight.normal_(0, 0.2)
    return dit.eval()


def tiny_student(teacher: DiT) -> DiT:
    net = init_student(teacher).train()
    with torch.no_grad():  # an end time that matters, as after some training
        net.sigma_map_prime.mlp[2].weight.normal_(0, 0.5)
    return net


def test_forward_mode_pass_computes_the_network_in_both_state_spaces():
    """The JVP pass goes around the fused logit cap and the fused attention: same logits as the network's forward,
    backends restored, and the low-rank state ``x @ M`` gives the same derivative as the full state x."""
    teacher = tiny_teacher(vocab_size=80, hidden=16)
    net = tiny_student(teacher).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 80, generator=g)
    tau_s, tau_t = torch.tensor([0.1, 0.2, 0.0]), torch.tensor([0.5, 0.9, 1.0])
    logits, derivative = end_time_derivative(net, x, tau_s, tau_t, 80)
    assert torch.allclose(logits, net(x, tau_s, tau_t), atol=1e-5)
    assert all(block.backend == "auto" for block in net.blocks)
    assert derivative[:2].abs().max() > 0 and derivative[2].abs().max() == 0  # dτ/dt = 0 at t = 1
    inputs = LowRankInputs([net, teacher])
    low_logits, low_derivative = end_time_derivative(net, inputs.embed(x), tau_s, tau_t, 80, inputs)
    assert torch.allclose(low_logits, logits, atol=1e-4) and torch.allclose(low_derivative, derivative, atol=1e-5)
    out = lsd_reference_loss(net.train(), teacher, torch.randint(0, 80, (4, 6), generator=g), 80, generator=g,
                             input_noise="lowrank")  # fmt: skip
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and net.vocab_embed.embedding.grad is not None


def test_lsd_ref_recipe_distills_through_the_registry():
    cfg = RunConfig.from_dict({"train": {"method": "fmlm", "max_steps": 3, "batch_size": 8},
                               "distill": {"teacher": "x", "recipe": "lsd-ref"}})  # fmt: skip
    method = registry.for_config(cfg)
    assert (method.name, method.recipe, method.records) == ("fmlm-lsd-ref", "lsd-ref", "fmlm")
    assert registry.for_recorded("fmlm", "lsd-ref") is method
    # the reference's split: half diagonal, (1 − 1/2)/32 boundary
    assert (cfg.distill.resolved_diag_frac(), cfg.distill.resolved_boundary_frac()) == (0.5, 1 / 64)
    teacher = tiny_teacher()
    net = method.build_network(cfg, 11, frozen=(teacher,))
    assert net.training
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    tokens = torch.randint(0, 11, (8, 6), generator=torch.Generator().manual_seed(0))
    ctx = LossContext(11, cfg, (teacher,))
    for step in range(3):
        out = method.loss(net, tokens, ctx, generator=torch.Generator().manual_seed(step), sample_offset=8 * step)
        assert torch.isfinite(out["loss"]) and out["ce_off"] > 0 and out["ce_diag"] > 0
        optimizer.zero_grad()
        out["loss"].backward()
        assert net.sigma_map_prime.mlp[2].weight.grad.abs().sum() > 0  # the end time is trained
        optimizer.step()
    moved = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert "sigma_map_prime.mlp.2.weight" in moved and "output_layer.linear.weight" in moved
    assert all(not p.requires_grad or p.grad is None for p in teacher.parameters())
    # no dropout anywhere (eval mode): the recipe's loss is the module's function with the recipe's defaults
    net.eval()
    cfg.distill.target_dropout = False
    a = method.loss(net, tokens, ctx, generator=torch.Generator().manual_seed(9))["loss"]
    b = lsd_reference_loss(net, teacher, tokens, 11, generator=torch.Generator().manual_seed(9),
                           target_dropout=False)["loss"]  # fmt: skip
    assert torch.allclose(a, b)
