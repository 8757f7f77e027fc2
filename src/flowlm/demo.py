"""The demo models shipped inside the package, and the ``flowlm demo`` side-by-side comparison.

``assets/demo/flm`` is an FLM of 9.6M parameters trained on 22.6 MB of public-domain English prose plus the
embedded Shakespeare (``experiments/demo.py``), and ``assets/demo/fmlm`` its PSD-distilled flow map (the commands
that produced them are in each folder's ``flowlm.json`` and in ``docs/results.md``). ``flowlm.load("demo:fmlm")``
loads one by name; no network is ever needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flowlm.api import load
from flowlm.demo_models import DEMO_DIR, DEMO_MODELS, PREFIX, demo_path

__all__ = ["DEMO_DIR", "DEMO_MODELS", "PREFIX", "DemoRun", "demo_path", "format_demo", "run_demo"]


@dataclass(frozen=True)
class DemoRun:
    """One row of the demo: which model, how many network calls per sample, the texts and the time taken."""

    model: str
    steps: int
    texts: list[str]
    seconds_per_sample: float
    prompt: str | None = None


DEMO_PROMPT = "The people of this country"


def run_demo(
    num_samples: int = 3,
    seed: int = 0,
    fmlm_steps: tuple[int, ...] = (1, 2, 4),
    flm_steps: tuple[int, ...] = (1, 256),
    device: str = "cpu",
    prompt: str | None = DEMO_PROMPT,
    prompt_steps: int = 4,
) -> list[DemoRun]:
    """Sample the shipped FMLM and FLM with the given step counts, then (with ``prompt``) continue the prompt with
    the FMLM in ``prompt_steps`` steps; each row is timed on its own.

    One single-sample, one-step call per model runs first and is not timed, so the numbers exclude
    one-off start-up costs (thread pools, first allocations).
    """
    runs = []
    for name, step_list in (("fmlm", fmlm_steps), ("flm", flm_steps)):
        model = load(demo_path(name), device=device)
        model.sample_tokens(1, 1, seed=seed)
        for steps in step_list:
            start = time.perf_counter()
            tokens = model.sample_tokens(num_samples, steps, seed=seed)
            seconds = (time.perf_counter() - start) / num_samples
            runs.append(DemoRun(name.upper(), steps, model.decode(tokens), seconds))
    if prompt is not None:
        model = load(demo_path("fmlm"), device=device)
        start = time.perf_counter()
        texts = model.generate(num_samples, steps=prompt_steps, seed=seed, prompt=prompt)
        seconds = (time.perf_counter() - start) / num_samples
        runs.append(DemoRun("FMLM", prompt_steps, texts, seconds, prompt=prompt))
    return runs


def format_demo(runs: list[DemoRun]) -> str:
    """Plain-text report of :func:`run_demo` (what ``flowlm demo`` prints)."""
    lines = []
    for run in runs:
        calls = "1 network call" if run.steps == 1 else f"{run.steps} network calls"
        given = f", continuing {run.prompt!r}" if run.prompt is not None else ""
        lines.append(f"=== {run.model}, {calls} per sample{given}: {run.seconds_per_sample:.4f} s/sample ===")
        for i, text in enumerate(run.texts, 1):
            lines.append(f"[{i}] " + " ".join(text.split()))
        lines.append("")
    return "\n".join(lines)
