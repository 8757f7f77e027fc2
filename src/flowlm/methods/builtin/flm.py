"""FLM (SPEC §2): denoising cross-entropy, Euler sampler with the last-step jump, optional autoguidance."""

from __future__ import annotations

from flowlm.errors import ConfigError
from flowlm.methods.base import Method, clean_positions
from flowlm.methods.flm import flm_loss, flm_sample, self_conditioned
from flowlm.methods.likelihood import flow_bound_draws, validation_elbo
from flowlm.methods.options import GUIDANCE, SC_GUIDANCE, TEMPERING, tempering
from flowlm.nn.dit import guidance_bound, reads_guidance


class FlowLanguageModel(Method):
    name = "flm"
    title = "FLM"
    card_text = "a flow language model (FLM): continuous denoising of one-hot tokens, sampled with the Euler sampler"
    records = "flm"
    train_method = "flm"
    metric_key, metric_name = "ce", "denoising_ce"  # not a likelihood: never turned into a perplexity
    conditional_training = True
    conditioning = "any"
    sampler_name = "euler"
    options = (GUIDANCE, SC_GUIDANCE, *TEMPERING)
    suggested_steps = 1024
    likelihoods = {
        "elbo": "diffusion ELBO of its stochastic sampler, in the network's input space (docs/likelihood.md)",
        "ode": "variational bound through the probability-flow ODE (docs/likelihood.md)",
    }
    likelihood_draws = 2

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        return flm_loss(
            net,
            tokens,
            ctx.vocab_size,
            generator=generator,
            weighting=ctx.weighting,
            input_noise=ctx.cfg.train.input_noise,
            rows=rows,
            clean=clean_positions(ctx.cfg, tokens, generator, rows),
        )

    def sample(self, request):
        options = {"guidance": request.options["guidance"], "input_noise": request.input_noise,
                   "tempering": tempering(request.options)}  # fmt: skip
        w = request.options["sc_guidance"]
        if reads_guidance(request.net):  # a fixed-point denoiser: w is an input of every call (1: none)
            with guidance_bound([request.net], 1.0 if w is None else w):
                return flm_sample(request.net, *request.sizes, **request.draws, **options)
        return flm_sample(request.net, *request.sizes, **request.draws, **options, sc_guidance=w)

    def nll_bound(self, net, tokens, vocab_size, *, draws, options, generator=None):
        return flow_bound_draws(net, tokens, vocab_size, draws, options, generator)

    def validation_metrics(self, net, tokens, ctx, generator=None, rows=None):
        return validation_elbo(net, tokens, ctx, generator, rows)

    def check_request(self, model, options):
        if options["sc_guidance"] is not None and not (self_conditioned(model.net) or reads_guidance(model.net)):
            raise ConfigError(
                f"sc_guidance={options['sc_guidance']}: {model.path} was trained without self-conditioning, so it has "
                "no estimate to guide with; leave sc_guidance unset, or train with model.self_condition=true"
            )
        if options["guidance"] is not None and not getattr(model.net.config, "dropout", 0.0):
            raise ConfigError(
                f"guidance={options['guidance']}: autoguidance contrasts the model with itself under dropout, and "
                f"{model.path} was trained without dropout (model.dropout=0), so the guided output would equal the "
                "unguided one; leave guidance unset, or train with model.dropout > 0"
            )


FLM = FlowLanguageModel()
