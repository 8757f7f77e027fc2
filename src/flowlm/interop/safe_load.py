"""Read a ``torch.save`` checkpoint written by foreign code without running any of its code.

``torch.load(weights_only=True)`` rebuilds tensors and plain containers only. A Lightning checkpoint
of the reference implementation also pickles its hyper-parameters: an OmegaConf ``DictConfig``
(and often the ``transformers`` tokenizer object). Those classes are not imported here. Instead,
each such global is bound to an :class:`Inert` stand-in: a class of ours that records the
arguments and state the pickle gives it and does nothing else, so no foreign callable ever runs.
Globals outside :data:`INERT_MODULES` (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...)
are refused with the list of their names before anything is unpickled.

How a ``DictConfig`` pickles (OmegaConf 2.x): protocol-2 ``NEWOBJ`` of the class, then ``BUILD``
with the dict from ``BaseContainer.__getstate__``: ``_content`` (key -> node, or a string for
``"???"``/an interpolation, or None), ``_metadata`` (a ``ContainerMetadata``) and ``_parent``.
Leaf nodes (``AnyNode``, ``StringNode``, ``IntegerNode`` ...) keep their value in ``_val``;
``ListConfig`` keeps a list in ``_content``. :func:`to_plain` turns that into dicts and lists and
resolves simple ``${a.b}`` interpolations against the root.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from flowlm.errors import CheckpointError

# Modules whose classes may appear in hyper-parameters; they are never imported, only stood in for.
INERT_MODULES = ("omegaconf", "transformers", "tokenizers", "typing", "pathlib", "numpy", "collections")
INERT_BUILTINS = {f"builtins.{n}" for n in ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool")}


class Inert:
    """Stand-in for a foreign class: keeps constructor arguments and pickled state, runs no code."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


def _stand_in(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (Inert,), {"qualname": name})


def is_inert_name(name: str) -> bool:
    return name in INERT_BUILTINS or name.split(".", 1)[0] in INERT_MODULES


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` of ``path`` with foreign classes replaced by :class:`Inert` stand-ins.

    Raises CheckpointError for files torch cannot read and for pickles that reference any global
    outside the inert allow-list (the names are listed; nothing is executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist: pass the reference .ckpt file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch.save checkpoint (zip format): pass a Lightning .ckpt file")
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # torch raises several types for malformed archives
        raise CheckpointError(f"{path} cannot be read as a torch checkpoint ({err})") from None
    refused = sorted(name for name in foreign if not is_inert_name(name))
    if refused:
        raise CheckpointError(
            f"refusing to unpickle {path}: it references {', '.join(refused)}, which a checkpoint never needs "
            "(it would run code on load); obtain the file from a trusted source"
        )
    stand_ins = [(_stand_in(name), name) for name in foreign]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, ... from a damaged file
        raise CheckpointError(f"{path} cannot be unpickled safely ({type(err).__name__}: {err})") from None


def to_plain(obj: Any) -> Any:
    """Dicts, lists and scalars from unpickled OmegaConf stand-ins (other stand-ins become ``"<name>"``)."""
    if isinstance(obj, Inert):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj.qualname.startswith("omegaconf.nodes."):
            return to_plain(state.get("_val"))
        if obj.qualname in ("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"):
            return to_plain(state.get("_content"))
        return repr(obj)
    if isinstance(obj, dict):
        return {str(k) if isinstance(k, Inert) else k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


_WHOLE = re.compile(r"^\$\{([\w.\-]+)\}$")
_PART = re.compile(r"\$\{([\w.\-]+)\}")


def resolve_interpolations(root: dict, depth: int = 8) -> dict:
    """Replace ``${a.b}`` strings by the value at ``a.b`` of ``root`` (resolver calls stay as text)."""

    def lookup(dotted: str, level: int) -> Any:
        node: Any = root
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return walk(node, level + 1)

    def walk(node: Any, level: int) -> Any:
        if level > depth:
            return node
        if isinstance(node, dict):
            return {k: walk(v, level) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, level) for v in node]
        if isinstance(node, str) and "${" in node:
            whole = _WHOLE.match(node)
            if whole:
                value = lookup(whole.group(1), level)
                return node if value is None else value
            return _PART.sub(lambda m: str(v) if (v := lookup(m.group(1), level)) is not None else m.group(0), node)
        return node

    return walk(root, 0)
