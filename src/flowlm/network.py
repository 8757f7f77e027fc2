"""Fast failure without network for Hugging Face names (datasets, tokenizers, judges, Hub models).

Without a connection, ``huggingface_hub`` / ``datasets`` / ``transformers`` retry for 30-50 s before they
give up. :func:`hub_access` decides once per process whether the Hub can be reached: no when
``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE`` / ``HF_DATASETS_OFFLINE``) is set, else by one TCP
connection to the Hub endpoint (or to the HTTPS proxy, when one is set) with a :data:`PROBE_SECONDS`
timeout. When the Hub is unreachable the libraries are put in their offline mode for the call, so a name
in the local cache still loads and any other fails at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

PROBE_SECONDS = 3.0
_TRUE = {"1", "true", "yes", "on"}
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def _endpoint() -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    host, port = _endpoint()
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            return None
    except OSError as err:
        return f"no connection to {host}:{port} within {PROBE_SECONDS:g} s: {err.strerror or type(err).__name__}"


def offline_reason() -> str | None:
    """Why the Hugging Face Hub cannot be used now (a short phrase), or None when it can."""
    for name in _OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name} is set"
    return _probe()


@contextlib.contextmanager
def hub_access(needed: bool = True) -> Iterator[str | None]:
    """``with hub_access() as offline:`` around a Hugging Face call: ``offline`` is None with network, else the
    reason, and inside the block the Hub libraries use their local caches only (no retries). ``needed=False``
    (a local folder) skips the check."""
    reason = offline_reason() if needed else None
    if reason is None:
        yield None
        return
    import datasets.config
    import huggingface_hub.constants

    saved = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
