"""MDLM baseline: masked diffusion (SUBS, log-linear schedule), NELBO loss, ancestral sampler."""

from __future__ import annotations

from flowlm.methods.base import Method
from flowlm.methods.likelihood import mdlm_nelbo
from flowlm.methods.mdlm import mdlm_loss, mdlm_sample


class MaskedDiffusion(Method):
    name = "mdlm"
    title = "MDLM"
    card_text = "a masked diffusion language model (the MDLM baseline), sampled with the ancestral sampler"
    records = "mdlm"
    train_method = "mdlm"
    dit_options = {"mask_input": True}  # input matrix (V+1) x d: the mask is id V, never predicted
    learnable_weighting = False  # its NELBO fixes the time weighting
    metric_key, metric_name = "nll_bound", "nll_bound"
    perplexity_name = "ppl_bound"
    sampler_name = "ancestral"
    likelihood = "NELBO, times stratified on [1e-3, 1) per block"
    likelihood_draws = 16

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        return mdlm_loss(net, tokens, ctx.vocab_size, generator=generator, rows=rows)

    def nll_bound(self, net, tokens, vocab_size, *, draws, options, generator=None):
        return mdlm_nelbo(net, tokens, vocab_size, draws, generator)

    def sample(self, request):
        return mdlm_sample(
            request.net,
            request.num_samples,
            request.seq_len,
            request.vocab_size,
            request.steps,
            generator=request.generator,
            device=request.device,
        )


MDLM = MaskedDiffusion()
