"""The training-state files of a run folder: ``checkpoints/last.ckpt`` and the one before, ``prev.ckpt``.

Writing (:func:`save_state`): the state is written to a temporary file *in the same folder*, flushed and
fsynced; then ``last.ckpt`` becomes ``prev.ckpt`` and the temporary file becomes ``last.ckpt`` (two renames
within one folder, each atomic), and the folder is fsynced. A crash at any moment leaves at least one
complete file: before the first rename the old ``last.ckpt``; between the renames ``prev.ckpt``; after
them both. A temporary file never takes a checkpoint's name before it is complete. A ``last.ckpt`` that fails
its check (below) is never rotated over ``prev.ckpt``: the new file replaces it directly, so a readable
``prev.ckpt`` is only ever replaced by a readable file.

Checking (:func:`verify_archive`): a checkpoint is a zip archive whose every record carries a CRC-32; the
check reads every record and compares (torch itself does not, so a flipped bit inside a tensor would load).

Reading (:func:`load_state`): the check above, then ``torch.load(weights_only=True)`` explicitly, whatever
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, after refusing any pickle that names a global outside
:data:`ALLOWED_GLOBALS` (tensors, plain containers and numbers need none), so a crafted file runs no code.
:func:`newest_readable` picks the newest of ``last.ckpt`` / ``prev.ckpt`` that loads.

Recovering (:func:`recover_partials`): a process killed between writing the temporary file and publishing it
leaves a complete file under a temporary name; the next run publishes it when it passes the check and is newer
than every readable checkpoint, and deletes the other temporary files.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from flowlm.errors import CheckpointError, ConfigError

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


def _step_of(path: Path) -> int | None:
    """The step of the checkpoint in ``path`` if it exists and loads, else None."""
    try:
        return load_state(path, mmap=True)["global_step"] if path.exists() else None
    except CheckpointError:
        return None


def recover_partials(folder: Path, warn=None) -> None:
    """Publish the newest complete temporary file a killed save left in ``folder`` if it is newer than every
    readable checkpoint there; delete the other temporary files. Call only while holding the run lock."""
    folder = Path(folder)
    found = []
    for partial in folder.glob(f"{PARTIAL_PREFIX}*"):
        step = _step_of(partial)
        if step is None:
            partial.unlink(missing_ok=True)
        else:
            found.append((step, partial))
    if not found:
        return
    step, newest = max(found)
    readable = [s for s in (_step_of(folder / LAST), _step_of(folder / PREV)) if s is not None]
    if not readable or step > max(readable):
        _publish(newest, folder)
        (warn or _stderr)(f"recovered the complete checkpoint of step {step} that a stopped save left in {folder}")
    for _, partial in found:
        partial.unlink(missing_ok=True)


def _publish(partial: Path, folder: Path) -> Path:
    """Rename the complete file ``partial`` to ``last.ckpt``; the old ``last.ckpt`` becomes ``prev.ckpt`` only if it
    passes :func:`verify_archive` (a damaged one is replaced, keeping the readable ``prev.ckpt``)."""
    last = folder / LAST
    if last.exists():
        try:
            verify_archive(last)
        except CheckpointError as err:
            _stderr(f"{err}; replacing it and keeping {folder / PREV} as the fallback")
        else:
            os.replace(last, folder / PREV)
    os.replace(partial, last)
    fsync_dir(folder)
    return last


def save_state(state: dict, folder: Path) -> Path:
    """Write ``state`` as ``folder/last.ckpt``, keeping the previous one as ``prev.ckpt`` (see module doc).

    An OSError while writing (a full disk, a quota) becomes a one-line CheckpointError naming the file and the
    cause; the checkpoints already there are untouched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{PARTIAL_PREFIX}{os.getpid()}-{LAST}"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        return _publish(partial, folder)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        cause = os_error(err)
        if cause is None:
            raise
        raise CheckpointError(
            f"could not write the training state to {folder / LAST} ({cause.strerror or cause}): the checkpoints "
            "already there are intact; free space (or fix the folder) and rerun the same command to resume"
        ) from None


def os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``, also where torch's zip writer wraps it in a RuntimeError ("unexpected pos")."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def verify_archive(path: Path) -> None:
    """CheckpointError unless ``path`` is a complete zip archive whose every record matches its CRC-32."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(f"{path} is damaged (not a complete torch checkpoint, {size} bytes)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:  # BadZipFile, EOFError, zlib.error, struct.error ... from a damaged archive
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {err})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged (its record {bad} fails the CRC-32 check)")


def check_torch_load_environment() -> None:
    """ConfigError when torch would refuse every load because of its environment, not because of a file."""
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    if all(os.environ.get(name, "0").lower() in ("1", "y", "yes", "true") for name in names):
        raise ConfigError(f"{names[0]} and {names[1]} are both set, so torch refuses to load any file: unset one")


def load_state(path: Path, mmap: bool = False) -> dict:
    """The training state in ``path``, checked (:func:`verify_archive`) and unpickled without running code;
    CheckpointError naming the file. ``mmap``: map the tensors instead of reading them (to look at the step)."""
    path = Path(path)
    check_torch_load_environment()
    verify_archive(path)
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
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, EOFError ... from a damaged file
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise CheckpointError(f"{path} is not a flowlm training checkpoint (no global_step)")
    step = state["global_step"]
    if type(step) is not int or step < 0:
        raise CheckpointError(
            f"{path} is not a flowlm training checkpoint (its global_step is {step!r}, not a whole number >= 0): "
            "delete it, or train into a new --out folder"
        )
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
