"""The flow-map fit report (flowlm.eval.flow_map_fit) against flow maps whose fit is known in closed form."""

import math

import pytest
import torch

from flowlm.errors import ConfigError
from flowlm.eval.flow_map_fit import fit_report, format_report, parse_pairs
from flowlm.methods.flm import flm_endpoint, flm_sample
from flowlm.methods.lowrank import NaiveInputs
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.schedule import t_from_tau

V, L = 5, 3


class EndTimeMap(torch.nn.Module):
    """δ̂_{s,t}(x) = softmax(a + τ·b) with τ the end time (the only time for a one-time call): its PSD target at
    (s, t) is λ·f(τ_u) + (1 − λ)·f(τ_t), λ from the interpolation times, in closed form."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(a), torch.nn.Parameter(b)

    def f(self, tau: float) -> torch.Tensor:
        return torch.softmax(self.a + tau * self.b, dim=-1)  # [L, V]

    def forward(self, x, tau, tau_end=None):
        when = (tau if tau_end is None else tau_end).float().view(-1, 1, 1)
        return (self.a + when * self.b).expand(x.shape[0], -1, -1) + 0 * x


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over positions of KL(p ‖ q) for [L, V] rows."""
    return float((p * (p.log() - q.log())).sum(-1).mean())


@pytest.fixture
def maps():
    g = torch.Generator().manual_seed(0)
    student = EndTimeMap(torch.randn(L, V, generator=g), torch.randn(L, V, generator=g) * 2)
    teacher = EndTimeMap(torch.randn(L, V, generator=g), torch.zeros(L, V))  # constant denoiser
    tokens = torch.randint(0, V, (6, L), generator=g)
    return student, teacher, tokens


def test_the_report_matches_the_closed_form_fit_at_every_pair(maps):
    student, teacher, tokens = maps
    pairs = ((0.0, 1.0), (0.0, 0.5), (0.2, 0.9), (0.5, 0.5))
    report = fit_report(student, teacher, tokens, V, pairs=pairs, batch_size=4, input_noise="naive")
    rows = {(r["tau_s"], r["tau_t"]): r for r in report["pairs"]}
    tol = 1e-5  # float32 softmax and logs of O(1) values, summed over 5 entries
    for (tau_s, tau_t), row in rows.items():
        q = student.f(tau_t).detach()
        if tau_s == tau_t:  # diagonal: the teacher's denoiser
            target = teacher.f(tau_s).detach()
        else:
            tau_u = (tau_s + tau_t) / 2
            s, u, t = (float(t_from_tau(torch.tensor(x, dtype=torch.float64), V)) for x in (tau_s, tau_u, tau_t))
            lam = (1 - t) * (u - s) / ((1 - u) * (t - s))
            target = lam * student.f(tau_u).detach() + (1 - lam) * q
        assert row["kl"]["mean"] == pytest.approx(kl(target, q), abs=tol), (tau_s, tau_t)
        entropy = float(-(target * target.log()).sum(-1).mean())
        assert row["entropy_target"]["mean"] == pytest.approx(entropy, abs=tol)
        assert row["entropy_student"]["mean"] == pytest.approx(float(-(q * q.log()).sum(-1).mean()), abs=tol)
        assert row["kl"]["low"] <= row["kl"]["mean"] <= row["kl"]["high"]
    # At (0, 1) λ = 0: the target is the map's own end-time output, so this map fits there exactly ...
    assert rows[(0.0, 1.0)]["kl"]["mean"] == pytest.approx(0.0, abs=tol)
    assert rows[(0.0, 1.0)]["agreement"]["mean"] == 1.0
    # ... and not at (0, 0.5), where the wrong clock (λ from τ instead of t) would give another value.
    lam_tau = (1 - 0.5) * 0.25 / ((1 - 0.25) * 0.5)
    wrong = kl(lam_tau * student.f(0.25).detach() + (1 - lam_tau) * student.f(0.5).detach(), student.f(0.5).detach())
    assert abs(rows[(0.0, 0.5)]["kl"]["mean"] - wrong) > 100 * tol
    assert report["summary"]["kl_boundary"] == rows[(0.0, 1.0)]["kl"]["mean"]
    assert "| 0 | 1 |" in format_report(report)


def test_a_perfect_flow_map_has_zero_kl_everywhere():
    """Student and teacher the same constant denoiser: every target equals the student's output."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(L, V, generator=g)
    same = EndTimeMap(a, torch.zeros(L, V))
    tokens = torch.randint(0, V, (4, L), generator=g)
    report = fit_report(same, same, tokens, V, input_noise="naive")
    assert all(r["kl"]["mean"] == pytest.approx(0.0, abs=1e-6) for r in report["pairs"])
    h = float(-(torch.softmax(a, -1) * torch.log_softmax(a, -1)).sum(-1).mean())
    assert all(r["entropy_student"]["mean"] == pytest.approx(h, abs=1e-5) for r in report["pairs"])
    assert math.isfinite(report["summary"]["boundary_over_median"])


def test_pairs_parse_and_bad_pairs_are_one_line():
    assert parse_pairs("0:1,0.25:0.75") == ((0.0, 1.0), (0.25, 0.75))
    for bad in ("0-1", "0.5:0.25", "0:1.5", "a:b"):
        with pytest.raises(ConfigError, match="--pairs entry"):
            parse_pairs(bad)


def test_pairs_ending_at_one_are_anchored_to_the_teachers_sampler(maps):
    """A map can meet its own composition target exactly at (0, 1) and still be wrong there (the collapse of
    end_stretch): the anchor is the teacher's own sampler. The teacher here is a constant denoiser f_T, so its sampler
    writes arg-max f_T from any start at any step count, and the anchor's numbers are closed forms of f_T and f_S(1)."""
    student, teacher, tokens = maps
    pairs = ((0.0, 1.0), (0.5, 1.0), (0.0, 0.5), (0.5, 0.5))
    report = fit_report(student, teacher, tokens, V, pairs=pairs, batch_size=4, input_noise="naive", ode_steps=3)
    rows = {(r["tau_s"], r["tau_t"]): r for r in report["pairs"]}
    f_t, f_s = teacher.f(0.0).detach(), student.f(1.0).detach()
    written = f_t.argmax(-1, keepdim=True)  # [L, 1]
    agreement = float((f_s.argmax(-1, keepdim=True) == written).float().mean())
    cross_entropy = float(-f_s.gather(-1, written).log().mean())
    assert agreement < 1 and cross_entropy > 0.5  # the map is far from its teacher at t = 1 ...
    assert rows[(0.0, 1.0)]["kl"]["mean"] == pytest.approx(0.0, abs=1e-5)  # ... while it fits its own target there
    for pair in ((0.0, 1.0), (0.5, 1.0)):
        ode = rows[pair]["teacher_ode"]
        assert ode["steps"] == 3 and ode["agreement"]["mean"] == pytest.approx(agreement, abs=1e-6)
        assert ode["cross_entropy"]["mean"] == pytest.approx(cross_entropy, abs=1e-5)
        assert ode["entropy_teacher"]["mean"] == pytest.approx(float(-(f_t * f_t.log()).sum(-1).mean()), abs=1e-5)
    assert "teacher_ode" not in rows[(0.0, 0.5)] and "teacher_ode" not in rows[(0.5, 0.5)]
    assert report["summary"]["cross_entropy_teacher_ode"] == pytest.approx(cross_entropy, abs=1e-5)
    assert "teacher 3-step tokens" in format_report(report)
    off = fit_report(student, teacher, tokens, V, pairs=pairs, input_noise="naive", ode_steps=0)
    assert all("teacher_ode" not in r for r in off["pairs"]) and "agreement_teacher_ode" not in off["summary"]


def test_the_anchor_from_pure_noise_is_the_flm_sampler():
    """From τ_s = 0 the anchor's arg-max is flm_sample's output for the same noise and step count (same grid, same
    Euler steps, same last jump), for a network whose denoiser depends on its state and time."""
    torch.manual_seed(0)
    cfg = DiTConfig(vocab_size=7, seq_len=6, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0)
    net = DiT(cfg).eval()
    for p in net.parameters():  # a DiT starts with zeroed output layers: give every weight a value
        torch.nn.init.normal_(p, std=0.3)
    x0 = torch.randn(5, 6, 7, generator=torch.Generator().manual_seed(1))
    for steps in (1, 2, 5):
        tokens = flm_sample(net, 5, 6, 7, steps, x0=x0, input_noise="naive")
        endpoint = flm_endpoint(net, x0, 0.0, 7, steps, NaiveInputs())
        assert torch.equal(endpoint.argmax(-1), tokens), steps
        assert torch.allclose(endpoint.sum(-1), torch.ones(5, 6), atol=1e-5)
