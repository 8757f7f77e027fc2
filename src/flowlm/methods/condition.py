"""Known positions of a sampling request (prompts, suffixes, infilling): how each sampler holds them.

A :class:`Condition` holds ids [n, L] and a mask [n, L] (True = the position is given). Samplers honour it
each in their own correct way:

- continuous samplers (FLM Euler, the flow-map γ-sampler, the v1 stage-1 map): a known position follows its
  exact path ``x_t = (1 − t)·x₀ + t·onehot(id)`` with its own starting noise ``x₀`` at every time the network
  sees the state (:meth:`Condition.hold`), and the output keeps the id (:meth:`Condition.fill`); in the
  low-rank space the same holds for the projections ``x @ W`` (one-hot rows become ``W[id]``);
- MDLM: known positions start unmasked and are never masked;
- AR: a known prefix is fed through the KV cache instead of drawn (an AR model cannot infill).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowlm.errors import ConfigError


@dataclass
class Condition:
    """ids [n, L] (int64) and mask [n, L] (bool): position ``(i, ℓ)`` is held to ``ids[i, ℓ]`` where ``mask``."""

    ids: torch.Tensor
    mask: torch.Tensor

    def to(self, device) -> Condition:
        return Condition(self.ids.to(device), self.mask.to(device))

    def fill(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` [n, L] with the known positions set to their ids."""
        return torch.where(self.mask.to(tokens.device), self.ids.to(tokens.device), tokens)

    def hold(self, x: torch.Tensor, start: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
        """State ``x`` [n, L, k] with every known position on its exact path at clock time ``t``:
        ``(1 − t)·start + t·target``, where ``start`` is the position's starting noise and ``target`` its
        one-hot row (both [n, L, k], in the state's space)."""
        on_path = (1.0 - t) * start + t * target
        return torch.where(self.mask[..., None].to(x.device), on_path.to(x.dtype), x)

    def is_prefix(self) -> bool:
        """Whether every row's known positions are a (possibly empty) prefix."""
        mask = self.mask.long()
        return bool((mask[:, 1:] <= mask[:, :-1]).all())


def make_condition(known, known_mask, num_samples: int, seq_len: int, vocab_size: int, device=None):
    """Check ``known`` / ``known_mask`` ([num_samples, seq_len] or one row [seq_len] for every sample) and
    return a :class:`Condition` on ``device``, or None when neither is given."""
    if known is None and known_mask is None:
        return None
    if known is None or known_mask is None:
        raise ConfigError("known and known_mask go together: give the ids and the mask of the positions they fix")
    ids = torch.as_tensor(known)
    mask = torch.as_tensor(known_mask)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise ConfigError(f"known must hold token ids (integers), got dtype {ids.dtype}")
    if mask.dtype != torch.bool:
        raise ConfigError(f"known_mask must be a bool tensor (True = the position is given), got dtype {mask.dtype}")
    if ids.shape != mask.shape:
        raise ConfigError(f"known has shape {tuple(ids.shape)} but known_mask {tuple(mask.shape)}: give equal shapes")
    if ids.dim() == 1:
        ids, mask = ids.expand(num_samples, -1), mask.expand(num_samples, -1)
    if ids.dim() != 2 or ids.shape != (num_samples, seq_len):
        raise ConfigError(
            f"known has shape {tuple(ids.shape)}: use [num_samples, seq_len] = [{num_samples}, {seq_len}] "
            f"or one row [{seq_len}] for every sample"
        )
    given = ids[mask]
    if given.numel() and (int(given.min()) < 0 or int(given.max()) >= vocab_size):
        raise ConfigError(
            f"known holds ids outside the vocabulary [0, {vocab_size}): encode text with the model's tokenizer"
        )
    return Condition(ids.long().clone(), mask.clone()).to(device)
