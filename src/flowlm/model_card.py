"""The model card (``README.md``) written into every model folder: Hub metadata plus the provenance
recorded in ``flowlm.json``, so a folder pushed to the Hugging Face Hub explains itself."""

from __future__ import annotations

import json

from flowlm.errors import CheckpointError
from flowlm.methods import registry


def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def model_card(meta: dict, name: str | None = None) -> str:
    """Markdown with YAML front matter (``library_name: flowlm``, license, tags) and the provenance table.

    ``name`` is how a reader loads the model (a Hub id or a folder); ``meta`` is the ``flowlm.json`` document.
    """
    method = meta.get("method", "flm")
    try:
        method_def = registry.for_meta({**meta, "method": method})
        text, steps, options = method_def.card_text, method_def.suggested_steps, method_def.card_options
    except CheckpointError:  # a method this flowlm does not know: describe it by its name
        text, steps, options = method, 64, ""
    run = meta.get("run", {}) or {}
    data = run.get("data", {}) or {}
    model = meta.get("model", {}) or {}
    tokenizer = meta.get("tokenizer", {}) or {}
    source = name or "path/to/this/folder"
    tags = ["flowlm", "flow-language-model", "text-generation", method]
    if meta.get("imported_from"):
        tags.append("imported")
    weights = meta.get("weights", "ema")
    if weights == "ema" and meta.get("ema_decay") is not None:
        weights = f"EMA (decay {meta['ema_decay']})"
    rows = [
        ("method", method + (f" (recipe {meta['recipe']})" if meta.get("recipe") else "")),
        ("data", data.get("corpus", "?")),
        ("tokenizer", f"{tokenizer.get('spec', '?')} (V = {meta.get('vocab_size', '?')})"),
        ("sequence length", model.get("seq_len", "?")),
        ("network", f"DiT {model.get('n_blocks', '?')} blocks x {model.get('hidden_size', '?')} wide, "
                    f"{model.get('n_heads', '?')} heads, {model.get('time_inputs', 1)} time input(s)"),
        ("training steps", meta.get("step", "?")),
        ("weights", weights),
        ("weights SHA-256", f"`{meta.get('weights_sha256', '?')}`"),
        ("code version", f"flowlm {meta.get('code_version', '?')}"),
        ("written", meta.get("created", "?")),
        ("command", f"`{meta.get('command', '?')}`"),
    ]  # fmt: skip
    if meta.get("teacher"):
        rows.append(("teacher weights SHA-256", f"`{meta['teacher'].get('weights_sha256')}`"))
    if meta.get("imported_from"):
        imported = meta["imported_from"]
        rows.append(
            ("imported from", f"reference checkpoint `{imported.get('algo')}`, SHA-256 `{imported.get('sha256')}`")
        )
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    python_steps = "" if steps is None else f", steps={steps}"
    cli_steps = "" if steps is None else f" --steps {steps}"
    return f"""---
library_name: flowlm
license: {meta.get("license", "other")}
tags:
{_yaml_list(tags)}
pipeline_tag: text-generation
---

# {name or "flowlm model"}

This is {text}, made with flowlm and stored in its model-folder
format: `model.safetensors` (weights), `flowlm.json` (configuration and provenance) and
`tokenizer/`.

## Provenance

| field | value |
| --- | --- |
{table}

The full configuration is in `flowlm.json` (`run`, `model`).

## Sampling

```python
import flowlm

model = flowlm.load("{source}")  # a Hub id or a local folder
texts = model.generate(num_samples=4{python_steps}{options})
```

or on the command line: `flowlm sample {source}{cli_steps} -n 4`.

<details><summary>flowlm.json</summary>

```json
{json.dumps({k: v for k, v in meta.items() if k not in ("run", "imported_from")}, indent=2, default=str)}
```
</details>
"""
