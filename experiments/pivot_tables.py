"""Print ``flowlm compare`` results as compact Markdown tables: one row per step count, one column per model.

    python experiments/pivot_tables.py runs/wikitext2/report/offline/comparison.json [more comparison.json ...]

For each comparison: Gen PPL with its bootstrap 95% interval and the entropy (nats) in every cell, models
without steps (AR decoding, held-out data) in rows of their own; then seconds per sample. Nothing is
recomputed: the numbers are those of ``comparison.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def quality_cell(row: dict | None) -> str:
    if row is None:
        return ""
    lo, hi = row.get("gen_ppl_ci95") or (None, None)
    interval = f" [{lo:.0f}–{hi:.0f}]" if lo is not None else ""
    return f"{row['gen_ppl']:.0f}{interval} / {row['entropy']:.2f}"


def pivot(comparison: dict) -> str:
    models = comparison["models"]
    stepped = [m for m in models if any(r["steps"] is not None for r in m["results"])]
    stepless = [m for m in models if m not in stepped]
    steps = sorted({r["steps"] for m in stepped for r in m["results"]})
    by_steps = {m["label"]: {r["steps"]: r for r in m["results"]} for m in stepped}
    lines = [
        f"Judge: {comparison['judge']['description']}. Cells: Gen PPL [bootstrap 95% interval] / entropy (nats).",
        "",
        "| steps | " + " | ".join(m["label"] for m in stepped) + " |",
        "|---|" + "---|" * len(stepped),
    ]
    for k in steps:
        lines.append(f"| {k} | " + " | ".join(quality_cell(by_steps[m["label"]].get(k)) for m in stepped) + " |")
    for m in stepless:
        (row,) = m["results"]
        lines.append(f"| {m['label']} (no steps) | {quality_cell(row)} |" + " |" * (len(stepped) - 1))
    lines += ["", "Seconds per sample:", "", "| steps | " + " | ".join(m["label"] for m in stepped) + " |"]
    lines.append("|---|" + "---|" * len(stepped))
    for k in steps:
        cells = [by_steps[m["label"]].get(k, {}).get("seconds_per_sample") for m in stepped]
        lines.append(f"| {k} | " + " | ".join(f"{c:.3g}" if c else "" for c in cells) + " |")
    for m in stepless:
        seconds = m["results"][0].get("seconds_per_sample")
        if seconds:
            lines.append(f"| {m['label']} (no steps) | {seconds:.3g} |" + " |" * (len(stepped) - 1))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("comparisons", nargs="+", help="comparison.json files written by flowlm compare")
    for path in parser.parse_args().comparisons:
        print(f"### {path}\n\n{pivot(json.loads(Path(path).read_text(encoding='utf-8')))}")


if __name__ == "__main__":
    main()
