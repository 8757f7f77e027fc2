"""One-call helpers: the tokenizer for a corpus, and the packed blocks of a corpus split.

``bpe:<size>`` and ``char`` tokenizers are learnt from the *train* split of the corpus they will encode
(only its first ``max_train_mb`` megabytes of text, for speed). The trained tokenizer is kept in
``<cache_dir>/tokenizers/<key>/`` (key: tokenizer spec, corpus fingerprint, text budget), so it is trained
once and every later run, and every token cache built with it, sees the very same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from flowlm.data.cache import PackedBlocks, atomic_dir, build_token_cache, default_cache_dir, slug
from flowlm.data.sources import load_corpus
from flowlm.data.tokenizer import META_FILE, Tokenizer, is_trained_spec, load_tokenizer, parse_bpe_size

DEFAULT_TRAIN_MB = 50.0
TRAIN_FORMAT = 1  # bump when tokenizer training changes


def _first_bytes(texts: Iterable[str], budget: int) -> Iterator[str]:
    used = 0
    for text in texts:
        if used >= budget:
            return
        used += len(text.encode("utf-8"))
        yield text


def prepare_tokenizer(
    tokenizer_spec: str,
    corpus_spec: str,
    cache_dir: str | Path | None = None,
    *,
    max_train_mb: float = DEFAULT_TRAIN_MB,
) -> Tokenizer:
    """The tokenizer named by ``tokenizer_spec``, trained on ``corpus_spec``'s train split if it must be.

    Fixed tokenizers (``gpt2``, ``bert-base-uncased``, Hugging Face names, saved folders) ignore the corpus.
    """
    spec = tokenizer_spec.strip() if isinstance(tokenizer_spec, str) else tokenizer_spec
    if not isinstance(spec, str) or not is_trained_spec(spec):
        return load_tokenizer(spec)
    if spec != "char":
        parse_bpe_size(spec)  # reject a bad size before reading the corpus
    corpus = load_corpus(corpus_spec, "train")
    budget = int(max_train_mb * 1e6)
    digest = hashlib.sha256(
        "\x00".join(map(str, (TRAIN_FORMAT, spec, corpus.fingerprint, budget))).encode()
    ).hexdigest()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / "tokenizers" / f"{slug(spec, 16)}-{slug(corpus.spec)}-{digest[:16]}"
    if not (folder / META_FILE).is_file():
        tokenizer = load_tokenizer(spec, train_texts=_first_bytes(corpus, budget))
        with atomic_dir(folder) as tmp:
            tokenizer.save(tmp)
    return Tokenizer.load(folder)


def prepare_blocks(
    corpus_spec: str,
    tokenizer: Tokenizer | str,
    block_len: int,
    split: str = "train",
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
) -> PackedBlocks:
    """Blocks of ``split`` of ``corpus_spec`` (built into the cache on first use, then memory-mapped).

    ``tokenizer`` may be a :class:`Tokenizer` or a spec; a trained spec (``bpe:<size>``, ``char``) is
    learnt from the corpus's train split via :func:`prepare_tokenizer`, whatever ``split`` is asked for.
    """
    if isinstance(tokenizer, str):
        tokenizer = prepare_tokenizer(tokenizer, corpus_spec, cache_dir)
    path = build_token_cache(corpus_spec, tokenizer, block_len, split, cache_dir, progress=progress)
    return PackedBlocks(path)
