"""The flowlm model checkpoint: a folder with ``model.safetensors`` (EMA weights),
``flowlm.json`` (provenance), ``tokenizer/`` and ``README.md`` (a model card generated from the
provenance, for the Hugging Face Hub). Written atomically; loaded strictly.

``flowlm.json`` holds: format, method, the DiT config, the run config, tokenizer spec and
vocabulary size, training step, which weights (EMA), code version, the command line, the time of
writing and the SHA-256 of the weights file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flowlm.errors import CheckpointError

FORMAT = "flowlm-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "flowlm.json"
TOKENIZER = "tokenizer"
CARD = "README.md"
READ_ATTEMPTS = 50  # reads of a model folder, each spoiled by a new export, before giving up

T = TypeVar("T")


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    from flowlm import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+g{commit}" if commit else __version__


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(**fields) -> dict:
    """Common provenance fields (code version, command line, time) merged with ``fields``."""
    return {
        "code_version": code_version(),
        "command": " ".join(sys.argv),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def honour_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes the umask asks for (``mkdtemp`` makes folders 0700,
    safetensors files 0600, whatever the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def atomic_write_dir(target: Path, fill) -> Path:
    """Build a folder with ``fill(tmp_dir)`` next to ``target`` and move it into place.

    The swap is two renames: ``target`` -> ``.<name>.old``, then the new folder -> ``target``. A crash
    between them leaves no ``target`` but a complete ``.<name>.old``, which :func:`resolve_model_dir`
    reads and :func:`recover_dir` (run at the start of the next training) moves back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        honour_umask(tmp)
        if target.exists():
            old = _old(target)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def recover_dir(target: Path) -> None:
    """Undo an interrupted :func:`atomic_write_dir`: bring back ``.<name>.old`` if ``target`` is missing, and
    delete the temporary ``.<name>.*`` folders. Only for a writer that holds the folder (the run lock)."""
    target = Path(target)
    old = _old(target)
    if not target.exists() and (old / META).is_file():
        os.replace(old, target)
    for leftover in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)


def save_model(
    directory: Path, state_dict: dict[str, torch.Tensor], meta: dict, tokenizer, card_name: str | None = None
) -> Path:
    """Write a model checkpoint folder atomically and return its path.

    ``card_name`` is the name the model card tells readers to load (a Hub id); default: a placeholder.
    """
    from flowlm.model_card import model_card

    def fill(tmp: Path) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS))
        tokenizer.save(tmp / TOKENIZER)
        document = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
        document["weights_sha256"] = sha256_file(tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(document, indent=2, sort_keys=True, default=str))
        (tmp / CARD).write_text(model_card(document, card_name))

    return atomic_write_dir(Path(directory), fill)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """Accept a model folder or a training run folder (uses its ``model/``).

    A model folder caught between the two renames of an export (see :func:`atomic_write_dir`) is read
    from its complete previous version, ``.<name>.old``.
    """
    path = Path(path)
    for candidate in (path, path / "model", _old(path), _old(path / "model")):
        if (candidate / META).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist: pass a model folder or a training run folder")
    raise CheckpointError(
        f"{str(path)!r} is not a flowlm checkpoint (no {META}): pass the folder written by flowlm train"
    )


def read_meta(directory: Path) -> dict:
    """The checked ``flowlm.json`` of the model folder ``directory``. Alone it may race a writer: see
    :func:`read_consistent`."""
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{directory / META} is unreadable ({err}): the checkpoint is corrupt; re-export it"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{directory / META} is not a flowlm checkpoint description (format={meta.get('format')!r})"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written by a newer flowlm (format {meta['format_version']}): upgrade flowlm"
        )
    return meta


def read_weights(directory: Path, meta: dict) -> dict[str, torch.Tensor]:
    """Load the weights, verifying the recorded SHA-256 first. Alone it may race a writer (the file hashed and
    the file loaded may then be two exports'): see :func:`read_consistent`."""
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing: the checkpoint is incomplete; re-export it")
    expected = meta.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise CheckpointError(f"{weights} does not match its recorded SHA-256: the file is corrupt; re-export it")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights} cannot be read ({err}): the file is corrupt; re-export it") from None


def _export_seen(path: Path) -> tuple | None:
    """Which export ``path`` shows now: the folder it resolves to, that folder's device, inode and change time,
    and its ``flowlm.json`` bytes; None when no readable model folder is there."""
    try:
        directory = resolve_model_dir(path)
        info = directory.stat()
        return directory, info.st_dev, info.st_ino, info.st_ctime_ns, (directory / META).read_bytes()
    except (CheckpointError, OSError):
        return None


def read_consistent(
    path: str | os.PathLike, read: Callable[[Path, dict], T] = lambda directory, meta: None
) -> tuple[Path, dict, T]:
    """``(directory, meta, read(directory, meta))`` for the model folder at ``path`` (a model folder or a run
    folder, as :func:`resolve_model_dir`), all of one export, even while a writer exports into it.

    :func:`atomic_write_dir` replaces the whole folder, so a reader that takes ``flowlm.json`` from one export
    and the weights or tokenizer from the next (or finds a file gone) has raced a writer. Each attempt notes
    which export ``path`` shows (folder, inode, change time, ``flowlm.json`` bytes) before and after reading;
    a replaced export never returns, so an unchanged note means the read saw one export only. A read that
    raced a writer is retried, up to :data:`READ_ATTEMPTS` times; an error while nothing changed (a corrupt
    or missing file) is raised at once.
    """
    path = Path(path)
    for _ in range(READ_ATTEMPTS):
        before = _export_seen(path)
        try:
            directory = resolve_model_dir(path)
            meta = read_meta(directory)
            result = read(directory, meta)
        except Exception:
            if _export_seen(path) == before:
                raise
            continue
        if _export_seen(path) == before:
            return directory, meta, result
    raise CheckpointError(
        f"{path} was replaced by a new export {READ_ATTEMPTS} times while being read: read it again, or when "
        "its training run has stopped"
    )


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped tensor."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise CheckpointError(
            f"{source} does not match the model ({'; '.join(parts)}): it was written for another model"
        )
    module.load_state_dict(state, strict=True)
