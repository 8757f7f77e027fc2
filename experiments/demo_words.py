"""Issue 17, item 4: the share of generated words that are words of the demo corpus, for sample files of any model.

A word is a run of lower-case letters (with one inner apostrophe) of the lower-cased text; the dictionary is the
set of such words in the training works of the demo corpus (``runs/demo/corpus/demo-english.txt``, written by
``experiments/demo.py``; its held-out works are not used). Each row: the pooled share of dictionary words over all
samples of a file, with a 95% interval over samples (the ratio estimator's normal interval, from the per-sample
counts), and the words per sample.

    python experiments/demo_words.py --corpus runs/demo/corpus/demo-english.txt \\
        "new FMLM 1 step=runs/demo/eval/fmlm/samples_steps1.jsonl" "old FMLM 1 step=old/samples_steps1.jsonl"
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def dictionary(corpus: str) -> set[str]:
    from flowlm.data import load_corpus

    return {w for doc in load_corpus(corpus, "train") for w in words(doc)}


def sample_texts(path: Path) -> list[str]:
    """The texts of a ``flowlm sample`` / ``flowlm eval`` samples file (JSONL: a header, then one sample a line)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row["text"] for row in rows if "text" in row]


def word_share(texts: list[str], known: set[str]) -> dict:
    """Pooled share of known words over the texts, its 95% interval (normal, over texts) and words per text."""
    hits = [sum(w in known for w in words(t)) for t in texts]
    totals = [len(words(t)) for t in texts]
    n, total = len(texts), sum(totals)
    share = sum(hits) / total
    mean_total = total / n
    # delta method for a ratio of means: Var(share) ≈ Var(h − share·t) / (n · mean(t)²)
    resid = [h - share * t for h, t in zip(hits, totals, strict=True)]
    var = sum(r * r for r in resid) / (n - 1) / (n * mean_total**2)
    half = 1.96 * math.sqrt(var)
    return {"share": share, "low": share - half, "high": share + half, "words_per_sample": mean_total, "samples": n}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="the demo corpus file (its training works are the dictionary)")
    parser.add_argument("files", nargs="+", metavar="LABEL=SAMPLES.jsonl")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    known = dictionary(args.corpus)
    print(f"dictionary: {len(known):,} words from the training works of {args.corpus}")
    rows = {}
    for item in args.files:
        label, _, path = item.rpartition("=")
        if not label or not Path(path).is_file():
            parser.error(f"{item}: give LABEL=PATH with PATH a samples file")
        rows[label] = r = word_share(sample_texts(Path(path)), known)
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]"
        print(f"{label:<28} {r['share']:.3f} {interval}  {r['words_per_sample']:.1f} words/sample")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
