"""``train.init_from``: start a new run from the weights of a model folder (a warm start).

Unlike resuming (``checkpoints/last.ckpt``: weights, EMA, optimizer, loop position and RNG, exact), a warm
start takes only the exported (EMA) weights: the network and its EMA both start from them, while the
optimizer, the learning-rate warm-up and the step counter start afresh. It lets a long training continue
from a small file (weights only, e.g. stored in half precision) when the full training state is not kept.
Resuming wins: a run folder that holds a checkpoint ignores ``init_from``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowlm.errors import ConfigError
from flowlm.nn.dit import DiTConfig
from flowlm.training.checkpoint import load_state_strict, read_consistent, read_weights

# DiT options a warm start may change: they alter no weight's meaning.
FREE_OPTIONS = ("dropout", "attn_backend")


def warm_start(net: torch.nn.Module, ema, path: str) -> dict:
    """Load the weights of the model folder ``path`` into ``net`` (cast to its dtype) and restart ``ema``
    from them; return the provenance of the source (path, step, weights hash) for the new run's metadata.

    The source's DiT config must equal ``net.config`` except for :data:`FREE_OPTIONS`, so a model of another
    kind (causal AR, masked MDLM, two-time flow map) or size is refused with a ConfigError.
    """
    directory, meta, weights = read_consistent(path, read_weights)  # weights and provenance of one export
    source = DiTConfig(**meta["model"]).to_dict()
    target = net.config.to_dict()
    diffs = sorted(k for k in target if k not in FREE_OPTIONS and source.get(k) != target[k])
    if diffs:
        detail = ", ".join(f"{k}: {source.get(k)!r} vs {target[k]!r}" for k in diffs)
        raise ConfigError(
            f"train.init_from={path}: its network differs from this run's ({detail}): warm-start from a model "
            "of the same kind and size, or drop train.init_from"
        )
    own = net.state_dict()
    load_state_strict(net, {k: v.to(own[k].dtype) if k in own else v for k, v in weights.items()}, str(directory))
    ema.load_state_dict({name: p.detach() for name, p in ema.named_params()})
    return provenance_of(directory, meta)


def source_provenance(path: str) -> dict:
    """Path, training step and weights hash of the model folder a run was warm-started from."""
    return provenance_of(*read_consistent(path)[:2])


def provenance_of(directory: Path, meta: dict) -> dict:
    """Path, training step and weights hash of the model folder ``directory`` whose ``flowlm.json`` is ``meta``."""
    return {"path": str(directory), "step": meta.get("step"), "weights_sha256": meta.get("weights_sha256")}
