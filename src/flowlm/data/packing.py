"""Wrapped packing of tokenized documents into fixed-length blocks (MDLM's ``wrap``).

The rule, for block length ``L`` (``L >= 3``):

1. every document's ids get one ``eos_id`` appended: ``d_1 + [EOS], d_2 + [EOS], ...``;
2. these are concatenated into one stream, in order, across all documents;
3. the stream is cut into consecutive chunks of ``L - 2`` ids;
4. every chunk becomes one block ``[BOS] + chunk + [EOS]``, so every block starts with BOS and ends with
   EOS, and a document may run across blocks (its piece in the next block then follows that block's BOS);
5. the final chunk, shorter than ``L - 2``, is dropped (its size is reported as ``stats.n_dropped``).

Example, ``L = 5`` (chunks of 3), documents ``[1, 2]`` and ``[3, 4, 5]``, BOS = 8, EOS = 9::

    stream  1 2 9 3 4 5 9
    blocks  [8 1 2 9 9]  [8 3 4 5 9]      dropped: [9] -> n_dropped = 1

This is exactly MDLM's ``_group_texts`` (which the paper follows, for LM1B and OWT) except that MDLM cuts
and drops remainders per ``datasets.map`` batch of 1000 documents, while here the stream runs on across the
whole corpus, so at most ``L - 3`` ids are lost in total. Putting BOS/EOS on every block (rather than only
at document boundaries) keeps the first and last positions fixed, as in the models the paper compares to.
Empty documents contribute a lone EOS. No padding is ever produced.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

# Ids gathered before cutting blocks with numpy (amortizes the list -> array conversion).
_FLUSH_CHUNKS = 256


@dataclass
class PackStats:
    """Counters filled in while packing. ``n_dropped`` is final once the iterator is exhausted."""

    n_docs: int = 0
    n_tokens: int = 0  # document ids plus the EOS appended to each document
    n_blocks: int = 0
    n_dropped: int = 0  # ids of the final partial chunk, not in any block


def _check(block_len: int, bos_id: int, eos_id: int) -> None:
    if int(block_len) != block_len or block_len < 3:
        raise ValueError(f"block_len must be an integer >= 3 (BOS + at least one token + EOS), got {block_len}")
    for label, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if int(value) != value or value < 0:
            raise ValueError(f"{label} must be a non-negative integer, got {value}")


def pack_wrapped_batches(
    token_docs: Iterable[Iterable[int]],
    block_len: int,
    bos_id: int,
    eos_id: int,
    *,
    dtype: np.dtype | type = np.int64,
    stats: PackStats | None = None,
) -> Iterator[np.ndarray]:
    """Like :func:`pack_wrapped` but yields 2-D arrays ``[n, block_len]`` of several blocks at a time."""
    _check(block_len, bos_id, eos_id)
    return _batches(
        token_docs,
        int(block_len),
        int(bos_id),
        int(eos_id),
        np.dtype(dtype),
        stats if stats is not None else PackStats(),
    )


def _batches(docs, block_len, bos, eos, dtype, stats) -> Iterator[np.ndarray]:
    chunk = block_len - 2
    flush_at = chunk * _FLUSH_CHUNKS
    buf: list[int] = []

    def cut(ids: list[int]) -> tuple[np.ndarray, list[int]]:
        n = len(ids) // chunk
        blocks = np.empty((n, block_len), dtype=dtype)
        blocks[:, 0] = bos
        blocks[:, 1:-1] = np.asarray(ids[: n * chunk], dtype=dtype).reshape(n, chunk)
        blocks[:, -1] = eos
        stats.n_blocks += n
        return blocks, ids[n * chunk :]

    for doc in docs:
        before = len(buf)
        buf.extend(doc)
        buf.append(eos)
        stats.n_docs += 1
        stats.n_tokens += len(buf) - before
        if len(buf) >= flush_at:
            blocks, buf = cut(buf)
            yield blocks
    if len(buf) >= chunk:
        blocks, buf = cut(buf)
        yield blocks
    stats.n_dropped = len(buf)


def pack_wrapped(
    token_docs: Iterable[Iterable[int]],
    block_len: int,
    bos_id: int,
    eos_id: int,
    *,
    dtype: np.dtype | type = np.int64,
    stats: PackStats | None = None,
) -> Iterator[np.ndarray]:
    """Stream ``block_len``-long blocks (1-D arrays) from tokenized documents, by the module's rule.

    Pass a :class:`PackStats` as ``stats`` to learn how many blocks were made and, once the iterator is
    exhausted, how many trailing ids were dropped. ``block_len < 3`` or a negative BOS/EOS raises
    ``ValueError`` at once. The input is consumed lazily, so corpora larger than memory are fine.
    """
    batches = pack_wrapped_batches(token_docs, block_len, bos_id, eos_id, dtype=dtype, stats=stats)
    return (row for batch in batches for row in batch)
