"""Gen PPL–entropy frontiers, and Gen PPL at a matched entropy.

Gen PPL rewards low entropy: a sampler that repeats itself scores well. A fair comparison of two models holds their
entropy fixed. Sampling one model at several temperatures (``flowlm eval --temperatures``) traces, for each step
count, a curve of (entropy, Gen PPL) points, its *frontier*; ``flowlm compare --entropy H`` reads each model's Gen PPL
off its frontier at the entropy ``H`` by interpolation.

**Interpolation.** The points of one step count are sorted by entropy; at ``H`` between two neighbours ``log Gen PPL``
is linear in entropy, and the ends of the 95% interval are interpolated the same way (their logs). This is an
approximation: it treats the curve between two measured temperatures as straight in (entropy, log Gen PPL), and the
entropies themselves are sample estimates. Outside the measured entropies nothing is extrapolated (None: add
temperatures that reach ``H``).

Files: ``frontier.json`` (format :data:`FRONTIER_FORMAT`: the label, judge and definitions of the evaluations, and
one point per (temperature, step count) with the ``results.json`` it came from, relative to the frontier's folder),
``frontier.md`` and ``frontier.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from flowlm.errors import ConfigError, DataError
from flowlm.eval import plots, report

FRONTIER_FORMAT = "flowlm-eval-frontier/1"


def parse_temperatures(text: str | Sequence[float]) -> list[float]:
    """``"0.7,0.8,1"`` (or a sequence) -> checked, distinct temperatures, sorted."""
    from flowlm.methods.tempering import check_temperature

    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    try:
        values = [check_temperature(float(p)) for p in parts if p != ""]
    except ValueError:
        raise ConfigError(f"--temperatures {text!r}: give comma-separated numbers > 0, e.g. 0.7,0.8,0.9,1.0") from None
    if len(values) < 2 or len(set(values)) != len(values):
        raise ConfigError(f"--temperatures {text!r}: a frontier needs at least two distinct temperatures")
    return sorted(values)


def folder_of(out: Path, temperature: float) -> Path:
    """Where the evaluation at one temperature is written: ``out/temperature-<T>``."""
    return Path(out) / f"temperature-{temperature:g}"


def build_frontier(paths: Sequence[str | Path], base: str | Path) -> dict:
    """The frontier of ``results.json`` files of one model at several temperatures (same judge and definitions);
    paths are recorded relative to ``base``."""
    points, first = [], None
    for path in paths:
        results = report.read_results(path)
        if first is None:
            first = results
        elif results["judge"]["fingerprint"] != first["judge"]["fingerprint"]:
            raise ConfigError(f"{path}: scored by another judge than {paths[0]}; a frontier needs one judge")
        temperature = results["provenance"]["sampling"].get("temperature")
        for row in results["results"]:
            points.append({
                "steps": row["steps"], "temperature": temperature, "entropy": row["entropy"],
                "gen_ppl": row["gen_ppl"], "gen_ppl_ci95": row["gen_ppl_ci95"], "num_samples": row["num_samples"],
                "results": str(Path(path).resolve().relative_to(Path(base).resolve())),
            })  # fmt: skip
    if first is None:
        raise ConfigError("a frontier needs results.json files")
    return {"format": FRONTIER_FORMAT, "label": first["label"], "judge": first["judge"],
            "definitions": first["definitions"], "points": points}  # fmt: skip


def read_frontier(path: str | Path) -> dict:
    """A ``frontier.json`` written by ``flowlm eval --temperatures``."""
    try:
        frontier = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"cannot read {str(path)!r} as JSON: pass a frontier.json written by flowlm eval") from None
    if not isinstance(frontier, dict) or frontier.get("format") != FRONTIER_FORMAT:
        raise DataError(f"{path} is not a flowlm frontier file (format {FRONTIER_FORMAT!r} expected)")
    return frontier


def step_counts(frontier: dict) -> list:
    """The step counts of a frontier, in order (None, a method without steps, last)."""
    return sorted({p["steps"] for p in frontier["points"]}, key=lambda s: (s is None, s or 0))


def at_entropy(frontier: dict, steps, entropy: float) -> dict | None:
    """Gen PPL and its 95% interval at ``entropy`` on the frontier of ``steps`` (module docstring), with the two
    temperatures it lies between; None outside the measured entropies."""
    points = sorted((p for p in frontier["points"] if p["steps"] == steps), key=lambda p: p["entropy"])
    for a, b in zip(points, points[1:], strict=False):
        if a["entropy"] <= entropy <= b["entropy"]:
            span = b["entropy"] - a["entropy"]
            w = 0.0 if span == 0 else (entropy - a["entropy"]) / span
            return {"steps": steps, "entropy": entropy, "gen_ppl": _mix(a["gen_ppl"], b["gen_ppl"], w),
                    "gen_ppl_ci95": [_mix(a["gen_ppl_ci95"][i], b["gen_ppl_ci95"][i], w) for i in (0, 1)],
                    "between_temperatures": [a["temperature"], b["temperature"]]}  # fmt: skip
    return None


def _mix(x: float, y: float, w: float) -> float:
    """Linear interpolation of ``log x`` and ``log y`` at weight ``w`` (0: x, 1: y), exponentiated."""
    return math.exp((1 - w) * math.log(x) + w * math.log(y))


def frontier_markdown(frontier: dict) -> str:
    lines = [f"# Gen PPL–entropy frontier: {frontier['label']}", "", f"Judge: {frontier['judge']['description']}",
             "", "| steps | temperature | entropy (nats) | Gen PPL | 95% interval | samples |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for steps in step_counts(frontier):
        for p in sorted((p for p in frontier["points"] if p["steps"] == steps), key=lambda p: p["temperature"]):
            lo, hi = p["gen_ppl_ci95"]
            lines.append(f"| {'-' if steps is None else steps} | {p['temperature']:g} | {p['entropy']:.3f} | "
                         f"{p['gen_ppl']:.2f} | {lo:.1f}–{hi:.1f} | {p['num_samples']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def matched_markdown(frontiers: Sequence[dict], entropy: float) -> str:
    """One row per (model, step count): Gen PPL at ``entropy`` with its interval, or why there is none."""
    lines = [f"## Gen PPL at entropy {entropy:g} nats (interpolated on each frontier)", "",
             "| model | steps | Gen PPL | 95% interval | between temperatures |", "|---|---|---|---|---|"]  # fmt: skip
    for frontier in frontiers:
        for steps in step_counts(frontier):
            hit = at_entropy(frontier, steps, entropy)
            label = "-" if steps is None else steps
            if hit is None:
                reach = [p["entropy"] for p in frontier["points"] if p["steps"] == steps]
                lines.append(f"| {frontier['label']} | {label} | outside the frontier (entropy {min(reach):.3f}–"
                             f"{max(reach):.3f}): add temperatures | | |")  # fmt: skip
            else:
                lo, hi = hit["gen_ppl_ci95"]
                t_a, t_b = hit["between_temperatures"]
                lines.append(f"| {frontier['label']} | {label} | {hit['gen_ppl']:.2f} | {lo:.1f}–{hi:.1f} | "
                             f"{t_a:g}–{t_b:g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_frontiers(frontiers: Sequence[dict], path: str | Path, entropy: float | None = None) -> Path:
    """Gen PPL (log) against entropy, one line per (model, step count), labelled by temperature; a vertical line at
    ``entropy`` when given."""
    plt = plots.require_matplotlib()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    line = 0
    for frontier in frontiers:
        for steps in step_counts(frontier):
            points = sorted((p for p in frontier["points"] if p["steps"] == steps), key=lambda p: p["entropy"])
            xs, ys = [p["entropy"] for p in points], [p["gen_ppl"] for p in points]
            name = frontier["label"] if steps is None else f"{frontier['label']}, {steps} steps"
            ax.plot(xs, ys, "o-", color=colors[line % len(colors)], label=name)
            for p in points:
                ax.annotate(f"T={p['temperature']:g}", (p["entropy"], p["gen_ppl"]), textcoords="offset points",
                            xytext=(3, 3), fontsize=6)  # fmt: skip
            line += 1
    if entropy is not None:
        ax.axvline(entropy, color="gray", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("mean unigram entropy of the samples, nats")
    ax.set_ylabel("Gen PPL (lower is better)")
    ax.set_title(f"judge {frontiers[0]['judge']['description']}", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_frontier(frontier: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "frontier.json", frontier)
    (out / "frontier.md").write_text(frontier_markdown(frontier), encoding="utf-8")
    plot_frontiers([frontier], out / "frontier.png")
