"""FMLM by PSD distillation (SPEC §3): a two-time flow map learned from a frozen FLM teacher, sampled in
one or a few steps by the flow-map (γ) sampler."""

from __future__ import annotations

from flowlm.errors import ConfigError
from flowlm.methods.base import Method, clean_positions
from flowlm.methods.fixed_point import guidance_draws
from flowlm.methods.fmlm import curriculum_jump, fmlm_sample, init_student, psd_loss
from flowlm.methods.likelihood import flow_bound_draws, validation_elbo
from flowlm.methods.options import GAMMA, GAMMA_MODE, SC_GUIDANCE, TEMPERING, tempering
from flowlm.nn.dit import guidance_bound, reads_guidance


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
    options = (GAMMA, GAMMA_MODE, SC_GUIDANCE, *TEMPERING)
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
        w = request.options["sc_guidance"]
        with guidance_bound([request.net], 1.0 if w is None else w):  # a map from a fixed-point denoiser reads w
            return fmlm_sample(request.net, *request.sizes, **churn, **request.draws, input_noise=request.input_noise,
                               tempering=tempering(request.options))  # fmt: skip

    def check_request(self, model, options):
        if options["sc_guidance"] is not None and not reads_guidance(model.net):
            raise ConfigError(
                f"sc_guidance={options['sc_guidance']}: {model.path} takes no guidance scale; only a flow map "
                "distilled from a fixed-point denoiser (flowlm distill --recipe fixed-point, then --recipe psd) reads w"
            )

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
        teacher, d, t = ctx.frozen[0], ctx.cfg.distill, ctx.cfg.train
        # A fixed-point denoiser teacher: one w per global micro-batch, drawn first and bound to teacher and student
        # alike (the calls sit deep in the PSD target and sampler code, on row slices).
        w = guidance_draws(1, d.sc_guidance_min, d.sc_guidance_max, generator, tokens.device)[0] if reads_guidance(
            teacher) else 1.0  # fmt: skip
        arguments = distill_arguments(ctx, generator, sample_offset, rows, tokens)
        jump = curriculum_jump(sample_offset, t.max_steps * t.batch_size, d.curriculum_frac)
        with guidance_bound([net, teacher], w):
            return psd_loss(net, teacher, tokens, ctx.vocab_size, diag_frac=d.resolved_diag_frac(),
                            target_dropout=d.target_dropout, draw=d.pairs, max_jump=jump,
                            boundary_teacher_steps=d.boundary_teacher_steps, **arguments)  # fmt: skip

    def check_teacher(self, model_config, path):
        """Any FLM, fixed-point denoisers included: their w is drawn per micro-batch and passed to both networks."""


PSD = ProgressiveSelfDistillation()
