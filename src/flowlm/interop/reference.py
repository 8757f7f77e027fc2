"""Import a Lightning checkpoint of the reference implementation (github.com/david3684/flm) as a
flowlm model folder (``flowlm import-reference REF.ckpt --out DIR``).

Reference layout (its ``models/dit.py``): ``state_dict`` keys ``backbone.<name>`` (``backbone._orig_mod.<name>``
when compiled), where ``<name>`` is exactly a parameter name of :class:`flowlm.nn.dit.DiT`:
``vocab_embed.embedding`` [V, d] (``x @ E``), ``sigma_map.mlp.{0,2}.*``, ``sigma_map_prime.mlp.{0,2}.*``
(flow maps with ``algo.double_temb``), ``blocks.{i}.{norm1,attn_qkv,attn_out,norm2,mlp.{0,2},adaLN_modulation}.*``,
``output_layer.{norm_final,linear,adaLN_modulation}.*`` and the buffer ``rotary_emb.inv_freq``. Its
``learnable_loss_weighting.*`` (a training-only loss weight) is dropped. ``ema.shadow_params`` lists the EMA
values in the order of ``backbone.parameters()``, i.e. the order of the parameter keys in ``state_dict``.

What the import sets on our DiT so that it computes the reference function:
``attn_softcap=50`` (hard-coded in the reference block), ``pos_embed=False`` (rotary only), ``mlp_ratio=4``,
``dropout`` from ``model.dropout`` (it matters for autoguidance), sizes from ``model.*`` checked against
the tensor shapes, ``time_inputs=2`` for flow maps. A flow map trained without ``double_temb`` embeds both
times with ``sigma_map``; its ``sigma_map_prime`` is set to a copy, which computes the same sum.

Logit cap (:func:`infer_logit_cap`): the v2/v3 code (June 2026, public fork ``menetn/glm``, which trained the
released models) applies ``30·tanh(a/30)`` to the head output before ``log_softmax`` for FLM, the flow map and
the teacher alike; the v1 code (``david3684/flm``) applies ``log_softmax`` to the raw output. The config tells
them apart: an algorithm name only v2/v3 has (``fmlm``, ``fmlm_twostage``, ...) or the ``sampling.gamma`` key
(added by v2) means v2, a name only v1 has (``flm_distill``, ...) means v1; ``flm`` without ``sampling.gamma``
is either, and the import then asks for ``logit_cap`` instead of guessing.

Default churn γ of a flow map (recorded as ``meta["sampler_defaults"]["gamma"]``): the paper samples LM1B
models at γ = 0.8 and OpenWebText models at γ = 1.0 (:data:`PAPER_GAMMA`); another corpus needs ``gamma``.

The Hub format of the released models (``PyTorchModelHubMixin``) is read by :mod:`flowlm.interop.released`
into the same :class:`ReferenceCheckpoint`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from flowlm.errors import CheckpointError
from flowlm.interop.safe_load import resolve_interpolations, safe_torch_load, to_plain
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.checkpoint import load_state_strict, provenance, save_model, sha256_file

BUFFERS = ("rotary_emb.inv_freq",)
TRAINING_ONLY = ("learnable_loss_weighting.",)
REFERENCE_ATTN_SOFTCAP = 50.0
TOKENIZERS = {"bert-base-uncased": "bert-base-uncased", "gpt2": "gpt2"}
CORPORA = (("lm1b", "lm1b"), ("openwebtext", "openwebtext"), ("wikitext", "wikitext"))
REFERENCE_LOGIT_CAP = 30.0  # FLMBase._process_model_output of the v2/v3 code
V2_ALGOS = ("fmlm", "fmlm_twomodel", "fmlm_twostage", "smflm")  # algorithm names only the v2/v3 code has
V1_ALGOS = ("flm_distill", "flm_distill_double", "dmf", "continuousflow", "dos_finetune", "flm_semigroup_distill")
PAPER_GAMMA = {"lm1b": 0.8, "openwebtext": 1.0}  # the churn the paper samples flow maps of each corpus with
AUTO = "auto"


@dataclass
class ReferenceCheckpoint:
    """The parts of a reference ``.ckpt`` the import needs.

    ``state``: backbone tensors by reference name, in checkpoint order; ``ema``: the EMA shadow list or None;
    ``config``: the training config as plain dicts; ``step``: the global step (or None); ``released``: the file
    holds one set of weights as published (the Hub format), with no raw/EMA choice; ``source``: provenance
    of the files read (recorded as ``imported_from``).
    """

    path: Path
    state: OrderedDict[str, torch.Tensor]
    ema: list[torch.Tensor] | None
    ema_decay: float | None
    config: dict
    step: int | None
    released: bool = False
    source: dict | None = None

    @property
    def algo(self) -> str:
        return str(self.config.get("algo", {}).get("name", ""))


def backbone_state(state_dict: dict) -> OrderedDict[str, torch.Tensor]:
    """``backbone.<name>`` / ``backbone._orig_mod.<name>`` entries as ``<name>`` (order kept)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        if not key.startswith("backbone."):
            continue
        name = key[len("backbone.") :].replace("_orig_mod.", "")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state_dict entry {key!r} is not a tensor: the file is not a reference checkpoint")
        out[name] = value
    return out


def read_reference(path: str | Path) -> ReferenceCheckpoint:
    """Load a reference checkpoint safely (see :mod:`flowlm.interop.safe_load`) and pick out its parts."""
    path = Path(path)
    raw = safe_torch_load(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise CheckpointError(f"{path} has no state_dict: pass a Lightning checkpoint of the reference code")
    state = backbone_state(raw["state_dict"])
    if not state:
        raise CheckpointError(f"{path} has no backbone.* weights: pass a checkpoint of the reference DIT")
    hparams = to_plain(raw.get("hyper_parameters") or {})
    config = hparams.get("config", hparams) if isinstance(hparams, dict) else {}
    config = resolve_interpolations(config if isinstance(config, dict) else {})
    ema = raw.get("ema")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if shadow is not None and not (isinstance(shadow, list) and all(isinstance(t, torch.Tensor) for t in shadow)):
        raise CheckpointError(f"{path}: ema.shadow_params is not a list of tensors; import with weights='raw'")
    step = raw.get("global_step")
    return ReferenceCheckpoint(
        path=path,
        state=state,
        ema=shadow,
        ema_decay=ema.get("decay") if isinstance(ema, dict) else None,
        config=config,
        step=int(step) if isinstance(step, int) else None,
    )


def select_weights(ckpt: ReferenceCheckpoint, which: str = "ema") -> OrderedDict[str, torch.Tensor]:
    """The backbone tensors with raw (``which='raw'``) or EMA values.

    EMA values are paired with the parameter names by position (the reference stores a list), so the count
    must match exactly and every tensor must have its parameter's shape; anything else is refused.
    """
    if which not in ("ema", "raw"):
        raise CheckpointError(f"weights={which!r}: choose 'ema' (the reference evaluates with EMA) or 'raw'")
    weights = OrderedDict(ckpt.state)
    if which == "raw" or ckpt.released:
        return weights
    if ckpt.ema is None:
        raise CheckpointError(f"{ckpt.path} holds no EMA (no ema.shadow_params): import it with --weights raw")
    names = [n for n in ckpt.state if n not in BUFFERS]
    if len(names) != len(ckpt.ema):
        raise CheckpointError(
            f"{ckpt.path}: the EMA has {len(ckpt.ema)} tensors but the backbone has {len(names)} parameters, so "
            "they cannot be paired by position (frozen parameters?): import with --weights raw"
        )
    bad = [
        f"{n}: {tuple(t.shape)} vs {tuple(ckpt.state[n].shape)}"
        for n, t in zip(names, ckpt.ema, strict=True)
        if t.shape != ckpt.state[n].shape
    ]
    if bad:
        raise CheckpointError(
            f"{ckpt.path}: EMA tensors do not line up with the parameters ({'; '.join(bad[:5])}): "
            "the EMA was saved for another parameter order; import with --weights raw"
        )
    for name, value in zip(names, ckpt.ema, strict=True):
        weights[name] = value.to(ckpt.state[name].dtype)
    return weights


def _shape(weights: dict, name: str, path: Path) -> tuple[int, ...]:
    if name not in weights:
        raise CheckpointError(f"{path} lacks backbone.{name}: it is not a reference DIT checkpoint")
    return tuple(weights[name].shape)


def infer_logit_cap(config: dict, source) -> float | None:
    """The logit cap of the code that wrote ``config``: 30 for v2/v3, None (raw logits) for v1 (module doc)."""
    algo = str(config.get("algo", {}).get("name", ""))
    sampling = config.get("sampling")
    if algo in V2_ALGOS or (isinstance(sampling, dict) and "gamma" in sampling):
        return REFERENCE_LOGIT_CAP
    if algo in V1_ALGOS:
        return None
    raise CheckpointError(
        f"{source}: its config (algo {algo!r}, no sampling.gamma) does not say whether the reference code that "
        "trained it capped the logits (v2/v3 code: 30, v1 code: none): pass --logit-cap 30 or --logit-cap none"
    )


def corpus_of(config: dict) -> str | None:
    """Our corpus name for the reference config's ``data.train`` / ``data.valid`` (None when unknown)."""
    data = config.get("data", {})
    names = " ".join(str(data.get(k, "")) for k in ("train", "valid")) if isinstance(data, dict) else ""
    return next((ours for theirs, ours in CORPORA if theirs in names), None)


def default_gamma(config: dict, source, gamma: float | None = None) -> float:
    """The churn γ a flow map samples with by default: ``gamma`` if given, else the paper's for the corpus."""
    if gamma is not None:
        if not 0.0 <= gamma <= 1.0:
            raise CheckpointError(f"gamma={gamma}: the churn must lie in [0, 1]")
        return float(gamma)
    corpus = corpus_of(config)
    if corpus not in PAPER_GAMMA:
        raise CheckpointError(
            f"{source}: the paper gives no sampling churn for corpus {corpus!r} (only LM1B 0.8, OpenWebText 1.0): "
            "pass --gamma"
        )
    return PAPER_GAMMA[corpus]


def dit_config(
    ckpt: ReferenceCheckpoint, weights: dict, logit_cap: float | None = None, seq_len: int | None = None
) -> DiTConfig:
    """Our DiT config for the reference network: sizes from the tensors, heads and length from the config
    (``seq_len`` overrides ``model.length``)."""
    path = ckpt.path
    vocab, width = _shape(weights, "vocab_embed.embedding", path)
    cond = _shape(weights, "sigma_map.mlp.0.weight", path)[0]
    n_blocks = 1 + max((int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    model = ckpt.config.get("model", {})
    n_heads, length = model.get("n_heads"), seq_len if seq_len is not None else model.get("length")
    if not isinstance(n_heads, int):
        raise CheckpointError(
            f"{path}: its config lacks model.n_heads (got {n_heads!r}): it was not written by the reference trainer"
        )
    if not isinstance(length, int) or length < 1:
        raise CheckpointError(f"{path}: its config gives no sequence length (model.length={length!r}): pass --seq-len")
    for key, found in (("hidden_size", width), ("cond_dim", cond), ("n_blocks", n_blocks)):
        if key in model and model[key] != found:
            raise CheckpointError(f"{path}: model.{key}={model[key]} but the weights have {found}")
    flow_map = "sigma_map_prime.mlp.0.weight" in weights or "distill" in ckpt.algo or ckpt.algo.startswith("fmlm")
    dropout = model.get("dropout", 0.1)
    return DiTConfig(
        vocab_size=vocab,
        seq_len=length,
        hidden_size=width,
        n_blocks=n_blocks,
        n_heads=n_heads,
        cond_dim=cond,
        mlp_ratio=4,
        dropout=float(dropout) if isinstance(dropout, (int, float)) else 0.1,
        attn_softcap=REFERENCE_ATTN_SOFTCAP,
        logit_cap=logit_cap,
        time_inputs=2 if flow_map else 1,
        pos_embed=False,
    )


def to_flowlm_state(weights: dict, cfg: DiTConfig, path: Path) -> dict[str, torch.Tensor]:
    """Rename nothing, drop training-only tensors, fill ``sigma_map_prime`` for shared-embedding flow maps."""
    state = {k: v for k, v in weights.items() if not k.startswith(TRAINING_ONLY)}
    if cfg.time_inputs == 2 and not any(k.startswith("sigma_map_prime.") for k in state):
        for key in [k for k in state if k.startswith("sigma_map.")]:
            state["sigma_map_prime." + key[len("sigma_map.") :]] = state[key].clone()
    expected = DiT(cfg).rotary_emb.inv_freq
    found = state.get("rotary_emb.inv_freq")
    if found is not None and (found.shape != expected.shape or not torch.allclose(found.float(), expected)):
        raise CheckpointError(f"{path}: rotary_emb.inv_freq differs from base-10000 rotary frequencies")
    state["rotary_emb.inv_freq"] = expected
    return {k: v.float() for k, v in state.items()}


def resolve_logit_cap(ckpt: ReferenceCheckpoint, logit_cap: float | str | None) -> float | None:
    """``logit_cap``: ``"auto"`` infers it from the config, None or ``"none"`` means raw logits, a number caps."""
    if logit_cap == AUTO:
        return infer_logit_cap(ckpt.config, ckpt.path)
    if logit_cap is None or logit_cap == "none":
        return None
    try:
        cap = float(logit_cap)
    except (TypeError, ValueError):
        raise CheckpointError(f"logit cap {logit_cap!r}: pass a positive number or 'none'") from None
    if not cap > 0:
        raise CheckpointError(f"logit cap {logit_cap!r}: pass a positive number or 'none'")
    return cap


def build_model(
    ckpt: ReferenceCheckpoint, which: str = "ema", logit_cap: float | str | None = AUTO, seq_len: int | None = None
) -> DiT:
    """Our DiT holding the reference network's weights (strict: names and shapes must match)."""
    weights = select_weights(ckpt, which)
    cfg = dit_config(ckpt, weights, resolve_logit_cap(ckpt, logit_cap), seq_len)
    net = DiT(cfg)
    load_state_strict(net, to_flowlm_state(weights, cfg, ckpt.path), str(ckpt.path))
    return net.eval()


def _run_config(ckpt: ReferenceCheckpoint, cfg: DiTConfig, tokenizer, train_method: str) -> dict:
    from flowlm.config import RunConfig

    run = RunConfig()
    run.data.tokenizer = tokenizer.spec
    run.data.seq_len = cfg.seq_len
    run.data.corpus = corpus_of(ckpt.config) or run.data.corpus
    for key, value in cfg.to_dict().items():
        if hasattr(run.model, key):
            setattr(run.model, key, value)
    run.train.method = train_method
    return run.to_dict()


def save_imported(
    ckpt: ReferenceCheckpoint, net: DiT, tokenizer, out: str | Path, method: str, train_method: str, weights: str,
    algo: str, **extra,
) -> Path:  # fmt: skip
    """Write the imported network ``net`` as a flowlm model folder, with its provenance (``imported_from``)."""
    cfg = net.config
    released = ckpt.released
    meta = provenance(
        method=method,
        model=cfg.to_dict(),
        run=_run_config(ckpt, cfg, tokenizer, train_method),
        tokenizer={"spec": tokenizer.spec, "name": tokenizer.name, "vocab_size": tokenizer.vocab_size},
        vocab_size=cfg.vocab_size,
        step=ckpt.step,
        weights="released" if released else weights,
        ema_decay=ckpt.ema_decay if weights == "ema" and not released else None,
        imported_from={
            **(ckpt.source or {"path": str(ckpt.path), "sha256": sha256_file(ckpt.path)}),
            "algo": algo,
            "config": ckpt.config,
        },
        **extra,
    )
    return save_model(Path(out), net.state_dict(), meta, tokenizer)


def convert(
    ckpt: ReferenceCheckpoint,
    out: str | Path,
    tokenizer: str | None = None,
    weights: str = "ema",
    logit_cap: float | str | None = AUTO,
    gamma: float | None = None,
    seq_len: int | None = None,
) -> Path:
    """Write ``ckpt`` as a flowlm model folder at ``out`` (see :func:`import_reference`)."""
    from flowlm.data import load_tokenizer

    net = build_model(ckpt, weights, logit_cap, seq_len)
    cfg = net.config
    data = ckpt.config.get("data", {})
    spec = tokenizer or (data.get("tokenizer_name_or_path") if isinstance(data, dict) else None)
    if not spec:
        raise CheckpointError(f"{ckpt.path} does not name its tokenizer: pass --tokenizer")
    tok = load_tokenizer(TOKENIZERS.get(str(spec), str(spec)))
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"tokenizer {spec!r} has {tok.vocab_size} ids but the network has {cfg.vocab_size}: "
            "pass the tokenizer it was trained with (--tokenizer)"
        )
    flow_map = cfg.time_inputs == 2  # the second time embedding: a flow map, sampled with churn γ
    method = "fmlm" if flow_map else "flm"
    extra = {"sampler_defaults": {"gamma": default_gamma(ckpt.config, ckpt.path, gamma)}} if flow_map else {}
    # train.method flm: a distillation config needs a teacher; the method is recorded separately
    return save_imported(ckpt, net, tok, out, method, "flm", weights, ckpt.algo, **extra)
