"""Distilled discrete baselines (flowlm.methods.sdtt, flowlm.methods.dcd) and ``flowlm distill --rounds``.

- SDTT's target: a masked position's target is the teacher's first prediction where its first sub-step revealed it
  (probability Δ/t), else its second; the loss vanishes for a student equal to a time-consistent teacher;
- DCD's trajectory pairs: both ends have the uniform-state law of their α, share one noise (so they agree more often
  than independent draws), and the window runs from α 0.999 to 0.006;
- the CLI: an MDLM distilled by SDTT in two rounds (8 → 4 → 2 steps), a DUO model by DCD, the refusals.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowlm.methods.dcd import DCD_ALPHAS, dcd_loss, trajectory_pair
from flowlm.methods.duo import gamma_window
from flowlm.methods.sdtt import sdtt_loss, sdtt_target
from flowlm.schedule import get_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

V = 6


class CountingTeacher(torch.nn.Module):
    """MDLM-style network (ids with mask id V, V logits) whose prediction depends on how many positions are masked,
    so the teacher's two sub-steps predict different distributions."""

    def forward(self, z, tau, **_):
        masked = (z == V).float().sum(-1, keepdim=True)  # [B, 1]
        base = torch.arange(V, dtype=torch.float32)
        return (base * 0.3 * masked / z.shape[1]).unsqueeze(1).expand(z.shape[0], z.shape[1], V).contiguous()


def test_sdtt_target_is_the_first_prediction_where_revealed_first_else_the_second():
    from flowlm.methods.mdlm import subs_log_probs

    teacher = CountingTeacher()
    z = torch.full((300, 40), V)  # everything masked; long rows, so some position of each row is revealed first
    t = torch.full((300,), 0.5)
    step = 0.125  # Δ/t = 0.25
    target = sdtt_target(teacher, z, t, step, V, torch.Generator().manual_seed(0))
    first = subs_log_probs(teacher(z, torch.zeros(300)), z, V)
    is_first = torch.isclose(target, first, atol=1e-6).all(-1)
    share = is_first.double().mean().item()
    # a position not revealed first also matches when no other position of its row was (0.75^39 ≈ 1e-5: negligible)
    assert abs(share - 0.25) <= 4.5 * math.sqrt(0.25 * 0.75 / is_first.numel()), share
    # the others hold the second prediction: the teacher at a state with fewer masks, a different distribution
    assert not bool(torch.isclose(target[~is_first], first[~is_first], atol=1e-6).all(-1).any())


class ExactPosterior(torch.nn.Module):
    """The exact MDLM denoiser of a joint law on V^L blocks (here V = 3, L = 3, a random law): p(x_ℓ | z) is the
    marginal at ℓ of the law restricted to blocks that agree with z's unmasked positions."""

    def __init__(self):
        super().__init__()
        self.law = torch.softmax(torch.randn(27, generator=torch.Generator().manual_seed(7), dtype=torch.float64), 0)
        self.blocks = torch.cartesian_prod(*[torch.arange(3)] * 3)  # [27, 3]

    def forward(self, z, tau, **_):
        known = z != 3  # mask id V = 3
        agree = ((self.blocks.unsqueeze(0) == z.unsqueeze(1)) | ~known.unsqueeze(1)).all(-1)  # [B, 27]
        post = self.law * agree
        post = post / post.sum(-1, keepdim=True)
        marg = torch.stack([(post.unsqueeze(-1) * torch.nn.functional.one_hot(self.blocks[:, i], 3)).sum(1)
                            for i in range(3)], dim=1)  # fmt: skip
        return marg.clamp(min=1e-30).log().float()


def test_sdtt_target_of_an_exact_teacher_averages_to_its_one_step_prediction():
    """For the exact posterior, predictions are a martingale: averaged over the first sub-step's reveals, the target
    of a masked position equals the teacher's prediction at z_t itself (so SDTT with forward KL leaves an exact teacher
    unchanged, and reverse KL only sharpens it, toward the geometric mean of its future predictions). 20,000 draws,
    4.5 standard errors per probability."""
    teacher = ExactPosterior()
    n = 20000
    z = torch.tensor([[3, 1, 3]]).expand(n, 3).clone()
    t = torch.full((n,), 0.6)
    target = sdtt_target(teacher, z, t, 0.25, 3, torch.Generator().manual_seed(8)).double().exp()
    now = teacher(z[:1], torch.zeros(1)).double().exp()[0]
    for position in (0, 2):
        mean = target[:, position].mean(0)
        se = target[:, position].std(0) / math.sqrt(n)
        assert bool(((mean - now[position]).abs() <= 4.5 * se + 1e-9).all()), (position, mean, now[position])
    # the sub-step did reveal the other masked position often enough for the target to vary
    assert target[:, 0].std(0).max().item() > 0.01


def test_sdtt_loss_vanishes_for_a_time_consistent_teacher_and_its_copy():
    class Constant(torch.nn.Module):
        def __init__(self, shift=0.0):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.linspace(0, 1, V) + shift)

        def forward(self, z, tau, **_):
            return self.logits.expand(*z.shape, V)

    tokens = torch.randint(0, V, (16, 5), generator=torch.Generator().manual_seed(1))
    same = sdtt_loss(Constant(), Constant(), tokens, V, 8, torch.Generator().manual_seed(2))["loss"]
    other = sdtt_loss(Constant(0.5 * torch.arange(V)), Constant(), tokens, V, 8, torch.Generator().manual_seed(2))
    assert abs(same.item()) < 1e-6 and other["loss"].item() > 1e-3
    for divergence in ("kl-forward", "kl-reverse"):
        out = sdtt_loss(Constant(), Constant(0.2), tokens, V, 8, torch.Generator().manual_seed(2),
                        divergence=divergence)
        out["loss"].backward()


def test_dcd_trajectory_pairs_have_uniform_state_marginals_and_share_their_noise():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, V, (500, 40), generator=g)
    t, s = torch.full((500,), 0.6), torch.full((500,), 0.5)
    z_t, a_t, z_s, a_s = trajectory_pair(tokens, t, s, V, g)
    for z, a in ((z_t, a_t[0].item()), (z_s, a_s[0].item())):
        want = a + (1 - a) / V
        rate = (z == tokens).double().mean().item()
        assert abs(rate - want) <= 4.5 * math.sqrt(want * (1 - want) / z.numel()), (rate, want)
    assert a_s[0] > a_t[0]  # s < t is the cleaner end
    # one shared noise: z_s equals z_t far more often than two independent draws of the same laws would
    agree = (z_t == z_s).double().mean().item()
    p_t = torch.tensor([a_t[0].item() + (1 - a_t[0].item()) / V] + [(1 - a_t[0].item()) / V] * (V - 1))
    p_s = torch.tensor([a_s[0].item() + (1 - a_s[0].item()) / V] + [(1 - a_s[0].item()) / V] * (V - 1))
    assert agree > (p_t * p_s).sum().item() + 0.1
    low, high = gamma_window(V, DCD_ALPHAS)
    ends = torch.exp(-torch.tensor([low, high], dtype=torch.float64) / 2)
    alphas = get_schedule(V).tau_from_t(ends / (1 + ends))
    torch.testing.assert_close(alphas, torch.tensor([0.999, 0.006], dtype=torch.float64), rtol=0, atol=1e-6)


def test_dcd_loss_vanishes_for_an_input_independent_teacher_and_its_copy():
    class Constant(torch.nn.Module):
        def forward(self, z, a, **_):
            return torch.linspace(0, 1, V).expand(*z.shape, V)

    tokens = torch.randint(0, V, (8, 5), generator=torch.Generator().manual_seed(4))
    out = dcd_loss(Constant(), Constant(), tokens, V, 4, torch.Generator().manual_seed(5))
    assert abs(out["loss"].item()) < 1e-6 and bool((out["t"] >= 0.25).all())


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    from test_e2e import TINY, cli

    root = tmp_path_factory.mktemp("distilled")
    for method in ("mdlm", "duo", "flm"):
        cli("train", *TINY, f"data.cache_dir={root / 'cache'}", "--method", method, "--steps", "3",
            "--out", str(root / method))  # fmt: skip
    return root


def test_sdtt_in_two_rounds_and_dcd_through_the_cli(teachers, tmp_path):
    from test_e2e import cli

    import flowlm

    out = tmp_path / "sdtt"
    proc = cli("distill", "--teacher", str(teachers / "mdlm"), "--recipe", "sdtt", "--rounds", "2", "--steps", "2",
               "--out", str(out), "--quiet", "distill.teacher_steps=8")  # fmt: skip
    assert "a 4-step sampler" in proc.stdout and "a 2-step sampler" in proc.stdout
    first, second = (json.loads((out / f"round-{k}" / "model" / "flowlm.json").read_text()) for k in (1, 2))
    assert first["method"] == second["method"] == "mdlm" and first["recipe"] == "sdtt"
    assert first["run"]["distill"]["teacher_steps"] == 8 and second["run"]["distill"]["teacher_steps"] == 4
    assert second["teacher"]["path"] == str((out / "round-1" / "model").resolve())
    model = flowlm.load(out / "round-2")
    assert model.method_def.name == "mdlm-sdtt" and model.sample_tokens(2, 2, seed=1).shape == (2, 32)
    dcd = tmp_path / "dcd"
    cli("distill", "--teacher", str(teachers / "duo"), "--recipe", "dcd", "--steps", "2", "--out", str(dcd), "--quiet",
        "distill.teacher_steps=8")  # fmt: skip
    student = flowlm.load(dcd)
    assert student.method == "duo" and student.meta["recipe"] == "dcd"
    assert student.sample_tokens(2, 4, seed=1, tail="ancestral").shape == (2, 32)


def test_refusals(teachers, tmp_path, capsys):
    """One-line errors, in-process (``flowlm.cli.main``): a teacher of the wrong method for the recipe, rounds for a
    recipe without steps to halve, too few teacher steps."""
    from flowlm.cli import main

    for teacher, recipe, wrong in (("flm", "sdtt", "flm model"), ("mdlm", "dcd", "mdlm model"),
                                   ("duo", "psd", "duo model")):  # fmt: skip
        argv = ["distill", "--teacher", str(teachers / teacher), "--recipe", recipe, "--steps", "1", "--out",
                str(tmp_path / recipe), "--quiet"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert wrong in err and "Traceback" not in err and err.count("\n") == 1, err
    argv = ["distill", "--teacher", str(teachers / "flm"), "--rounds", "2", "--steps", "1", "--out",
            str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 2 and "--rounds 2" in capsys.readouterr().err
    argv = ["distill", "--teacher", str(teachers / "mdlm"), "--recipe", "sdtt", "--steps", "1", "--out",
            str(tmp_path / "s"), "--quiet", "distill.teacher_steps=1"]  # fmt: skip
    assert main(argv) == 2 and "distill.teacher_steps=1" in capsys.readouterr().err
