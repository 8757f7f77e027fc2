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

CONDITIONS = ("prefix", "spans")  # train.condition: what conditional training gives clean


@dataclass
class Condition:
    """ids [n, L] (int64) and mask [n, L] (bool): position ``(i, ℓ)`` is held to ``ids[i, ℓ]`` where ``mask``.

    ``clean``: continuous samplers give known positions as clean one-hot rows (t = 1) at every step, as a model
    trained with conditioning (``train.condition_frac``) saw them, instead of on their noisy path."""

    ids: torch.Tensor
    mask: torch.Tensor
    clean: bool = False

    def to(self, device) -> Condition:
        return Condition(self.ids.to(device), self.mask.to(device), self.clean)

    def rows(self, index: slice) -> Condition:
        return Condition(self.ids[index], self.mask[index], self.clean)

    def fill(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` [n, L] with the known positions set to their ids."""
        return torch.where(self.mask.to(tokens.device), self.ids.to(tokens.device), tokens)

    def hold(self, x: torch.Tensor, start: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
        """State ``x`` [n, L, k] with every known position on its exact path at clock time ``t``:
        ``(1 − t)·start + t·target``, where ``start`` is the position's starting noise and ``target`` its
        one-hot row (both [n, L, k], in the state's space); with :attr:`clean`, the one-hot row itself."""
        on_path = target if self.clean else (1.0 - t) * start + t * target
        return torch.where(self.mask[..., None].to(x.device), on_path.to(x.dtype), x)

    def is_prefix(self) -> bool:
        """Whether every row's known positions are a (possibly empty) prefix."""
        mask = self.mask.long()
        return bool((mask[:, 1:] <= mask[:, :-1]).all())


def training_condition(
    total: int, seq_len: int, frac: float, kind: str, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Clean positions [total, L] (bool) of a global micro-batch for conditional training.

    Each row is conditioned with probability ``frac``. ``prefix``: a prefix of uniform length in [1, L − 1]
    is clean. ``spans``: two cut points 0 < a < b < L split the row; with probability ½ the outer spans
    [0, a) and [b, L) are clean (infilling the middle), else the middle [a, b) (writing around it).
    Every row keeps at least one position to generate. All draws come from ``generator``.
    """
    if kind not in CONDITIONS:
        raise ConfigError(f"train.condition={kind!r}: use one of {', '.join(CONDITIONS)}")
    chosen = torch.rand(total, generator=generator, device=device) < frac
    positions = torch.arange(seq_len, device=device)
    if kind == "prefix":
        length = torch.randint(1, seq_len, (total,), generator=generator, device=device)
        clean = positions < length[:, None]
    else:
        cuts = torch.rand(total, 2, generator=generator, device=device) * (seq_len - 1) + 1  # in [1, L)
        a, b = cuts.min(-1).values.long(), cuts.max(-1).values.long()
        b = torch.maximum(b, a + 1).clamp(max=seq_len - 1)
        middle = (positions >= a[:, None]) & (positions < b[:, None])
        outer = torch.rand(total, generator=generator, device=device) < 0.5
        clean = torch.where(outer[:, None], ~middle, middle)
    return clean & chosen[:, None]


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
