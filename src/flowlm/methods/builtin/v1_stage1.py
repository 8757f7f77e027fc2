"""Stage 1 of the paper's v1 recipe (SPEC §4): a raw second-order network g on top of the teacher's
velocity, with learnable loss weighting; it samples with its teacher."""

from __future__ import annotations

from flowlm.methods.base import Method
from flowlm.methods.builtin.psd import distill_arguments
from flowlm.methods.fmlm import init_stage1, v1_stage1_loss, v1_stage1_sample


class V1Stage1(Method):
    name = "fmlm-v1-stage1"
    title = "v1 stage-1"
    card_text = "a stage-1 flow map of the v1 recipe (it samples with its teacher)"
    records = "fmlm-v1-stage1"
    train_method = "fmlm"
    recipe = "v1-stage1"
    time_inputs = 2
    needs = ("teacher",)
    always_weighted = True  # SPEC §4: stage 1 always learns its loss weighting, of τ_s only (SPEC §7)
    default_boundary_frac = 1 / 64
    stage1_provider = True
    metric_key, metric_name = "mse", "map_mse"
    conditional_training = True
    conditioning = "any"
    sampler_name = "v1-stage1-map"
    suggested_steps = 4
    samples_with_teacher = True
    unpublishable = (
        "a v1 stage-1 model samples with its teacher, which is referenced by a local path: "
        "publish the stage-2 model (flowlm distill --recipe v1-stage2) instead"
    )

    def build_network(self, cfg, vocab_size, frozen=()):
        return init_stage1(frozen[0], end_stretch=cfg.distill.end_stretch).train()

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        arguments = distill_arguments(ctx, generator, sample_offset, rows, tokens)
        return v1_stage1_loss(net, ctx.frozen[0], tokens, ctx.vocab_size, target_dropout=ctx.cfg.distill.target_dropout,
                              **arguments)  # fmt: skip

    def sample(self, request):
        return v1_stage1_sample(request.net, request.teacher, *request.sizes, **request.draws,
                                input_noise=request.input_noise)  # fmt: skip

V1_STAGE1 = V1Stage1()
