"""The two evaluation figures, drawn with matplotlib's Agg backend (files only, no display).

* ``genppl_vs_steps.png``: Gen PPL against the number of steps (log-log), one line per model, with the
  mean unigram entropy on a second axis (dashed); a model without steps (AR) is a horizontal line.
* ``genppl_vs_seconds.png``: Gen PPL against seconds per sample (log-log), each point labelled with its
  step count.

matplotlib is imported only here, when a figure is drawn: ``pip install 'flowlm[eval]'`` provides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flowlm.errors import ConfigError

INSTALL = "pip install 'flowlm[eval]'"


def require_matplotlib():
    """The ``matplotlib.pyplot`` module on the Agg backend, or a ConfigError saying what to install."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(f"the evaluation plots need matplotlib, which is not installed: run `{INSTALL}`") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(models: Sequence[dict]) -> str:
    judge = models[0]["judge"]["description"]
    sizes = sorted({row["num_samples"] for m in models for row in m["results"]})
    n = ", ".join(str(s) for s in sizes)
    return f"judge {judge}; {n} samples per point"


def plot_results(models: Sequence[dict], out: Path) -> tuple[Path, Path]:
    """Draw both figures for one or more results dicts (same judge) into ``out``; returns their paths."""
    plt = require_matplotlib()
    out = Path(out)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ent_ax = ax.twinx()
    for i, m in enumerate(models):
        color = colors[i % len(colors)]
        stepped = sorted((r for r in m["results"] if r["steps"] is not None), key=lambda r: r["steps"])
        stepless = [r for r in m["results"] if r["steps"] is None]
        if stepped:
            xs = [r["steps"] for r in stepped]
            ax.plot(xs, [r["gen_ppl"] for r in stepped], "o-", color=color, label=f"{m['label']}: Gen PPL")
            ent_ax.plot(xs, [r["entropy"] for r in stepped], "s--", color=color, mfc="none", alpha=0.7,
                        label=f"{m['label']}: entropy")  # fmt: skip
        for r in stepless:
            ax.axhline(r["gen_ppl"], color=color, ls="-", lw=1.5, label=f"{m['label']} (no steps): Gen PPL")
            ent_ax.axhline(r["entropy"], color=color, ls="--", lw=1, alpha=0.7, label=f"{m['label']}: entropy")
    ax.set_xscale("log", base=2)
    all_steps = sorted({r["steps"] for m in models for r in m["results"] if r["steps"] is not None})
    if all_steps:
        ax.set_xticks(all_steps, [str(s) for s in all_steps])
    ax.set_yscale("log")
    ax.set_xlabel("steps (network calls per sample)")
    ax.set_ylabel("Gen PPL (lower is better)")
    ent_ax.set_ylabel("mean unigram entropy, nats (dashed)")
    handles = ax.get_legend_handles_labels()[0] + ent_ax.get_legend_handles_labels()[0]
    names = ax.get_legend_handles_labels()[1] + ent_ax.get_legend_handles_labels()[1]
    ax.legend(handles, names, fontsize=7, loc="best")
    ax.set_title(_title(models), fontsize=8)
    fig.tight_layout()
    steps_png = out / "genppl_vs_steps.png"
    fig.savefig(steps_png, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(models):
        rows = sorted((r for r in m["results"] if r.get("seconds_per_sample")), key=lambda r: r["seconds_per_sample"])
        if not rows:
            continue
        xs, ys = [r["seconds_per_sample"] for r in rows], [r["gen_ppl"] for r in rows]
        ax.plot(xs, ys, "o-", color=colors[i % len(colors)], label=m["label"])
        for r, x, y in zip(rows, xs, ys, strict=True):
            text = f"{r['steps']}" if r["steps"] is not None else "no steps"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("seconds per sample (labels: steps)")
    ax.set_ylabel("Gen PPL (lower is better)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(_title(models), fontsize=8)
    fig.tight_layout()
    seconds_png = out / "genppl_vs_seconds.png"
    fig.savefig(seconds_png, dpi=120)
    plt.close(fig)
    return steps_png, seconds_png
