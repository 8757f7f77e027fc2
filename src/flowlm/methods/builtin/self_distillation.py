"""Distilled discrete-diffusion baselines: SDTT (an MDLM student of an MDLM teacher) and DCD (a DUO student of a DUO
teacher). Each student is a copy of its teacher, keeps its teacher's sampler, and halves the steps it needs per
round (``flowlm distill --rounds``)."""

from __future__ import annotations

import copy

from flowlm.methods.builtin.duo import UniformDiffusion
from flowlm.methods.builtin.mdlm import MaskedDiffusion
from flowlm.methods.dcd import dcd_loss
from flowlm.methods.sdtt import sdtt_loss


class FewStepDistillation:
    """What SDTT and DCD share, mixed in before their teacher's method: a copy of the teacher as the student, one
    teacher per run, half the teacher's ``distill.teacher_steps`` per round, and ``distill_loss`` as the loss."""

    needs = ("teacher",)
    halves_steps = True
    default_boundary_frac = 0.0  # no pairs of times: the flow-map split options do not apply
    perplexity_name = None
    conditional_training = False
    metric_key = "kl"
    distill_loss = None  # (student, teacher, tokens, V, teacher_steps, generator=, rows=, divergence=) -> loss dict

    def build_network(self, cfg, vocab_size, frozen=()):
        """A trainable copy (train mode, gradients on) of the frozen teacher."""
        return copy.deepcopy(frozen[0]).train().requires_grad_(True)

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        d = ctx.cfg.distill
        return type(self).distill_loss(net, ctx.frozen[0], tokens, ctx.vocab_size, d.teacher_steps,
                                       generator=generator, rows=rows, divergence=d.divergence)  # fmt: skip


class SelfDistillationThroughTime(FewStepDistillation, MaskedDiffusion):
    name = "mdlm-sdtt"
    title = "MDLM (SDTT)"
    card_text = "a masked diffusion model distilled through time (SDTT) from an MDLM teacher, ancestral sampler"
    train_method = recipe = "sdtt"
    teachers = ("mdlm",)
    metric_name = "sdtt_kl"
    distill_loss = staticmethod(sdtt_loss)


class DiscreteConsistencyDistillation(FewStepDistillation, UniformDiffusion):
    name = "duo-dcd"
    title = "DUO (DCD)"
    card_text = "a uniform-state diffusion model distilled by discrete consistency distillation (DCD) from DUO"
    train_method = recipe = "dcd"
    teachers = ("duo",)
    metric_name = "dcd_kl"
    distill_loss = staticmethod(dcd_loss)


SDTT = SelfDistillationThroughTime()
DCD = DiscreteConsistencyDistillation()
