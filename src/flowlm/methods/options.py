"""Sampler options shared by the built-in methods: autoguidance ``guidance`` and self-conditioning guidance
``sc_guidance`` (FLM), churn ``gamma`` (flow maps), and ``temperature`` / ``top_p`` (every sampler that predicts a
distribution: :mod:`flowlm.methods.tempering`)."""

from __future__ import annotations

import math
from typing import Any

from flowlm.errors import ConfigError
from flowlm.methods.base import Option
from flowlm.methods.fmlm import check_gamma, check_gamma_mode
from flowlm.methods.tempering import Tempering, check_temperature, check_top_p


def check_guidance(value: Any) -> float:
    """Autoguidance strength η: a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"guidance={value!r}: the autoguidance strength η must be a finite number (e.g. 1.5)")
    return float(value)


GUIDANCE = Option(
    name="guidance",
    default=None,
    check=check_guidance,
    help="autoguidance strength η: D_weak + η·(D − D_weak), the weak model being the network with dropout active",
    refusal="autoguidance applies to FLM models; for an FMLM model use gamma",
)
def check_sc_guidance(value: Any) -> float:
    """Self-conditioning guidance scale w: a finite real number (1: no guidance)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"sc_guidance={value!r}: the self-conditioning guidance scale must be a finite number")
    return float(value)


SC_GUIDANCE = Option(
    name="sc_guidance",
    default=None,
    check=check_sc_guidance,
    help="self-conditioning guidance w: for a self-conditioned FLM the logits l0 + w·(lp − l0), lp with the previous "
    "estimate and l0 without (two network calls a step); for a fixed-point denoiser and its flow map the w it was "
    "trained to take (one call a step). 1: none; unset: off (1 for the latter)",
    refusal="sc_guidance applies to self-conditioned FLM models (model.self_condition=true), fixed-point denoisers "
    "and their flow maps",
)
GAMMA = Option(
    name="gamma",
    default=0.0,
    check=check_gamma,
    help="churn γ in [0, 1] of the flow-map sampler (0: deterministic)",
    off=0.0,
    refusal="gamma is the churn of the flow-map sampler: it needs an FMLM model (flowlm distill)",
)
GAMMA_MODE = Option(
    name="gamma_mode",
    default="paper",
    check=check_gamma_mode,
    help="γ-step of the flow-map sampler: paper (the paper's renoising, its numbers) or exact (keeps the marginal "
    "law for every γ)",
    off="paper",
    refusal="gamma_mode picks the flow-map sampler's churn step: it needs an FMLM model (flowlm distill)",
)
TEMPERATURE = Option(
    name="temperature",
    default=None,
    check=check_temperature,
    help="sampling temperature T of the predicted distribution, softmax(logits / T); FLM and flow maps then draw "
    "their last step from it instead of the arg-max (unset: the untempered sampler)",
    refusal="temperature is not an option of the {method} sampler",
)
TOP_P = Option(
    name="top_p",
    default=None,
    check=check_top_p,
    help="nucleus mass p: keep the most probable tokens up to mass p of the (tempered) predicted distribution; FLM "
    "and flow maps then draw their last step from it (unset: every token)",
    refusal="top_p is not an option of the {method} sampler",
)
TEMPERING = (TEMPERATURE, TOP_P)


def tempering(options) -> Tempering:
    """The :class:`~flowlm.methods.tempering.Tempering` of a request's resolved options."""
    return Tempering(options.get("temperature"), options.get("top_p"))
