"""Conditional distillation (issue 14): a flow map distilled from a teacher trained with clean context
(``train.condition_frac``) is trained with the same share of clean context.

- PSD and the v1 losses give the clean positions as their one-hot rows (t = 1, no noise) to every network call:
  the student's graded pass, the teacher's diagonal targets and the student's two passes of the off-diagonal
  targets (the intermediate state ``X_{s,u}`` keeps them clean, the others take the flow-map step), the v1
  teacher and g calls;
- the clean positions are left out of the loss, and a ``clean`` mask with nothing set changes nothing;
- the methods draw the clean positions from ``train.condition_frac`` / ``train.condition`` before anything else
  (nothing when it is 0), and ``flowlm distill`` keeps the teacher's setting.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_fmlm import Constant
from tolerances import rounding_atol

from flowlm.cli import main
from flowlm.config import RunConfig
from flowlm.methods import registry
from flowlm.methods.base import LossContext
from flowlm.methods.common import one_hot
from flowlm.methods.condition import training_condition
from flowlm.methods.fmlm import (
    PSD_BOUNDARY_FRAC,
    PSD_DIAG_FRAC,
    flow_map_step,
    pair_counts,
    psd_loss,
    v1_stage1_loss,
    v1_stage2_loss,
)
from flowlm.schedule import t_from_tau

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, SEQ, BATCH = 9, 7, 16


class Spy(torch.nn.Module):
    """Logits = fixed tables (per position, scaled by the times) + a gain times the state; records every state."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(SEQ, VOCAB, generator=g)
        self.b = torch.randn(SEQ, VOCAB, generator=g)
        self.seen: list[torch.Tensor] = []

    def logits(self, x, tau, tau_end=None):
        end = 0.0 if tau_end is None else tau_end.view(-1, 1, 1)
        return self.a + (tau.view(-1, 1, 1) + end) * self.b + 0.5 * x

    def forward(self, x, tau, tau_end=None):
        self.seen.append(x.detach().clone())
        return self.logits(x, tau, tau_end)


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B, L] and a clean mask [B, L] with rows of every kind (outer spans, middle spans, none)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    clean = training_condition(BATCH, SEQ, 0.75, "spans", g)
    assert clean.any() and (~clean).any(1).all() and (~clean.any(1)).any()
    return tokens, clean


def assert_clean_rows(x: torch.Tensor, tokens: torch.Tensor, clean: torch.Tensor) -> None:
    """``x`` [b, L, V] holds the one-hot rows exactly at the clean positions and something else elsewhere."""
    off = (x - one_hot(tokens, VOCAB)).abs().sum(-1)
    assert torch.equal(off[clean], torch.zeros_like(off[clean]))
    assert (off[~clean] > 0).all()


def test_psd_gives_every_network_the_clean_context():
    tokens, clean = data()
    student, teacher = Spy(1), Spy(2)
    out = psd_loss(student, teacher, tokens, VOCAB, generator=torch.Generator().manual_seed(3), clean=clean)
    n_diag = pair_counts(BATCH, 0, PSD_DIAG_FRAC, PSD_BOUNDARY_FRAC)[0]
    assert 0 < n_diag < BATCH and len(student.seen) == 3 and len(teacher.seen) == 1
    graded, first, second = student.seen
    assert_clean_rows(graded, tokens, clean)
    assert_clean_rows(teacher.seen[0], tokens[:n_diag], clean[:n_diag])
    rest = slice(n_diag, None)
    assert_clean_rows(first, tokens[rest], clean[rest])
    assert_clean_rows(second, tokens[rest], clean[rest])
    # The other positions of the second pass took the flow-map step X_{s,u} from the first pass's state.
    tau_s, tau_t = out["tau_s"][rest], out["tau_t"][rest]
    tau_u = (tau_s + tau_t) / 2
    s, u = (t_from_tau(v.double(), VOCAB).float() for v in (tau_s, tau_u))
    stepped = flow_map_step(first, torch.softmax(student.logits(first, tau_s, tau_u), -1), s, u)
    # float32 step of O(1) terms with a 1/(1 − s) factor (s < 1 - 1e-3 here): a few ulps of 1 each
    assert (1 - s).min() > 1e-3
    torch.testing.assert_close(second[~clean[rest]], stepped[~clean[rest]], atol=1e-5, rtol=1e-5)


def test_v1_losses_give_every_network_the_clean_context():
    tokens, clean = data(1)
    g_net, teacher = Spy(1), Spy(2)
    v1_stage1_loss(g_net, teacher, tokens, VOCAB, generator=torch.Generator().manual_seed(3), clean=clean)
    assert len(teacher.seen) == 2 and len(g_net.seen) == 3  # teacher on x_s and y; g on x_s (twice) and y
    for x in teacher.seen + g_net.seen:
        assert_clean_rows(x, tokens, clean)
    student, teacher, g_net = Spy(3), Spy(4), Spy(5)
    v1_stage2_loss(student, teacher, g_net, tokens, VOCAB, generator=torch.Generator().manual_seed(3), clean=clean)
    for x in student.seen + teacher.seen + g_net.seen:
        assert_clean_rows(x, tokens, clean)


@pytest.mark.float_sensitive
def test_clean_positions_are_left_out_of_the_loss():
    # δ̂ ≡ D ≡ p (a different distribution per position): every target is p, position ℓ costs H(p_ℓ).
    tokens, clean = data(2)
    logits = 3 * torch.randn(SEQ, VOCAB, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits, -1)
    per_position = -(p * p.log()).sum(-1).expand(BATCH, -1)
    assert per_position.max() - per_position.min() > 0.5  # leaving positions out changes the mean visibly
    mask = torch.rand(BATCH, SEQ, generator=torch.Generator().manual_seed(4)) < 0.8
    kw = dict(generator=torch.Generator().manual_seed(0), clean=clean, mask=mask)
    out = psd_loss(Constant(logits), Constant(logits), tokens, VOCAB, **kw)
    keep = mask & ~clean
    # float32 means over B·L positions of V-term sums of positive terms: rounding_atol(float32, B·L·V, max H)
    tol = rounding_atol(torch.float32, BATCH * SEQ * VOCAB, per_position.max().item())
    assert abs(out["ce"].item() - per_position[keep].mean().item()) <= tol
    assert abs(out["loss"].item() - per_position[keep].mean().item()) <= tol


def test_an_empty_clean_mask_changes_nothing():
    tokens, _ = data(3)
    nothing = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    for loss in (
        lambda clean: psd_loss(Spy(1), Spy(2), tokens, VOCAB, generator=torch.Generator().manual_seed(5), clean=clean),
        lambda clean: v1_stage1_loss(Spy(1), Spy(2), tokens, VOCAB, generator=torch.Generator().manual_seed(5),
                                     clean=clean),  # fmt: skip
    ):
        assert torch.equal(loss(None)["loss"], loss(nothing)["loss"])


def config(frac: float, kind: str = "spans") -> RunConfig:
    cfg = RunConfig()
    cfg.train.method, cfg.distill.recipe = "fmlm", "psd"
    cfg.train.condition_frac, cfg.train.condition = frac, kind
    return cfg


@pytest.mark.parametrize("frac", [0.0, 0.5])
def test_the_psd_method_draws_the_clean_positions_of_its_config(frac):
    tokens, _ = data(4)
    cfg = config(frac)
    method = registry.for_config(cfg)
    teacher = Spy(2)
    ctx = LossContext(vocab_size=VOCAB, cfg=cfg, frozen=(teacher,))
    got = method.loss(Spy(1), tokens, ctx, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    clean = training_condition(BATCH, SEQ, frac, "spans", g) if frac else None
    d = cfg.distill
    want = psd_loss(Spy(1), Spy(2), tokens, VOCAB, generator=g, clean=clean, diag_frac=d.resolved_diag_frac(),
                    boundary_frac=d.resolved_boundary_frac(), target_dropout=d.target_dropout)  # fmt: skip
    assert torch.equal(got["loss"], want["loss"])
    if frac:
        assert clean.any()
        assert_clean_rows(teacher.seen[0], tokens[: teacher.seen[0].shape[0]], clean[: teacher.seen[0].shape[0]])


def test_distill_keeps_the_teachers_conditional_training(tmp_path):
    from flowlm.training.run import distill_config

    args = ["--preset", "tiny", "--tokenizer", "char", "--quiet", "data.seq_len=16", "model.hidden_size=16",
            "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=8", "train.batch_size=4", "train.warmup_steps=1",
            "train.ckpt_every=2", "train.val_every=2", "train.val_batches=1", "train.log_every=1",
            f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    teacher = tmp_path / "flm"
    assert main(["train", "--steps", "2", "--out", str(teacher), *args, "train.condition_frac=0.5",
                 "train.condition=spans"]) == 0  # fmt: skip
    cfg = distill_config(str(teacher / "model"))
    assert (cfg.train.condition_frac, cfg.train.condition) == (0.5, "spans")
    assert main(["distill", "--teacher", str(teacher), "--steps", "2", "--out", str(tmp_path / "fmlm"), "--quiet",
                 "train.ckpt_every=2", "train.val_every=2", "train.log_every=1"]) == 0  # fmt: skip
    run = json.loads((tmp_path / "fmlm" / "model" / "flowlm.json").read_text())["run"]["train"]
    assert (run["condition_frac"], run["condition"]) == (0.5, "spans")


def test_the_lsd_recipe_keeps_the_context_clean_and_out_of_its_loss():
    """The ``lsd`` target (teacher calls on the student's landing point) gets the same clean context as PSD's:
    every state the teacher sees holds the clean positions at their one-hot rows, and a loss that only the clean
    positions could change does not move when their logits do."""
    from flowlm.methods.lsd import lsd_loss

    tokens, clean = data(5)
    cfg = config(0.0)
    cfg.distill.recipe = "lsd"
    teacher = Spy(2)
    split = {"diag_frac": cfg.distill.resolved_diag_frac(), "boundary_frac": cfg.distill.resolved_boundary_frac()}
    got = lsd_loss(Spy(1), teacher, tokens, VOCAB, generator=torch.Generator().manual_seed(7), clean=clean, **split)
    assert torch.isfinite(got["loss"])
    n_diag = pair_counts(BATCH, 0, split["diag_frac"], split["boundary_frac"])[0]
    assert len(teacher.seen) == 2  # the diagonal rows, then the landing points of the others
    assert_clean_rows(teacher.seen[0], tokens[:n_diag], clean[:n_diag])
    assert_clean_rows(teacher.seen[1], tokens[n_diag:], clean[n_diag:])

    class LoudAtClean(Spy):
        """Spy(1) with huge logits at the clean positions (rows matched by the batch size of each call)."""

        def forward(self, x, tau, tau_end=None):
            rows = clean if x.shape[0] == BATCH else clean[n_diag:]
            return super().forward(x, tau, tau_end) + 50.0 * rows[..., None] * torch.arange(VOCAB)

    loud = lsd_loss(LoudAtClean(1), Spy(2), tokens, VOCAB, generator=torch.Generator().manual_seed(7), clean=clean,
                    **split)  # fmt: skip
    # the clean positions neither enter the loss (their terms are multiplied by 0) nor, held at their one-hot rows,
    # any other position's target: the same numbers are summed in the same order
    assert torch.equal(loud["loss"], got["loss"])
