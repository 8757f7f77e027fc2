"""Exponential moving average of parameters (sampling and evaluation use these weights)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """Float32 shadow copies of a module's trainable parameters, keyed by name.

    ``update()`` after each optimizer step: ``shadow ← decay·shadow + (1 − decay)·param``.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.module = module
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in self.named_params()}

    def named_params(self):
        return ((n, p) for n, p in self.module.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.named_params():
            shadow = self.shadow[name]
            if shadow.device != param.device:
                shadow = self.shadow[name] = shadow.to(param.device)
            shadow.lerp_(param.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
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
