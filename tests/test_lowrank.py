"""The low-rank state space (flowlm.methods.lowrank) against the naive [B, L, V] path, its oracle.

Statistical tolerances: a mean over R independent draws has standard error sd/√R (estimated from the
draws); two independent means differ by at most 4.5 combined standard errors except with probability
≈ 7e-6 per comparison, so a handful of comparisons per test keeps the false-alarm rate below 1e-4.
Empirical covariances of n draws of whitened (identity-covariance) vectors have entries with standard
deviation ≤ √(2/n); 5 of those over a few dozen entries is the same false-alarm level.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from tolerances import assert_close_up_to_rounding
from torch.utils._python_dispatch import TorchDispatchMode

from flowlm.errors import ConfigError
from flowlm.methods.flm import flm_loss, flm_sample
from flowlm.methods.fmlm import (
    fmlm_sample,
    init_stage1,
    init_student,
    psd_loss,
    v1_stage1_loss,
    v1_stage1_sample,
    v1_stage2_loss,
)
from flowlm.methods.lowrank import LowRankInputs, NaiveInputs, factor_gram, input_space
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.schedule import get_schedule, t_from_tau

VOCAB, SEQ, WIDTH = 48, 4, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dit(seed: int = 0, time_inputs: int = 1, vocab: int = VOCAB) -> DiT:
    """A 1-block DiT with V > d whose every parameter is random (so every path matters)."""
    cfg = DiTConfig(
        vocab_size=vocab,
        seq_len=SEQ,
        hidden_size=WIDTH,
        n_blocks=1,
        n_heads=2,
        cond_dim=8,
        dropout=0.0,
        time_inputs=time_inputs,
        pos_embed=True,
    )
    torch.manual_seed(seed)
    net = DiT(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "vocab_embed.embedding":
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def perturbed(net: DiT, seed: int, scale: float = 0.05) -> DiT:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.detach().std().clamp(min=1e-3))
    return net


class Inputs:
    """Records what a DiT receives, as the projected input ``x @ W`` [B, L, d] (either path)."""

    def __init__(self, net: DiT):
        self.seen = []
        net.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = args[0]
        h = x if kwargs.get("embedded") else x @ module.vocab_embed.embedding
        self.seen.append(h.detach().double())


# --- the factor and the noise ------------------------------------------------------------------------


def test_auto_mode_and_errors():
    net = tiny_dit()
    assert isinstance(input_space("auto", [net], VOCAB), LowRankInputs)  # V = 48 > d = 8
    assert isinstance(input_space("auto", [net], VOCAB).noise(2, SEQ, VOCAB), torch.Tensor)
    wide = tiny_dit(vocab=WIDTH)
    assert isinstance(input_space("auto", [wide], WIDTH), NaiveInputs)  # V <= d: nothing to save
    # few tokens per call: the V·d² Gram matrix costs more than the naive states save (crossover ≈ d/2 tokens)
    assert isinstance(input_space("auto", [net], VOCAB, tokens=WIDTH // 2 - 1), NaiveInputs)
    assert isinstance(input_space("auto", [net], VOCAB, tokens=WIDTH // 2), LowRankInputs)
    assert isinstance(input_space("lowrank", [net], VOCAB, tokens=1), LowRankInputs)  # explicit modes obey
    assert isinstance(input_space("auto", [lambda x, tau: x], VOCAB), NaiveInputs)  # not a DiT
    assert isinstance(input_space("naive", [net], VOCAB), NaiveInputs)
    with pytest.raises(ConfigError, match="input_noise='lowrank' needs flowlm DiT"):
        input_space("lowrank", [lambda x, tau: x], VOCAB)
    with pytest.raises(ConfigError, match="input_noise='sparse'"):
        input_space("sparse", [net], VOCAB)
    with pytest.raises(ConfigError, match="rows="):
        flm_loss(net, torch.zeros(4, SEQ, dtype=torch.long), VOCAB, rows=(2, 5))


@pytest.mark.float_sensitive
def test_one_network_noise_map_is_the_cholesky_factor():
    net = tiny_dit()
    w = net.vocab_embed.embedding.detach().double()
    space = LowRankInputs([net])
    assert space.jitter.item() == 0.0
    n = space.noise_map.double()
    # The map is a float32 Cholesky factor of a float32 Gram matrix (V-term sums, then d-term eliminations):
    # n = V·d products at S = max|WᵀW|. The factor itself is off by that times the Gram's condition number.
    gram = w.T @ w
    assert_close_up_to_rounding(n.T @ n, gram, VOCAB * WIDTH, dtype=torch.float32)  # covariance of ε·N is WᵀW
    kappa = torch.linalg.cond(gram).item()
    assert_close_up_to_rounding(n, torch.linalg.cholesky(gram).T, VOCAB * WIDTH, kappa * n.abs().max().item(),
                                dtype=torch.float32)  # fmt: skip


def test_identical_networks_use_jitter_within_its_bound():
    # A fresh student equals its teacher: MᵀM is singular, the factor needs jitter, and the covariance
    # of the joint noise is off by at most j in operator norm.
    teacher = tiny_dit()
    student = init_student(teacher)
    space = LowRankInputs([student, teacher])
    m = torch.cat([student.vocab_embed.embedding, teacher.vocab_embed.embedding], 1).detach().double()
    n = space.noise_map.double()
    gap = torch.linalg.matrix_norm(n.T @ n - m.T @ m, ord=2).item()
    jitter = space.jitter.item()
    assert 0 < jitter <= 1e-3 * (m.T @ m).diagonal().mean().item()
    assert gap <= 1.01 * jitter + 1e-5 * torch.linalg.matrix_norm(m.T @ m, ord=2).item()


def test_failed_factorization_raises_the_jitter_without_syncing():
    gram = torch.ones(3, 3)  # rank 1: the plain Cholesky fails
    factor, jitter = factor_gram(gram, 0.0)
    assert jitter.item() > 0 and torch.isfinite(factor).all()
    torch.testing.assert_close(factor @ factor.T, gram + jitter * torch.eye(3))


def whitened_noise(h: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(h − t·W[y]) / (1 − t), whitened by chol(WᵀW): N(0, I_d) rows when h = x_t @ W."""
    z = (h - t.view(-1, 1, 1) * w[tokens]) / (1 - t).view(-1, 1, 1)
    chol = torch.linalg.cholesky(w.T @ w)
    return torch.linalg.solve_triangular(chol, z.reshape(-1, w.shape[1]).T, upper=False).T


@pytest.mark.parametrize("mode", ["naive", "lowrank"])
def test_training_inputs_have_the_interpolant_distribution(mode):
    # x_t @ W = (1 − t)·(x₀ @ W) + t·W[y] with x₀ @ W ~ N(0, WᵀW) and t = T⁻¹(τ): both paths, through the
    # inputs the network actually receives in flm_loss.
    net = tiny_dit()
    probe = Inputs(net)
    batch, rounds = 64, 40
    w = net.vocab_embed.embedding.detach().double()
    zs = []
    for r in range(rounds):
        tokens = torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(100 + r))
        out = flm_loss(net, tokens, VOCAB, generator=torch.Generator().manual_seed(r), input_noise=mode)
        t = t_from_tau(out["tau"].double(), VOCAB)
        keep = t < 0.99  # (1 − t) amplifies rounding near t = 1
        zs.append(whitened_noise(probe.seen[-1][keep], tokens[keep], t[keep], w))
    z = torch.cat(zs)
    n = z.shape[0]
    assert z.mean(0).abs().max().item() < 5 / math.sqrt(n)
    cov = z.T @ z / n
    assert (cov - torch.eye(WIDTH, dtype=cov.dtype)).abs().max().item() < 5 * math.sqrt(2 / n)


def test_joint_noise_of_two_networks_has_the_naive_covariance():
    # Student ≠ teacher: the pair (x₀ @ W_s, x₀ @ W_t) must keep its cross-covariance W_sᵀ W_t.
    teacher = tiny_dit()
    student = perturbed(init_student(teacher), seed=5, scale=0.3)
    space = LowRankInputs([student, teacher])
    m = space.matrix.detach().double()
    h = space.noise(4000, 1, VOCAB, generator=torch.Generator().manual_seed(0)).reshape(-1, 2 * WIDTH).double()
    chol = torch.linalg.cholesky(m.T @ m)
    z = torch.linalg.solve_triangular(chol, h.T, upper=False).T
    n = z.shape[0]
    cov = z.T @ z / n
    assert (cov - torch.eye(2 * WIDTH, dtype=cov.dtype)).abs().max().item() < 5 * math.sqrt(2 / n)


# --- expected loss and gradient --------------------------------------------------------------------


def draws(loss_fn, params, mode: str, rounds: int):
    """Per-draw losses [R] and gradients [R, P] of ``loss_fn(seed, mode)``."""
    losses, grads = [], []
    for r in range(rounds):
        for p in params:
            p.grad = None
        loss = loss_fn(r, mode)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
    return torch.stack(losses).double(), torch.stack(grads).double()


def z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z-scores of the difference of the means of two independent samples (first dim: draws)."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)) / se


def directions(params, count: int = 6) -> torch.Tensor:
    """Fixed random unit directions [P, count] split between the input matrix and the other parameters."""
    sizes = [p.numel() for p in params]
    g = torch.Generator().manual_seed(9)
    out = torch.zeros(sum(sizes), 2 * count, dtype=torch.float64)
    out[: sizes[0], :count] = torch.randn(sizes[0], count, generator=g, dtype=torch.float64)
    out[sizes[0] :, count:] = torch.randn(sum(sizes) - sizes[0], count, generator=g, dtype=torch.float64)
    return out / out.norm(dim=0)


def check_expectations(loss_fn, params, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradient means of the two paths agree; returns the naive gradient draws and the W-block
    statistic of the low-rank ones."""
    loss_naive, grad_naive = draws(loss_fn, params, "naive", rounds)
    loss_low, grad_low = draws(loss_fn, params, "lowrank", rounds)
    proj = directions(params)
    assert abs(z_scores(loss_low, loss_naive).item()) < 4.5
    z = z_scores(grad_low @ proj, grad_naive @ proj)
    assert z.abs().max().item() < 4.5, z
    # All of the input matrix's gradient: Σ z² over its k = V·d entries has mean ≈ k when the means agree
    # (correlated entries widen its spread, hence the generous 1.5·k bound).
    k = params[0].numel()
    stat = w_block_statistic(grad_low, grad_naive, k)
    assert stat < 1.5, stat
    return grad_naive, stat


def w_block_statistic(grad_a: torch.Tensor, grad_b: torch.Tensor, k: int) -> float:
    return (z_scores(grad_a[:, :k], grad_b[:, :k]) ** 2).mean().item()


def test_flm_expected_loss_and_gradient_match_the_naive_path(monkeypatch):
    net = tiny_dit()
    params = [net.vocab_embed.embedding] + [p for n, p in net.named_parameters() if n != "vocab_embed.embedding"]
    tokens = torch.randint(0, VOCAB, (16, SEQ), generator=torch.Generator().manual_seed(0))

    def loss_fn(seed, mode):
        return flm_loss(net, tokens, VOCAB, generator=torch.Generator().manual_seed(seed), input_noise=mode)["loss"]

    rounds = 250
    grad_naive, _ = check_expectations(loss_fn, params, rounds)
    # Negative control: without the gradient through the noise term (projected noise detached) the input
    # matrix's expected gradient is wrong, and the same statistic sees it.
    original = LowRankInputs.noise
    monkeypatch.setattr(LowRankInputs, "noise", lambda self, *a, **k: original(self, *a, **k).detach())
    _, grad_detached = draws(loss_fn, params, "lowrank", rounds)
    assert w_block_statistic(grad_detached, grad_naive, params[0].numel()) > 2.0


def test_psd_expected_loss_and_gradient_match_the_naive_path():
    teacher = tiny_dit(seed=1).eval()
    student = perturbed(init_student(teacher), seed=2, scale=0.2).train()
    params = [student.vocab_embed.embedding] + [
        p for n, p in student.named_parameters() if n != "vocab_embed.embedding"
    ]
    tokens = torch.randint(0, VOCAB, (16, SEQ), generator=torch.Generator().manual_seed(0))

    def loss_fn(seed, mode):
        g = torch.Generator().manual_seed(seed)
        return psd_loss(student, teacher, tokens, VOCAB, generator=g, boundary_frac=0.125, input_noise=mode)["loss"]

    check_expectations(loss_fn, params, 150)


# --- samplers driven by the same noise -----------------------------------------------------------


def projected_naive_noise(self, batch, seq, vocab_size, generator=None, device=None):
    """The naive draw x₀ [B, L, V] (same generator use), projected: the low-rank sampler then sees exactly
    the naive sampler's noise."""
    return self.embed(torch.randn(batch, seq, vocab_size, generator=generator, device=device))


def assert_same_trajectory(naive: list, low: list, tokens_naive, tokens_low) -> None:
    assert len(naive) == len(low) > 0
    # Float32 states (recorded widened) built two ways (x @ W inside the network against h updated in the
    # d-dimensional space), each step adding V·d products to the rounding carried so far: n = steps·V·d at
    # S = the largest |state|. A wrong step size, clock or projection moves the states by O(0.1).
    for a, b in zip(naive, low, strict=True):
        scale = max(x.abs().max().item() for x in naive)
        assert_close_up_to_rounding(b, a, len(naive) * VOCAB * WIDTH, scale, dtype=torch.float32)
    # Arg-max tokens of near-equal probabilities: a flip needs two top logits within rounding (~1e-6) of each other.
    assert torch.equal(tokens_naive, tokens_low)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("guidance", [None, 2.0])
def test_flm_sampler_trajectory_equals_the_naive_one(guidance):
    net = tiny_dit().eval()
    probe = Inputs(net)
    x0 = torch.randn(3, SEQ, VOCAB, generator=torch.Generator().manual_seed(0))
    runs = {}
    for mode in ("naive", "lowrank"):
        probe.seen.clear()
        tokens = flm_sample(net, 3, SEQ, VOCAB, 6, x0=x0, guidance=guidance, input_noise=mode)
        runs[mode] = (list(probe.seen), tokens)
    assert_same_trajectory(runs["naive"][0], runs["lowrank"][0], runs["naive"][1], runs["lowrank"][1])


@pytest.mark.float_sensitive
@pytest.mark.parametrize("gamma", [0.0, 0.6, 1.0])
def test_fmlm_sampler_trajectory_equals_the_naive_one(gamma, monkeypatch):
    net = perturbed(init_student(tiny_dit()), seed=3, scale=0.3).eval()
    probe = Inputs(net)
    monkeypatch.setattr(LowRankInputs, "noise", projected_naive_noise)
    runs = {}
    for mode in ("naive", "lowrank"):
        probe.seen.clear()
        g = torch.Generator().manual_seed(4)
        tokens = fmlm_sample(net, 3, SEQ, VOCAB, 5, gamma=gamma, generator=g, input_noise=mode)
        runs[mode] = (list(probe.seen), tokens)
    assert_same_trajectory(runs["naive"][0], runs["lowrank"][0], runs["naive"][1], runs["lowrank"][1])


@pytest.mark.float_sensitive
def test_v1_stage1_sampler_trajectory_equals_the_naive_one():
    teacher = tiny_dit(seed=1).eval()
    g_net = perturbed(init_stage1(teacher), seed=6, scale=0.3)
    with torch.no_grad():
        g_net.output_layer.linear.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(7))
    probes = Inputs(teacher), Inputs(g_net)
    x0 = torch.randn(3, SEQ, VOCAB, generator=torch.Generator().manual_seed(0))
    runs = {}
    for mode in ("naive", "lowrank"):
        for p in probes:
            p.seen.clear()
        tokens = v1_stage1_sample(g_net, teacher, 3, SEQ, VOCAB, 4, x0=x0, input_noise=mode)
        runs[mode] = (probes[0].seen + probes[1].seen, tokens)
    assert_same_trajectory(runs["naive"][0], runs["lowrank"][0], runs["naive"][1], runs["lowrank"][1])


# --- the v1 losses: residuals written without the state, same value ----------------------------------


@pytest.mark.float_sensitive
@pytest.mark.parametrize("stage", [1, 2])
def test_v1_losses_match_between_paths_on_the_same_noise(stage, monkeypatch):
    teacher = tiny_dit(seed=1).eval()
    g_net = perturbed(init_stage1(teacher), seed=6, scale=0.3)
    with torch.no_grad():
        g_net.output_layer.linear.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(7))
    student = perturbed(init_student(teacher), seed=8, scale=0.2)
    tokens = torch.randint(0, VOCAB, (12, SEQ), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(LowRankInputs, "noise", projected_naive_noise)
    out = {}
    for mode in ("naive", "lowrank"):
        g = torch.Generator().manual_seed(1)
        if stage == 1:
            out[mode] = v1_stage1_loss(g_net, teacher, tokens, VOCAB, generator=g, boundary_frac=0.25, input_noise=mode)
        else:
            out[mode] = v1_stage2_loss(student, teacher, g_net, tokens, VOCAB, generator=g, input_noise=mode)
    per_sequence = out["naive"]["per_sequence"]
    assert_close_up_to_rounding(out["lowrank"]["per_sequence"], per_sequence, SEQ * VOCAB * WIDTH,
                                loss_scale("v1", per_sequence))  # fmt: skip


# --- rows of a global micro-batch ----------------------------------------------------------------------


def loss_scale(kind: str, per_sequence: torch.Tensor) -> float:
    """Magnitude S (tests/tolerances.py) of what a per-sequence loss accumulates, for n = L·V·d products.

    A cross-entropy (FLM, PSD) adds logits and log-sum-exps of about its own size (at least 1). A v1 squared
    residual Σ_v r_v² (r = prediction − target, parts of size <= 1, so each r_v is off by eps·sqrt(n)) moves by
    2·Σ_v |r_v|·δr <= 2·sqrt(V·Σ_v r_v²)·δr: S = 2·sqrt(V·mse), small where the residual is small."""
    m = per_sequence.abs().max().item()
    return max(m, 1.0) if kind in ("flm", "psd") else 2 * math.sqrt(VOCAB * m)


def loss_call(kind: str, mode: str, tokens, rows):
    teacher = tiny_dit(seed=1).eval()
    g = torch.Generator().manual_seed(11)
    common = dict(generator=g, input_noise=mode, rows=rows)
    if kind == "flm":
        return flm_loss(teacher, tokens, VOCAB, **common)
    student = perturbed(init_student(teacher), seed=2, scale=0.2).eval()
    g_net = perturbed(init_stage1(teacher), seed=6, scale=0.3).eval()
    if kind == "psd":
        return psd_loss(student, teacher, tokens, VOCAB, sample_offset=5, boundary_frac=0.25, **common)
    if kind == "v1-stage1":
        return v1_stage1_loss(g_net, teacher, tokens, VOCAB, sample_offset=5, boundary_frac=0.25, **common)
    return v1_stage2_loss(student, teacher, g_net, tokens, VOCAB, sample_offset=5, boundary_frac=0.25, **common)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("mode", ["naive", "lowrank"])
@pytest.mark.parametrize("kind", ["flm", "psd", "v1-stage1", "v1-stage2"])
def test_slices_of_a_global_micro_batch_equal_its_rows(kind, mode):
    total = 8
    tokens = torch.randint(0, VOCAB, (total, SEQ), generator=torch.Generator().manual_seed(0))
    full = loss_call(kind, mode, tokens, None)
    time_key = "tau" if kind == "flm" else "tau_s"
    for first, size in ((0, 3), (3, 4), (7, 1)):
        part = loss_call(kind, mode, tokens[first : first + size], (first, total))
        torch.testing.assert_close(part[time_key], full[time_key][first : first + size], rtol=0, atol=0)
        want = full["per_sequence"][first : first + size]
        assert_close_up_to_rounding(part["per_sequence"], want, SEQ * VOCAB * WIDTH, loss_scale(kind, want))


# --- no host round trip in a step ----------------------------------------------------------------------

SYNC_OPS = {
    "aten::_local_scalar_dense",  # .item(), bool(), float(), int() of a tensor
    "aten::nonzero",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique2",
    "aten::equal",
    "aten::is_nonzero",
    "aten::repeat_interleave",  # data-dependent output size
    "aten::linalg_cholesky",  # checks its info on the host; cholesky_ex does not
    "aten::linalg_inv",
    "aten::linalg_solve",
}


class SyncWatch(TorchDispatchMode):
    """Records tensor operations that read device values on the host (syncs on a GPU) and any call into
    numpy or scipy made while active (a CPU stand-in for torch.cuda.set_sync_debug_mode, see docs/gpu.md)."""

    def __init__(self):
        super().__init__()
        self.syncs, self.host_calls = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in SYNC_OPS:
            self.syncs.append(func._schema.name)
        return func(*args, **(kwargs or {}))

    def profile(self, frame, event, arg):
        module = frame.f_globals.get("__name__", "") if event == "call" else getattr(arg, "__module__", None) or ""
        if event in ("call", "c_call") and module.split(".")[0] in ("numpy", "scipy"):
            self.host_calls.append(module)

    def __enter__(self):
        sys.setprofile(self.profile)
        return super().__enter__()

    def __exit__(self, *exc):
        sys.setprofile(None)
        return super().__exit__(*exc)


def test_training_and_sampling_steps_make_no_host_round_trip():
    teacher = tiny_dit(seed=1)
    student = init_student(teacher)
    tokens = torch.randint(0, VOCAB, (8, SEQ))
    get_schedule(VOCAB, "cpu")  # built once per vocabulary (numpy quadrature), outside any step
    steps = {
        "flm training step": lambda: flm_loss(teacher.train(), tokens, VOCAB, input_noise="lowrank")["loss"].backward(),
        "psd training step": lambda: psd_loss(student, teacher.eval(), tokens, VOCAB, input_noise="lowrank")[
            "loss"
        ].backward(),
        "flm sampler": lambda: flm_sample(teacher.eval(), 2, SEQ, VOCAB, 4, input_noise="lowrank"),
        "fmlm sampler with churn": lambda: fmlm_sample(
            student.eval(), 2, SEQ, VOCAB, 4, gamma=0.5, input_noise="lowrank"
        ),
    }
    for name, step in steps.items():
        step()  # warm-up
        with SyncWatch() as watch:
            step()
        assert watch.syncs == [] and watch.host_calls == [], name
    with SyncWatch() as watch:  # the watch sees what it should
        torch.ones(2).sum().item()
        __import__("numpy").zeros(1)
    assert watch.syncs == ["aten::_local_scalar_dense"] and watch.host_calls


def test_lowrank_states_never_have_vocabulary_width():
    net = tiny_dit()
    shapes = []
    net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    flm_loss(net, torch.randint(0, VOCAB, (4, SEQ)), VOCAB, input_noise="lowrank")
    flm_sample(net, 2, SEQ, VOCAB, 3, input_noise="lowrank")
    assert shapes and all(s[-1] == WIDTH for s in shapes)


@pytest.mark.parametrize("mode", ["naive", "lowrank"])
def test_training_harness_honours_the_config_option(mode):
    from flowlm.config import apply_overrides, load_preset
    from flowlm.training.module import FlowLMModule

    cfg = apply_overrides(load_preset("tiny"), [f"train.input_noise={mode}", "data.seq_len=8"])
    module = FlowLMModule(cfg, vocab_size=VOCAB * 4)
    tokens = torch.randint(0, VOCAB * 4, (2, 8), generator=torch.Generator().manual_seed(0))
    got = module.method_loss(module.net, tokens, torch.Generator().manual_seed(1))["loss"]
    want = flm_loss(module.net, tokens, VOCAB * 4, generator=torch.Generator().manual_seed(1), input_noise=mode)
    assert got.item() == want["loss"].item()
    with pytest.raises(ConfigError, match="train.input_noise='dense'"):
        apply_overrides(load_preset("tiny"), ["train.input_noise=dense"])
