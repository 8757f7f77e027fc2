"""FMLM by PSD distillation (SPEC §3): a two-time flow map learned from a frozen FLM teacher, sampled in
one or a few steps by the flow-map (γ) sampler."""

from __future__ import annotations

from flowlm.methods.base import Method, clean_positions
from flowlm.methods.fmlm import curriculum_jump, fmlm_sample, init_student, psd_loss
from flowlm.methods.likelihood import flow_bound_draws, validation_elbo
from flowlm.methods.options import GAMMA, GAMMA_MODE, TEMPERING, tempering


def distill_arguments(ctx, generator, sample_offset, rows, tokens) -> dict:
    """The keyword arguments every flow-map loss (PSD, v1 stages 1 and 2) takes, with the clean positions of
    conditional training (``train.condition_frac``, kept from the teacher by ``flowlm distill``) drawn first."""
    return dict(
        clean=clean_positions(ctx.cfg, tokens, generator, rows),
        generator=generator,
        sample_offset=sample_offset,
        rows=rows,
        boundary_frac=ctx.cfg.distill.resolved_boundary_frac(),
        weighting=ctx.weighting,
        input_noise=ctx.cfg.train.input_noise,
    )


class FlowMap(Method):
    """The flow-map models written by ``flowlm distill`` (PSD; v1 stage 2 subclasses it): they sample alike."""

    title = "FMLM"
    card_text = "a flow-map language model (FMLM): a distilled flow map that samples in one or a few steps"
    records = "fmlm"
    train_method = "fmlm"
    time_inputs = 2
    weighting_times = 2
    needs = ("teacher",)
    conditional_training = True  # clean context in the loss, the teacher's train.condition_frac by default
    conditioning = "any"
    sampler_name = "flow-map"
    options = (GAMMA, GAMMA_MODE, *TEMPERING)
    suggested_steps = 1
    card_options = ", gamma=0.8"  # the paper's LM1B churn; gamma=0 is deterministic
    # The flow map's own tangent field: d/dt X_{s,t}(x) at t = s is (δ_{s,s}(x) − x)/(1 − s), the velocity its
    # many-step sampler follows. Its ODE bound is a bound for that field; the one-step sampler's distribution
    # has no tractable density.
    likelihoods = {
        "elbo": "diffusion ELBO of its diagonal δ_{t,t} as a denoiser, not of its one-step sampler",
        "ode": "ODE bound of its diagonal velocity (δ_{t,t}(x) − x)/(1 − t), not of its one-step sampler",
    }
    likelihood_draws = 2

    def build_network(self, cfg, vocab_size, frozen=()):
        # A copy of the (eval-mode) teacher in train mode, so the student uses its dropout like the teacher did.
        return init_student(frozen[0], end_stretch=cfg.distill.end_stretch).train()

    def sample(self, request):
        churn = {"gamma": request.options["gamma"], "gamma_mode": request.options["gamma_mode"]}
        return fmlm_sample(request.net, *request.sizes, **churn, **request.draws, input_noise=request.input_noise,
                           tempering=tempering(request.options))  # fmt: skip

    def nll_bound(self, net, tokens, vocab_size, *, draws, options, generator=None):
        return flow_bound_draws(net, tokens, vocab_size, draws, options, generator, two_times=True)

    def validation_metrics(self, net, tokens, ctx, generator=None, rows=None):
        return validation_elbo(net, tokens, ctx, generator, rows, two_times=True)


class ProgressiveSelfDistillation(FlowMap):
    name = "fmlm"
    recipe = "psd"
    default_boundary_frac = 1 / 64  # SPEC §3: 0.5 / 32
    metric_key, metric_name = "ce", "denoising_ce"

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        arguments = distill_arguments(ctx, generator, sample_offset, rows, tokens)
        d, t = ctx.cfg.distill, ctx.cfg.train
        jump = curriculum_jump(sample_offset, t.max_steps * t.batch_size, d.curriculum_frac)
        return psd_loss(net, ctx.frozen[0], tokens, ctx.vocab_size, diag_frac=d.resolved_diag_frac(),
                        target_dropout=d.target_dropout, draw=d.pairs, max_jump=jump,
                        boundary_teacher_steps=d.boundary_teacher_steps, **arguments)  # fmt: skip


PSD = ProgressiveSelfDistillation()
