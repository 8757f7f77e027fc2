"""Tests of flowlm.data: tokenizers, corpora, packing, token caches, vendored assets. Offline, ~seconds."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowlm.data import (
    PackedBlocks,
    PackStats,
    Tokenizer,
    build_token_cache,
    hf,
    load_corpus,
    load_tokenizer,
    pack_wrapped,
    prepare_blocks,
    prepare_tokenizer,
)
from flowlm.data import cache as cache_mod
from flowlm.data import tokenizer as tokenizer_mod
from flowlm.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "src" / "flowlm" / "data" / "assets"


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def bert() -> Tokenizer:
    return load_tokenizer("bert-base-uncased")


@pytest.fixture(scope="module")
def shakespeare_sample() -> list[str]:
    docs = iter(load_corpus("shakespeare"))
    return [next(docs) for _ in range(3000)]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Hub access (fails fast instead of retrying) and a private datasets cache."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return tmp_path


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- assets
def test_assets_match_sha256sums():
    sums = {}
    for line in (ASSETS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert set(sums) == {"bert-base-uncased-vocab.txt", "gpt2-encoder.json", "gpt2-vocab.bpe", "shakespeare.txt.xz"}
    for name, digest in sums.items():
        data = (ASSETS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
        assert len(data) < 5_000_000, name
    assert (ASSETS / "NOTICE.md").is_file()


def test_vendor_script_check_mode():
    spec = importlib.util.spec_from_file_location("vendor_assets", ROOT / "scripts" / "vendor_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.check() == []
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "vendor_assets.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- tokenizers
BERT_CASES = {
    "hello world": [7592, 2088],
    "Hello, my dog is cute": [7592, 1010, 2026, 3899, 2003, 10140],
    "unaffable": [14477, 20961, 3468],
    "The quick brown fox jumps over the lazy dog.": [1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012],
    "I've been waiting for a HuggingFace course my whole life.": [
        1045,
        1005,
        2310,
        2042,
        3403,
        2005,
        1037,
        17662,
        12172,
        2607,
        2026,
        2878,
        2166,
        1012,
    ],
}
GPT2_CASES = {
    "Hello world": [15496, 995],
    "Hello, world!": [15496, 11, 995, 0],
    " the The": [262, 383],
    "<|endoftext|>": [50256],
}


def test_bert_ids_match_hub(bert):
    assert (bert.vocab_size, bert.bos_id, bert.eos_id, bert.pad_id) == (30522, 101, 102, 0)
    for text, ids in BERT_CASES.items():
        assert bert.encode(text) == ids, text
    assert bert.encode_batch(list(BERT_CASES)) == list(BERT_CASES.values())
    assert bert.decode([101, 7592, 1010, 2088, 102]) == "hello, world"
    assert bert.decode([101, 7592, 102], skip_special=False) == "[CLS] hello [SEP]"


def test_gpt2_ids_and_round_trip(gpt2):
    assert (gpt2.vocab_size, gpt2.bos_id, gpt2.eos_id, gpt2.pad_id) == (50258, 50256, 50256, 50257)
    assert gpt2.id_to_token(50257) == "[PAD]"
    for text, ids in GPT2_CASES.items():
        assert gpt2.encode(text) == ids, text
    text = "Thou art more lovely and more temperate:\n\tRough winds — naïve café 東京 🙂"
    assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.decode([50256, *gpt2.encode("hi"), 50257]) == "hi"


def test_bpe_training_size_and_round_trip(shakespeare_sample):
    tok = load_tokenizer("bpe:600", train_texts=shakespeare_sample)
    assert tok.vocab_size == 600
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    text = "To be, or not to be: that is the question.\n  Ünïcödé ✓"
    assert tok.decode(tok.encode(text)) == text
    assert max(max(ids) for ids in tok.encode_batch(shakespeare_sample[:50])) < 600


def test_bpe_on_tiny_corpus_is_smaller_and_says_so():
    with pytest.warns(UserWarning, match="smaller"):
        tok = load_tokenizer("bpe:400", train_texts=["abab abab"])
    assert 259 <= tok.vocab_size < 400


def test_char_tokenizer_round_trip():
    tok = load_tokenizer("char", train_texts=["hello\nworld", "hi there"])
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 4 + len(set("hello\nworldhi there"))
    assert len(tok.encode("hello\nworld")) == 11
    assert tok.decode(tok.encode("hello\nworld")) == "hello\nworld"
    assert tok.encode("z") == [tok.token_to_id("[UNK]")]


@pytest.mark.parametrize(
    "spec,texts,match",
    [
        ("bpe:4096", None, "no train_texts"),
        ("bpe:abc", ["x"], "bpe:<size>"),
        ("bpe:100", ["x"], "at least 259"),
        ("char", None, "no train_texts"),
        ("", None, "non-empty"),
    ],
)
def test_tokenizer_spec_errors(spec, texts, match):
    with pytest.raises(DataError, match=match) as e:
        load_tokenizer(spec, train_texts=texts)
    one_line(e)


def test_unknown_tokenizer_name(offline):
    with pytest.raises(DataError) as e:
        load_tokenizer("definitely-not-a-tokenizer-xyz")
    msg = one_line(e)
    assert "'definitely-not-a-tokenizer-xyz'" in msg and "gpt2" in msg and "network" in msg


def test_existing_folder_without_tokenizer(offline):
    with pytest.raises(DataError, match="no tokenizer found") as e:
        load_tokenizer(str(offline))
    one_line(e)


def test_save_load_identical(tmp_path, gpt2, shakespeare_sample):
    for tok in (gpt2, load_tokenizer("bpe:300", train_texts=shakespeare_sample[:500])):
        folder = tok.save(tmp_path / tok.name)
        again = Tokenizer.load(folder)
        via_spec = load_tokenizer(str(folder))
        for other in (again, via_spec):
            assert other.encode_batch(shakespeare_sample[:100]) == tok.encode_batch(shakespeare_sample[:100])
            assert (other.vocab_size, other.bos_id, other.eos_id, other.pad_id, other.spec) == (
                tok.vocab_size,
                tok.bos_id,
                tok.eos_id,
                tok.pad_id,
                tok.spec,
            )
            assert other.fingerprint == tok.fingerprint
    assert pickle.loads(pickle.dumps(gpt2)).encode("Hello world") == [15496, 995]


def test_hugging_face_tokenizer_by_path(tmp_path, gpt2, bert, offline):
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = tokenizers.Tokenizer.from_str(gpt2.backend.to_str())
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    ).save_pretrained(tmp_path / "gpt2_hf")
    tok = load_tokenizer(str(tmp_path / "gpt2_hf"))
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (50258, 50256, 50256, 50257)

    backend = tokenizers.Tokenizer.from_str(bert.backend.to_str())
    PreTrainedTokenizerFast(
        tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]"
    ).save_pretrained(tmp_path / "bert_hf")
    tok = load_tokenizer(str(tmp_path / "bert_hf"))
    assert tok.encode("hello world") == [7592, 2088]
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (30522, 101, 102, 0)


# --------------------------------------------------------------------------- packing
def reference_pack(docs, block_len, bos, eos):
    stream = [t for d in docs for t in [*d, eos]]
    chunk = block_len - 2
    n = len(stream) // chunk
    blocks = [[bos, *stream[i * chunk : (i + 1) * chunk], eos] for i in range(n)]
    return blocks, len(stream) - n * chunk


def test_pack_docstring_example():
    stats = PackStats()
    blocks = list(pack_wrapped([[1, 2], [3, 4, 5]], 5, bos_id=8, eos_id=9, stats=stats))
    assert [b.tolist() for b in blocks] == [[8, 1, 2, 9, 9], [8, 3, 4, 5, 9]]
    assert (stats.n_docs, stats.n_tokens, stats.n_blocks, stats.n_dropped) == (2, 7, 2, 1)
    assert all(b.dtype == np.int64 and b.shape == (5,) for b in blocks)


def test_pack_hand_cases():
    # block_len 3: one content id per block
    assert [b.tolist() for b in pack_wrapped([[7, 7]], 3, 0, 1)] == [[0, 7, 1], [0, 7, 1], [0, 1, 1]]
    # exact fit: nothing dropped
    stats = PackStats()
    out = [b.tolist() for b in pack_wrapped([[1, 2, 3], [4, 5]], 9, 10, 11, stats=stats)]
    assert out == [[10, 1, 2, 3, 11, 4, 5, 11, 11]] and stats.n_dropped == 0
    # one id short of a block: everything dropped
    stats = PackStats()
    assert list(pack_wrapped([[1, 2, 3], [4]], 9, 10, 11, stats=stats)) == []
    assert (stats.n_blocks, stats.n_dropped) == (0, 6)
    # a long document runs across blocks, each block re-opened with BOS
    assert [b.tolist() for b in pack_wrapped([list(range(1, 8))], 6, 0, 99)] == [
        [0, 1, 2, 3, 4, 99],
        [0, 5, 6, 7, 99, 99],
    ]
    # empty documents contribute a lone EOS; no documents, no blocks
    assert [b.tolist() for b in pack_wrapped([[], [], [5]], 4, 0, 9)] == [[0, 9, 9, 9], [0, 5, 9, 9]]
    stats = PackStats()
    assert list(pack_wrapped([], 4, 0, 9, stats=stats)) == [] and stats.n_dropped == 0


@pytest.mark.parametrize("block_len", [0, 1, 2, 2.5, -4])
def test_pack_rejects_short_blocks(block_len):
    with pytest.raises(ValueError, match="block_len"):
        pack_wrapped([[1]], block_len, 0, 1)  # raises at the call, not at first next()


def test_pack_matches_reference_on_random_input():
    rng = random.Random(0)
    for block_len in (3, 4, 5, 8, 17, 128):
        docs = [[rng.randrange(3, 500) for _ in range(rng.choice([0, 1, 2, 5, 40, 400]))] for _ in range(300)]
        stats = PackStats()
        got = [b.tolist() for b in pack_wrapped(iter(docs), block_len, 1, 2, dtype=np.uint16, stats=stats)]
        want, dropped = reference_pack(docs, block_len, 1, 2)
        assert got == want and stats.n_dropped == dropped and stats.n_blocks == len(want)
        assert stats.n_tokens == sum(len(d) + 1 for d in docs)
        assert dropped < block_len - 2


# --------------------------------------------------------------------------- corpora
def test_embedded_corpus_splits():
    train, valid = load_corpus("shakespeare"), load_corpus("shakespeare", "validation")
    t, v = list(train), list(valid)
    assert t[0] == "ALL'S WELL THAT ENDS WELL" and t[1] == "by William Shakespeare"
    assert 35_000 < len(t) < 40_000 and len(v) == (len(t) + len(v)) // 20
    merged = []
    ti, vi = iter(t), iter(v)
    for i in range(len(t) + len(v)):
        merged.append(next(vi) if i % 20 == 19 else next(ti))
    assert merged[19] == v[0] and set(t).isdisjoint({v[0], v[-1]})
    assert list(load_corpus("shakespeare", "val")) == v  # deterministic, alias
    assert all(doc == doc.strip() and doc for doc in t[:1000])


def test_local_text_file_paragraphs_and_lines(tmp_path):
    para = tmp_path / "p.txt"
    para.write_text("".join(f"para {i} line a\npara {i} line b\n\n  \n" for i in range(40)))
    docs = list(load_corpus(str(para)))
    assert len(docs) == 38 and docs[0] == "para 0 line a\npara 0 line b"
    assert list(load_corpus(str(para), "validation")) == [
        "para 19 line a\npara 19 line b",
        "para 39 line a\npara 39 line b",
    ]
    lines = tmp_path / "l.txt"
    lines.write_text("".join(f"sentence {i}.\n" for i in range(20)))
    assert list(load_corpus(str(lines), "validation")) == ["sentence 19."]


def test_local_folder(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b" / "c.txt").write_text("three\n\nfour\n")
    (tmp_path / "ignored.md").write_text("not text\n")
    assert list(load_corpus(str(tmp_path))) == ["one", "two", "three", "four"]


def test_local_folder_without_text_files(tmp_path):
    with pytest.raises(DataError, match="no .txt files") as e:
        load_corpus(str(tmp_path))
    one_line(e)


def test_corpus_spec_errors(tmp_path):
    for spec, split, match in [
        ("nonsense", "train", "unknown corpus 'nonsense'.*shakespeare.*lm1b"),
        (str(tmp_path / "missing.txt"), "train", "no such file"),
        ("shakespeare", "dev", "unknown split"),
        ("shakespeare", "test", "no test split"),
        ("hf:", "train", "hf:<name>"),
    ]:
        with pytest.raises(DataError, match=match) as e:
            load_corpus(spec, split)
        one_line(e)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8") as e:
        list(load_corpus(str(bad)))
    one_line(e)


def _save_dict(path: Path, **splits: list[str]) -> Path:
    import datasets

    parts = {k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def test_hf_saved_dataset(offline):
    path = _save_dict(offline / "saved", train=[f"t{i}" for i in range(30)], validation=["v0", "", "v1"])
    assert list(load_corpus(f"hf:{path}")) == [f"t{i}" for i in range(30)]
    assert list(load_corpus(f"hf:{path}", "validation")) == ["v0", "v1"]  # empty docs skipped
    assert list(load_corpus(str(path), "validation")) == ["v0", "v1"]  # bare folder is recognised
    assert list(load_corpus(f"hf:{path}", "validation", streaming=True)) == ["v0", "v1"]


def test_hf_train_only_dataset_holds_out_every_20th(offline):
    import datasets

    datasets.Dataset.from_dict({"text": [f"d{i}" for i in range(40)]}).save_to_disk(str(offline / "one"))
    assert list(load_corpus(f"hf:{offline / 'one'}", "validation")) == ["d19", "d39"]
    assert len(list(load_corpus(f"hf:{offline / 'one'}"))) == 38


def test_hf_data_files_through_load_dataset(offline):
    folder = offline / "json"
    folder.mkdir()
    for split, n in (("train", 12), ("test", 3)):
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": f"{split} {i}", "label": i}) + "\n" for i in range(n))
        )
    assert list(load_corpus(f"hf:{folder}", "validation")) == ["test 0", "test 1", "test 2"]
    assert len(list(load_corpus(f"hf:{folder}", streaming=True))) == 12
    (folder / "train.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (folder / "test.jsonl").unlink()
    with pytest.raises(DataError, match="no 'text' field") as e:
        list(load_corpus(f"hf:{folder}"))
    one_line(e)


def test_known_datasets_with_local_stand_ins(offline, monkeypatch):
    lm1b = _save_dict(offline / "lm1b", train=["It 's here , he said ."], test=["Do n't go ( now ) !"])
    monkeypatch.setitem(hf.KNOWN, "lm1b", hf._Source(str(lm1b), detokenize=hf.lm1b_detokenize))
    assert list(load_corpus("lm1b")) == ["It's here, he said."]
    assert list(load_corpus("lm1b", "validation")) == ["Don't go (now)!"]

    rows = [
        " = Alpha = \n",
        "",
        ' Alpha is a 3 @,@ 000 @-@ year old thing , see " this " . \n',
        "",
        " = = History = = \n",
        " Old . \n",
        " = Beta = \n",
        " Beta text . \n",
    ]
    wiki = _save_dict(offline / "wiki", train=rows, validation=rows[-2:])
    monkeypatch.setitem(hf.KNOWN, "wikitext2", hf._Source(str(wiki), group=hf.wikitext_articles))
    assert list(load_corpus("wikitext2")) == [
        '= Alpha =\n\nAlpha is a 3,000-year old thing, see "this".\n\n== History ==\n\nOld.',
        "= Beta =\n\nBeta text.",
    ]

    owt = _save_dict(offline / "owt", train=[f"doc {i}" for i in range(10)])
    monkeypatch.setitem(hf.KNOWN, "openwebtext", hf._Source(str(owt), owt_split=True))
    monkeypatch.setattr(hf, "OWT_VALID_DOCS", 3)
    assert list(load_corpus("openwebtext", "validation")) == ["doc 7", "doc 8", "doc 9"]
    assert list(load_corpus("openwebtext")) == [f"doc {i}" for i in range(7)]
    with pytest.raises(DataError, match="no test split"):
        load_corpus("openwebtext", "test")


@pytest.mark.parametrize("spec", ["lm1b", "openwebtext", "wikitext", "wikitext2", "hf:no-such-user/no-set:x"])
def test_hub_datasets_offline_raise_data_error(offline, spec):
    corpus = load_corpus(spec, "validation")  # cheap: nothing is loaded before iteration
    with pytest.raises(DataError, match="cannot load Hugging Face dataset") as e:
        next(iter(corpus))
    assert spec in one_line(e)


def test_detokenizers():
    assert (
        hf.lm1b_detokenize("The U.S. said it 's `` fine '' , see http : / / x.org .")
        == "The U.S. said it's `` fine '', see http://x.org."
    )
    assert hf.lm1b_detokenize('He said " yes " ( twice ) ; costs $ 5 .') == 'He said "yes" (twice); costs $5.'
    assert hf.wikitext_detokenize(" = = = Sub = = = ") == "=== Sub ==="
    assert hf.wikitext_detokenize(" 1 @.@ 5 m @-@ long , isn 't it ? ") == "1.5 m-long, isn't it?"


# --------------------------------------------------------------------------- caches
@pytest.fixture
def small_corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    rng = random.Random(1)
    words = "the of and to a in that is was he for it with as his on be at by i".split()
    path.write_text(
        "".join(" ".join(rng.choice(words) for _ in range(rng.randrange(1, 60))) + "\n\n" for _ in range(400))
    )
    return path


def test_cache_build_matches_in_memory_packing(tmp_path, small_corpus, gpt2):
    folder = build_token_cache(str(small_corpus), gpt2, 64, "train", tmp_path / "cache", progress=False)
    meta = json.loads((folder / "meta.json").read_text())
    docs = list(load_corpus(str(small_corpus)))
    stats = PackStats()
    want = np.stack(list(pack_wrapped((gpt2.encode(d) for d in docs), 64, 50256, 50256, stats=stats)))
    assert meta["dtype"] == "uint16" and meta["block_len"] == 64 and meta["n_blocks"] == len(want)
    assert meta["n_tokens_dropped"] == stats.n_dropped and meta["n_docs"] == len(docs)
    assert meta["tokenizer"] == "gpt2" and meta["tokenizer_fingerprint"] == gpt2.fingerprint
    assert (folder / "blocks.bin").stat().st_size == want.size * 2
    blocks = PackedBlocks(folder)
    assert len(blocks) == len(want) and blocks.vocab_size == 50258
    got = torch.stack([blocks[i] for i in range(len(blocks))])
    assert got.dtype == torch.long and torch.equal(got, torch.from_numpy(want))
    assert torch.equal(blocks[-1], got[-1])
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_cache_reuse_and_rebuild(tmp_path, small_corpus, gpt2, monkeypatch):
    first = build_token_cache(str(small_corpus), gpt2, 32, "train", tmp_path, progress=False)

    def fail(*_a, **_k):
        raise AssertionError("cache was rebuilt")

    with monkeypatch.context() as m:
        m.setattr(Tokenizer, "encode_batch", fail)
        assert build_token_cache(str(small_corpus), gpt2, 32, "train", tmp_path, progress=False) == first
    other_len = build_token_cache(str(small_corpus), gpt2, 48, "train", tmp_path, progress=False)
    other_split = build_token_cache(str(small_corpus), gpt2, 32, "validation", tmp_path, progress=False)
    assert len({first, other_len, other_split}) == 3
    small_corpus.write_text(small_corpus.read_text() + "one more paragraph\n")
    assert build_token_cache(str(small_corpus), gpt2, 32, "train", tmp_path, progress=False) != first


def test_cache_build_is_atomic(tmp_path, small_corpus, gpt2, monkeypatch):
    calls = []
    real = Tokenizer.encode_batch

    def flaky(self, texts):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the build
        return real(self, texts)

    monkeypatch.setattr(Tokenizer, "encode_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_token_cache(str(small_corpus), gpt2, 32, "train", tmp_path, progress=False, chunk_docs=50)
    assert calls == [50, 50, 50]
    blocks_dir = tmp_path / "blocks"
    assert list(blocks_dir.iterdir()) == []  # neither a final folder nor a leftover temporary one
    monkeypatch.setattr(Tokenizer, "encode_batch", real)
    folder = build_token_cache(str(small_corpus), gpt2, 32, "train", tmp_path, progress=False, chunk_docs=50)
    assert [p.name for p in blocks_dir.iterdir()] == [folder.name]


def test_stale_temporary_folders_of_dead_processes_are_removed(tmp_path, small_corpus, gpt2):
    corpus = load_corpus(str(small_corpus))
    key = cache_mod.cache_key(corpus, gpt2, 32)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = cache_mod.slug(__import__("socket").gethostname(), 20)
    stale = tmp_path / "blocks" / f".{key}.tmp-{host}-{dead.pid}-abc"
    stale.mkdir(parents=True)
    build_token_cache(corpus, gpt2, 32, "train", tmp_path, progress=False)
    assert not stale.exists()


def test_cache_errors(tmp_path, gpt2):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hi\n")
    with pytest.raises(DataError, match="fewer than one block") as e:
        build_token_cache(str(tiny), gpt2, 64, "train", tmp_path, progress=False)
    one_line(e)
    assert list((tmp_path / "blocks").iterdir()) == []
    with pytest.raises(DataError, match="data.seq_len=2"):
        build_token_cache(str(tiny), gpt2, 2, "train", tmp_path, progress=False)
    with pytest.raises(DataError, match="not a flowlm token cache"):
        PackedBlocks(tmp_path)


def test_storage_dtype():
    assert cache_mod.storage_dtype(30522) == np.uint16
    assert cache_mod.storage_dtype(65536) == np.uint16
    assert cache_mod.storage_dtype(65537) == np.uint32


def test_packed_blocks_pickle_and_dataloader(tmp_path, small_corpus, gpt2):
    blocks = prepare_blocks(str(small_corpus), gpt2, 32, cache_dir=tmp_path, progress=False)
    _ = blocks[0]  # opens the memmap
    data = pickle.dumps(blocks)
    assert len(data) < 4096  # the memmap is not pickled
    again = pickle.loads(data)
    assert torch.equal(again[3], blocks[3])
    loader = torch.utils.data.DataLoader(blocks, batch_size=4, num_workers=1)
    batch = next(iter(loader))
    assert batch.shape == (4, 32) and batch.dtype == torch.long
    assert bool((batch[:, 0] == 50256).all() and (batch[:, -1] == 50256).all())


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_mod.default_cache_dir() == tmp_path / "flowlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_mod.default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "flowlm"


def test_prepare_tokenizer_trains_once(tmp_path, small_corpus, monkeypatch):
    tok = prepare_tokenizer("bpe:300", str(small_corpus), tmp_path)
    assert tok.vocab_size <= 300 and tok.spec == "bpe:300"
    monkeypatch.setattr(tokenizer_mod, "train_bpe", lambda *a, **k: pytest.fail("retrained"))
    again = prepare_tokenizer("bpe:300", str(small_corpus), tmp_path)
    assert again.fingerprint == tok.fingerprint
    assert prepare_tokenizer("gpt2", str(small_corpus), tmp_path).vocab_size == 50258
    blocks = prepare_blocks(str(small_corpus), "bpe:300", 16, "validation", tmp_path, progress=False)
    assert blocks.meta["tokenizer_fingerprint"] == tok.fingerprint and blocks[0][0] == tok.bos_id


def test_embedded_corpus_end_to_end(tmp_path, bert):
    blocks = prepare_blocks("shakespeare", bert, 128, "validation", tmp_path, progress=False)
    assert len(blocks) > 100 and blocks.meta["dtype"] == "uint16"
    first = blocks[0]
    assert first[0] == 101 and first[-1] == 102
    assert bert.decode(first.tolist()).startswith("lafeu. a fistula, my lord.")
