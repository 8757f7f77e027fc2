"""``load_corpus(spec, split)``: which corpus a spec names (the spec grammar is in :mod:`flowlm.data.corpus`).

It sits above both kinds of corpus: the embedded and local ones (:mod:`flowlm.data.corpus`) and the Hugging
Face datasets (:mod:`flowlm.data.hf`, which builds on the former's :class:`~flowlm.data.corpus.Corpus`).
"""

from __future__ import annotations

from pathlib import Path

from flowlm.data import hf
from flowlm.data.corpus import CHOICES, Corpus, local_corpus, normalize_split, shakespeare_corpus
from flowlm.errors import DataError


def load_corpus(spec: str, split: str = "train", *, streaming: bool | None = None) -> Corpus:
    """The documents of ``split`` of the corpus named by ``spec`` (see the module docstring).

    ``streaming`` only matters for Hugging Face datasets (default: stream ``openwebtext``, download and
    memory-map the others). The result is re-iterable and carries a ``fingerprint`` for caching.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"corpus spec must be a non-empty string, got {spec!r}: use {CHOICES}")
    spec = spec.strip()
    split = normalize_split(split)
    if spec == "shakespeare":
        return shakespeare_corpus(split)
    if spec in hf.KNOWN or spec.startswith("hf:"):
        return hf.hf_corpus(spec, split, streaming=streaming)
    path = Path(spec).expanduser()
    if path.is_dir() and hf.is_saved_dataset(path):
        return hf.hf_corpus(f"hf:{spec}", split, streaming=streaming)
    if path.is_file() or path.is_dir():
        return local_corpus(spec, path, split)
    raise DataError(f"unknown corpus {spec!r} (and no such file or folder): use {CHOICES}")
