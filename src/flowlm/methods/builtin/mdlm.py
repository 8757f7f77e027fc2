"""MDLM baseline: masked diffusion (SUBS, log-linear schedule), NELBO loss, ancestral sampler."""

from __future__ import annotations

from flowlm.methods.base import Method, clean_positions
from flowlm.methods.likelihood import mdlm_nelbo
from flowlm.methods.mdlm import mdlm_loss, mdlm_sample
from flowlm.methods.options import TEMPERING, tempering


class MaskedDiffusion(Method):
    name = "mdlm"
    title = "MDLM"
    card_text = "a masked diffusion language model (the MDLM baseline), sampled with the ancestral sampler"
    records = "mdlm"
    train_method = "mdlm"
    # Input matrix (V+1) x d: the mask is id V, never predicted. Raw logits, as the reference (model.logit_cap is
    # for FLM/FMLM); a model saved with a cap keeps it (flowlm.json records it).
    dit_options = {"mask_input": True, "logit_cap": None}
    learnable_weighting = False  # its NELBO fixes the time weighting
    conditional_training = True
    metric_key, metric_name = "nll_bound", "nll_bound"
    perplexity_name = "ppl_bound"
    conditioning = "any"
    sampler_name = "ancestral"
    options = TEMPERING
    likelihoods = {"nelbo": "NELBO, times stratified on [1e-3, 1) per block"}
    likelihood_draws = 16

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        clean = clean_positions(ctx.cfg, tokens, generator, rows)
        return mdlm_loss(net, tokens, ctx.vocab_size, generator=generator, rows=rows, clean=clean)

    def nll_bound(self, net, tokens, vocab_size, *, draws, options, generator=None):
        return mdlm_nelbo(net, tokens, vocab_size, draws, generator)

    def sample(self, request):
        return mdlm_sample(request.net, *request.sizes, **request.draws, tempering=tempering(request.options))

MDLM = MaskedDiffusion()
