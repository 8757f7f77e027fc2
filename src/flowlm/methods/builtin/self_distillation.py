"""Distilled discrete-diffusion baselines: SDTT (an MDLM student of an MDLM teacher) and DCD (a DUO student of a DUO
teacher). Each student is a copy of its teacher, keeps its teacher's sampler, and halves the steps it needs per
round (``flowlm distill --rounds``)."""

from __future__ import annotations

import copy

from flowlm.methods.builtin.duo import UniformDiffusion
from flowlm.methods.builtin.mdlm import MaskedDiffusion
from flowlm.methods.dcd import dcd_loss
from flowlm.methods.sdtt import sdtt_loss


def copy_of_teacher(frozen):
    """A trainable copy (train mode, gradients on) of the frozen teacher."""
    net = copy.deepcopy(frozen[0])
    return net.train().requires_grad_(True)


class SelfDistillationThroughTime(MaskedDiffusion):
    name = "mdlm-sdtt"
    title = "MDLM (SDTT)"
    card_text = "a masked diffusion model distilled through time (SDTT) from an MDLM teacher, ancestral sampler"
    train_method = "sdtt"
    recipe = "sdtt"
    needs = ("teacher",)
    teachers = ("mdlm",)
    halves_steps = True
    default_boundary_frac = 0.0  # no pairs of times: the flow-map split options do not apply
    metric_key, metric_name = "kl", "sdtt_kl"
    perplexity_name = None
    conditional_training = False

    def build_network(self, cfg, vocab_size, frozen=()):
        return copy_of_teacher(frozen)

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        d = ctx.cfg.distill
        return sdtt_loss(net, ctx.frozen[0], tokens, ctx.vocab_size, d.teacher_steps, generator=generator, rows=rows,
                         divergence=d.divergence)  # fmt: skip


class DiscreteConsistencyDistillation(UniformDiffusion):
    name = "duo-dcd"
    title = "DUO (DCD)"
    card_text = "a uniform-state diffusion model distilled by discrete consistency distillation (DCD) from DUO"
    train_method = "dcd"
    recipe = "dcd"
    needs = ("teacher",)
    teachers = ("duo",)
    halves_steps = True
    default_boundary_frac = 0.0  # no pairs of times: the flow-map split options do not apply
    metric_key, metric_name = "kl", "dcd_kl"
    perplexity_name = None
    conditional_training = False

    def build_network(self, cfg, vocab_size, frozen=()):
        return copy_of_teacher(frozen)

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        d = ctx.cfg.distill
        return dcd_loss(net, ctx.frozen[0], tokens, ctx.vocab_size, d.teacher_steps, generator=generator, rows=rows,
                        divergence=d.divergence)  # fmt: skip


SDTT = SelfDistillationThroughTime()
DCD = DiscreteConsistencyDistillation()
