"""flowlm: flow language models (FLM) and one-step flow-map language models (FMLM).

Top-level names are imported lazily so that ``import flowlm.schedule`` (the math layer) does not
pull in Lightning, transformers or the data stack.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "FlowLM": "flowlm.api",
    "load": "flowlm.api",
    "from_pretrained": "flowlm.api",
    "tau_from_t": "flowlm.schedule",
    "t_from_tau": "flowlm.schedule",
    "train": "flowlm.training.run",
    "nll": "flowlm.eval.likelihood",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flowlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
