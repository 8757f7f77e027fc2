"""Writability checks run before any work, so an unwritable output fails in a second, not after training
or sampling: each creates what it checks (a folder, or a file's parent folder) and writes a probe file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flowlm.errors import ConfigError


def _fail(option: str, path: Path, err: OSError) -> ConfigError:
    reason = err.strerror or type(err).__name__
    return ConfigError(f"{option} {str(path)!r} is not writable ({reason}): choose a folder you can write to")


def require_writable_dir(path: str | os.PathLike, option: str) -> Path:
    """Create folder ``path`` if needed and check a file can be written in it; ConfigError naming ``option``."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".flowlm-probe-"):
            pass
    except OSError as err:
        raise _fail(option, path, err) from None
    return path


def require_writable_file(path: str | os.PathLike, option: str, example: str = "samples.jsonl") -> Path:
    """Check that file ``path`` can be written (its folder is created); an existing file must be writable, and a
    folder is refused with ``example`` as the file name to give instead."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {str(path)!r} is a folder: name a file, e.g. {str(path / example)!r}")
    require_writable_dir(path.parent, option)
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as err:
            raise _fail(option, path, err) from None
    return path
