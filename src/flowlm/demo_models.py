"""Where the demo models shipped as package data live: ``demo:flm`` and ``demo:fmlm`` (no network needed).

Kept apart from :mod:`flowlm.demo` (the ``flowlm demo`` comparison, which samples through :mod:`flowlm.api`)
so that :func:`flowlm.load` can resolve ``demo:`` names without importing the demo runner.
"""

from __future__ import annotations

from pathlib import Path

from flowlm.errors import CheckpointError

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
DEMO_MODELS = ("flm", "fmlm")
PREFIX = "demo:"


def demo_path(name: str) -> Path:
    """Folder of the shipped demo model ``name`` (``flm`` or ``fmlm``; a ``demo:`` prefix is accepted)."""
    key = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    if key not in DEMO_MODELS:
        raise CheckpointError(f"unknown demo model {name!r}: use one of {', '.join(PREFIX + m for m in DEMO_MODELS)}")
    path = DEMO_DIR / key
    if not (path / "flowlm.json").is_file():
        raise CheckpointError(
            f"the demo model {key!r} is missing from this installation ({path}): reinstall flowlm from a full "
            "source tree (the demo weights are package data)"
        )
    return path
