"""DUO baseline: uniform-state discrete diffusion with its Gaussian-relaxation curriculum, NELBO, ancestral sampler."""

from __future__ import annotations

from flowlm.methods.base import Method, Option, clean_positions
from flowlm.methods.duo import Curriculum, check_tail, duo_loss, duo_nelbo, duo_sample
from flowlm.methods.options import TEMPERING, tempering

TAIL = Option(
    name="tail",
    default="greedy",
    check=check_tail,
    help="last step of the DUO sampler: greedy (arg-max of the last prediction, the paper's Greedy-Tail) or "
    "ancestral (one more posterior draw)",
    off="greedy",
    refusal="tail is the last step of the DUO sampler: it needs a DUO model (flowlm train --method duo)",
)


class UniformDiffusion(Method):
    name = "duo"
    title = "DUO"
    card_text = "a uniform-state discrete diffusion model (the DUO baseline), sampled with the ancestral sampler"
    records = "duo"
    train_method = "duo"
    dit_options = {"logit_cap": None}  # raw logits, as the reference
    learnable_weighting = False  # its NELBO fixes the time weighting
    conditional_training = True
    metric_key, metric_name = "nll_bound", "nll_bound"
    perplexity_name = "ppl_bound"
    conditioning = "any"
    sampler_name = "ancestral-uniform"
    options = (TAIL, *TEMPERING)
    likelihoods = {"nelbo": "NELBO of the uniform-state process, times stratified on [1e-3, 1) per block"}
    likelihood_draws = 16

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        clean = clean_positions(ctx.cfg, tokens, generator, rows)
        return duo_loss(net, tokens, ctx.vocab_size, generator=generator, rows=rows, clean=clean,
                        curriculum=curriculum_of(ctx))  # fmt: skip

    def nll_bound(self, net, tokens, vocab_size, *, draws, options, generator=None):
        return duo_nelbo(net, tokens, vocab_size, draws, generator)

    def sample(self, request):
        return duo_sample(request.net, *request.sizes, **request.draws, tempering=tempering(request.options),
                          tail=request.options["tail"])  # fmt: skip


def curriculum_of(ctx) -> Curriculum | None:
    """The Gaussian relaxation while training is in its first ``duo.curriculum_frac`` of ``train.max_steps``;
    None after it and at validation (the NELBO with discrete inputs)."""
    d = ctx.cfg.duo
    if not ctx.training or ctx.step >= d.curriculum_frac * ctx.cfg.train.max_steps:
        return None
    return Curriculum(d.curriculum_temperature)


DUO = UniformDiffusion()
