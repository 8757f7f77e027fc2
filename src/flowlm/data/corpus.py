"""Corpora: the embedded Shakespeare and local text files; :func:`flowlm.data.sources.load_corpus` (spec, split)
gives the documents (strings) of a corpus split, of these or of a Hugging Face dataset (:mod:`flowlm.data.hf`).

Specs:

* ``shakespeare`` (default, embedded, offline): the 42 Gutenberg texts of Shakespeare's works shipped in
  ``assets/shakespeare.txt.xz``. A document is one blank-line-separated paragraph, which in the plays is one
  speech with its speaker prefix (``"Ham.\\nTo be, or not to be, ..."``), in the poems one stanza or sonnet:
  short, sentence-like units, as LM1B's sentences (about 38.9k documents, 5 MB).
* a local ``.txt`` file: one document per blank-line-separated paragraph (leading/trailing whitespace
  stripped, inner newlines kept); a file with no blank line at all is read as one document per line. A
  document longer than ``MAX_DOC_CHARS`` (10,000 characters) is cut into pieces of at most that length (at
  the last line break, else the last space, before the limit), so a single long line or paragraph still
  gives a validation split.
* a local folder: every ``*.txt`` file below it, in sorted path order, each read as above, with document
  numbering running on across files. A folder holding a dataset saved by ``datasets`` (``save_to_disk``) is
  read as a Hugging Face dataset instead.
* Hugging Face datasets (see :mod:`flowlm.data.hf`): ``lm1b``, ``openwebtext``, ``wikitext`` (103),
  ``wikitext2``, or ``hf:<name>[:<config>]`` / ``hf:<local folder>`` for any dataset with a ``text`` field.

Splits of the embedded corpus and of local files: documents are numbered 0, 1, 2, ... in reading order and
every 20th one (number % 20 == 19, i.e. 5%) is held out as ``validation``; the rest is ``train``. The rule
is deterministic, streams (no count needed first) and spreads the held-out text over the whole corpus.
"""

from __future__ import annotations

import hashlib
import lzma
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from flowlm.errors import DataError

ASSETS = Path(__file__).resolve().parent / "assets"
SHAKESPEARE_FILE = "shakespeare.txt.xz"
WORK_SEPARATOR = "\n\f\n"
VALID_EVERY = 20
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
}
CHOICES = (
    "'shakespeare', a .txt file or a folder of them, 'lm1b', 'openwebtext', 'wikitext', 'wikitext2', "
    "or 'hf:<name>[:<config>]'"
)
# Bump when the rules turning files into documents change, so old token caches are not reused.
CORPUS_FORMAT = 1
LOCAL_FORMAT = 2  # local files only: 2 cuts documents longer than MAX_DOC_CHARS
MAX_DOC_CHARS = 10_000


class Corpus(Iterable[str]):
    """A re-iterable corpus split: each ``iter()`` reads the documents again from the start.

    ``fingerprint`` identifies the exact text (spec, split, local file sizes and times, format version),
    which is what the token cache keys on.
    """

    def __init__(
        self,
        spec: str,
        split: str,
        make_iter: Callable[[], Iterator[str]],
        fingerprint: str,
        held_out: str | None = None,
    ) -> None:
        self.spec, self.split, self._make_iter, self.fingerprint = spec, split, make_iter, fingerprint
        self.held_out = held_out  # how the validation split is chosen, for error messages

    def __iter__(self) -> Iterator[str]:
        return self._make_iter()

    def __repr__(self) -> str:
        return f"Corpus({self.spec!r}, split={self.split!r})"


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()


def normalize_split(split: str) -> str:
    """``train`` / ``validation`` (also ``valid``, ``val``) / ``test``, or a DataError."""
    key = _SPLIT_ALIASES.get(str(split).strip().lower())
    if key is None:
        raise DataError(f"unknown split {split!r}: use 'train', 'validation' or 'test'")
    return key


def _held_out(split: str, spec: str) -> Callable[[int], bool]:
    if split == "test":
        raise DataError(
            f"corpus {spec!r} has no test split (5% of its documents form 'validation'): use split='validation'"
        )
    want_valid = split == "validation"
    return lambda i: (i % VALID_EVERY == VALID_EVERY - 1) == want_valid


HELD_OUT = f"every {VALID_EVERY}th document ({100 // VALID_EVERY}%) is held out as validation"


def pieces(doc: str, limit: int = MAX_DOC_CHARS) -> Iterator[str]:
    """``doc`` cut into pieces of at most ``limit`` characters, at the last line break (else space) before it."""
    while len(doc) > limit:
        cut = doc.rfind("\n", 0, limit + 1)
        if cut <= 0:
            cut = doc.rfind(" ", 0, limit + 1)
        if cut <= 0:
            cut = limit
        head, doc = doc[:cut].strip(), doc[cut:].strip()
        if head:
            yield head
    if doc:
        yield doc


def _select(docs: Iterable[str], keep: Callable[[int], bool]) -> Iterator[str]:
    for i, doc in enumerate(docs):
        if keep(i):
            yield doc


_BLANK = re.compile(r"\n[ \t\r\f\v]*\n")


def _paragraphs(text: str) -> Iterator[str]:
    for para in _BLANK.split(text):
        para = para.strip()
        if para:
            yield para


def shakespeare_works() -> list[str]:
    """The 42 works of the embedded corpus as strings, in the vendored order."""
    path = ASSETS / SHAKESPEARE_FILE
    if not path.is_file():
        raise DataError(f"embedded corpus {path} is missing: reinstall flowlm or run scripts/vendor_assets.py")
    return lzma.decompress(path.read_bytes()).decode("utf-8").split(WORK_SEPARATOR)


def shakespeare_corpus(split: str) -> Corpus:
    keep = _held_out(split, "shakespeare")

    def docs() -> Iterator[str]:
        for work in shakespeare_works():
            yield from _paragraphs(work)

    digest = hashlib.sha256((ASSETS / SHAKESPEARE_FILE).read_bytes()).hexdigest()
    return Corpus(
        "shakespeare",
        split,
        lambda: _select(docs(), keep),
        _hash("shakespeare", digest, split, CORPUS_FORMAT),
        HELD_OUT,
    )


def _has_blank_line(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return any(not line.strip() for line in f)


def _file_docs(path: Path) -> Iterator[str]:
    """Documents of one text file, streamed line by line (see the module docstring for the rule)."""
    by_paragraph = _has_blank_line(path)
    try:
        with open(path, encoding="utf-8") as f:
            para: list[str] = []
            for line in f:
                if not by_paragraph:
                    if line.strip():
                        yield line.strip()
                elif line.strip():
                    para.append(line.rstrip("\r\n"))
                elif para:
                    yield "\n".join(para).strip()
                    para = []
            if para:
                yield "\n".join(para).strip()
    except UnicodeDecodeError as e:
        raise DataError(f"{str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to UTF-8") from e


def _text_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(
            f"folder {str(root)!r} holds no .txt files: add some, or give a .txt file or a saved Hugging Face dataset"
        )
    return files


def local_corpus(spec: str, path: Path, split: str) -> Corpus:
    keep = _held_out(split, spec)
    files = [path] if path.is_file() else _text_files(path)

    def docs() -> Iterator[str]:
        for f in files:
            for doc in _file_docs(f):
                yield from pieces(doc)

    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    fingerprint = _hash("local", stats, split, CORPUS_FORMAT, LOCAL_FORMAT)
    held_out = f"{HELD_OUT}; documents are blank-line-separated paragraphs (or lines), <= {MAX_DOC_CHARS:,} chars"
    return Corpus(spec, split, lambda: _select(docs(), keep), fingerprint, held_out)
