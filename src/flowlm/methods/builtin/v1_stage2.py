"""Stage 2 of the paper's v1 recipe (SPEC §4): one softmax flow map regressed onto the stage-1 map. It is
written as an ``fmlm`` model and samples like a PSD flow map."""

from __future__ import annotations

from flowlm.methods.builtin.psd import FlowMap, distill_arguments
from flowlm.methods.fmlm import v1_stage2_loss


class V1Stage2(FlowMap):
    name = "fmlm-v1-stage2"
    recipe = "v1-stage2"
    needs = ("teacher", "stage1")
    default_boundary_frac = 1 / 128
    metric_key, metric_name = "mse", "map_mse"

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        teacher, stage1 = ctx.frozen
        arguments = distill_arguments(ctx, generator, sample_offset, rows, tokens)
        return v1_stage2_loss(net, teacher, stage1, tokens, ctx.vocab_size, **arguments)


V1_STAGE2 = V1Stage2()
