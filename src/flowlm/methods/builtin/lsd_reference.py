"""FMLM by the reference's Lagrangian self-distillation (``distill.recipe=lsd-ref``,
:mod:`flowlm.methods.lsd_reference`): the PSD student, pairs and cross-entropy with the reference code's LSD target
(the student's own diagonal at the landing point, a JVP in the end time, sparsemax). It writes ``fmlm`` models that
sample like PSD's."""

from __future__ import annotations

from flowlm.methods.builtin.psd import FlowMap, distill_arguments
from flowlm.methods.fmlm import curriculum_jump
from flowlm.methods.lsd_reference import REFERENCE_BOUNDARY_FRAC, REFERENCE_DIAG_FRAC, lsd_reference_loss


class ReferenceLagrangianDistillation(FlowMap):
    name = "fmlm-lsd-ref"
    recipe = "lsd-ref"
    # the reference's configs/algo/fmlm.yaml: diagonal_fraction 0.5, boundary (1 − 0.5)/boundary_prob = 1/64
    default_diag_frac = REFERENCE_DIAG_FRAC
    default_boundary_frac = REFERENCE_BOUNDARY_FRAC
    metric_key, metric_name = "ce", "denoising_ce"

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        arguments = distill_arguments(ctx, generator, sample_offset, rows, tokens)
        d, t = ctx.cfg.distill, ctx.cfg.train
        jump = curriculum_jump(sample_offset, t.max_steps * t.batch_size, d.curriculum_frac)
        return lsd_reference_loss(net, ctx.frozen[0], tokens, ctx.vocab_size, diag_frac=d.resolved_diag_frac(),
                                  target_dropout=d.target_dropout, draw=d.pairs, max_jump=jump,
                                  **arguments)  # fmt: skip


LSD_REFERENCE = ReferenceLagrangianDistillation()
