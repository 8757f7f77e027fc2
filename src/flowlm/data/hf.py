"""Hugging Face datasets as flowlm corpora (used by :func:`flowlm.data.load_corpus`).

Known names (the paper's data, loaded as MDLM does):

* ``lm1b``: dataset ``lm1b``, field ``text``; ``validation`` is LM1B's ``test`` split. Sentences are
  detokenized (``"it 's here , he said ."`` -> ``"it's here, he said."``).
* ``openwebtext``: dataset ``openwebtext``, field ``text``; it has only a train split, so ``validation``
  is its last 100,000 documents and ``train`` all the others (as in the paper and MDLM). Streamed by default.
* ``wikitext`` / ``wikitext103``, ``wikitext2``: dataset ``wikitext`` with config ``wikitext-103-raw-v1`` /
  ``wikitext-2-raw-v1``. Rows (lines) are grouped into whole articles, one document each (a new article
  starts at every `` = Title = `` row), empty rows dropped, and the text detokenized (``@-@`` -> ``-``, ...).

``hf:<name>[:<config>]`` loads any other dataset with a ``text`` field, and ``hf:<folder>`` a local one
(a ``save_to_disk`` folder, always memory-mapped, or a folder of json/csv/parquet files that
``datasets.load_dataset`` reads).
``validation`` is the first of its ``validation`` / ``valid`` / ``val`` / ``test`` splits; when it has none,
every 20th ``train`` document is held out as for local text files.

Datasets are opened lazily, when the corpus is first iterated (so a finished token cache never touches the
network); without network and without a local copy in the ``datasets`` cache that raises a
:class:`DataError`. Token caches key on the spec, not on the Hub revision of the dataset.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flowlm.data.corpus import CORPUS_FORMAT, VALID_EVERY, Corpus
from flowlm.errors import DataError
from flowlm.network import hub_access

OWT_VALID_DOCS = 100_000
OWT_TRAIN_DOCS = 8_013_769  # size of openwebtext's train split, used when streaming cannot tell it
BATCH = 1000
_VALID_NAMES = ("validation", "valid", "val", "test")


# --------------------------------------------------------------------------- detokenizers
def _detok_common(s: str) -> str:
    s = re.sub(r" ([.,;:!?%)\]}])", r"\1", s)  # no space before closing punctuation
    s = re.sub(r"([(\[{$£€]) ", r"\1", s)  # nor after opening brackets and currency signs
    s = re.sub(r" (n't|'(?=[A-Za-z]))", r"\1", s)  # contractions: do n't, it 's, we 're
    s = re.sub(r'" ([^"\n]*?) "', r'"\1"', s)  # "  quoted  "
    return s


def lm1b_detokenize(s: str) -> str:
    """Undo LM1B's word tokenization (spaces around punctuation and contractions)."""
    s = re.sub(r"(https?) : / / ", r"\1://", s)
    return _detok_common(s).strip()


def wikitext_detokenize(s: str) -> str:
    """Undo WikiText's tokenization: ``@-@`` joins, spaced punctuation, ``= = Heading = =``."""
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = re.sub(r"(?<==) (?==)", "", s)  # "= = Gameplay = =" -> "== Gameplay =="
    return _detok_common(s).strip()


_TITLE = re.compile(r"^ ?= [^=].* = ?$")


def wikitext_articles(rows: Iterable[str]) -> Iterator[str]:
    """Group WikiText rows into articles: a `` = Title = `` row starts a new one; empty rows dropped."""
    article: list[str] = []
    for row in rows:
        line = row.strip("\n")
        if not line.strip():
            continue
        if _TITLE.match(line) and article:
            yield "\n\n".join(article)
            article = []
        article.append(wikitext_detokenize(line))
    if article:
        yield "\n\n".join(article)


# --------------------------------------------------------------------------- dataset table
@dataclass(frozen=True)
class _Source:
    path: str
    config: str | None = None
    detokenize: Callable[[str], str] | None = None
    group: Callable[[Iterable[str]], Iterator[str]] | None = None
    owt_split: bool = False  # validation = last OWT_VALID_DOCS documents of train
    stream_default: bool = False


_WIKI103 = _Source("wikitext", "wikitext-103-raw-v1", group=wikitext_articles)
KNOWN = {
    "lm1b": _Source("lm1b", detokenize=lm1b_detokenize),
    "openwebtext": _Source("openwebtext", owt_split=True, stream_default=True),
    "wikitext": _WIKI103,
    "wikitext103": _WIKI103,
    "wikitext2": _Source("wikitext", "wikitext-2-raw-v1", group=wikitext_articles),
}


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _load_error(label: str, e: Exception) -> DataError:
    return DataError(
        f"cannot load Hugging Face dataset {label!r} ({_one_line(e)}): it needs network access "
        "or a local copy; check the name, or use a local corpus such as 'shakespeare'"
    )


def _pick_split(available: Iterable[str], split: str, label: str) -> tuple[str, bool]:
    """(split name to read, whether to hold out every 20th document of it for validation)."""
    names = list(available)
    wanted = ("train",) if split == "train" else _VALID_NAMES if split == "validation" else ("test",)
    if split == "train" and "train" in names and not any(v in names for v in _VALID_NAMES):
        return "train", True
    for name in wanted:
        if name in names:
            return name, False
    if split == "validation" and "train" in names:
        return "train", True
    raise DataError(f"dataset {label!r} has no {split!r} split (it has {', '.join(names) or 'none'}): use one of those")


def _hold_out(docs: Iterator[str], split: str) -> Iterator[str]:
    want_valid = split == "validation"
    for i, doc in enumerate(docs):
        if (i % VALID_EVERY == VALID_EVERY - 1) == want_valid:
            yield doc


def _texts(ds, label: str) -> Iterator[str]:
    for batch in ds.iter(batch_size=BATCH):
        if "text" not in batch:
            raise DataError(
                f"dataset {label!r} has no 'text' field (it has {', '.join(batch)}): "
                "flowlm reads the 'text' field; pick a dataset with one"
            )
        yield from batch["text"]


def _open(source: _Source, label: str, split: str, streaming: bool):
    """The ``datasets`` object for ``split`` and whether to hold out every 20th document of it."""
    import datasets

    local = Path(source.path)
    offline = None
    try:
        if local.is_dir() and is_saved_dataset(local):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.Dataset):  # already memory-mapped: streaming is moot
                loaded = datasets.DatasetDict({"train": loaded})
        else:
            with hub_access(needed=not local.exists()) as offline:
                if source.owt_split:
                    split_kw = {"split": "train", "streaming": streaming}
                    loaded = {"train": datasets.load_dataset(source.path, source.config, **split_kw)}
                else:
                    loaded = datasets.load_dataset(source.path, source.config, streaming=streaming)
    except DataError:
        raise
    except Exception as e:  # network, missing dataset, bad files: datasets raises many types
        if offline:
            raise DataError(
                f"cannot load Hugging Face dataset {label!r}: it is not in the local cache and the Hub cannot be "
                f"reached ({offline}); connect to the network, or use a local corpus such as 'shakespeare'"
            ) from None
        raise _load_error(label, e) from e
    if source.owt_split:
        return _owt_slice(loaded["train"], split), False
    name, hold_out = _pick_split(loaded.keys(), split, label)
    return loaded[name], hold_out


def _owt_slice(ds, split: str):
    try:
        n = len(ds)
    except TypeError:  # streaming: ask the metadata, else use the known size
        info = getattr(ds, "info", None)
        splits = getattr(info, "splits", None) or {}
        n = splits["train"].num_examples if "train" in splits else OWT_TRAIN_DOCS
    cut = max(n - OWT_VALID_DOCS, 0)
    if hasattr(ds, "select"):
        return ds.select(range(cut)) if split == "train" else ds.select(range(cut, n))
    return ds.take(cut) if split == "train" else ds.skip(cut)


def _fingerprint(source: _Source, split: str) -> str:
    parts = ["hf", source.path, source.config, split, CORPUS_FORMAT]
    local = Path(source.path)
    if local.exists():
        parts.append(str(local.resolve()))
        parts += [
            (str(p.relative_to(local)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(local.rglob("*"))
            if p.is_file()
        ]
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()


def hf_corpus(spec: str, split: str, *, streaming: bool | None = None) -> Corpus:
    """The corpus for a known dataset name or an ``hf:<name>[:<config>]`` / ``hf:<folder>`` spec."""
    if spec in KNOWN:
        source = KNOWN[spec]
    else:
        rest = spec[3:].strip()
        if not rest:
            raise DataError(f"bad corpus spec {spec!r}: write 'hf:<name>[:<config>]' or 'hf:<local folder>'")
        if Path(rest).expanduser().exists():
            source = _Source(str(Path(rest).expanduser()))
        else:
            name, _, config = rest.partition(":")
            source = _Source(name, config or None)
    if source.owt_split and split == "test":
        raise DataError(f"dataset {spec!r} has no test split: use 'validation' (its last {OWT_VALID_DOCS:,} documents)")
    stream = source.stream_default if streaming is None else bool(streaming)
    label = spec

    def docs() -> Iterator[str]:
        ds, hold_out = _open(source, label, split, stream)
        texts = _texts(ds, label)
        if source.group is not None:
            texts = source.group(texts)
        elif source.detokenize is not None:
            texts = (source.detokenize(t) for t in texts)
        texts = (t for t in texts if t and t.strip())
        return _hold_out(texts, split) if hold_out else texts

    return Corpus(spec, split, docs, _fingerprint(source, split))
