"""The Hub format of the reference code's released models (``david3684/FLM-B-LM1B``, ``FLM-B-OWT``,
``FMLM-B-LM1B``, ``FMLM-B-OWT``), read into a :class:`~flowlm.interop.reference.ReferenceCheckpoint`.

Layout (written by ``huggingface_hub.PyTorchModelHubMixin`` from the reference's ``DIT(config, vocab_size)``):
``model.safetensors`` holds the backbone's parameters under their own names (``vocab_embed.embedding``,
``sigma_map.*``, ``blocks.{i}.*`` ..., no ``backbone.`` prefix), and ``config.json`` the init arguments:
``{"config": {algo, model, data, sampling, ...}, "vocab_size": V}``, or the same with the run config's keys at
the top level (the mixin merges a ``config`` passed as a plain dict into the top level). The file holds one set
of weights, as published, so there is no raw/EMA choice.

:func:`read_checkpoint` takes a ``.ckpt``, such a folder or a Hub id; :func:`cached_conversion` turns a downloaded
Hub snapshot into a flowlm model folder once (under ``<cache>/released/<owner>--<name>/<commit>``), recording the
repository, revision, commit and the SHA-256 of both files in ``imported_from``; a local folder in this format the
same way (under ``<cache>/released/local--<folder name>/<hash of both files>``, recording its path).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections import OrderedDict
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from flowlm.errors import CheckpointError
from flowlm.interop.discrete import HF_SCHEMA_KEY, convert_discrete, family_of
from flowlm.interop.reference import AUTO, ReferenceCheckpoint, convert, read_reference
from flowlm.interop.safe_load import resolve_interpolations
from flowlm.training.checkpoint import META, sha256_file

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def is_released_folder(folder: Path) -> bool:
    """A folder in the released models' Hub format (and not a flowlm model folder)."""
    folder = Path(folder)
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file() and not (folder / META).is_file()


def run_config(raw: object, path: Path) -> tuple[dict, int | None]:
    """``(run config, vocab_size)`` from the parsed ``config.json``: either mixin layout of a Hydra config (the FLM
    reference and DUO: ``algo`` + ``model``; MDLM and its SDTT students: ``model`` + ``parameterization``), or the
    ``transformers`` config of the MDLM Hub model (:func:`transformers_config`)."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object: it is not the config of a reference model")
    if "hidden_dim" in raw:
        return transformers_config(raw, path), raw.get("vocab_size")
    config = raw.get("config") if isinstance(raw.get("config"), dict) else raw
    if not isinstance(config.get("model"), dict) or not (
        isinstance(config.get("algo"), dict) or "parameterization" in config
    ):
        raise CheckpointError(
            f"{path} has no algo/model settings (neither under 'config' nor at the top level): "
            "it is not the config.json of a reference DIT"
        )
    vocab = raw.get("vocab_size")
    return resolve_interpolations(config), vocab if isinstance(vocab, int) else None


GPT2_WITH_PAD = 50258  # the OpenWebText models' vocabulary: GPT-2's 50,257 ids and one more (flowlm's gpt2 spec)


def transformers_config(raw: dict, path: Path) -> dict:
    """A ``transformers``-style config (MDLM's Hub model: ``hidden_dim``, ``n_blocks``, ``n_heads``, ``cond_dim``,
    ``model_length``, ``vocab_size``, ``dropout``, ``time_conditioning``) in the Hydra shape the import reads; the
    original under ``transformers_config``. It names no tokenizer: a vocabulary of 50,258 is GPT-2's with the added
    id, the only one these models were released with; another needs --tokenizer."""
    missing = [k for k in ("hidden_dim", "n_blocks", "n_heads", "cond_dim", "model_length") if k not in raw]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: it is not the config of an MDLM/DUO Hub model")
    names = {"hidden_size": "hidden_dim", "n_blocks": "n_blocks", "n_heads": "n_heads", "cond_dim": "cond_dim",
             "length": "model_length"}  # fmt: skip
    model = {ours: raw[theirs] for ours, theirs in names.items()} | {"dropout": raw.get("dropout", 0.1)}
    tokenizer = "gpt2" if raw.get("vocab_size") == GPT2_WITH_PAD else None
    config = {"model": model, "data": {"tokenizer_name_or_path": tokenizer}, HF_SCHEMA_KEY: raw}
    if isinstance(raw.get("time_conditioning"), bool):
        config["time_conditioning"] = raw["time_conditioning"]
    return config


def read_released(folder: str | Path, source: dict | None = None) -> ReferenceCheckpoint:
    """Read a Hub-format folder; ``source`` is the provenance to record (default: the folder and file hashes)."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {folder / CONFIG} ({err}): re-download the model") from None
    config, vocab = run_config(raw, folder / CONFIG)
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"cannot read {folder / WEIGHTS} ({err}): re-download the model") from None
    # One backbone. prefix, or two (SDTT's teacher_1M_sm: the Hub MDLM wrapped by its trainer).
    state = OrderedDict((re.sub(r"^(backbone\.)+", "", k).replace("_orig_mod.", ""), v) for k, v in tensors.items())
    embed = state.get("vocab_embed.embedding")
    if vocab is not None and embed is not None and embed.shape[0] != vocab:
        raise CheckpointError(
            f"{folder}: config.json says vocab_size={vocab} but vocab_embed.embedding has {embed.shape[0]} rows"
        )
    files = {name: sha256_file(folder / name) for name in (CONFIG, WEIGHTS)}
    return ReferenceCheckpoint(
        path=folder,
        state=state,
        ema=None,
        ema_decay=None,
        config=config,
        step=None,
        released=True,
        source={**(source or {"path": str(folder)}), "sha256": files},
    )


def snapshot_source(folder: Path, repo_id: str, revision: str | None) -> dict:
    """Provenance of a Hub snapshot: the repository, the revision asked for and the commit it resolved to
    (the snapshot folder's name in the Hub cache, ``.../snapshots/<commit>``)."""
    commit = folder.name if folder.parent.name == "snapshots" else None
    return {"hub_repo": repo_id, "revision": revision or "main", "commit": commit}


def read_checkpoint(checkpoint: str | Path, revision: str | None = None) -> ReferenceCheckpoint:
    """A reference ``.ckpt``, a Hub-format folder, or a Hub id (downloaded once into the Hub cache)."""
    from flowlm.hub import is_hub_id, snapshot

    path = Path(checkpoint)
    if path.is_dir():
        if not is_released_folder(path):
            raise CheckpointError(
                f"{path} holds no {CONFIG} + {WEIGHTS} of a released reference model: pass that folder, a Hub id "
                "or a .ckpt file"
            )
        return read_released(path)
    if path.exists() or not is_hub_id(str(checkpoint)):
        return read_reference(path)
    folder = snapshot(str(checkpoint), revision, None, [CONFIG, WEIGHTS])
    if not is_released_folder(folder):
        raise CheckpointError(f"Hub repository {checkpoint!r} holds no {CONFIG} + {WEIGHTS}: it is no reference model")
    return read_released(folder, snapshot_source(folder, str(checkpoint), revision))


def cached_conversion(folder: Path, repo_id: str | None, revision: str | None = None) -> Path:
    """The flowlm model folder converted from the released-format ``folder``, converting it the first time: the Hub
    snapshot of ``repo_id`` (cached per commit), or with ``repo_id`` None a local folder (cached per SHA-256 of its
    two files, so a changed file is converted anew; provenance: the folder's path and those hashes). Settings are
    inferred from its config; one it does not settle is an error naming the import option."""
    from flowlm.data.cache import default_cache_dir, slug

    folder = Path(folder)
    if repo_id is None:
        source = {"path": str(folder.resolve())}
        digest = "".join(sha256_file(folder / name) for name in (CONFIG, WEIGHTS))
        key = hashlib.sha256(digest.encode()).hexdigest()[:16]
        name, command = f"local--{folder.resolve().name}", shlex.quote(str(folder))
    else:
        source = snapshot_source(folder, repo_id, revision)
        key = source["commit"] or sha256_file(folder / WEIGHTS)[:16]
        name, command = repo_id.replace("/", "--"), repo_id
    target = default_cache_dir() / "released" / slug(name) / slug(key)
    if (target / META).is_file():
        return target
    try:
        return convert_checkpoint(read_released(folder, source), target)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err} (convert it once with: flowlm import-reference {command} --out DIR and that option, then load DIR)"
        ) from None


def convert_checkpoint(
    ckpt: ReferenceCheckpoint,
    out: str | Path,
    tokenizer: str | None = None,
    weights: str = "ema",
    logit_cap: float | str | None = AUTO,
    gamma: float | None = None,
    seq_len: int | None = None,
    method: str | None = None,
) -> Path:
    """Convert a read checkpoint by its kind: an MDLM / DUO model (:mod:`flowlm.interop.discrete`; ``method`` names the
    kind where the config does not) or a flow model of the FLM reference (:func:`flowlm.interop.reference.convert`)."""
    family = family_of(ckpt.config, method)
    if family is None:
        return convert(ckpt, out, tokenizer, weights, logit_cap, gamma, seq_len)
    if gamma is not None:
        raise CheckpointError(f"--gamma is a flow map's sampling churn; {ckpt.path} is a {family.upper()} model")
    if logit_cap not in (AUTO, None, "none"):
        raise CheckpointError(f"{ckpt.path} is a {family.upper()} model, whose logits are not capped: drop --logit-cap")
    return convert_discrete(ckpt, out, family, tokenizer, weights, seq_len)


def import_reference(
    checkpoint: str | Path,
    out: str | Path,
    tokenizer: str | None = None,
    weights: str = "ema",
    logit_cap: float | str | None = AUTO,
    gamma: float | None = None,
    seq_len: int | None = None,
    revision: str | None = None,
    method: str | None = None,
) -> Path:
    """Convert a reference model into a flowlm model folder at ``out`` and return its path.

    ``checkpoint``: a Lightning ``.ckpt``, a folder in the Hub format of the released models, or a Hub id
    (``owner/name``, downloaded once at ``revision``; :mod:`flowlm.interop.released`): a flow model of the FLM
    reference, or an MDLM / DUO baseline (:mod:`flowlm.interop.discrete`; ``method`` ``mdlm`` / ``duo`` where its
    config does not say). ``tokenizer`` defaults to the config's ``data.tokenizer_name_or_path``; it must have exactly
    the network's vocabulary size. ``logit_cap`` ``"auto"`` infers it (:func:`infer_logit_cap`); ``gamma`` overrides a
    flow map's default churn; ``seq_len`` the config's ``model.length``. ``weights`` (``ema`` / ``raw``) applies to
    ``.ckpt`` files only.
    """
    ckpt = read_checkpoint(checkpoint, revision)
    return convert_checkpoint(ckpt, out, tokenizer, weights, logit_cap, gamma, seq_len, method)
