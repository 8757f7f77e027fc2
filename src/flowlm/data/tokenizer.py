"""Tokenizers: one small wrapper over a Rust ``tokenizers.Tokenizer`` for every kind flowlm uses.

``load_tokenizer(spec)`` understands:

* ``bert-base-uncased``: BERT uncased WordPiece (V = 30522, BOS = [CLS] = 101, EOS = [SEP] = 102,
  PAD = 0), built offline from the vendored vocabulary with BERT's normalizer and pre-tokenizer; it gives
  the same ids as the Hugging Face Hub tokenizer (LM1B setting of the paper).
* ``gpt2``: GPT-2 byte-level BPE built offline from the vendored ``encoder.json`` / ``vocab.bpe``, plus an
  added ``[PAD]`` token, so V = 50258 (BOS = EOS = ``<|endoftext|>`` = 50256, PAD = 50257; OWT setting).
* ``bpe:<size>``: a byte-level BPE trained on ``train_texts`` with special tokens [PAD]=0, [BOS]=1, [EOS]=2;
  its vocabulary has exactly ``size`` entries unless the texts are too small to learn that many merges
  (then it has fewer and a warning says so; ``vocab_size`` is always the true size).
* ``char``: one token per character seen in ``train_texts`` (plus [PAD], [BOS], [EOS], [UNK]); handy for
  tiny CPU runs.
* a folder written by :meth:`Tokenizer.save` (what a checkpoint carries).
* anything else: a Hugging Face tokenizer name or local folder, through
  ``transformers.AutoTokenizer.from_pretrained`` (a Hub name needs network). Its BOS/EOS are the
  tokenizer's bos/eos tokens, else cls/sep; a ``[PAD]`` token is added when it has none.

``encode`` never adds special tokens: packing (see :mod:`flowlm.data.packing`) places BOS/EOS itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers

from flowlm.errors import DataError
from flowlm.network import hub_access

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "flowlm_tokenizer.json"
CHOICES = (
    "'bert-base-uncased', 'gpt2', 'bpe:<size>', 'char', a tokenizer folder, "
    "or a Hugging Face tokenizer name (needs network)"
)
_TRAINED_SPECIALS = ("[PAD]", "[BOS]", "[EOS]")


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the ids flowlm needs.

    Attributes:
        spec: the string it was made from (``"gpt2"``, ``"bpe:4096"``, a Hub name, ...).
        name: a short readable name (the spec, or ``bpe-4096``-style for trained ones).
        vocab_size: the number of ids the model must cover, added special tokens included.
        bos_id, eos_id: the ids packing puts at the start and end of every block.
        pad_id: the padding id, or ``None`` when the tokenizer has none.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        spec: str,
        name: str | None = None,
        bos_id: int,
        eos_id: int,
        pad_id: int | None,
    ) -> None:
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.spec = spec
        self.name = name or spec
        self.vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1
        for label, value in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id)):
            if value is not None and not 0 <= value < self.vocab_size:
                raise DataError(
                    f"tokenizer {spec!r}: {label} id {value} is outside its vocabulary of "
                    f"{self.vocab_size}; fix the tokenizer's special tokens"
                )
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.spec!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, pad_id={self.pad_id})"
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any special token added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts at once (the Rust batch path, multi-threaded)."""
        texts = list(texts)
        fast = getattr(self.backend, "encode_batch_fast", None)  # skips offsets; tokenizers >= 0.20
        encodings = (fast or self.backend.encode_batch)(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids``; special tokens (BOS/EOS/PAD, ...) are dropped unless ``skip_special=False``."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    def _meta(self) -> dict:
        return {
            "spec": self.spec,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the full tokenizer definition and its special ids (changes whenever ids could)."""
        h = hashlib.sha256(self.backend.to_str().encode())
        meta = {k: v for k, v in self._meta().items() if k not in ("spec", "name")}
        h.update(json.dumps(meta, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``flowlm_tokenizer.json`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / TOKENIZER_FILE))
        (directory / META_FILE).write_text(json.dumps(self._meta(), indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a tokenizer written by :meth:`save`; needs no network and no vendored asset."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
            backend = tokenizers.Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as e:  # missing file, bad JSON, bad tokenizer definition
            raise DataError(
                f"cannot load a flowlm tokenizer from {str(directory)!r} ({type(e).__name__}): "
                f"the folder needs {TOKENIZER_FILE} and {META_FILE} as written by "
                "Tokenizer.save"
            ) from e
        tok = cls(
            backend,
            spec=meta["spec"],
            name=meta.get("name"),
            bos_id=meta["bos_id"],
            eos_id=meta["eos_id"],
            pad_id=meta.get("pad_id"),
        )
        if tok.vocab_size != meta["vocab_size"]:
            raise DataError(
                f"tokenizer in {str(directory)!r} has {tok.vocab_size} ids but its metadata says "
                f"{meta['vocab_size']}: the folder is corrupt, save the tokenizer again"
            )
        return tok


def _asset(name: str) -> Path:
    path = ASSETS / name
    if not path.is_file():
        raise DataError(f"vendored asset {path} is missing: reinstall flowlm or run scripts/vendor_assets.py")
    return path


def _special(content: str) -> AddedToken:
    return AddedToken(content, special=True, normalized=False)


def bert_base_uncased() -> Tokenizer:
    """BERT uncased WordPiece from the vendored vocabulary (ids identical to the Hub's)."""
    lines = _asset("bert-base-uncased-vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab = {token: i for i, token in enumerate(lines[:-1] if lines[-1] == "" else lines)}
    backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    backend.add_special_tokens([_special(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")])
    return Tokenizer(
        backend, spec="bert-base-uncased", bos_id=vocab["[CLS]"], eos_id=vocab["[SEP]"], pad_id=vocab["[PAD]"]
    )


def gpt2() -> Tokenizer:
    """GPT-2 byte-level BPE from the vendored files, with ``[PAD]`` appended (V = 50258)."""
    vocab = json.loads(_asset("gpt2-encoder.json").read_text(encoding="utf-8"))
    merges = []
    for line in _asset("gpt2-vocab.bpe").read_text(encoding="utf-8").split("\n"):
        if line and not line.startswith("#version"):
            a, b = line.split(" ")
            merges.append((a, b))
    backend = tokenizers.Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([_special("<|endoftext|>"), _special("[PAD]")])
    eot = vocab["<|endoftext|>"]
    return Tokenizer(backend, spec="gpt2", bos_id=eot, eos_id=eot, pad_id=backend.token_to_id("[PAD]"))


def _need_texts(spec: str, train_texts: Iterable[str] | None) -> Iterable[str]:
    if train_texts is None:
        raise DataError(
            f"tokenizer {spec!r} is trained on a corpus but no train_texts were given: "
            "use flowlm.data.prepare_tokenizer(spec, corpus) or pass train_texts"
        )
    return train_texts


def _trained(backend: tokenizers.Tokenizer, spec: str, name: str) -> Tokenizer:
    ids = [backend.token_to_id(t) for t in _TRAINED_SPECIALS]
    return Tokenizer(backend, spec=spec, name=name, pad_id=ids[0], bos_id=ids[1], eos_id=ids[2])


def train_bpe(spec: str, size: int, train_texts: Iterable[str]) -> Tokenizer:
    """Byte-level BPE with ``size`` entries: [PAD]=0, [BOS]=1, [EOS]=2, the 256 bytes, then merges."""
    minimum = len(_TRAINED_SPECIALS) + 256
    if size < minimum:
        raise DataError(
            f"tokenizer {spec!r}: a byte-level BPE needs at least {minimum} entries "
            f"(3 special tokens + 256 bytes): use e.g. 'bpe:4096'"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=[_special(t) for t in _TRAINED_SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(train_texts, trainer=trainer)
    tok = _trained(backend, spec, f"bpe-{size}")
    if tok.vocab_size < size:
        warnings.warn(
            f"{spec}: the training texts only support {tok.vocab_size} BPE entries, "
            f"not {size}; the vocabulary is smaller",
            stacklevel=3,
        )
    return tok


def train_char(spec: str, train_texts: Iterable[str]) -> Tokenizer:
    """One id per distinct character of ``train_texts``: [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3, then chars
    in code-point order. Unseen characters encode to [UNK]."""
    chars: set[str] = set()
    for text in train_texts:
        chars.update(text)
    vocab = {t: i for i, t in enumerate((*_TRAINED_SPECIALS, "[UNK]", *sorted(chars)))}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([_special(t) for t in (*_TRAINED_SPECIALS, "[UNK]")])
    return _trained(backend, spec, "char")


def from_hugging_face(spec: str) -> Tokenizer:
    """A Hugging Face tokenizer (Hub name or local folder) via ``AutoTokenizer``; needs its fast version."""
    offline = None
    try:
        from transformers import AutoTokenizer

        with hub_access(needed=not Path(spec).exists()) as offline:
            hf = AutoTokenizer.from_pretrained(spec)
    except Exception as e:  # transformers raises OSError, ValueError, HTTP errors, ... for the same cause
        if offline:
            raise DataError(
                f"tokenizer {spec!r} is not in the local Hugging Face cache and the Hub cannot be reached "
                f"({offline}): connect to the network, or use bpe:<size>, char, gpt2 or bert-base-uncased (offline)"
            ) from None
        if Path(spec).exists():
            raise DataError(
                f"no tokenizer found in {spec!r} ({type(e).__name__}): the folder needs a "
                f"Hugging Face tokenizer (tokenizer.json, tokenizer_config.json) or a flowlm "
                f"{META_FILE}"
            ) from e
        raise DataError(f"unknown tokenizer {spec!r} ({type(e).__name__}): use {CHOICES}") from e
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise DataError(
            f"tokenizer {spec!r} has no fast (Rust) version, which flowlm needs: pick a tokenizer with a tokenizer.json"
        )
    backend = tokenizers.Tokenizer.from_str(backend.to_str())  # private copy: we may add [PAD]
    bos = hf.bos_token_id if hf.bos_token_id is not None else hf.cls_token_id
    eos = hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id
    if bos is None or eos is None:
        raise DataError(
            f"tokenizer {spec!r} lacks a bos/cls or an eos/sep token, which packing needs: "
            "pick another tokenizer or save one with those tokens set"
        )
    pad = hf.pad_token_id
    if pad is None:
        backend.add_special_tokens([_special("[PAD]")])
        pad = backend.token_to_id("[PAD]")
    return Tokenizer(backend, spec=spec, bos_id=bos, eos_id=eos, pad_id=pad)


def parse_bpe_size(spec: str) -> int:
    """The ``<size>`` of a ``bpe:<size>`` spec, or a DataError."""
    m = re.fullmatch(r"bpe:(\d+)", spec.strip())
    if not m:
        raise DataError(f"bad tokenizer spec {spec!r}: write 'bpe:<size>' with a whole number, e.g. 'bpe:4096'")
    return int(m.group(1))


def is_trained_spec(spec: str) -> bool:
    """Whether ``spec`` names a tokenizer learnt from a corpus (``bpe:<size>`` or ``char``)."""
    return spec.strip() == "char" or spec.strip().startswith("bpe:")


def load_tokenizer(spec: str, *, train_texts: Iterable[str] | None = None) -> Tokenizer:
    """Make the tokenizer named by ``spec`` (see the module docstring); ``train_texts`` feed bpe/char."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"tokenizer spec must be a non-empty string, got {spec!r}: use {CHOICES}")
    spec = spec.strip()
    if spec == "bert-base-uncased":
        return bert_base_uncased()
    if spec == "gpt2":
        return gpt2()
    if spec.startswith("bpe:") or spec == "bpe":
        size = parse_bpe_size(spec)
        return train_bpe(spec, size, _need_texts(spec, train_texts))
    if spec == "char":
        return train_char(spec, _need_texts(spec, train_texts))
    if (Path(spec) / META_FILE).is_file():
        return Tokenizer.load(spec)
    return from_hugging_face(spec)
