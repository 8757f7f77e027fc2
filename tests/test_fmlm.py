"""FMLM formulas (SPEC §3, §4): flow map, semigroup weight, student initialization, the deterministic
pair split, PSD targets and loss, the γ-sampler, and the two-stage v1 recipe."""

import math

import pytest
import torch
from tolerances import assert_close_up_to_rounding, rounding_atol

from flowlm.errors import ConfigError
from flowlm.methods.common import LossWeighting, one_hot, velocity
from flowlm.methods.flm import flm_sample
from flowlm.methods.fmlm import (
    BOUNDARY,
    DIAGONAL,
    OFF_DIAGONAL,
    flow_map_step,
    fmlm_sample,
    init_stage1,
    init_student,
    pair_counts,
    pair_times,
    psd_loss,
    psd_target,
    semigroup_lambda,
    v1_stage1_loss,
    v1_stage1_map,
    v1_stage1_sample,
    v1_stage2_loss,
)
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.schedule import t_from_tau, tau_from_t

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw):
    base = dict(vocab_size=11, seq_len=6, hidden_size=32, n_blocks=2, n_heads=4, cond_dim=16, dropout=0.0)
    base.update(kw)
    return DiTConfig(**base)


def randomized(model: DiT, seed: int = 0, scale: float = 0.3) -> DiT:
    """Give every parameter (also the zero-initialized ones) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


class Spy(torch.nn.Module):
    """A two-time network whose logits depend on x, τ_s and τ_t in a fixed way; records every call."""

    def __init__(self, vocab: int, seq: int, seed: int = 0, x_gain: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(seq, vocab, generator=g)
        self.b = torch.randn(seq, vocab, generator=g)
        self.c = torch.randn(seq, vocab, generator=g)
        self.x_gain = x_gain
        self.calls = []

    def logits(self, x, tau, tau_end=None):
        out = self.a + 3.0 * tau.view(-1, 1, 1) * self.b + self.x_gain * x
        if tau_end is not None:
            out = out + 2.0 * tau_end.view(-1, 1, 1) * self.c
        return out

    def forward(self, x, tau, tau_end=None):
        self.calls.append((x.clone(), tau.clone(), None if tau_end is None else tau_end.clone(), self.training))
        return self.logits(x, tau, tau_end)


class Constant(torch.nn.Module):
    """δ̂ ≡ softmax(logits) for every input and time (a constant denoiser)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(logits.clone())

    def forward(self, x, tau, tau_end=None):
        return self.w.expand(x.shape[0], -1, -1) + 0 * x


def t64(tau, vocab):
    return t_from_tau(torch.as_tensor(tau, dtype=torch.float64), vocab)


# --- formulas ---------------------------------------------------------------------------------------


def test_flow_map_step_formula_and_endpoints():
    x, delta = torch.randn(3, 4, 5, dtype=torch.float64), torch.rand(3, 4, 5, dtype=torch.float64)
    s, t = torch.tensor([0.1, 0.5, 0.7], dtype=torch.float64), torch.tensor([0.3, 0.9, 1.0], dtype=torch.float64)
    S, T = s.view(-1, 1, 1), t.view(-1, 1, 1)
    expected = (1 - T) / (1 - S) * x + (T - S) / (1 - S) * delta
    torch.testing.assert_close(flow_map_step(x, delta, s, t), expected)
    # The stage-2 map of SPEC §4, x + Δ·(δ − x)/(1 − s), is the same map.
    torch.testing.assert_close(x + (T - S) * (delta - x) / (1 - S), expected)
    torch.testing.assert_close(flow_map_step(x, delta, s, s), x)  # X_{s,s} = id
    torch.testing.assert_close(flow_map_step(x, delta, 0.4, 1.0), delta)  # X_{s,1} = δ_{s,1}
    assert torch.equal(flow_map_step(x, delta, 1.0, 1.0), x)  # guarded at s = t = 1


def test_flow_map_with_the_denoiser_is_an_euler_step():
    x, d = torch.randn(2, 3, 7), torch.softmax(torch.randn(2, 3, 7), -1)
    s, t = torch.tensor([0.2, 0.6]), torch.tensor([0.5, 0.65])
    torch.testing.assert_close(flow_map_step(x, d, s, t), x + (t - s).view(-1, 1, 1) * velocity(d, x, s))


def test_lambda_composes_flow_maps_exactly():
    # X_{u,t}(X_{s,u}(x)) = X_{s,t}(x) with δ_{s,t} = λ·δ_{s,u} + (1 − λ)·δ_{u,t}: an algebraic identity.
    g = torch.Generator().manual_seed(0)
    for s, u, t in [(0.0, 0.3, 1.0), (0.1, 0.5, 0.9), (0.6, 0.61, 0.7), (0.2, 0.2, 0.8), (0.2, 0.8, 0.8)]:
        x = torch.randn(4, 6, dtype=torch.float64, generator=g)
        d_su, d_ut = (
            torch.rand(4, 6, dtype=torch.float64, generator=g),
            torch.rand(4, 6, dtype=torch.float64, generator=g),
        )
        lam = semigroup_lambda(*(torch.tensor(v, dtype=torch.float64) for v in (s, u, t)))
        composed = flow_map_step(flow_map_step(x, d_su, s, u), d_ut, u, t)
        torch.testing.assert_close(flow_map_step(x, lam * d_su + (1 - lam) * d_ut, s, t), composed)


def test_lambda_edge_cases():
    f = lambda *v: semigroup_lambda(*(torch.tensor(x, dtype=torch.float64) for x in v)).item()  # noqa: E731
    assert f(0.0, 0.5, 1.0) == 0.0  # t = 1: the target is δ_{u,1}∘X_{s,u}
    assert f(0.3, 0.3, 0.3) == 0.5  # s = t: both terms coincide; any weight, finite
    assert f(0.2, 0.2, 0.7) == 0.0 and f(0.2, 0.7, 0.7) == 1.0
    assert f(0.1, 0.4, 0.9) == pytest.approx(0.1 * 0.3 / (0.6 * 0.8))
    s, u, t = torch.sort(torch.rand(3, 1000, dtype=torch.float64), dim=0).values
    lam = semigroup_lambda(s, u, t)
    assert ((lam >= 0) & (lam <= 1)).all()


def exact_denoiser(x: torch.Tensor, t: float, log_p: torch.Tensor) -> torch.Tensor:
    """E[x₁ | x_t = x] when x₁ = e_k with probability p_k (per position): softmax(log p + t·x/(1 − t)²)."""
    return torch.softmax(log_p + t * x / (1 - t) ** 2, dim=-1)


def exact_flow(x: torch.Tensor, s: float, t: float, log_p: torch.Tensor, steps: int = 800) -> torch.Tensor:
    """X_{s,t}(x) of dx/dt = (D_t(x) − x)/(1 − t) by classical RK4 (float64)."""
    h = (t - s) / steps
    f = lambda y, r: (exact_denoiser(y, r, log_p) - y) / (1 - r)  # noqa: E731
    for i in range(steps):
        r = s + i * h
        k1 = f(x, r)
        k2 = f(x + 0.5 * h * k1, r + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, r + 0.5 * h)
        k4 = f(x + h * k3, r + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def two_time_denoiser(x, s, t, log_p):
    """δ_{s,t}(x) of the exact flow: X_{s,t}(x) = ((1 − t)/(1 − s))·x + ((t − s)/(1 − s))·δ."""
    return (exact_flow(x, s, t, log_p) - (1 - t) / (1 - s) * x) * (1 - s) / (t - s)


def test_semigroup_identity_holds_on_an_exact_flow():
    # A three-point language (per position x₁ ∈ {e_0, e_1, e_2}) has a closed-form denoiser; integrate
    # its ODE finely and check δ_{s,t} = λ·δ_{s,u} + (1 − λ)·δ_{u,t}(X_{s,u}) with the t-clock λ.
    log_p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    g = torch.Generator().manual_seed(0)
    s, u, t = 0.15, 0.45, 0.85
    x1 = one_hot(torch.multinomial(log_p.exp(), 256, replacement=True, generator=g), 3, torch.float64)
    x = (1 - s) * torch.randn(256, 3, dtype=torch.float64, generator=g) + s * x1
    d_st, d_su = two_time_denoiser(x, s, t, log_p), two_time_denoiser(x, s, u, log_p)
    d_ut = two_time_denoiser(exact_flow(x, s, u, log_p), u, t, log_p)
    lam = semigroup_lambda(*(torch.tensor(v, dtype=torch.float64) for v in (s, u, t)))
    torch.testing.assert_close(lam * d_su + (1 - lam) * d_ut, d_st, atol=1e-6, rtol=0)
    # δ lives on the simplex, and δ_{s,s+ε} → D_s.
    assert d_st.min() > -1e-9 and torch.allclose(d_st.sum(-1), torch.ones(256, dtype=torch.float64))
    torch.testing.assert_close(two_time_denoiser(x, s, s + 1e-4, log_p), exact_denoiser(x, s, log_p), atol=1e-4, rtol=0)
    # The check has power: the naive weight (u − s)/(t − s) is off by far more than the tolerance.
    naive = (u - s) / (t - s)
    assert (naive * d_su + (1 - naive) * d_ut - d_st).abs().max() > 1e-2


# --- initialization ---------------------------------------------------------------------------------


def test_student_starts_as_the_teacher():
    teacher = randomized(DiT(tiny_config())).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = init_student(teacher)
    assert student.config.time_inputs == 2 and student.config.logit_cap == teacher.config.logit_cap
    assert not student.training
    x, tau_s, tau_t = torch.randn(3, 6, 11), torch.tensor([0.0, 0.3, 0.9]), torch.tensor([1.0, 0.3, 0.95])
    # Bit-equal on any CPU: the zero-initialised second time embedding adds exact zeros, and every other operation
    # is the teacher's on the same numbers with the same shapes and kernels.
    torch.testing.assert_close(student(x, tau_s, tau_t), teacher(x, tau_s), rtol=0, atol=0)
    torch.testing.assert_close(student(x, tau_s, tau_s), teacher(x, tau_s), rtol=0, atol=0)
    # A copy: training the student leaves the teacher alone.
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    # Deterministic: two copies of the same teacher are identical.
    a, b = init_student(teacher).state_dict(), init_student(teacher).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_second_time_embedding_learns_from_zero():
    teacher = randomized(DiT(tiny_config()))
    student = init_student(teacher)
    x, tau_s, tau_t = torch.randn(2, 6, 11), torch.tensor([0.2, 0.4]), torch.tensor([0.5, 0.9])
    student(x, tau_s, tau_t).square().sum().backward()
    assert student.sigma_map_prime.mlp[2].weight.grad.abs().sum() > 0


def test_stage1_network_starts_at_zero_without_a_cap():
    teacher = randomized(DiT(tiny_config()))
    g_net = init_stage1(teacher)
    assert g_net.config.logit_cap is None and g_net.config.time_inputs == 2
    out = g_net(torch.randn(2, 6, 11), torch.tensor([0.1, 0.5]), torch.tensor([0.6, 1.0]))
    assert torch.count_nonzero(out) == 0
    torch.testing.assert_close(g_net.blocks[0].attn_qkv.weight, teacher.blocks[0].attn_qkv.weight)
    with torch.no_grad():
        g_net.output_layer.linear.weight.normal_(std=1000.0)
    assert g_net(torch.randn(2, 6, 11), torch.rand(2), torch.rand(2)).abs().max() > 30.0  # uncapped


def test_init_rejects_a_flow_map_teacher():
    with pytest.raises(ConfigError, match="time_inputs"):
        init_student(DiT(tiny_config(time_inputs=2)))


# --- pairs of times -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fracs", [(0.5, 0.5 / 32), (0.0, 1 / 64), (0.25, 0.1), (0.3, 0.0)])
def test_pair_split_does_not_depend_on_micro_batching(fracs):
    for step in range(40):
        totals = set()
        for micro in (1, 2, 4, 8, 64):
            size = 64 // micro
            parts = [pair_counts(size, step * 64 + i * size, *fracs) for i in range(micro)]
            totals.add(tuple(sum(c[k] for c in parts) for k in range(3)))
        assert len(totals) == 1
        assert sum(next(iter(totals))) == 64


@pytest.mark.parametrize("batch", [1, 7, 32, 129])
def test_pair_shares_are_the_configured_ones(batch):
    for diag_frac, boundary_frac in [(0.5, 0.5 / 32), (0.0, 1 / 128), (0.37, 0.05)]:
        counts = [0, 0, 0]
        for step in range(200):
            for k, c in enumerate(pair_counts(batch, step * batch, diag_frac, boundary_frac)):
                counts[k] += c
        n = 200 * batch
        assert counts[BOUNDARY] == math.floor(n * boundary_frac)
        assert abs(counts[DIAGONAL] - n * diag_frac) <= 2
        assert abs(counts[OFF_DIAGONAL] - n * (1 - diag_frac - boundary_frac)) <= 3


def test_default_psd_split_of_a_global_batch():
    n_diag, n_boundary, n_off = 0, 0, 0
    for step in range(2):
        d, b, o = pair_counts(64, step * 64)
        n_diag, n_boundary, n_off = n_diag + d, n_boundary + b, n_off + o
    assert (n_diag, n_boundary, n_off) == (64, 2, 62)  # half diagonal, 1/64 boundary of 128 samples


def test_pair_times_ranges_and_layout():
    g = torch.Generator().manual_seed(0)
    tau_s, tau_t, kind = pair_times(4096, 123, 0.5, 0.05, generator=g)
    n_diag, n_boundary, n_off = pair_counts(4096, 123, 0.5, 0.05)
    assert kind.tolist() == [DIAGONAL] * n_diag + [BOUNDARY] * n_boundary + [OFF_DIAGONAL] * n_off
    diag, bound, off = kind == DIAGONAL, kind == BOUNDARY, kind == OFF_DIAGONAL
    assert torch.equal(tau_s[diag], tau_t[diag]) and ((tau_s[diag] >= 0) & (tau_s[diag] < 1)).all()
    assert (tau_s[bound] == 0).all() and (tau_t[bound] == 1).all()
    assert ((tau_s[off] >= 0) & (tau_s[off] < tau_t[off]) & (tau_t[off] <= 1)).all()
    # d = τ_t − τ_s ~ U(0, 1]: mean 1/2, and τ_s/(1 − d) ~ U[0, 1): mean 1/2 (4 standard errors).
    d = tau_t[off] - tau_s[off]
    se = math.sqrt(1 / 12 / n_off)
    assert abs(d.mean().item() - 0.5) < 4 * se
    assert abs((tau_s[off] / (1 - d)).mean().item() - 0.5) < 4 * se
    # Diagonal times are stratified: one per stratum.
    assert sorted((tau_s[diag] * n_diag).floor().long().tolist()) == list(range(n_diag))
    # Deterministic given the generator.
    again = pair_times(4096, 123, 0.5, 0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], tau_s) and torch.equal(again[1], tau_t)


@pytest.mark.parametrize(
    "kwargs",
    [dict(diag_frac=-0.1), dict(boundary_frac=1.5), dict(diag_frac=0.7, boundary_frac=0.4), dict(diag_frac=True)],
)
def test_bad_fractions_raise(kwargs):
    with pytest.raises(ConfigError, match="frac"):
        pair_counts(8, 0, **kwargs)


def test_bad_offsets_raise():
    with pytest.raises(ConfigError, match="sample_offset"):
        pair_counts(8, -1)


# --- PSD ------------------------------------------------------------------------------------------------


@pytest.mark.float_sensitive
def test_psd_target_matches_hand_computation():
    vocab, seq = 4096, 3
    student, teacher = Spy(vocab, seq, seed=1), Spy(vocab, seq, seed=2)
    tau_s = torch.tensor([0.3, 0.7, 0.0, 0.2, 0.55])
    tau_t = torch.tensor([0.3, 0.7, 1.0, 0.6, 0.95])
    x = torch.randn(5, seq, vocab, generator=torch.Generator().manual_seed(3))
    target = psd_target(student, teacher, x, tau_s, tau_t, 2, vocab)
    # Diagonal rows: the teacher's denoiser at τ_s (one teacher call, one time input).
    torch.testing.assert_close(target[:2], torch.softmax(teacher.logits(x[:2], tau_s[:2]), -1))
    assert len(teacher.calls) == 1 and teacher.calls[0][2] is None
    # Other rows: the midpoint composition with λ in the t clock.
    for i in range(2, 5):
        ts, tt = tau_s[i : i + 1], tau_t[i : i + 1]
        tu = (ts + tt) / 2
        s, u, t = (t64(v, vocab).item() for v in (ts, tu, tt))
        d_su = torch.softmax(student.logits(x[i : i + 1], ts, tu), -1)
        x_su = (1 - u) / (1 - s) * x[i : i + 1] + (u - s) / (1 - s) * d_su
        d_ut = torch.softmax(student.logits(x_su, tu, tt), -1)
        lam = (1 - t) * (u - s) / ((1 - u) * (t - s))
        # float32 softmaxes over V chained through x_su (each a V-term normaliser, the Spy's logits elementwise):
        # n = 2·V at S = the largest probability; a wrong λ clock or midpoint moves the target by ~10% of it.
        assert_close_up_to_rounding(target[i : i + 1], lam * d_su + (1 - lam) * d_ut, 2 * vocab)
    assert len(student.calls) == 2
    # boundary row: still a distribution (a float32 sum of V = 4096 probabilities, rounding_atol(float32, V, 1))
    assert target[2].sum(-1).sub(1).abs().max() <= rounding_atol(torch.float32, vocab, 1.0)


def test_psd_loss_conditions_on_tau_and_builds_states_with_t():
    vocab, seq, batch = 4096, 64, 16
    student, teacher = Spy(vocab, seq, x_gain=0.0), Spy(vocab, seq, x_gain=0.0)
    tokens = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    out = psd_loss(student, teacher, tokens, vocab, generator=torch.Generator().manual_seed(1), boundary_frac=0.125)
    x, tau, tau_end, _ = student.calls[0]  # the graded forward pass sees (x_s, τ_s, τ_t)
    torch.testing.assert_close(tau, out["tau_s"])
    torch.testing.assert_close(tau_end, out["tau_t"])
    clean = one_hot(tokens, vocab).bool()
    for i in range(batch):
        s = t64(tau[i], vocab).item()
        assert abs((1 - x[i][~clean[i]].std().item()) - s) < 0.01
    mid = (tau > 0.1) & (tau < 0.6)
    assert mid.any() and (t64(tau[mid], vocab) - tau[mid]).abs().min() > 0.1  # a clock mix-up would be visible
    # The target's passes run at (τ_s, τ_u) and (τ_u, τ_t), τ_u the τ-midpoint.
    n_diag = pair_counts(batch, 0, 0.5, 0.125)[0]
    _, tau_a, end_a, _ = student.calls[1]
    _, tau_b, end_b, _ = student.calls[2]
    torch.testing.assert_close(tau_a, out["tau_s"][n_diag:])
    torch.testing.assert_close(end_a, (out["tau_s"][n_diag:] + out["tau_t"][n_diag:]) / 2)
    torch.testing.assert_close(tau_b, end_a)
    torch.testing.assert_close(end_b, out["tau_t"][n_diag:])


def test_psd_teacher_gets_no_gradient_and_runs_in_eval_mode():
    vocab, seq = 11, 6
    teacher = randomized(DiT(tiny_config(dropout=0.5)))
    teacher.train()
    student = init_student(teacher)
    student.train()
    student.config.dropout = 0.0
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append((m.training, torch.is_grad_enabled())))
    out = psd_loss(student, teacher, torch.randint(0, vocab, (8, seq)), vocab, generator=torch.Generator())
    out["loss"].backward()
    assert calls == [(False, False)]
    assert teacher.training and all(m.training for m in teacher.modules())  # modes restored
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.float_sensitive
def test_psd_with_a_constant_denoiser_is_its_entropy():
    # δ̂ ≡ p for the student and D ≡ p for the teacher: every target is p, the loss is H(p).
    vocab, seq = 9, 5
    logits = torch.randn(seq, vocab, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    tokens = torch.randint(0, vocab, (32, seq))
    out = psd_loss(Constant(logits), Constant(logits), tokens, vocab, generator=torch.Generator().manual_seed(0))
    # float32 means over 32·5 positions of V-term sums of positive terms: within rounding_atol(float32, 32·5·V, H)
    tol = rounding_atol(torch.float32, 32 * seq * vocab, entropy.item())
    for key in ("loss", "ce_diag", "ce_off"):
        assert abs(out[key].item() - entropy.item()) <= tol, key


def test_psd_mask_and_weighting():
    vocab, seq = 9, 5
    logits = torch.randn(seq, vocab, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits, -1)
    per_position = -(p * p.log()).sum(-1)
    mask = torch.tensor([[1, 1, 0, 0, 0]] * 8)
    kw = dict(generator=torch.Generator().manual_seed(0), mask=mask)
    out = psd_loss(Constant(logits), Constant(logits), torch.randint(0, vocab, (8, seq)), vocab, **kw)
    tol = rounding_atol(torch.float32, 8 * seq * vocab, per_position.max().item())  # means of V-term sums, as above
    assert abs(out["ce"].item() - per_position[:2].mean().item()) <= tol
    weighting = LossWeighting(cond_dim=16, two_times=True)
    student = Constant(logits)
    kw = dict(generator=torch.Generator().manual_seed(0), weighting=weighting)
    out = psd_loss(student, Constant(logits), torch.randint(0, vocab, (8, seq)), vocab, **kw)
    assert abs(out["loss"].item() - per_position.mean().item()) <= tol  # w = 0 at start
    out["loss"].backward()
    assert weighting.mlp[-1].bias.grad is not None and weighting.mlp[-1].bias.grad.abs() > 0
    assert weighting.embed_end is not None


def optimizer_step_lowers(loss_fn, params, lr=1e-3):
    before = loss_fn()
    opt = torch.optim.Adam(params, lr=lr)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn()
    return before.item(), after.item()


def test_one_step_lowers_the_psd_loss():
    vocab, seq = 11, 6
    teacher = randomized(DiT(tiny_config()), scale=0.2).eval()
    student = init_student(teacher).train()
    tokens = torch.randint(0, vocab, (32, seq), generator=torch.Generator().manual_seed(0))
    fn = lambda: psd_loss(student, teacher, tokens, vocab, generator=torch.Generator().manual_seed(1))["loss"]  # noqa: E731
    before, after = optimizer_step_lowers(fn, list(student.parameters()))
    assert after < before


def test_one_step_lowers_the_stage1_loss():
    vocab, seq = 11, 6
    teacher = randomized(DiT(tiny_config()), scale=0.2).eval()
    g_net = init_stage1(teacher).train()
    weighting = LossWeighting(cond_dim=16, two_times=True)
    tokens = torch.randint(0, vocab, (32, seq), generator=torch.Generator().manual_seed(0))
    kw = dict(generator=None, boundary_frac=0.25, weighting=weighting)

    def fn():
        kw["generator"] = torch.Generator().manual_seed(1)
        return v1_stage1_loss(g_net, teacher, tokens, vocab, **kw)["loss"]

    before, after = optimizer_step_lowers(fn, list(g_net.parameters()) + list(weighting.parameters()))
    assert after < before


def test_one_step_lowers_the_stage2_loss():
    vocab, seq = 11, 6
    teacher = randomized(DiT(tiny_config()), scale=0.2).eval()
    g_net = randomized(init_stage1(teacher), seed=3, scale=0.3).eval()
    student = init_student(teacher).train()
    tokens = torch.randint(0, vocab, (32, seq), generator=torch.Generator().manual_seed(0))
    fn = lambda: v1_stage2_loss(  # noqa: E731
        student, teacher, g_net, tokens, vocab, generator=torch.Generator().manual_seed(1)
    )["loss"]
    before, after = optimizer_step_lowers(fn, list(student.parameters()), lr=1e-4)
    assert after < before
    assert all(p.grad is None for p in list(teacher.parameters()) + list(g_net.parameters()))


# --- v1 recipe ----------------------------------------------------------------------------------------


class Zero(torch.nn.Module):
    def forward(self, x, tau, tau_end=None):
        return torch.zeros_like(x)


def test_stage1_target_is_exact_for_a_constant_denoiser():
    # D ≡ p makes the ODE linear; its exact map X_{s,t}(x) = p + ((1 − t)/(1 − s))(x − p) is what g = 0
    # gives, and the bootstrap target through the midpoint is p: the loss is 0 for every pair.
    vocab, seq = 9, 5
    logits = torch.randn(seq, vocab, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, vocab, (64, seq))
    out = v1_stage1_loss(Zero(), Constant(logits), tokens, vocab, generator=torch.Generator(), boundary_frac=0.1)
    assert out["loss"].item() < 1e-10
    # Stage 2 with δ̂ ≡ p regresses onto that same map: 0 as well.
    out = v1_stage2_loss(Constant(logits), Constant(logits), Zero(), tokens, vocab, generator=torch.Generator())
    assert out["loss"].item() < 1e-10


@pytest.mark.float_sensitive
def test_stage1_target_matches_hand_computation():
    vocab, seq = 4096, 3
    teacher, g_net = Spy(vocab, seq, seed=1), Spy(vocab, seq, seed=2, x_gain=0.1)
    tokens = torch.randint(0, vocab, (4, seq), generator=torch.Generator().manual_seed(0))
    out = v1_stage1_loss(g_net, teacher, tokens, vocab, generator=torch.Generator().manual_seed(5), boundary_frac=0.25)
    # Rebuild the state from the same draws: pair_times, then the noise.
    gen = torch.Generator().manual_seed(5)
    tau_s, tau_t, kind = pair_times(4, 0, 0.0, 0.25, generator=gen)
    assert kind.tolist() == [BOUNDARY, OFF_DIAGONAL, OFF_DIAGONAL, OFF_DIAGONAL]
    x0 = torch.randn(4, seq, vocab, generator=gen)
    total = 0.0
    for i in range(4):
        ts, tt = tau_s[i : i + 1], tau_t[i : i + 1]
        tu = (ts + tt) / 2
        s, u, t = (t64(v, vocab).item() for v in (ts, tu, tt))
        x = (1 - s) * x0[i : i + 1] + s * one_hot(tokens[i : i + 1], vocab)
        d1, d2 = u - s, t - u
        b_s = (torch.softmax(teacher.logits(x, ts), -1) - x) / (1 - s)
        v_su = b_s + 0.5 * d1 * g_net.logits(x, ts, tu)
        y = x + d1 * v_su
        v_ut = (torch.softmax(teacher.logits(y, tu), -1) - y) / (1 - u) + 0.5 * d2 * g_net.logits(y, tu, tt)
        target = x + (1 - s) * (d1 * v_su + d2 * v_ut) / (t - s)
        pred = torch.softmax(teacher.logits(x, ts), -1) + 0.5 * (t - s) * (1 - s) * g_net.logits(x, ts, tt)
        total += (pred - target).pow(2).sum(-1).sum().item()
    # Squared residuals r = pred − target summed over V: the parts (states, probabilities, logits) are of size
    # <= S_parts, so each r_v is off by eps·sqrt(n)·S_parts and Σ_v r_v² by 2·sqrt(V·Σ_v r_v²) times that
    # (tests/tolerances.py); the hand loop and the loss run the same float32 formulas in other orders.
    mse = total / (4 * seq)
    parts = x0.abs().max().item() + 1.0
    assert abs(out["loss"].item() - mse) <= rounding_atol(torch.float32, 2 * vocab, 2 * math.sqrt(vocab * mse) * parts)


def test_stage1_map_with_zero_g_is_euler_and_its_sampler_is_flm():
    vocab, seq, n, steps = 30, 5, 3, 4
    teacher = Spy(vocab, seq)
    x = torch.randn(n, seq, vocab)
    tau_s, tau_t = torch.full((n,), 0.25), torch.full((n,), 0.5)
    s, t = t64(0.25, vocab).item(), t64(0.5, vocab).item()
    d = torch.softmax(teacher.logits(x, tau_s), -1)
    torch.testing.assert_close(v1_stage1_map(Zero(), teacher, x, tau_s, tau_t, s, t), x + (t - s) * velocity(d, x, s))
    x0 = torch.randn(n, seq, vocab, generator=torch.Generator().manual_seed(0))
    teacher.calls.clear()
    counting = Spy(vocab, seq)
    g_calls = []
    g_net = lambda x, tau, tau_end: (g_calls.append(1), counting(x, tau, tau_end) * 0)[1]  # noqa: E731
    ours = v1_stage1_sample(g_net, teacher, n, seq, vocab, steps, x0=x0)
    assert len(teacher.calls) == steps and len(g_calls) == steps  # two calls per step
    assert torch.equal(ours, flm_sample(teacher, n, seq, vocab, steps, x0=x0))


# --- sampler -----------------------------------------------------------------------------------------


def test_one_step_is_one_call_at_zero_one():
    vocab, seq, n = 30, 5, 4
    spy = Spy(vocab, seq)
    x0 = torch.randn(n, seq, vocab, generator=torch.Generator().manual_seed(0))
    tokens = fmlm_sample(spy, n, seq, vocab, 1, gamma=0.8, x0=x0)
    assert len(spy.calls) == 1
    x, tau, tau_end, _ = spy.calls[0]
    assert torch.equal(x, x0) and (tau == 0).all() and (tau_end == 1).all()
    assert torch.equal(tokens, spy.logits(x0, torch.zeros(n), torch.ones(n)).argmax(-1))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [2, 3, 5])
def test_sampler_matches_hand_recursion(steps, gamma):
    vocab, seq, n = 4096, 3, 2  # a large vocabulary: the t and τ grids differ a lot
    spy = Spy(vocab, seq, x_gain=2.0)
    x0 = torch.randn(n, seq, vocab, generator=torch.Generator().manual_seed(1))
    tokens = fmlm_sample(spy, n, seq, vocab, steps, gamma=gamma, generator=torch.Generator().manual_seed(2), x0=x0)
    assert len(spy.calls) == steps
    noise = torch.Generator().manual_seed(2)
    x = x0.clone()
    for k in range(steps):
        t = t64(k / steps, vocab).item()
        sigma = 1 - t64((k + 1) / steps, vocab).item()
        sigma_tilde = sigma * math.sqrt(1 - gamma**2)
        t_tilde = 1 - sigma_tilde
        tau_tilde = tau_from_t(torch.tensor(t_tilde, dtype=torch.float64), vocab).item()
        seen_x, seen_tau, seen_end, _ = spy.calls[k]
        assert_close_up_to_rounding(seen_x, x, (k + 1) * vocab)  # k steps, each a V-term softmax
        torch.testing.assert_close(seen_tau, torch.full((n,), k / steps))  # network clock: τ_k = k/N
        torch.testing.assert_close(seen_end, torch.full((n,), tau_tilde), rtol=0, atol=1e-6)
        if gamma == 0:
            torch.testing.assert_close(seen_end, torch.full((n,), (k + 1) / steps))
        delta = torch.softmax(spy.logits(x, seen_tau, seen_end), -1)
        if k == steps - 1:
            assert torch.equal(tokens, delta.argmax(-1))
            break
        x = (1 - t_tilde) / (1 - t) * x + (t_tilde - t) / (1 - t) * delta + (sigma_tilde - sigma) * delta
        if gamma > 0:
            x = x + gamma * sigma * torch.randn(x.shape, generator=noise)


def test_deterministic_sampler_chains_flow_maps():
    # γ = 0: x_{k+1} = X_{t_k, t_{k+1}}(x_k); with δ̂ ≡ p that is p + (1 − t_k)(x₀ − p) (the exact flow).
    vocab, seq, steps = 12, 4, 6
    logits = torch.randn(seq, vocab, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits, -1)
    seen = []
    model = Constant(logits)
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    x0 = torch.randn(1, seq, vocab, generator=torch.Generator().manual_seed(2))
    fmlm_sample(model, 1, seq, vocab, steps, x0=x0)
    for k, x in enumerate(seen):
        assert_close_up_to_rounding(x, p + (1 - t64(k / steps, vocab).item()) * (x0 - p), (k + 1) * vocab)


def test_deterministic_given_noise_and_seeded_with_churn():
    spy = Spy(20, 6, x_gain=3.0)
    x0 = torch.randn(8, 6, 20, generator=torch.Generator().manual_seed(0))
    a = fmlm_sample(spy, 8, 6, 20, 4, gamma=0.0, generator=torch.Generator().manual_seed(1), x0=x0)
    b = fmlm_sample(spy, 8, 6, 20, 4, gamma=0.0, generator=torch.Generator().manual_seed(2), x0=x0)
    assert torch.equal(a, b)
    c = fmlm_sample(spy, 8, 6, 20, 4, gamma=1.0, generator=torch.Generator().manual_seed(1), x0=x0)
    d = fmlm_sample(spy, 8, 6, 20, 4, gamma=1.0, generator=torch.Generator().manual_seed(1), x0=x0)
    assert torch.equal(c, d) and c.shape == (8, 6) and c.dtype == torch.int64


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_gamma_raises(gamma):
    with pytest.raises(ConfigError, match="gamma"):
        fmlm_sample(Spy(5, 2), 1, 2, 5, 2, gamma=gamma)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_step_counts_raise(steps):
    with pytest.raises(ConfigError, match="steps"):
        fmlm_sample(Spy(5, 2), 1, 2, 5, steps)
    with pytest.raises(ConfigError, match="steps"):
        v1_stage1_sample(Zero(), Spy(5, 2), 1, 2, 5, steps)


# --- the end-time stretch (issue 24) -------------------------------------------------------------------


def test_end_stretch_clock_resolves_the_end_of_the_clock():
    """τ = 0.9999 is t ≈ 0.886 at V = 8,192: on the τ clock the last 1e-4 holds t ∈ (0.886, 1]; the stretched clock
    gives that stretch most of its range, is monotone, and maps τ = 1 (t = 1) to 1 and τ = 0 to 0."""
    from flowlm.nn.dit import END_STRETCH_FLOOR, end_stretch_clock

    tau = torch.tensor([0.0, 0.25, 0.5, 0.9, 0.99, 0.9999, 1.0])
    clock = end_stretch_clock(tau, 8192)
    assert clock[0] == 0 and clock[-1] == 1 and bool((clock[1:] > clock[:-1]).all())
    t = t_from_tau(tau.double(), 8192)
    expected = torch.clamp(-torch.log1p(-t), max=-math.log(END_STRETCH_FLOOR)) / -math.log(END_STRETCH_FLOOR)
    torch.testing.assert_close(clock.double(), expected, rtol=0, atol=1e-6)  # float32 log of values ≤ 9.2
    assert clock[-1] - clock[-2] > 0.7  # the broad-to-sharp change now spans most of the embedding's input


def test_an_end_stretch_student_starts_as_its_teacher_for_every_end_time():
    torch.manual_seed(0)
    teacher = DiT(DiTConfig(vocab_size=16, seq_len=6, hidden_size=32, n_blocks=1, n_heads=2, cond_dim=16)).eval()
    for weight in teacher.parameters():  # a trained-looking teacher: the zero-initialized output layer is not zero
        weight.data.normal_(0, 0.3)
    student = init_student(teacher, end_stretch=True).eval()
    assert student.config.end_stretch and student.end_map is not None
    x, tau = torch.randn(4, 6, 16), torch.rand(4)
    ends = torch.tensor([0.3, 0.9999, 1.0, 1.0])
    assert torch.equal(student(x, tau, ends), teacher(x, tau))  # both extra embeddings start at zero output
    student.end_map.mlp[2].bias.data.fill_(0.5)  # once trained, the end time reaches the network through it
    assert not torch.equal(student(x, tau, ends), teacher(x, tau))
    with pytest.raises(ConfigError, match="end_stretch"):
        DiTConfig(vocab_size=16, end_stretch=True)  # an FLM has no end time
