"""Fixed-point distillation (issue 26, part 2): the target is the fixed point of the guided self-conditioning map (on a
toy whose iteration is known, and on a DiT), the student takes w as an input and starts as the estimate-free teacher,
the loss counts its teacher calls and draws w on its range, PSD passes one w to teacher and student, the samplers
bind the requested w, and the chain trains and samples through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from flowlm.errors import ConfigError
from flowlm.methods.fixed_point import (
    fixed_point_loss,
    fixed_point_target,
    guidance_draws,
    init_fixed_point_student,
)
from flowlm.methods.lowrank import NaiveInputs
from flowlm.nn.dit import DiT, DiTConfig, guidance_bound, reads_guidance

pytestmark = pytest.mark.usefixtures("one_thread")

V, L = 11, 6
CFG = DiTConfig(vocab_size=V, seq_len=L, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0,
                self_condition=True)  # fmt: skip


class ToyTeacher:
    """Logits ``ℓ₀ = x`` without an estimate and ``ℓ_p = x + p @ M`` with one (``project_estimate`` is the identity):
    the guided map is ``F_w(p) = softmax(x + w·p @ M)``, whose iterates the test writes out by hand."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.calls = 0

    def project_estimate(self, p):
        return p

    def __call__(self, x, tau, self_cond=None):
        self.calls += 1
        return x if self_cond is None else x + self_cond @ self.matrix


def toy(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(3, L, V, generator=g)
    return ToyTeacher(scale * torch.randn(V, V, generator=g)), x


def test_the_target_follows_the_damped_picard_iteration_and_converges_to_a_fixed_point():
    teacher, x = toy(0.3)
    w = torch.tensor([0.0, 1.0, 2.5])
    tau = torch.rand(3)

    def mapped(p):
        return torch.softmax(x + w.view(-1, 1, 1) * (p @ teacher.matrix), -1)

    for beta in (1.0, 0.5):
        teacher.calls = 0
        p, residual = fixed_point_target(teacher, NaiveInputs(), x, tau, w, iterations=3, damping=beta)
        assert teacher.calls == 3  # K teacher calls: one without an estimate, K − 1 with one
        expected = torch.softmax(x, -1)
        for _ in range(2):
            last = expected
            expected = (1 - beta) * last + beta * mapped(last)
        torch.testing.assert_close(p, expected)
        torch.testing.assert_close(residual, 0.5 * (mapped(last) - last).abs().sum(-1).mean(-1))
        torch.testing.assert_close(p[0], torch.softmax(x[0], -1))  # w = 0: the estimate is ignored
    # a contraction at this scale: the residual falls with K and the iterate reaches the fixed point
    residuals = [float(fixed_point_target(teacher, NaiveInputs(), x, tau, w, k)[1].max()) for k in (4, 8, 16)]
    assert residuals[0] > residuals[1] > residuals[2]
    p, residual = fixed_point_target(teacher, NaiveInputs(), x, tau, w, iterations=60, damping=1.0)
    eps = torch.finfo(torch.float32).eps
    assert float((mapped(p) - p).abs().max()) < 64 * eps and float(residual.max()) < 64 * eps


def test_damping_reaches_a_fixed_point_where_plain_picard_oscillates():
    """F(p) = softmax(x − 20·p) (the estimate pushes its own tokens down) has one fixed point, but its
    Jacobian has eigenvalues below −1: plain Picard flips between two distributions, the damped step converges."""
    teacher, x = toy(0.0)
    teacher.matrix = -20.0 * torch.eye(V)
    x = torch.zeros(1, L, V)
    x[..., 0] = 1.0
    w, tau = torch.ones(1), torch.zeros(1)
    _, plain = fixed_point_target(teacher, NaiveInputs(), x, tau, w, iterations=64, damping=1.0)
    p, damped = fixed_point_target(teacher, NaiveInputs(), x, tau, w, iterations=64, damping=0.25)
    assert float(plain) > 0.1 and float(damped) < 1e-5
    torch.testing.assert_close(p, torch.softmax(x - 20.0 * p, -1), rtol=0, atol=1e-5)


def sc_teacher(seed: int = 0) -> DiT:
    g = torch.Generator().manual_seed(seed)
    net = DiT(CFG).eval()
    with torch.no_grad():  # every path random, the self-conditioning map included
        for param in net.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=g))
    return net


def test_the_dit_target_is_a_fixed_point_of_the_guided_self_conditioned_teacher():
    teacher = sc_teacher()
    x, tau, w = 3 * torch.randn(2, L, V), torch.tensor([0.3, 0.8]), torch.tensor([1.0, 3.0])
    p, residual = fixed_point_target(teacher, NaiveInputs(), x, tau, w, iterations=40)
    with torch.no_grad():
        plain = teacher(x, tau)
        guided = plain + w.view(-1, 1, 1) * (teacher(x, tau, self_cond=teacher.project_estimate(p)) - plain)
    step = (torch.softmax(guided, -1) - p).abs().max()
    assert float(step) < 1e-4 and float(residual.max()) < 1e-4, (float(step), residual)


def test_the_student_takes_w_and_starts_as_the_teacher_without_an_estimate():
    teacher = sc_teacher()
    student = init_fixed_point_student(teacher).eval()
    assert student.config.guidance_input and not student.config.self_condition and student.self_cond is None
    assert reads_guidance(student) and not reads_guidance(teacher)
    x, tau = torch.randn(2, L, V), torch.rand(2)
    for w in (0.5, 5.0):
        torch.testing.assert_close(student(x, tau, guidance=torch.full((2,), w)), teacher(x, tau), rtol=0, atol=0)
    with torch.no_grad():  # once trained, w matters, and a bound w is the same as a passed one
        student.guidance_map.mlp[2].weight.normal_(0, 1.0)
    assert not torch.allclose(student(x, tau, guidance=torch.full((2,), 5.0)), student(x, tau, guidance=0.5))
    with guidance_bound([student], 3.0):
        bound = student(x, tau)
    torch.testing.assert_close(bound, student(x, tau, guidance=torch.full((2,), 3.0)), rtol=0, atol=0)
    torch.testing.assert_close(student(x, tau), student(x, tau, guidance=1.0), rtol=0, atol=0)  # unbound: w = 1
    with pytest.raises(ConfigError, match="does not read one"):
        teacher(x, tau, guidance=2.0)
    plain = DiT(dataclasses.replace(CFG, self_condition=False))
    with pytest.raises(ConfigError, match="self-conditioned FLM"):
        init_fixed_point_student(plain)


def test_guidance_draws_are_log_uniform_on_the_range():
    n = 20_000
    w = guidance_draws(n, 0.5, 5.0, torch.Generator().manual_seed(0))
    u = (torch.log1p(w) - math.log(1.5)) / (math.log(6.0) - math.log(1.5))  # uniform on [0, 1] if log-uniform
    assert float(w.min()) >= 0.5 and float(w.max()) <= 5.0 + 1e-5
    se = math.sqrt(1 / 12 / n)
    assert abs(float(u.mean()) - 0.5) < 4 * se
    assert abs(float((u < 0.25).double().mean()) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


@pytest.mark.parametrize("input_noise", ["naive", "lowrank"])
def test_the_loss_trains_only_the_student_with_k_teacher_calls_and_one_w_per_sequence(input_noise):
    teacher = sc_teacher()
    student = init_fixed_point_student(teacher).train()
    with torch.no_grad():
        student.guidance_map.mlp[2].weight.normal_(0, 0.5)
    teacher_calls, student_w = [], []
    teacher.register_forward_hook(lambda *_: teacher_calls.append(1))
    student.guidance_map.register_forward_hook(lambda _m, args, _o: student_w.append(args[0].clone()))
    tokens = torch.randint(0, V, (8, L), generator=torch.Generator().manual_seed(0))
    out = fixed_point_loss(student, teacher, tokens, V, generator=torch.Generator().manual_seed(1), iterations=5,
                           guidance_range=(2.0, 3.0), input_noise=input_noise)  # fmt: skip
    assert len(teacher_calls) == 5 and len(student_w) == 1
    (w,) = student_w
    assert w.shape == (8,) and float(w.min()) >= 2.0 and float(w.max()) <= 3.0 + 1e-6 and len(set(w.tolist())) == 8
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in teacher.parameters())  # (lowrank: zeros through the stack)
    grad = student.guidance_map.mlp[2].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert float(out["kl"]) >= -1e-5 and float(out["ce"]) >= float(out["kl"])
    assert float(out["fixed_point_residual"]) >= 0
    assert teacher.training is False


def test_psd_from_a_fixed_point_denoiser_passes_one_w_to_teacher_and_student():
    from types import SimpleNamespace

    from flowlm.config import RunConfig
    from flowlm.methods.builtin.psd import PSD
    from flowlm.methods.fmlm import init_student

    teacher = init_fixed_point_student(sc_teacher()).eval()
    with torch.no_grad():
        teacher.guidance_map.mlp[2].weight.normal_(0, 0.5)
    student = init_student(teacher).train()
    assert reads_guidance(student)
    seen = {"teacher": [], "student": []}
    for name, net in (("teacher", teacher), ("student", student)):
        net.guidance_map.register_forward_hook(lambda _m, args, _o, name=name: seen[name].append(args[0].clone()))
    cfg = RunConfig()
    cfg.train.batch_size, cfg.train.max_steps = 8, 10
    ctx = SimpleNamespace(cfg=cfg, frozen=(teacher,), vocab_size=V, weighting=None)
    tokens = torch.randint(0, V, (8, L), generator=torch.Generator().manual_seed(0))
    values = []
    for seed in (1, 2):
        for found in seen.values():
            found.clear()
        PSD.loss(student, tokens, ctx, generator=torch.Generator().manual_seed(seed))
        calls = [w for found in seen.values() for w in found]
        assert seen["teacher"] and seen["student"]
        assert all(torch.equal(w, calls[0][:1].expand_as(w)) for w in calls)  # one w, every call of both networks
        values.append(float(calls[0][0]))
    assert values[0] != values[1] and all(0.5 <= v <= 5.0 + 1e-6 for v in values)
    assert float(student.bound_guidance) == float(teacher.bound_guidance) == 1.0  # restored after the loss


def test_cli_distills_a_fixed_point_denoiser_and_its_flow_map_and_samples_them_at_w(tmp_path):
    from test_e2e import TINY, cli

    import flowlm

    def distill(teacher: str, out: str, recipe: str = "psd", *overrides: str, check: bool = True):
        return cli("distill", "--teacher", str(tmp_path / teacher), "--recipe", recipe, "--steps", "3", "--quiet",
                   "--out", str(tmp_path / out), "train.ckpt_every=2", "train.val_every=3", "train.val_batches=1",
                   *overrides, check=check)  # fmt: skip

    def sampled(model: str, steps: int, w: str) -> list:
        out = tmp_path / f"{model}.jsonl"
        cli("sample", str(tmp_path / model), "--steps", str(steps), "-n", "2", "--seed", "1", "--sc-guidance", w,
            "--out", str(out))  # fmt: skip
        return [json.loads(line)["tokens"] for line in out.read_text().splitlines()]

    cache = f"data.cache_dir={tmp_path / 'cache'}"
    cli("train", *TINY, cache, "model.self_condition=true", "--steps", "3", "--out", str(tmp_path / "sc"))
    distill("sc", "fp", "fixed-point", "distill.fp_iterations=3")
    meta = json.loads((tmp_path / "fp" / "model" / "flowlm.json").read_text())
    assert meta["method"] == "flm" and meta["recipe"] == "fixed-point"
    assert meta["model"]["guidance_input"] is True and meta["model"]["self_condition"] is False
    header = next((tmp_path / "fp" / "logs").glob("*/metrics.csv")).read_text().splitlines()[0]
    assert "train/fixed_point_kl" in header and "train/fixed_point_residual" in header
    fp = flowlm.load(tmp_path / "fp")
    assert fp.method_def.name == "flm-fixed-point"
    assert sampled("fp", 4, "3") == fp.sample_tokens(2, 4, seed=1, sc_guidance=3.0).tolist()
    assert torch.equal(fp.sample_tokens(2, 4, seed=1), fp.sample_tokens(2, 4, seed=1, sc_guidance=1.0))
    distill("fp", "map")
    flow_map = flowlm.load(tmp_path / "map")
    assert flow_map.method == "fmlm" and flow_map.net.config.guidance_input and flow_map.net.config.time_inputs == 2
    assert sampled("map", 1, "5") == flow_map.sample_tokens(2, 1, seed=1, sc_guidance=5.0).tolist()
    # what is refused, with the fix named
    refused = distill("fp", "no", "lsd-ref", check=False)
    assert refused.returncode != 0 and "use --recipe psd" in refused.stderr
    cli("train", *TINY, cache, "--steps", "2", "--out", str(tmp_path / "plain"))
    refused = distill("plain", "no2", "fixed-point", check=False)
    assert refused.returncode != 0 and "model.self_condition=true" in refused.stderr
    with pytest.raises(ConfigError, match="takes no guidance scale"):
        flowlm.load("demo:fmlm").sample_tokens(1, 1, sc_guidance=2.0)
