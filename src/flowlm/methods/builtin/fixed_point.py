"""The fixed-point denoiser (issue 26): a self-conditioning-free FLM that takes the self-conditioning guidance scale w
as an input, distilled from a self-conditioned FLM (:mod:`flowlm.methods.fixed_point`). It is written as an ``flm``
model and samples with the FLM sampler at the requested w; ``flowlm distill --recipe psd`` turns it into a flow map
that takes w too."""

from __future__ import annotations

from flowlm.errors import ConfigError
from flowlm.methods.base import clean_positions
from flowlm.methods.builtin.flm import FlowLanguageModel
from flowlm.methods.fixed_point import fixed_point_loss, init_fixed_point_student


class FixedPointDenoiser(FlowLanguageModel):
    name = "flm-fixed-point"
    title = "FLM (fixed point)"
    card_text = (
        "a fixed-point denoiser: an FLM distilled from a self-conditioned FLM onto the fixed point of its guided "
        "self-conditioning, which takes the guidance scale w as an input (sc_guidance)"
    )
    train_method = recipe = "fixed-point"
    needs = ("teacher",)
    default_boundary_frac = 0.0  # no pairs of times: the flow-map split options do not apply
    metric_key, metric_name = "kl", "fixed_point_kl"
    logged = ("fixed_point_residual",)

    def build_network(self, cfg, vocab_size, frozen=()):
        return init_fixed_point_student(frozen[0]).train()

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        d = ctx.cfg.distill
        return fixed_point_loss(
            net, ctx.frozen[0], tokens, ctx.vocab_size, generator=generator, iterations=d.fp_iterations,
            damping=d.fp_damping, guidance_range=(d.sc_guidance_min, d.sc_guidance_max), weighting=ctx.weighting,
            input_noise=ctx.cfg.train.input_noise, rows=rows, clean=clean_positions(ctx.cfg, tokens, generator, rows),
        )  # fmt: skip

    def check_teacher(self, model_config, path):
        if not model_config.get("self_condition", False):
            raise ConfigError(
                f"the teacher {path} is an FLM trained without self-conditioning, which has no fixed point to "
                "distill: train one with model.self_condition=true, or distill this one with --recipe psd"
            )


FIXED_POINT = FixedPointDenoiser()
