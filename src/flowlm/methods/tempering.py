"""Temperature and nucleus (top-p) sampling on a sampler's predicted distribution. No I/O.

Every sampler predicts a distribution over the vocabulary per position: FLM's denoiser ``D``, a flow map's ``δ``,
MDLM's ``p_θ(x_ℓ | z_t)``, AR's next-token law. Tempering reshapes it before use:

    p_T(v) ∝ exp(logit_v / T),   then (top-p) keep the smallest set of tokens, most probable first, whose
    probability reaches p, and renormalize (ties at the edge broken by token order, as the sort leaves them).

Where it enters:

- **MDLM and AR** draw their tokens from ``p_T``: ``T = 1`` without top-p is the untempered sampler, bit for bit.
- **FLM and flow maps** use ``p_T`` as the denoiser at every step (the velocity sees the tempered estimate), and
  their last step *draws* each token from ``p_T`` instead of taking the arg-max. So with tempering on, ``T → 0`` is
  the arg-max sampler and ``T = 1`` draws from the model's own per-position distribution; without it (the
  default) nothing changes. For a one-step flow map the draw is the only place tempering can act: the arg-max of a
  tempered distribution is the arg-max of the untempered one.

Off (``temperature=None, top_p=None``, the default) every sampler is the old one, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from flowlm.errors import ConfigError
from flowlm.methods.common import sample_categorical


def check_temperature(value: Any) -> float:
    """A sampling temperature: a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"temperature={value!r}: use a finite number > 0 (1 = the model's own distribution)")
    return float(value)


def check_top_p(value: Any) -> float:
    """A nucleus mass: a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"top_p={value!r}: use the probability mass to keep, in (0, 1] (1 keeps every token)")
    return float(value)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` [..., V] restricted to the smallest most-probable set whose mass reaches ``top_p``, renormalized.

    A token is kept when the mass of the tokens sorted before it is below ``top_p``, so the most probable token is
    always kept and the kept mass is at least ``top_p``.
    """
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(-1) - ordered
    kept = torch.zeros_like(probs).scatter(-1, order, (before < top_p).to(probs.dtype))
    out = probs * kept
    return out / out.sum(-1, keepdim=True)


@dataclass(frozen=True)
class Tempering:
    """``temperature`` and ``top_p`` of one sampling run (None: not applied)."""

    temperature: float | None = None
    top_p: float | None = None

    @property
    def active(self) -> bool:
        return self.temperature is not None or self.top_p is not None

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """``p_T`` [..., V] from logits, in the logits' dtype (plain softmax when off)."""
        if self.temperature is not None:
            logits = logits / self.temperature
        probs = torch.softmax(logits, dim=-1)
        return probs if self.top_p is None else nucleus(probs, self.top_p)

    def reshape(self, probs: torch.Tensor) -> torch.Tensor:
        """The same for a distribution given as probabilities (e.g. a guided mixture), clamped at 0 first."""
        if not self.active:
            return probs
        return self.probs(probs.clamp(min=0).log())

    def tokens(self, probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A flow sampler's output ids [...] from its last distribution [..., V] (already tempered): the arg-max
        when off, else one draw per position (:func:`~flowlm.methods.common.sample_categorical`)."""
        if not self.active:
            return probs.argmax(dim=-1)
        return sample_categorical(probs.clamp(min=0), generator)


OFF = Tempering()
