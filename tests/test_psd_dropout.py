"""PSD off-diagonal targets with the student's dropout active (the reference's default) or not."""

from __future__ import annotations

import torch

from flowlm.config import RunConfig
from flowlm.methods.fmlm import init_student, psd_loss, psd_target
from flowlm.nn.dit import DiT, DiTConfig

V, L = 11, 6


def nets(dropout: float = 0.5):
    torch.manual_seed(0)
    config = DiTConfig(vocab_size=V, seq_len=L, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8, dropout=dropout)
    teacher = DiT(config)
    for p in teacher.parameters():  # non-zero adaLN and head, so that dropout changes the output
        torch.nn.init.normal_(p, std=0.3)
    return init_student(teacher), teacher


def inputs(batch: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, L, V, generator=g)
    tau_s = torch.tensor([0.2, 0.5, 0.1, 0.0, 0.3, 0.6])[:batch]
    return x, tau_s, (tau_s + 0.3).clamp(max=1.0)


def test_student_passes_run_in_train_mode_by_default_and_eval_mode_on_request():
    student, teacher = nets()
    student.eval()
    teacher.train()
    seen = []
    student.register_forward_hook(lambda m, i, o: seen.append(("student", m.training, m.blocks[0].training)))
    teacher.register_forward_hook(lambda m, i, o: seen.append(("teacher", m.training, m.blocks[0].training)))
    x, ts, tt = inputs()
    psd_target(student, teacher, x, ts, tt, 2, V)
    assert seen == [("teacher", False, False), ("student", True, True), ("student", True, True)]
    seen.clear()
    psd_target(student, teacher, x, ts, tt, 2, V, target_dropout=False)
    assert seen == [("teacher", False, False), ("student", False, False), ("student", False, False)]
    assert not student.training and not any(m.training for m in student.modules())  # modes restored
    assert teacher.training and all(m.training for m in teacher.modules())


def test_dropout_targets_are_random_and_eval_targets_are_not():
    student, teacher = nets()
    x, ts, tt = inputs()
    torch.manual_seed(5)
    a = psd_target(student, teacher, x, ts, tt, 2, V)
    b = psd_target(student, teacher, x, ts, tt, 2, V)
    torch.manual_seed(5)
    again = psd_target(student, teacher, x, ts, tt, 2, V)
    assert torch.equal(a, again)  # dropout draws from the global generator: reproducible under a seed
    assert torch.equal(a[:2], b[:2])  # diagonal rows: the teacher, always in eval mode
    assert (a[2:] - b[2:]).abs().max() > 1e-3  # off-diagonal rows: dropout masks differ between calls
    c = psd_target(student, teacher, x, ts, tt, 2, V, target_dropout=False)
    d = psd_target(student, teacher, x, ts, tt, 2, V, target_dropout=False)
    assert torch.equal(c, d)
    student.eval()
    e = psd_target(student, teacher, x, ts, tt, 2, V, target_dropout=False)
    assert torch.equal(c, e)  # eval targets do not depend on the mode the caller left the student in
    # Without dropout in the network both settings give the same targets.
    student0, teacher0 = nets(dropout=0.0)
    t0 = psd_target(student0, teacher0, x, ts, tt, 2, V)
    t1 = psd_target(student0, teacher0, x, ts, tt, 2, V, target_dropout=False)
    torch.testing.assert_close(t0, t1, rtol=0, atol=0)


def test_psd_loss_passes_the_setting_on_and_the_config_field_exists():
    student, teacher = nets()
    student.train()
    modes = []
    student.register_forward_hook(lambda m, i, o: modes.append(m.training))
    tokens = torch.randint(0, V, (8, L), generator=torch.Generator().manual_seed(2))
    psd_loss(student, teacher, tokens, V, generator=torch.Generator().manual_seed(3), target_dropout=False)
    assert modes == [True, False, False]  # the graded pass in the caller's mode, the target passes in eval mode
    cfg = RunConfig.from_dict({"distill": {"target_dropout": False}})
    assert cfg.distill.target_dropout is False and RunConfig().distill.target_dropout is True


def test_v1_stage1_target_g_calls_follow_the_setting():
    """The v1 stage-1 target's two g calls (the half-steps through τ_u) run in train mode by default, as the
    reference's, and in eval mode with target_dropout=False; the graded call stays in the caller's mode."""
    from flowlm.methods.fmlm import init_stage1, v1_stage1_loss

    _, teacher = nets()
    g_net = init_stage1(teacher).eval()
    modes = []
    g_net.register_forward_hook(lambda m, i, o: modes.append(m.training))
    tokens = torch.randint(0, V, (8, L), generator=torch.Generator().manual_seed(2))
    v1_stage1_loss(g_net, teacher, tokens, V, generator=torch.Generator().manual_seed(3))
    assert modes == [True, True, False]
    modes.clear()
    v1_stage1_loss(g_net, teacher, tokens, V, generator=torch.Generator().manual_seed(3), target_dropout=False)
    assert modes == [False, False, False] and not g_net.training
