"""AR baseline: a causal DiT of the same size, exact next-token NLL, KV-cached ancestral decoding from BOS."""

from __future__ import annotations

from flowlm.methods.ar import ar_loss, ar_sample
from flowlm.methods.base import Method
from flowlm.methods.likelihood import ar_nll
from flowlm.methods.options import TEMPERING, tempering


class Autoregressive(Method):
    name = "ar"
    title = "AR"
    card_text = "an autoregressive language model (the AR baseline: a causal DiT), decoded token by token"
    records = "ar"
    train_method = "ar"
    dit_options = {"causal": True, "logit_cap": None}  # raw logits, as the reference
    learnable_weighting = False  # no time, nothing to weight
    options = TEMPERING
    draws_noise = False
    metric_key, metric_name = "nll", "nll"
    perplexity_name = "ppl"
    conditioning = "prefix"
    sampler_name = "ancestral-kv-cache"
    takes_steps = False
    no_steps_reason = (
        "an autoregressive model decodes one token per network call (seq_len - 1 calls, KV-cached) and takes "
        "no number of steps"
    )
    suggested_steps = None
    next_token_model = True
    likelihoods = {"exact": "exact, given the first token (BOS)"}
    likelihood_exact = True

    def nll_bound(self, net, tokens, vocab_size, *, draws, options, generator=None):
        return ar_nll(net, tokens)

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        return ar_loss(net, tokens)

    def sample(self, request):
        return ar_sample(request.net, request.num_samples, request.seq_len, request.bos_id, **request.draws,
                         tempering=tempering(request.options))  # fmt: skip

AR = Autoregressive()
