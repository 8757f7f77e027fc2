"""Sample files: the generated ids of one step count, with provenance, as JSON lines.

Line 1 is a header::

    {"format": "flowlm-samples/1", "steps": 4, "num_samples": 256, "batch_size": 64,
     "timing": {...}, "provenance": {checkpoint, weights_sha256, method, sampler, seed, gamma, ...}}

then one line per sample, in order::

    {"index": 0, "batch": 0, "tokens": [...], "text": "...", "ended": true}

``tokens`` is the whole generated block (what entropy and diversity are computed on); ``text`` and
``ended`` are what the judge scores: the block after SPEC §6's EOS rule, decoded
(:func:`flowlm.eval.metrics.decode_for_judge`). A conditional evaluation (``flowlm eval --prompt-tokens`` /
``--infill-frac``) adds ``known`` (the positions that were given) and, for a prompt, ``context`` (the prompt's
text: ``text`` is then the continuation alone, scored given it). So ``flowlm score`` needs neither the model nor its
tokenizer to rescore a file with another judge. ``batch`` is the sampling batch (``index //
batch_size``); scoring works batch by batch, so a sharded run scores exactly the same groups.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from flowlm.errors import DataError

SAMPLES_FORMAT = "flowlm-samples/1"


@dataclass
class Chunk:
    """One sampling batch: its index, its samples (ids, judge texts, ended flags) and, once scored,
    per-sample judge NLL sums (nats) and scored-token counts."""

    batch: int
    tokens: list[list[int]]
    texts: list[str]
    ended: list[bool]
    nll: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    contexts: list[str] | None = None  # per sample, the condition's text the judge scores ``texts`` given
    known: list[list[int]] | None = None  # per sample, the positions that were given (a conditional evaluation)
    features: list[list[float]] | None = None  # per sample, the judge's feature row (for MAUVE; not written)

    def generated(self) -> list[list[int]]:
        """Per sample, the ids at the positions that were generated (all of them without ``known``)."""
        if self.known is None:
            return self.tokens
        given = [set(k) for k in self.known]
        return [[t for i, t in enumerate(ids) if i not in g] for ids, g in zip(self.tokens, given, strict=True)]


@dataclass
class SampleSet:
    """All samples of one step count: the header fields (see the module docstring) and the chunks in batch
    order; ``path`` is the file it was read from or written to."""

    header: dict
    chunks: list[Chunk]
    path: Path | None = None

    @property
    def tokens(self) -> list[list[int]]:
        return [row for c in self.chunks for row in c.tokens]

    @property
    def steps(self) -> int | None:
        return self.header["steps"]


def file_name(steps: int | None, method: str) -> str:
    """``samples_steps4.jsonl``; ``samples_<method>.jsonl`` for a method without a step count."""
    return f"samples_steps{steps}.jsonl" if steps is not None else f"samples_{method}.jsonl"


def write_samples(path: Path, sample_set: SampleSet) -> Path:
    """Write the header and every sample (see the module docstring); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch_size = sample_set.header["batch_size"]
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"format": SAMPLES_FORMAT, **sample_set.header}) + "\n")
        for chunk in sample_set.chunks:
            for k, (ids, text, end) in enumerate(zip(chunk.tokens, chunk.texts, chunk.ended, strict=True)):
                index = chunk.batch * batch_size + k
                row = {"index": index, "batch": chunk.batch, "tokens": ids, "text": text, "ended": end}
                if chunk.known is not None:
                    row["known"] = chunk.known[k]
                if chunk.contexts is not None:
                    row["context"] = chunk.contexts[k]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    sample_set.path = path
    return path


def read_samples(path: str | Path) -> SampleSet:
    """Read a file written by :func:`write_samples` (``flowlm eval``), checking that no sample is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sample file {str(path)!r} does not exist: pass a samples_*.jsonl written by flowlm eval")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file: pass a samples_*.jsonl written by flowlm eval") from None
    try:
        header = json.loads(lines[0]) if lines else {}
        rows = [json.loads(line) for line in lines[1:]]
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON lines ({err}): the file is damaged; rerun flowlm eval") from None
    if not isinstance(header, dict) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path} is not a flowlm eval sample file (its lines are not JSON objects)")
    if header.get("format") != SAMPLES_FORMAT:
        raise DataError(
            f"{path} is not a flowlm eval sample file (its first line has no format {SAMPLES_FORMAT!r}): "
            "score files written by flowlm eval (flowlm sample --out files hold no judge texts)"
        )
    header.pop("format")
    n, batch_size = header.get("num_samples"), header.get("batch_size")
    if not isinstance(n, int) or not isinstance(batch_size, int) or batch_size < 1 or "provenance" not in header:
        raise DataError(f"{path}: the header lacks num_samples, batch_size or provenance: rerun flowlm eval")
    if [r.get("index") for r in rows] != list(range(n)):
        raise DataError(f"{path} holds {len(rows)} samples, not indices 0 ... {n - 1} in order: rerun flowlm eval")
    chunks: dict[int, Chunk] = {}
    for r in rows:
        try:
            j = r["index"] // batch_size
            if r["batch"] != j:
                raise DataError(f"{path}: sample {r['index']} says batch {r['batch']}, expected {j}")
            chunk = chunks.setdefault(j, Chunk(j, [], [], []))
            chunk.tokens.append([int(t) for t in r["tokens"]])
            chunk.texts.append(str(r["text"]))
            chunk.ended.append(bool(r["ended"]))
            for key, attribute, kind in (("known", "known", list), ("context", "contexts", str)):
                if key in r:
                    if getattr(chunk, attribute) is None:
                        if len(chunk.tokens) > 1:
                            raise DataError(f"{path}: sample {r['index']} has {key!r}, the samples before it do not")
                        setattr(chunk, attribute, [])
                    getattr(chunk, attribute).append([int(i) for i in r[key]] if kind is list else str(r[key]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: sample {r.get('index')} is malformed ({err!r}): rerun flowlm eval") from None
    return SampleSet(header, [chunks[j] for j in sorted(chunks)], path)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
