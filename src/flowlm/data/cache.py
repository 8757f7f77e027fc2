"""On-disk token caches: a corpus split, tokenized and packed into blocks, memory-mapped for training.

A cache is a folder ``<cache_dir>/blocks/<key>/`` holding

* ``blocks.bin``: the blocks, row after row, as raw ``uint16`` (vocabularies of at most 65536 ids) or
  ``uint32``, native byte order;
* ``meta.json``: corpus spec and split, tokenizer spec and fingerprint, ``block_len``, ``dtype``,
  ``n_blocks``, ``n_tokens_dropped`` and a few more counts.

The key names the corpus, split and block length and ends with a hash of the corpus fingerprint (for local
files: their paths, sizes and modification times), the tokenizer fingerprint and ``block_len``; changing
any of them gives a new folder, so a stale cache is never read. The folder is built under a hidden
temporary name and renamed into place only when complete: a crash or Ctrl-C never leaves a partial cache
under the final name, and an existing complete cache is reused without touching the corpus (so it works
offline). The corpus is streamed through ``Tokenizer.encode_batch`` 1000 documents at a time and packed
by :func:`flowlm.data.packing.pack_wrapped_batches`, so memory stays small whatever the corpus size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flowlm.data.corpus import Corpus
from flowlm.data.packing import PackStats, pack_wrapped_batches
from flowlm.data.sources import load_corpus
from flowlm.data.tokenizer import Tokenizer
from flowlm.errors import DataError

BLOCKS_FILE = "blocks.bin"
META_FILE = "meta.json"
CACHE_FORMAT = 1  # bump when the packing rule or file layout changes
ENCODE_CHUNK = 1000


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/flowlm``, else ``~/.cache/flowlm``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flowlm"


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of ``text`` (its tail, which holds the file name for paths)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")[-limit:] or "x"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``final``; rename it to ``final`` if the block succeeds.

    On any exception the temporary folder is deleted. If another process finished ``final`` first, ours is
    discarded and theirs kept. Leftovers of dead processes on this host (same key) are removed first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    host = slug(socket.gethostname(), 20)
    for stale in final.parent.glob(f".{final.name}.tmp-{host}-*"):
        pid = stale.name.split("-")[-2] if stale.name.count("-") >= 2 else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{host}-{os.getpid()}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # someone else completed it meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(folder: Path) -> bool:
    meta = _read_meta(folder)
    if meta is None or meta.get("format") != CACHE_FORMAT:
        return False
    expected = meta["n_blocks"] * meta["block_len"] * np.dtype(meta["dtype"]).itemsize
    blocks = folder / BLOCKS_FILE
    return blocks.is_file() and blocks.stat().st_size == expected


def cache_key(corpus: Corpus, tokenizer: Tokenizer, block_len: int) -> str:
    """Folder name of the cache for this corpus split, tokenizer and block length."""
    digest = hashlib.sha256(
        "\x00".join(map(str, (CACHE_FORMAT, corpus.fingerprint, tokenizer.fingerprint, block_len))).encode()
    ).hexdigest()
    return f"{slug(corpus.spec)}-{corpus.split}-{slug(tokenizer.name, 24)}-L{block_len}-{digest[:16]}"


def storage_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits, else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _encoded(corpus: Corpus, tokenizer: Tokenizer, bar, chunk_docs: int) -> Iterator[list[int]]:
    docs = iter(corpus)
    while chunk := list(islice(docs, chunk_docs)):
        yield from tokenizer.encode_batch(chunk)
        bar.update(len(chunk))


def build_token_cache(
    corpus_spec: str | Corpus,
    tokenizer: Tokenizer,
    block_len: int,
    split: str = "train",
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    chunk_docs: int = ENCODE_CHUNK,
) -> Path:
    """Tokenize and pack a corpus split into a memory-mappable cache folder; return that folder.

    An existing complete cache with the same key is returned at once. ``block_len`` must be >= 3. Raises
    :class:`DataError` when the split does not fill a single block.
    """
    if int(block_len) != block_len or block_len < 3:
        raise DataError(f"data.seq_len={block_len!r}: use a whole number >= 3, e.g. 128 or 1024")
    block_len = int(block_len)
    corpus = corpus_spec if isinstance(corpus_spec, Corpus) else load_corpus(corpus_spec, split)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / "blocks" / cache_key(corpus, tokenizer, block_len)
    if _is_complete(final):
        return final
    if final.exists():
        warnings.warn(f"token cache {final} is incomplete or corrupt; rebuilding it", stacklevel=2)
        shutil.rmtree(final, ignore_errors=True)

    dtype = storage_dtype(tokenizer.vocab_size)
    stats = PackStats()
    start = time.perf_counter()
    with atomic_dir(final) as tmp:
        with (
            tqdm(
                desc=f"tokenizing {corpus.spec} [{corpus.split}]", unit="doc", disable=not progress, dynamic_ncols=True
            ) as bar,
            open(tmp / BLOCKS_FILE, "wb") as out,
        ):
            docs = _encoded(corpus, tokenizer, bar, chunk_docs)
            for blocks in pack_wrapped_batches(
                docs, block_len, tokenizer.bos_id, tokenizer.eos_id, dtype=dtype, stats=stats
            ):
                blocks.tofile(out)
                bar.set_postfix(blocks=stats.n_blocks, refresh=False)
        if stats.n_blocks == 0:
            raise DataError(empty_split_message(corpus, stats, block_len))
        seconds = time.perf_counter() - start
        meta = {
            "format": CACHE_FORMAT,
            "corpus": corpus.spec,
            "split": corpus.split,
            "corpus_fingerprint": corpus.fingerprint,
            "tokenizer": tokenizer.spec,
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "pad_id": tokenizer.pad_id,
            "block_len": block_len,
            "dtype": dtype.name,
            "n_blocks": stats.n_blocks,
            "n_docs": stats.n_docs,
            "n_tokens": stats.n_tokens,
            "n_tokens_dropped": stats.n_dropped,
            "build_seconds": round(seconds, 3),
            "tokens_per_second": round(stats.n_tokens / seconds) if seconds > 0 else None,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return final


def empty_split_message(corpus: Corpus, stats: PackStats, block_len: int) -> str:
    """Why a split gave no block, and what to change."""
    where = f"corpus {corpus.spec!r} [{corpus.split}]"
    if stats.n_docs == 0:
        rule = f" ({corpus.held_out})" if corpus.held_out else ""
        return f"{where} is empty{rule}: give a bigger corpus"
    return (
        f"{where} has {stats.n_tokens} tokens in {stats.n_docs} documents, fewer than one block of "
        f"data.seq_len={block_len}: use a smaller data.seq_len or a bigger corpus"
    )


class PackedBlocks(torch.utils.data.Dataset):
    """The blocks of a token cache folder as a map-style dataset of ``LongTensor[block_len]``.

    The file is memory-mapped on first access in each process, so the dataset pickles cheaply to
    ``DataLoader`` workers and never loads the corpus into RAM.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = _read_meta(self.path)
        if meta is None or not (self.path / BLOCKS_FILE).is_file():
            raise DataError(
                f"{str(self.path)!r} is not a flowlm token cache (needs {BLOCKS_FILE} and "
                f"{META_FILE}): build it with flowlm.data.build_token_cache"
            )
        self.meta = meta
        self.block_len: int = meta["block_len"]
        self.vocab_size: int = meta["vocab_size"]
        self.dtype = np.dtype(meta["dtype"])
        self._n: int = meta["n_blocks"]
        if not _is_complete(self.path):
            raise DataError(
                f"token cache {str(self.path)!r} is incomplete or corrupt: delete the folder and build it again"
            )
        self._mm: np.memmap | None = None

    def _blocks(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.path / BLOCKS_FILE, dtype=self.dtype, mode="r", shape=(self._n, self.block_len))
        return self._mm

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> torch.Tensor:
        i = int(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"block {index} out of range for {self._n} blocks")
        return torch.from_numpy(self._blocks()[i].astype(np.int64))

    def __repr__(self) -> str:
        return (
            f"PackedBlocks({self.meta['corpus']!r} [{self.meta['split']}], {self.meta['tokenizer']!r}, "
            f"{self._n} blocks of {self.block_len})"
        )
