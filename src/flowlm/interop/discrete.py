"""Import the released discrete-diffusion baselines: MDLM (kuleshov-group/mdlm, its SDTT students, jdeschena/sdtt)
and DUO (s-sahoo/duo, with its DCD-distilled model) as flowlm ``mdlm`` / ``duo`` model folders.

Their network is the DiT of the FLM reference (same parameter names, see :mod:`flowlm.interop.reference`) with three
differences, read from ``models/dit.py`` of both repositories: no soft cap on the attention logits (flash-attention /
SDPA, where FLM's block caps them at 50), raw logits (no cap on the head), and integer token ids as input (an
embedding lookup, which is our ``x @ W`` of a one-hot ``x``). The methods differ in how they use it:

* **MDLM** (SUBS): the mask is an input id of the reference's vocabulary, ``m``: ``[MASK]`` where the tokenizer has
  one (BERT: 103), else the id after the tokenizer's base vocabulary (GPT-2: 50257, which flowlm's ``gpt2``
  tokenizer gives to its added ``[PAD]``, as the reference tokenizer does; :func:`mask_index`). The reference sets
  the mask's logit to −∞ and is called with σ = 0 (``time_conditioning: false``). flowlm's MDLM has its mask at the
  extra input id ``V`` and V logits, so the import copies the embedding rows, writes row ``m`` again as the mask row
  ``V``, and gives output ``m`` zero weights and the bias :data:`SUPPRESSED_LOGIT`, whose probability underflows to
  exactly 0 in float32 and float64, as −∞ does. A time-conditioned MDLM is refused: flowlm's MDLM calls its network
  without a time.
* **DUO** (uniform state over all ``V`` ids, its ``[PAD]`` included): the network is fed ``σ = −log α_t``, flowlm's
  DUO feeds ``α_t``, so the model records ``time_transform='neg_log'``. Its schedule, ``α_t = 1 − (1 − 10⁻³)·t``, is
  flowlm's DUO schedule. The DCD-distilled model is a DUO network and imports the same way.

Config layouts read (after :func:`flowlm.interop.released.run_config` puts them in one shape): the Hydra config of a
Lightning ``.ckpt`` or of a ``PyTorchModelHubMixin`` folder (MDLM and SDTT: ``parameterization: subs`` at the top;
DUO: ``algo.name`` ``duo`` / ``duo_base`` / ``distillation``), and the ``transformers`` config of the MDLM Hub model
(``hidden_dim``, ``n_blocks``, ``n_heads``, ``cond_dim``, ``model_length``, ``vocab_size``, ``time_conditioning``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from flowlm.errors import CheckpointError
from flowlm.interop.reference import (
    ReferenceCheckpoint,
    dit_config,
    save_imported,
    select_weights,
    to_flowlm_state,
)
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.checkpoint import load_state_strict

FAMILIES = ("mdlm", "duo")
DUO_ALGOS = ("duo", "duo_base", "distillation")
SUPPRESSED_LOGIT = -1.0e4  # exp(−1e4 − logZ) is 0 in float32 and float64: the reference's −∞ logit of the mask id
HF_SCHEMA_KEY = "transformers_config"  # where run_config keeps a transformers-style config.json


def family_of(config: dict, method: str | None = None) -> str | None:
    """``"mdlm"`` / ``"duo"`` for a discrete-diffusion config, None for a flow model's; ``method`` overrides."""
    if method is not None:
        if method not in FAMILIES:
            raise CheckpointError(f"--method {method!r}: the discrete baselines that import are {FAMILIES}")
        return method
    algo = config.get("algo") if isinstance(config.get("algo"), dict) else {}
    name = str(algo.get("name", ""))
    if name in DUO_ALGOS:
        return "duo"
    if name == "mdlm" or config.get("parameterization") == "subs" or algo.get("parameterization") == "subs":
        return "mdlm"
    hf = config.get(HF_SCHEMA_KEY)
    if isinstance(hf, dict):
        kind = " ".join([str(hf.get("model_type", ""))] + [str(a) for a in hf.get("architectures") or []]).lower()
        if "duo" in kind:
            return "duo"
        if "mdlm" in kind:
            return "mdlm"
        raise CheckpointError(
            f"the config (model_type {hf.get('model_type')!r}) does not say whether this is an MDLM or a DUO model: "
            "pass --method mdlm or --method duo"
        )
    return None


def time_conditioned(config: dict) -> bool | None:
    for where in (config, config.get("algo"), config.get(HF_SCHEMA_KEY)):
        if isinstance(where, dict) and isinstance(where.get("time_conditioning"), bool):
            return where["time_conditioning"]
    return None


def mask_index(tokenizer, vocab: int) -> int:
    """The reference MDLM's mask id: the tokenizer's ``[MASK]`` (BERT), else its padding id where that is the
    vocabulary's last id (GPT-2: the reference masks with the id after the 50,257 base tokens, where flowlm's ``gpt2``
    tokenizer, like the reference's, has its added ``[PAD]``)."""
    found = tokenizer.token_to_id("[MASK]")
    if found is not None and 0 <= found < vocab:
        return int(found)
    if tokenizer.pad_id == vocab - 1:
        return vocab - 1
    raise CheckpointError(
        f"tokenizer {tokenizer.spec!r} has no [MASK] token and no padding id at its last id, so the MDLM's mask id is "
        "unknown: pass the tokenizer the model was trained with (--tokenizer)"
    )


def mdlm_state(state: dict[str, torch.Tensor], mask: int) -> dict[str, torch.Tensor]:
    """The reference MDLM tensors (``V`` rows in and out) as flowlm MDLM tensors (``V + 1`` input rows, the mask last;
    output ``mask`` suppressed)."""
    embed = state["vocab_embed.embedding"]
    out = dict(state)
    out["vocab_embed.embedding"] = torch.cat([embed, embed[mask : mask + 1]])
    weight, bias = state["output_layer.linear.weight"].clone(), state["output_layer.linear.bias"].clone()
    weight[mask], bias[mask] = 0.0, SUPPRESSED_LOGIT
    out["output_layer.linear.weight"], out["output_layer.linear.bias"] = weight, bias
    return out


def tokenizer_name(config: dict) -> str | None:
    """``data.tokenizer_name_or_path`` (MDLM, DUO), else ``tokenizer.name`` (SDTT's configs)."""
    for section, key in (("data", "tokenizer_name_or_path"), ("tokenizer", "name")):
        where = config.get(section)
        if isinstance(where, dict) and where.get(key):
            return str(where[key])
    return None


def discrete_dit_config(base: DiTConfig, family: str) -> DiTConfig:
    return replace(base, attn_softcap=None, logit_cap=None, time_inputs=1, end_stretch=False,
                   mask_input=family == "mdlm", time_transform="neg_log" if family == "duo" else None)  # fmt: skip


def build_discrete(
    ckpt: ReferenceCheckpoint, family: str, tokenizer, which: str = "ema", seq_len: int | None = None
) -> DiT:
    """Our DiT computing the reference network of ``family`` (strict: names and shapes must match)."""
    if family == "mdlm" and time_conditioned(ckpt.config):
        raise CheckpointError(
            f"{ckpt.path}: this MDLM was trained with time conditioning; flowlm's MDLM calls its network without a "
            "time (as the released MDLM, time_conditioning: false), so it cannot be imported faithfully"
        )
    weights = select_weights(ckpt, which)
    cfg = discrete_dit_config(dit_config(ckpt, weights, None, seq_len), family)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"tokenizer {tokenizer.spec!r} has {tokenizer.vocab_size} ids but the network has {cfg.vocab_size}: pass "
            "the tokenizer it was trained with (--tokenizer; the OpenWebText models use gpt2, whose [PAD] makes 50,258)"
        )
    state = to_flowlm_state(weights, cfg, ckpt.path)
    if family == "mdlm":
        state = mdlm_state(state, mask_index(tokenizer, cfg.vocab_size))
    net = DiT(cfg)
    load_state_strict(net, state, str(ckpt.path))
    return net.eval()


def convert_discrete(
    ckpt: ReferenceCheckpoint,
    out: str | Path,
    family: str,
    tokenizer: str | None = None,
    weights: str = "ema",
    seq_len: int | None = None,
) -> Path:
    """Write the MDLM / DUO checkpoint ``ckpt`` as a flowlm model folder at ``out``."""
    from flowlm.data import load_tokenizer
    from flowlm.interop.reference import TOKENIZERS

    spec = tokenizer or tokenizer_name(ckpt.config)
    if not spec:
        raise CheckpointError(f"{ckpt.path} does not name its tokenizer: pass --tokenizer")
    tok = load_tokenizer(TOKENIZERS.get(str(spec), str(spec)))
    net = build_discrete(ckpt, family, tok, weights, seq_len)
    return save_imported(ckpt, net, tok, out, family, family, weights, family)
