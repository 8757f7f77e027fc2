"""FMLM by Lagrangian distillation on the simplex with the teacher at the landing point (``distill.recipe=lsd-teacher``,
:mod:`flowlm.methods.lsd`; called ``lsd`` before the reference's LSD became ``lsd-ref``, and that name still selects
it): the PSD student, pairs and cross-entropy with a teacher-anchored target. It writes ``fmlm`` models that sample
like PSD's."""

from __future__ import annotations

from flowlm.methods.builtin.psd import FlowMap, distill_arguments
from flowlm.methods.fmlm import curriculum_jump
from flowlm.methods.lsd import lsd_loss


class LagrangianDistillation(FlowMap):
    name = "fmlm-lsd-teacher"
    recipe = "lsd-teacher"
    # the distillation study (docs/results.md): more off-diagonal and boundary pairs, whose targets now come from
    # the teacher, win at one step on both languages
    default_diag_frac = 0.25
    default_boundary_frac = 1 / 8
    metric_key, metric_name = "ce", "denoising_ce"

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        arguments = distill_arguments(ctx, generator, sample_offset, rows, tokens)
        d, t = ctx.cfg.distill, ctx.cfg.train
        jump = curriculum_jump(sample_offset, t.max_steps * t.batch_size, d.curriculum_frac)
        return lsd_loss(net, ctx.frozen[0], tokens, ctx.vocab_size, diag_frac=d.resolved_diag_frac(), draw=d.pairs,
                        max_jump=jump, **arguments)  # fmt: skip


LSD = LagrangianDistillation()
