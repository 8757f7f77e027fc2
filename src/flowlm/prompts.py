"""Text conditions -> known positions: a prompt (prefix), a suffix, or a template with blanks.

A block is laid out as training blocks are (``[BOS] text ... [EOS]``, length ``L``):

- ``prompt``: ``[BOS] + ids(prompt)`` at positions ``0 ... k``; the rest is generated;
- ``suffix``: ``ids(suffix) + [EOS]`` at the last positions; may be combined with a prompt;
- ``template``: ``"The [BLANK:6] sat on the [BLANK:3]."``: ``[BOS]``, then each text piece's ids, and
  ``[BLANK:k]`` leaves ``k`` positions to generate (``[BLANK]`` alone: :data:`DEFAULT_BLANK` positions).
  Positions after the template are generated too, but only the template's span is returned as text.

The blank marker is parsed out of the template *before* tokenization, so it never reaches a tokenizer and no
tokenizer's vocabulary can collide with it; a literal ``[BLANK`` in a template's text is written ``[[BLANK``.
Each text piece is tokenized on its own, so a word cut by a blank tokenizes
as two pieces would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flowlm.errors import ConfigError

BLANK = re.compile(r"\[\[BLANK|\[BLANK(?::(\d+))?\]")
DEFAULT_BLANK = 8


@dataclass
class Layout:
    """Known ids and mask of one block [L] and the end of the span to decode (``L`` for prompts/suffixes)."""

    ids: list[int]
    mask: list[bool]
    prompt_len: int
    end: int


def encode_text(tokenizer, text: str, what: str) -> list[int]:
    """``tokenizer.encode(text)``, refusing text it cannot represent (unknown-token ids, or nothing at all)."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string, got {type(text).__name__}")
    ids = tokenizer.encode(text)
    unknown = {tokenizer.backend.token_to_id(t) for t in ("[UNK]", "<unk>")} - {None}
    if (text.strip() and not ids) or unknown & set(ids):
        raise ConfigError(
            f"the {what} {text[:40]!r} has characters the model's tokenizer ({tokenizer.name}) cannot encode: "
            "use text of the model's alphabet"
        )
    return ids


def template_pieces(template: str) -> list[str | int]:
    """``"a [BLANK:2] b"`` -> ``["a ", 2, " b"]`` (text pieces and blank lengths)."""
    pieces: list[str | int] = []
    text, pos = "", 0
    for match in BLANK.finditer(template):
        text += template[pos : match.start()]
        pos = match.end()
        token = match.group(0)
        if token == "[[BLANK":
            text += "[BLANK"
        else:
            size = DEFAULT_BLANK if match.group(1) is None else int(match.group(1))
            if size < 1:
                raise ConfigError(f"template blank {token!r}: a blank needs at least 1 position ([BLANK:1])")
            pieces += [text, size] if text else [size]
            text = ""
    text += template[pos:]
    if text:
        pieces.append(text)
    if not any(isinstance(p, int) for p in pieces):
        raise ConfigError(f"template {template[:40]!r} has no blank: write [BLANK:k] where k tokens should go")
    return pieces


def layout(tokenizer, seq_len: int, prompt: str | None = None, suffix: str | None = None,
           template: str | None = None) -> Layout:  # fmt: skip
    """The known positions of a block of ``seq_len`` for a prompt and/or suffix, or a template."""
    if template is not None and (prompt is not None or suffix is not None):
        raise ConfigError("a template already says where the text goes: give template alone, or prompt / suffix")
    ids = [tokenizer.pad_id or 0] * seq_len
    mask = [False] * seq_len
    ids[0], mask[0] = tokenizer.bos_id, True
    if template is not None:
        pos = 1
        for piece in template_pieces(template):
            if isinstance(piece, int):
                pos += piece
                continue
            piece_ids = encode_text(tokenizer, piece, "template text")
            if pos + len(piece_ids) <= seq_len:
                ids[pos : pos + len(piece_ids)] = piece_ids
                mask[pos : pos + len(piece_ids)] = [True] * len(piece_ids)
            pos += len(piece_ids)
        if pos > seq_len:
            raise ConfigError(
                f"the template needs {pos} positions (BOS, its text and blanks) but the model writes {seq_len}: "
                "shorten the text or the blanks"
            )
        return Layout(ids, mask, 1, pos)
    head = [tokenizer.bos_id] + (encode_text(tokenizer, prompt, "prompt") if prompt is not None else [])
    tail = encode_text(tokenizer, suffix, "suffix") + [tokenizer.eos_id] if suffix is not None else []
    if len(head) + len(tail) >= seq_len:
        what = " and ".join(w for w, t in (("prompt", prompt), ("suffix", suffix)) if t is not None)
        raise ConfigError(
            f"the {what} take {len(head) + len(tail)} of the model's {seq_len} positions (BOS and EOS included), "
            "leaving nothing to generate: shorten them"
        )
    ids[: len(head)], mask[: len(head)] = head, [True] * len(head)
    if tail:
        ids[seq_len - len(tail) :], mask[seq_len - len(tail) :] = tail, [True] * len(tail)
    return Layout(ids, mask, len(head), seq_len)
