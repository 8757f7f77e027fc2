"""PSD's boundary pairs (0, 1) anchored to the teacher's own sampler (distill.boundary_teacher_steps, issue 24)."""

import pytest
import torch

from flowlm.config import RunConfig, validate
from flowlm.errors import ConfigError
from flowlm.methods.flm import flm_endpoint
from flowlm.methods.fmlm import _boundary_slice, anchor_boundary, init_student, pair_times, psd_loss
from flowlm.methods.lowrank import NaiveInputs
from flowlm.nn.dit import DiT, DiTConfig

V, L = 7, 6


def trained_looking(seed: int) -> DiT:
    """A DiT whose output depends on its state and time (a new DiT's output layer is zero)."""
    torch.manual_seed(seed)
    net = DiT(DiTConfig(vocab_size=V, seq_len=L, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0))
    for weight in net.parameters():
        weight.data.normal_(0, 0.3)
    return net.eval()


@pytest.mark.parametrize("offset", [0, 5, 77])
@pytest.mark.parametrize("boundary_frac", [1 / 64, 0.125, 0.25])
def test_the_boundary_slice_is_where_pair_times_puts_the_boundary_pairs(offset, boundary_frac):
    """For a whole micro-batch and for every part of one cut into calls (rows = (first, total))."""
    total = 48
    tau_s, tau_t, _ = pair_times(total, offset, 0.5, boundary_frac, torch.Generator().manual_seed(3))
    is_edge = (tau_s == 0) & (tau_t == 1)
    for first, size in ((0, total), (0, 16), (16, 16), (32, 16), (10, 7)):
        edge = _boundary_slice(size, (first, total), offset, 0.5, boundary_frac)
        local = torch.zeros(size, dtype=torch.bool)
        local[edge] = True
        assert torch.equal(local, is_edge[first : first + size]), (first, size)
    assert int(is_edge.sum()) > 0 or boundary_frac * total < 2  # the check is not vacuous at these shares


def test_anchored_rows_are_the_teachers_sampler_output_and_only_they_change():
    teacher = trained_looking(0)
    x = torch.randn(8, L, V, generator=torch.Generator().manual_seed(1))
    target = torch.full((8, L, V), 1.0 / V)
    anchored = anchor_boundary(target.clone(), teacher, x, slice(2, 5), V, 4)
    torch.testing.assert_close(anchored[2:5], flm_endpoint(teacher, x[2:5], 0.0, V, 4, NaiveInputs()), rtol=0, atol=0)
    assert torch.equal(anchored[:2], target[:2]) and torch.equal(anchored[5:], target[5:])
    assert not torch.allclose(anchored[2:5], target[2:5])
    clean = torch.zeros(8, L, dtype=torch.bool)
    clean[:, :2] = True  # conditional training: the first two positions are given clean
    x[:, :2] = torch.nn.functional.one_hot(torch.tensor([1, 4]), V).float()
    held = anchor_boundary(target.clone(), teacher, x, slice(2, 5), V, 4, clean=clean)
    free = anchor_boundary(target.clone(), teacher, x, slice(2, 5), V, 4)
    assert not torch.allclose(held[2:5, 2:], free[2:5, 2:])  # the held context changes what the teacher writes


def test_psd_loss_changes_only_through_the_boundary_rows():
    """Without boundary pairs the option changes nothing (bit for bit); with them it changes the loss of the boundary
    rows, which are part of ce_off, and never the diagonal rows'."""
    teacher = trained_looking(2)
    student = init_student(teacher)
    for weight in student.parameters():
        weight.data.add_(0.05 * torch.randn_like(weight))
    tokens = torch.randint(0, V, (32, L), generator=torch.Generator().manual_seed(4))

    def loss(frac, steps):
        return psd_loss(student, teacher, tokens, V, torch.Generator().manual_seed(5), boundary_frac=frac,
                        target_dropout=False, boundary_teacher_steps=steps)  # fmt: skip

    plain, anchored = loss(0.0, 0), loss(0.0, 8)
    assert torch.equal(plain["loss"], anchored["loss"])
    plain, anchored = loss(0.25, 0), loss(0.25, 8)
    assert torch.equal(plain["ce_diag"], anchored["ce_diag"])
    assert not torch.allclose(plain["ce_off"], anchored["ce_off"])


def test_the_option_is_checked():
    def config(**distill):
        cfg = RunConfig()
        cfg.train.method, cfg.distill.teacher = "fmlm", "somewhere"
        for key, value in distill.items():
            setattr(cfg.distill, key, value)
        return cfg

    validate(config(boundary_teacher_steps=16))
    for bad in (-1, 2.5, 5000, True):
        with pytest.raises(ConfigError, match="distill.boundary_teacher_steps"):
            validate(config(boundary_teacher_steps=bad))
    with pytest.raises(ConfigError, match="only the psd recipe"):
        validate(config(boundary_teacher_steps=16, recipe="lsd-teacher"))
