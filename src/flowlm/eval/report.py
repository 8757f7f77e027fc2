"""Evaluation reports: ``results.json`` / ``results.md`` of one model, and the merged comparison of several.

Every report states the judge (name and fingerprint), the number of samples of each row, the
definitions of Gen PPL, entropy, diversity and timing, and the provenance of the samples (checkpoint
weights hash, method, sampler, steps, γ, seed, precision, code version, hardware, date).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from flowlm.errors import ConfigError, DataError

RESULTS_FORMAT = "flowlm-eval-results/1"
COMPARISON_FORMAT = "flowlm-eval-comparison/1"

# (column title, row key, format)
_COLUMNS = (
    ("steps", "steps", None),
    ("Gen PPL", "gen_ppl", ".2f"),
    ("95% interval", "gen_ppl_ci95", ".1f"),
    ("entropy (nats)", "entropy", ".3f"),
    ("MAUVE", "mauve", ".3f"),
    ("distinct-4", "distinct_4", ".3f"),
    ("self-BLEU-4", "self_bleu_4", ".3f"),
    ("s / sample", "seconds_per_sample", ".3g"),
    ("samples", "num_samples", None),
    ("judge tokens", "total_tokens", None),
)
_PROVENANCE_KEYS = (
    "checkpoint", "weights_sha256", "checkpoint_step", "method", "sampler", "gamma", "guidance", "sc_guidance",
    "temperature", "top_p", "seed", "seq_len",
    "batch_size", "precision", "code_version", "created", "command",
)  # fmt: skip


def write_json(path: Path, obj: dict) -> Path:
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


def read_results(path: str | Path) -> dict:
    """A ``results.json`` written by ``flowlm eval`` / ``flowlm score``."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise DataError(f"cannot read {str(path)!r}: pass a results.json written by flowlm eval") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file: pass a results.json written by flowlm eval") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not JSON ({err}): pass results.json written by flowlm eval") from None
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise DataError(f"{path} is not a flowlm eval results file (format {RESULTS_FORMAT!r} expected)")
    return results


def _cell(value, fmt: str | None) -> str:
    if value is None:
        return "n/a" if fmt else "-"
    if fmt is None:
        return str(value)
    if isinstance(value, list | tuple):  # an interval
        return "–".join(_cell(v, fmt) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, fmt)


_OPTIONAL = ("mauve",)  # columns shown only when some row has a value (conditional evaluations)


def _table(entries: Sequence[tuple[str, dict]], with_model: bool) -> list[str]:
    rows = [row for _, results in entries for row in results["results"]]
    columns = [c for c in _COLUMNS if c[1] not in _OPTIONAL or any(row.get(c[1]) is not None for row in rows)]
    head = (["model"] if with_model else []) + [c[0] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, results in entries:
        for row in results["results"]:
            cells = [_cell(row.get(key), fmt) for _, key, fmt in columns]
            if row.get("steps") is None:
                cells[0] = "- (no steps)"
            lines.append("| " + " | ".join(([label] if with_model else []) + cells) + " |")
    return lines


def _definitions(judge: dict, definitions: dict) -> list[str]:
    return [
        f"Judge: `{judge['description']}` (fingerprint {judge['fingerprint']}).",
        "",
        "Definitions:",
        f"- Gen PPL: {definitions['gen_ppl']}",
        f"- 95% interval: {definitions.get('gen_ppl_ci95', 'not computed for these results')}",
        f"- Entropy: {definitions['entropy']}",
        f"- Diversity: {definitions['diversity']}",
        f"- Seconds per sample: {definitions['seconds_per_sample']}",
        *([f"- MAUVE: {definitions['mauve']}"] if "mauve" in definitions else []),
    ]


def _provenance(results: dict) -> list[str]:
    sampling = results["provenance"]["sampling"]
    lines = [f"- {key}: `{sampling.get(key)}`" for key in (*_PROVENANCE_KEYS, "condition") if key in sampling]
    hw = sampling.get("hardware", {})
    lines.append(
        f"- sampled on: `{hw.get('device_name')}` ({hw.get('device')}, {hw.get('torch_threads')} torch threads, "
        f"{hw.get('world_size')} rank(s), torch {hw.get('torch')})"
    )
    scoring = results["provenance"]["scoring"]
    lines.append(
        f"- scored: {scoring.get('created')} with flowlm {scoring.get('code_version')}: `{scoring.get('command')}`"
    )
    return lines


def results_markdown(results: dict) -> str:
    """The markdown report of one ``results.json``."""
    lines = [f"# Evaluation: {results['label']}", ""]
    lines += _table([(results["label"], results)], with_model=False)
    lines += ["", *_definitions(results["judge"], results["definitions"]), "", "Provenance:", *_provenance(results)]
    return "\n".join(lines) + "\n"


def compare(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> dict:
    """Merge several ``results.json`` (one per model) that share a judge into one comparison.

    Raises:
        ConfigError: the files were scored by different judges or with different definitions (rescore
            the samples with ``flowlm score``), or ``labels`` does not give one label per file.
    """
    if not paths:
        raise ConfigError("flowlm compare needs at least one results.json")
    if labels is not None and len(labels) != len(paths):
        raise ConfigError(f"{len(labels)} labels for {len(paths)} results files: give one label per file")
    models = [read_results(p) for p in paths]
    first = models[0]
    for path, results in zip(paths, models, strict=True):
        if (
            results["judge"]["fingerprint"] != first["judge"]["fingerprint"]
            or results["definitions"] != first["definitions"]
        ):
            raise ConfigError(
                f"{path} was scored by {results['judge']['description']} and {paths[0]} by "
                f"{first['judge']['description']} (or with another definition): numbers from different judges are "
                "not comparable; rescore the samples with flowlm score --judge <one judge>"
            )
    if labels is not None:
        for results, label in zip(models, labels, strict=True):
            results["label"] = label
    elif len({m["label"] for m in models}) < len(models):  # e.g. two runs named "model": add their folders
        for path, results in zip(paths, models, strict=True):
            results["label"] = f"{results['label']} [{Path(path).resolve().parent.name}]"
    return {"format": COMPARISON_FORMAT, "judge": first["judge"], "definitions": first["definitions"], "models": models}


def comparison_markdown(comparison: dict) -> str:
    """One table with a row per (model, step count), then the judge, definitions and each model's provenance."""
    models = comparison["models"]
    lines = ["# Evaluation: comparison", ""]
    lines += _table([(m["label"], m) for m in models], with_model=True)
    lines += ["", *_definitions(comparison["judge"], comparison["definitions"])]
    for m in models:
        lines += ["", f"Provenance of {m['label']}:", *_provenance(m)]
    return "\n".join(lines) + "\n"
