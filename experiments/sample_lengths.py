"""Print, for each samples_*.jsonl of the given flowlm eval / reference folders, the mean number of words of the
judge texts and how many texts are near-empty (under 3 words: an EOS right at the start).

    python experiments/sample_lengths.py runs/wikitext2/eval/*-offline
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def lengths(path: Path) -> list[int]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()][1:]  # line 1 is the header
    return [len(r["text"].split()) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    for folder in parser.parse_args().folders:
        for path in sorted(folder.glob("samples_*.jsonl"), key=lambda p: (len(p.stem), p.stem)):
            words = lengths(path)
            short = sum(w < 3 for w in words)
            print(f"{folder.name} {path.stem}: {sum(words) / len(words):.1f} words, {short} of {len(words)} under 3")


if __name__ == "__main__":
    main()
