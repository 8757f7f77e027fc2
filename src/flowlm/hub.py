"""The Hugging Face Hub: download a model folder by repository id, save and push one.

A Hub repository holds one flowlm model folder as it is on disk (``model.safetensors``, ``flowlm.json``,
``tokenizer/``, ``README.md``): there is one format, and loading it from the Hub is loading the
downloaded folder with the same strict checks. A repository in the Hub format of the reference code's
released models (``config.json`` + ``model.safetensors``, no ``flowlm.json``) is converted once into that
format and cached (:mod:`flowlm.interop.released`).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from flowlm.errors import CheckpointError
from flowlm.network import hub_access
from flowlm.training.checkpoint import CARD, META, TOKENIZER, WEIGHTS

FILES = [WEIGHTS, META, CARD, f"{TOKENIZER}/*"]
REFERENCE_CONFIG = "config.json"  # the PyTorchModelHubMixin config of the reference's released models
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(_REPO_ID.fullmatch(str(name))) and not Path(name).exists()


def download(repo_id: str, revision: str | None = None, token: str | bool | None = None) -> Path:
    """Download (or find in the local Hub cache) the model folder of ``repo_id``; returns its local path: a flowlm
    model folder, or the ``config.json`` + weights of a released reference model (:func:`flowlm.load` converts
    that once, :mod:`flowlm.interop.released`)."""
    folder = snapshot(repo_id, revision, token, [*FILES, REFERENCE_CONFIG])
    if not (folder / META).is_file() and not ((folder / REFERENCE_CONFIG).is_file() and (folder / WEIGHTS).is_file()):
        raise CheckpointError(f"Hub repository {repo_id!r} holds no {META}: it is not a flowlm model")
    return folder


def snapshot(repo_id: str, revision: str | None, token: str | bool | None, patterns: list[str]) -> Path:
    """The local folder of the files of ``repo_id`` matching ``patterns`` (downloaded once, then cached)."""
    offline = None
    try:
        with hub_access() as offline:
            folder = snapshot_download(
                repo_id, revision=revision, token=token, allow_patterns=patterns, library_name="flowlm"
            )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise CheckpointError(
            f"{repo_id!r} is no local folder and cannot be fetched from the Hugging Face Hub (no network: "
            f"{offline or 'HF_HUB_OFFLINE is set or the Hub is unreachable'}), and it is not in the local cache; "
            "connect and unset HF_HUB_OFFLINE, or pass a local model folder (flowlm.load('path/to/model'))"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise CheckpointError(
            f"{repo_id!r} is no local folder, and as a Hub repository it does not exist or needs access: check the "
            "path or id, or log in "
            "(huggingface-cli login / HF_TOKEN) for a private or gated model"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(
            f"Hub repository {repo_id!r} has no revision {revision!r}: pick an existing one"
        ) from None
    except HfHubHTTPError as err:
        raise CheckpointError(f"downloading {repo_id!r} from the Hub failed ({err}): retry later") from None
    except _connection_errors() as err:
        summary = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        raise CheckpointError(
            f"downloading {repo_id!r} from the Hugging Face Hub failed ({summary}): check the network and any HTTPS "
            "proxy (HTTPS_PROXY / https_proxy), or set HF_HUB_OFFLINE=1 to use the local cache"
        ) from None
    return Path(folder)


def _connection_errors() -> tuple[type[Exception], ...]:
    """What a failed connection (refused, reset, a proxy answering garbage) raises inside huggingface_hub: the base
    error of its HTTP client, which ``huggingface_hub.errors`` re-exports (httpx's since huggingface_hub 1.0, covering
    connection, proxy and protocol errors), and requests' RequestException where requests is installed (the client
    of huggingface_hub 0.x, whose ProxyError and ConnectionError are no HTTPError)."""
    from huggingface_hub import errors

    try:
        from requests import RequestException
    except ImportError:
        return (errors.HTTPError,)
    return errors.HTTPError, RequestException


def save_pretrained(model, directory: str | Path, license: str | None = None, card_name: str | None = None) -> Path:
    """Write ``model`` (a :class:`flowlm.FlowLM`) as a model folder with its model card."""
    from flowlm.training.checkpoint import save_model

    if model.method_def.unpublishable:
        raise CheckpointError(model.method_def.unpublishable)
    meta = {k: v for k, v in model.meta.items() if k not in ("format", "format_version", "weights_sha256")}
    if license is not None:
        meta["license"] = license
    return save_model(Path(directory), model.net.state_dict(), meta, model.tokenizer, card_name=card_name)


def push_to_hub(
    model,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    license: str | None = None,
    commit_message: str = "Upload flowlm model",
) -> str:
    """Create ``repo_id`` if needed and upload the model folder; returns the commit URL."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", license=license, card_name=repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
        except (HfHubHTTPError, OfflineModeIsEnabled) as err:
            raise CheckpointError(
                f"pushing to {repo_id!r} failed ({err}): log in (huggingface-cli login / HF_TOKEN) and check the id"
            ) from None
    return str(getattr(info, "commit_url", info))
