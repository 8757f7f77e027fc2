"""The training-state files of a run folder: ``checkpoints/last.ckpt`` and the one before, ``prev.ckpt``.

Writing (:func:`save_state`): the state is written to a temporary file *in the same folder*, flushed and
fsynced; then ``last.ckpt`` becomes ``prev.ckpt`` and the temporary file becomes ``last.ckpt`` (two renames
within one folder, each atomic), and the folder is fsynced. A crash at any moment leaves at least one
complete file: before the first rename the old ``last.ckpt``; between the renames ``prev.ckpt``; after
them both. A temporary file never takes a checkpoint's name before it is complete.

Reading (:func:`load_state`): ``torch.load(weights_only=True)`` explicitly, whatever
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, after refusing any pickle that names a global outside
:data:`ALLOWED_GLOBALS` (tensors, plain containers and numbers need none), so a crafted file runs no code.
:func:`newest_readable` picks the newest of ``last.ckpt`` / ``prev.ckpt`` that loads.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from flowlm.errors import CheckpointError

LAST = "last.ckpt"
PREV = "prev.ckpt"
PARTIAL_PREFIX = ".partial-"
# Globals a flowlm training checkpoint may name beyond what torch's weights-only unpickler always
# allows (tensors, dtypes, OrderedDict, plain containers): none today; a new entry needs a reason.
ALLOWED_GLOBALS: tuple = ()


def file_mode() -> int:
    """0o666 minus the process umask: the mode a plain ``open(..., "w")`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: Path) -> None:
    """Make renames inside ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_partials(folder: Path) -> None:
    """Delete temporary files of interrupted saves (call only while holding the run lock)."""
    for leftover in Path(folder).glob(f"{PARTIAL_PREFIX}*"):
        leftover.unlink(missing_ok=True)


def save_state(state: dict, folder: Path) -> Path:
    """Write ``state`` as ``folder/last.ckpt``, keeping the previous one as ``prev.ckpt`` (see module doc)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{PARTIAL_PREFIX}{os.getpid()}-{LAST}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        last = folder / LAST
        if last.exists():
            os.replace(last, folder / PREV)
        os.replace(partial, last)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return last


def load_state(path: Path) -> dict:
    """The training state in ``path``, unpickled without running code; CheckpointError naming the file."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(f"{path} is damaged (not a complete torch checkpoint, {size} bytes)")
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # torch raises several types for malformed archives
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {err})") from None
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS}
    refused = sorted(set(foreign) - allowed)
    if refused:
        raise CheckpointError(
            f"refusing to load {path}: it references {', '.join(refused)}, which a flowlm checkpoint never holds "
            "(unpickling it could run code); delete the file or train into a new --out folder"
        )
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, EOFError ... from a damaged file
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise CheckpointError(f"{path} is not a flowlm training checkpoint (no global_step)")
    return state


def _stderr(message: str) -> None:
    print(f"flowlm: warning: {message}", file=sys.stderr)


def newest_readable(folder: Path, warn=_stderr) -> tuple[Path, dict] | None:
    """(path, state) of the newest loadable of ``last.ckpt`` / ``prev.ckpt`` in ``folder``; None if neither exists.

    A damaged file is reported through ``warn`` and skipped; when every file present is damaged, a
    CheckpointError names them and ``--no-resume``.
    """
    folder = Path(folder)
    damaged = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = load_state(path)
        except CheckpointError as err:
            damaged.append(str(err))
            continue
        if damaged:
            warn(f"{damaged[0]}; resuming from {path} (step {state['global_step']}) instead")
        return path, state
    if not damaged:
        return None
    raise CheckpointError(
        f"cannot resume: {'; '.join(damaged)}. Start afresh with --no-resume (or train into a new --out folder)"
    )


class SafeCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O through :func:`save_state` / :func:`load_state`.

    ``preloaded``: a state already read (and checked) by :func:`newest_readable`, handed to Lightning
    without reading the file a second time.
    """

    def __init__(self, preloaded: tuple[Path, dict] | None = None):
        self.preloaded = preloaded

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if Path(path).name != LAST:
            raise ValueError(f"flowlm writes training state only as {LAST}, not {path}")
        save_state(checkpoint, Path(path).parent)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        if self.preloaded is not None and Path(path) == self.preloaded[0]:
            state, self.preloaded = self.preloaded[1], None
            return state
        return load_state(Path(path))

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)
