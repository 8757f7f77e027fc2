"""The causal-LM judge of generative perplexity: :class:`CausalLMJudge` scores texts with any Hugging Face
causal LM (:func:`flowlm.eval.judges.load_judge` builds one; :mod:`flowlm.eval.ar_judge` adapts a flowlm AR model).

How :meth:`CausalLMJudge.score_texts` scores (the text of :attr:`CausalLMJudge.definition`):

1. each text is re-tokenized by the judge's tokenizer with no special token added;
2. if the sample ended with an EOS (``ended[i]``, see :func:`flowlm.eval.metrics.decode_for_judge`), the
   judge's end token is appended: SPEC §6's "the first EOS counted";
3. the token list is cut into consecutive, non-overlapping windows of ``C - 1`` tokens (``C`` = the
   judge's context, e.g. 1024 for GPT-2 Large; the last window may be shorter), and every window is
   preceded by the judge's prefix token (``<|endoftext|>`` for GPT-2 and SmolLM2), which is not scored.
   So every token is scored exactly once, conditioned on the prefix and the tokens before it in its
   window; a text of ``C - 1`` tokens or fewer is one window, scored with full left context;
4. NLL = ``-log_softmax(logits.float())[next token]``, summed per sample in float64;
5. Gen PPL = ``exp(sum NLL / number of scored tokens)`` over all samples (token-weighted).

An empty text scores 0 tokens (1 token, the end token, if it ended) and still counts in ``num_samples``.
Windows of all texts are batched together, right-padded, with an attention mask; padding never changes
a score (checked by the tests), and every text given is scored: nothing is dropped to fill a batch.

Differences from MDLM / DUO's ``compute_generative_perplexity`` that make numbers differ slightly: they do
not prefix a token, so the first token of each chunk is not scored, and they decode the flowlm ids with
special tokens as literal text.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from flowlm.errors import ConfigError, DataError
from flowlm.eval.metrics import GEN_PPL_AGGREGATION, GenPPLResult, decode_for_judge

__all__ = ["DOC_SEPARATOR", "CausalLMJudge"]

DOC_SEPARATOR = "<|endoftext|>"
_FINGERPRINT_VALUES = 1024  # weights sampled per parameter tensor for the fingerprint

# config keys that name where/how a model was loaded rather than what it is
_VOLATILE_CONFIG_KEYS = (
    "transformers_version",
    "_name_or_path",
    "name_or_path",
    "_commit_hash",
    "dtype",
    "torch_dtype",
)


class CausalLMJudge:
    """A causal language model that scores texts; build it with :func:`load_judge`.

    Args:
        model: a Hugging Face causal LM (anything whose ``model(input_ids=..., attention_mask=...)``
            returns ``.logits`` of shape ``(B, T, V)``).
        tokenizer: its Hugging Face tokenizer.
        name: how results name this judge (the spec it was loaded from).
        max_length: the window size ``C`` (prefix included); default: the model's context
            (``n_positions`` / ``max_position_embeddings`` / ``n_ctx``). Must be >= 2.
        prefix_token: the token put before every window; default ``<|endoftext|>`` if the tokenizer has it,
            else its BOS, else its EOS.
        end_token: the token scored at the end of a text that ended with EOS; default ``<|endoftext|>``
            if the tokenizer has it, else its EOS.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_length: int | None = None,
        prefix_token: str | None = None,
        end_token: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        vocab = tokenizer.get_vocab()
        self.prefix_token = self._pick(vocab, prefix_token, "prefix_token", ("bos_token", "eos_token"))
        self.end_token = self._pick(vocab, end_token, "end_token", ("eos_token",))
        self.prefix_id = int(vocab[self.prefix_token])
        self.end_id = int(vocab[self.end_token])
        context = _model_context(model.config)
        if max_length is None:
            if context is None:
                raise ConfigError(
                    f"judge {name!r}: its config states no context length (n_positions / "
                    "max_position_embeddings): pass max_length"
                )
            max_length = context
        if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 2:
            raise ConfigError(f"judge max_length must be a whole number >= 2 (prefix + 1 token), got {max_length!r}")
        if context is not None and max_length > context:
            raise ConfigError(
                f"judge max_length {max_length} exceeds the context {context} of {name!r}: use max_length<={context}"
            )
        self.max_length = int(max_length)
        self._fingerprint: str | None = None

    def _pick(self, vocab: dict, given: str | None, label: str, fallbacks: Sequence[str]) -> str:
        if given is not None:
            if given not in vocab:
                raise ConfigError(
                    f"judge {self.name!r}: {label} {given!r} is not in its vocabulary: "
                    f"pick one of its tokens, e.g. {DOC_SEPARATOR!r} or its bos/eos token"
                )
            return given
        if DOC_SEPARATOR in vocab:
            return DOC_SEPARATOR
        for attr in fallbacks:
            token = getattr(self.tokenizer, attr, None)
            if token is not None and str(token) in vocab:
                return str(token)
        raise ConfigError(
            f"judge {self.name!r}: its tokenizer has no {DOC_SEPARATOR!r} and no {' / '.join(fallbacks)}: "
            f"pass {label}='<a token of its vocabulary>'"
        )

    # ----------------------------------------------------------------------------------- identity

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the model config (load paths and dtype removed), the tokenizer
        definition, the prefix/end tokens, and, per parameter tensor, its name, shape and up to
        ``_FINGERPRINT_VALUES`` evenly spaced values (as float32 bytes). Changes when the architecture, the
        tokenizer or the weights do (training moves every weight); costs milliseconds on any device. It
        tells judges apart; it is not a hash of the weight files (and differs between dtypes)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            cfg = {k: v for k, v in self.model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            if backend is not None:
                h.update(backend.to_str().encode())
            else:
                h.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
            h.update(f"prefix={self.prefix_token!r} end={self.end_token!r}".encode())
            with torch.no_grad():
                for pname, p in sorted(self.model.named_parameters(), key=lambda kv: kv[0]):
                    flat = p.detach().reshape(-1)
                    k = min(flat.numel(), _FINGERPRINT_VALUES)
                    idx = torch.arange(k, device=p.device) * (flat.numel() - 1) // max(k - 1, 1)
                    values = flat[idx].float().cpu().numpy()
                    h.update(f"{pname}:{tuple(p.shape)}:".encode())
                    h.update(values.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    @property
    def description(self) -> str:
        """``name [fingerprint]``: what :attr:`GenPPLResult.judge` holds."""
        return f"{self.name} [{self.fingerprint}]"

    @property
    def definition(self) -> str:
        """The complete scoring rule, with this judge's tokens, window and precision filled in."""
        return (
            f"judge {self.description}, weights {str(self.dtype).removeprefix('torch.')}; "
            "each text re-tokenized by the judge's tokenizer (no special tokens added); "
            f"samples that ended with EOS get {self.end_token!r} (id {self.end_id}) appended and scored "
            "(first EOS counted, ids after it dropped before decoding, a leading BOS stripped); "
            f"tokens cut into non-overlapping windows of {self.max_length - 1}, each preceded by the "
            f"unscored prefix {self.prefix_token!r} (id {self.prefix_id}) (context {self.max_length}), "
            "so every token is scored once; log-softmax in float32; " + GEN_PPL_AGGREGATION
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, context={self.max_length}, prefix={self.prefix_token!r}, "
            f"end={self.end_token!r}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------------------------ scoring

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """The judge's ids of each text, no special token added (the re-tokenization of step 1)."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"text {i} is a {type(t).__name__}, not a str: decode samples to text first")
        return self.encode(texts) if texts else []

    def encode(self, texts: list[str]) -> list[list[int]]:
        """The tokenizer call behind :meth:`tokenize` (a non-empty list of strings)."""
        enc = self.tokenizer(texts, add_special_tokens=False, verbose=False)
        return [list(map(int, ids)) for ids in enc["input_ids"]]

    def windows(self, ids: Sequence[int]) -> list[list[int]]:
        """Step 3: ``[prefix] + ids[k : k + C - 1]`` for ``k = 0, C - 1, 2(C - 1), ...`` (none if empty)."""
        step = self.max_length - 1
        return [[self.prefix_id, *ids[k : k + step]] for k in range(0, len(ids), step)]

    @torch.no_grad()
    def score_ids(
        self, token_lists: Sequence[Sequence[int]], batch_size: int = 8, skip: Sequence[int] | None = None
    ) -> tuple[list[float], list[int]]:
        """Per-text NLL sums (nats, float64) and scored-token counts for judge-token lists (steps 3-4).

        Args:
            token_lists: ``N`` lists of judge ids (no prefix; an end token already appended if wanted).
            batch_size: windows per forward pass; does not change the result beyond float rounding.
            skip: per list, how many leading ids are a condition (a prompt): they sit in the windows like every
                other id, so the ids after them are scored given them, but are not scored themselves.
        Returns:
            ``(nll, counts)``, each of length ``N``; ``counts[i] == len(token_lists[i]) − skip[i]``.
        """
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        vocab_size = _logits_width(self.model)
        skip = [0] * len(token_lists) if skip is None else [int(k) for k in skip]
        if len(skip) != len(token_lists):
            raise DataError(f"{len(token_lists)} texts but {len(skip)} condition lengths: pass one per text")
        owners, wins, unscored = [], [], []
        step = self.max_length - 1
        for i, ids in enumerate(token_lists):
            ids = [int(t) for t in ids]
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise DataError(f"text {i} has judge id {bad[0]} outside the judge's {vocab_size} logits: fix the ids")
            for k, w in enumerate(self.windows(ids)):
                owners.append(i)
                wins.append(w)
                unscored.append(min(max(skip[i] - k * step, 0), len(w) - 1))  # condition ids in this window
        nll = [0.0] * len(token_lists)
        counts = [0] * len(token_lists)
        # longest first: fewer pad tokens; the order is fixed, so results do not depend on batch_size
        order = sorted(range(len(wins)), key=lambda j: (-len(wins[j]), j))
        device = self.device
        window_nll = [0.0] * len(wins)
        for start in range(0, len(order), int(batch_size)):
            chunk = order[start : start + int(batch_size)]
            width = len(wins[chunk[0]])
            input_ids = torch.full((len(chunk), width), self.prefix_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, j in enumerate(chunk):
                input_ids[b, : len(wins[j])] = torch.tensor(wins[j], dtype=torch.long)
                mask[b, : len(wins[j])] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            for b, j in enumerate(chunk):
                n = len(wins[j])
                token_nll = F.cross_entropy(logits[b, : n - 1].float(), input_ids[b, 1:n], reduction="none")
                window_nll[j] = float(token_nll[unscored[j] :].double().sum())
            del logits
        for j, w in enumerate(wins):  # window order within a text is fixed: deterministic float64 sums
            nll[owners[j]] += window_nll[j]
            counts[owners[j]] += len(w) - 1 - unscored[j]
        for i, v in enumerate(nll):
            if not math.isfinite(v):
                raise DataError(f"judge {self.name!r} gave a non-finite NLL for text {i}: check the judge weights")
        return nll, counts

    def text_nll(
        self,
        texts: Sequence[str],
        batch_size: int = 8,
        ended: Sequence[bool] | bool = False,
        contexts: Sequence[str] | None = None,
    ) -> tuple[list[float], list[int]]:
        """Per-text NLL sums (nats) and scored-token counts under the rule of :attr:`definition`, not
        aggregated (so parts of a sample set can be scored apart, e.g. on several ranks, then combined with
        :meth:`GenPPLResult.from_samples`). Arguments as :meth:`score_texts`; all-empty input is allowed.
        ``contexts`` (one per text): each text is scored given its context, the judge's ids of the context put
        before the text's in the windows and not scored (:meth:`score_ids` ``skip``): a conditional Gen PPL."""
        texts = list(texts)
        flags = [bool(ended)] * len(texts) if isinstance(ended, bool) else [bool(e) for e in ended]
        if len(flags) != len(texts):
            raise DataError(f"{len(texts)} texts but {len(flags)} ended flags: pass one flag per text")
        token_lists = [
            ids + [self.end_id] if end else ids for ids, end in zip(self.tokenize(texts), flags, strict=True)
        ]
        if contexts is None:
            return self.score_ids(token_lists, batch_size=batch_size)
        before = self._context_ids(contexts, len(texts))
        joined = [c + ids for c, ids in zip(before, token_lists, strict=True)]
        return self.score_ids(joined, batch_size=batch_size, skip=[len(c) for c in before])

    def _context_ids(self, contexts: Sequence[str] | None, n: int) -> list[list[int]]:
        if contexts is None:
            return [[] for _ in range(n)]
        contexts = list(contexts)
        if len(contexts) != n:
            raise DataError(f"{n} texts but {len(contexts)} contexts: pass one context per text")
        return self.tokenize(contexts)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The model's last hidden states [B, T, H] (after its final norm) of right-padded windows."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True)
        return out.hidden_states[-1]

    @torch.no_grad()
    def features(
        self, texts: Sequence[str], contexts: Sequence[str] | None = None, batch_size: int = 8
    ) -> torch.Tensor:
        """One feature row per text, float64 [N, H] (what MAUVE compares, :mod:`flowlm.eval.mauve`): the judge's last
        hidden state at the last token of ``prefix + context + text``, keeping the last ``C − 1`` ids when longer
        (the prefix's own state for an empty text without context)."""
        texts = list(texts)
        before = self._context_ids(contexts, len(texts))
        rows = [[self.prefix_id, *(c + ids)[-(self.max_length - 1) :]] for c, ids in zip(before, self.tokenize(texts),
                                                                                          strict=True)]  # fmt: skip
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        for start in range(0, len(rows), int(batch_size)):
            chunk = list(range(start, min(start + int(batch_size), len(rows))))
            width = max(len(rows[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), self.prefix_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, i in enumerate(chunk):
                input_ids[b, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
                mask[b, : len(rows[i])] = 1
            states = self.hidden(input_ids.to(self.device), mask.to(self.device))
            for b, i in enumerate(chunk):
                out[i] = states[b, len(rows[i]) - 1].double().cpu()
        return torch.stack(out) if out else torch.empty(0, 0, dtype=torch.float64)

    def score_texts(
        self,
        texts: Sequence[str],
        batch_size: int = 8,
        ended: Sequence[bool] | bool = False,
        contexts: Sequence[str] | None = None,
    ) -> GenPPLResult:
        """Gen PPL of ``texts`` under this judge (the rule of :attr:`definition`).

        Args:
            texts: ``N`` decoded samples (all are scored, empty ones included, in any number).
            batch_size: windows per forward pass (the result does not depend on it).
            ended: per text, whether its sample ended with an EOS (then the judge's end token is appended
                and scored); one bool applies to all. :meth:`score_samples` fills it from the ids.
            contexts: optional, one per text: score each text given it (:meth:`text_nll`).
        """
        texts = list(texts)
        nll, counts = self.text_nll(texts, batch_size=batch_size, ended=ended, contexts=contexts)
        if sum(counts) == 0:
            raise DataError(f"all {len(texts)} texts are empty, so the judge has no token to score: check the samples")
        return GenPPLResult.from_samples(
            nll, counts, judge=self.description, definition=self.definition, judge_fingerprint=self.fingerprint
        )

    def score_samples(self, samples: Any, tokenizer: Any, batch_size: int = 8) -> GenPPLResult:
        """Gen PPL of generated id blocks: SPEC §6's EOS rule, decoding, then :meth:`score_texts`.

        Args:
            samples: ``N`` sequences of flowlm ids, or an array / tensor of shape ``(N, L)``.
            tokenizer: the flowlm :class:`~flowlm.data.Tokenizer` that produced the ids.
        """
        texts, ended = decode_for_judge(samples, tokenizer)
        return self.score_texts(texts, batch_size=batch_size, ended=ended)


def _model_context(config: Any) -> int | None:
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _logits_width(model: Any) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)
