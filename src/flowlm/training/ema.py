"""Exponential moving average of parameters (sampling and evaluation use these weights)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def warmup_decay(decay: float, n: int | None) -> float:
    """The decay used at update ``n`` (1 for the first update): ``min(decay, (1 + n)/(10 + n))``, the reference's
    warm-up (its ``ExponentialMovingAverage`` counts updates from 1). ``n=None``: no warm-up, ``decay`` itself.

    The weight the shadow keeps on the initial values after N updates is ``Π_{n=1..N} d_n``: while the warm-up
    term is the smaller one (n < 89,991 at decay 0.9999) that is ``10!·(N+1)!/(N+10)! ≈ 10!/N⁹`` (7e-33 at
    N = 20,000), instead of ``decay^N`` (0.9999^20000 ≈ 13.5%) without the warm-up.
    """
    return decay if n is None else min(decay, (1 + n) / (10 + n))


class EMA:
    """Float32 shadow copies of a module's trainable parameters, keyed by name.

    ``update()`` after each optimizer step: ``n ← n + 1``, ``shadow ← d·shadow + (1 − d)·param`` with
    ``d = min(decay, (1 + n)/(10 + n))`` (:func:`warmup_decay`). The count ``n`` is part of the state, so a resumed
    run continues the same sequence of decays. ``warmup=False``: the constant decay from the first update
    (``n`` is not counted).
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        self.module = module
        self.decay = decay
        self.num_updates: int | None = 0 if warmup else None
        self.shadow = {n: p.detach().float().clone() for n, p in self.named_params()}

    def named_params(self):
        return ((n, p) for n, p in self.module.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def update(self) -> None:
        if self.num_updates is not None:
            self.num_updates += 1
        decay = warmup_decay(self.decay, self.num_updates)
        for name, param in self.named_params():
            shadow = self.shadow[name]
            if shadow.device != param.device:
                shadow = self.shadow[name] = shadow.to(param.device)
            shadow.lerp_(param.detach().float(), 1.0 - decay)

    def state_dict(self) -> dict:
        """``{"shadow": {name: tensor}, "num_updates": n}``, copies (a CPU shadow is not aliased)."""
        shadow = {n: t.detach().cpu().clone() for n, t in self.shadow.items()}
        return {"shadow": shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`. A flat ``{name: tensor}`` (written before the warm-up existed, by runs with a
        constant decay) continues with the constant decay it was trained with (``num_updates = None``)."""
        if isinstance(state.get("shadow"), dict):
            self.num_updates = state.get("num_updates")
            state = state["shadow"]
        else:
            self.num_updates = None
        if set(state) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(state)), sorted(set(state) - set(self.shadow))
            raise KeyError(f"EMA state does not match the model (missing {missing}, unexpected {extra})")
        for name, value in state.items():
            self.shadow[name] = value.float().to(self.shadow[name].device).clone()

    def weights(self) -> dict[str, torch.Tensor]:
        """The full state dict of the module with EMA values in place of trainable parameters."""
        state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        for name, value in self.shadow.items():
            state[name] = value.to(state[name].dtype).to(state[name].device)
        return state

    @contextmanager
    def applied(self):
        """Temporarily load the EMA weights into the module (restored on exit)."""
        backup = {n: p.detach().clone() for n, p in self.named_params()}
        with torch.no_grad():
            for name, param in self.named_params():
                param.copy_(self.shadow[name].to(param.dtype))
        try:
            yield self.module
        finally:
            with torch.no_grad():
                for name, param in self.named_params():
                    param.copy_(backup[name])
