"""The demo recipe's corpus: public-domain English prose plus the embedded Shakespeare, one document per work.

``build(pd_english, out_file)`` writes one UTF-8 file in which every document (a whole work: a book, an
address, a play) is one blank-line-free block, and blocks are separated by one blank line. flowlm reads such a
file as one document per block and holds out every 20th (number % 20 == 19) as ``validation``, so the split
is flowlm's own rule applied to whole works, in this file's order: works sorted by (source, name).

Inside a document, paragraphs are separated by a single newline; a paragraph of hard-wrapped prose (every line
but its last at least ``WRAPPED`` characters) is joined into one line, verse keeps its line breaks.
State of the Union addresses lose their ``(Applause.)`` / ``(Laughter.)`` markers. The three Gutenberg
Shakespeare plays (Caesar, Hamlet, Macbeth, 1599-1623 spellings) are left out: the embedded corpus holds the
same plays, which would otherwise leak between the splits.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

VALID_EVERY = 20  # flowlm.data.corpus.VALID_EVERY: every 20th document is held out
WRAPPED = 55  # Gutenberg prose wraps at ~60-75 characters; verse lines are mostly shorter
SKIPPED = ("shakespeare-caesar.txt", "shakespeare-hamlet.txt", "shakespeare-macbeth.txt")
_BLANK = re.compile(r"\n[ \t\r\f\v]*\n")
_MARKER = re.compile(r"\s*\((?:Applause|Laughter)\.?\)")


def paragraphs(text: str) -> list[str]:
    """The paragraphs of a work, wrapped prose joined into single lines, verse kept line by line."""
    out = []
    for para in _BLANK.split(text.replace("\r\n", "\n")):
        lines = [line.rstrip() for line in para.strip("\n").split("\n") if line.strip()]
        if not lines:
            continue
        if len(lines) > 1 and all(len(line) >= WRAPPED for line in lines[:-1]):
            out.append(" ".join(line.strip() for line in lines))
        else:
            out.append("\n".join(line.strip() if len(lines) == 1 else line for line in lines))
    return out


def document(text: str, *, sotu: bool = False) -> str:
    if sotu:
        text = _MARKER.sub("", text)
    return "\n".join(paragraphs(text))


def read(path: Path) -> str:
    """UTF-8, or Latin-1 for the one Gutenberg file stored in it (chesterton-ball.txt: five accented letters)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def works(pd_english: Path, shakespeare: bool = True) -> list[tuple[str, str]]:
    """(name, document) for every work, sorted by (source, name): gutenberg/, shakespeare/, sotu/."""
    from flowlm.data.corpus import shakespeare_works

    items = []
    for path in sorted((pd_english / "gutenberg").glob("*.txt")):
        if path.name not in SKIPPED:
            items.append((f"gutenberg/{path.name}", document(read(path))))
    for work in shakespeare_works() if shakespeare else []:
        title = work.strip().split("\n", 1)[0].strip()
        items.append((f"shakespeare/{title}", document(work)))
    for path in sorted((pd_english / "sotu").glob("*.txt")):
        items.append((f"sotu/{path.name}", document(read(path), sotu=True)))
    return sorted(items)


def build(pd_english: Path, out_file: Path, shakespeare: bool = True) -> dict:
    """Write the corpus file and return its manifest (also written beside it as ``<name>.json``).
    ``shakespeare=False`` leaves out the embedded works (for fast tests)."""
    items = works(Path(pd_english), shakespeare)
    text = "\n\n".join(doc for _, doc in items) + "\n"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out_file)
    held_out = [name for i, (name, _) in enumerate(items) if i % VALID_EVERY == VALID_EVERY - 1]
    sizes = {name: len(doc.encode("utf-8")) for name, doc in items}
    manifest = {
        "documents": len(items),
        "bytes": len(text.encode("utf-8")),
        "words": len(text.split()),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "held_out": held_out,
        "held_out_bytes": sum(sizes[name] for name in held_out),
        "rule": "documents = works sorted by (source, name); document i is held out iff i % 20 == 19",
        "skipped": list(SKIPPED),
    }
    out_file.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    return manifest
