"""Data for flowlm: tokenizers, corpora, wrapped packing and memory-mapped token caches.

Typical use::

    from flowlm.data import prepare_tokenizer, prepare_blocks
    tok = prepare_tokenizer("gpt2", "shakespeare")
    train = prepare_blocks("shakespeare", tok, block_len=128, split="train")
    valid = prepare_blocks("shakespeare", tok, block_len=128, split="validation")
    train[0]  # LongTensor[128]: BOS ... EOS

Modules: :mod:`~flowlm.data.tokenizer`, :mod:`~flowlm.data.sources` (:mod:`~flowlm.data.corpus`,
:mod:`~flowlm.data.hf`), :mod:`~flowlm.data.packing`, :mod:`~flowlm.data.cache`, :mod:`~flowlm.data.prepare`.
"""

from flowlm.data.cache import PackedBlocks, build_token_cache, default_cache_dir
from flowlm.data.corpus import Corpus
from flowlm.data.packing import PackStats, pack_wrapped
from flowlm.data.prepare import prepare_blocks, prepare_tokenizer
from flowlm.data.sources import load_corpus
from flowlm.data.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "Corpus",
    "PackStats",
    "PackedBlocks",
    "Tokenizer",
    "build_token_cache",
    "default_cache_dir",
    "load_corpus",
    "load_tokenizer",
    "pack_wrapped",
    "prepare_blocks",
    "prepare_tokenizer",
]
