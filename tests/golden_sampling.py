"""Token ids that ``flowlm sample`` produces for every method at fixed seeds, on small models trained here.

``tests/data/golden_sampling.json`` holds the ids recorded before the method registry replaced the string
dispatch (issue 12); ``tests/test_methods_registry.py`` retrains the same models and asserts the ids are
bit-identical. Rerecord (only for a deliberate change of sampling or training numerics, named in the commit):
``python tests/golden_sampling.py --record``.

Everything runs on one intra-op thread: the ids are then a pure function of the code and the CPU's float32
kernels. Each configuration draws 2 x 16 tokens from a model trained 20 steps (distilled 8), so a kernel-path difference
(~1e-7 relative) flips a draw only if it lands within ~1e-7 of a category boundary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from markov import single_thread

GOLDEN = Path(__file__).parent / "data" / "golden_sampling.json"
TRAIN = [
    "--tokenizer", "bpe:300", "--quiet", "data.seq_len=16", "model.hidden_size=32", "model.n_blocks=1",
    "model.n_heads=2", "model.cond_dim=16", "model.dropout=0.1", "train.batch_size=4", "train.warmup_steps=2",
    "train.log_every=1", "train.ckpt_every=20", "train.val_every=20", "train.val_batches=1", "train.lr=3e-3",
]  # fmt: skip
# (name, model, extra `flowlm sample` arguments). Guidance is η = 1000 because after 20 steps the adaLN-zero gates
# are ~2e-3, so dropout moves the denoiser by ~1e-6: a smaller η would give the unguided ids.
CASES = [
    ("flm-1", "flm", ["--steps", "1"]),
    ("flm-8", "flm", ["--steps", "8"]),
    ("flm-8-guidance", "flm", ["--steps", "8", "--guidance", "1000"]),
    ("fmlm-1", "fmlm", ["--steps", "1"]),
    ("fmlm-4", "fmlm", ["--steps", "4"]),
    ("fmlm-4-gamma0.8", "fmlm", ["--steps", "4", "--gamma", "0.8"]),
    ("v1-stage1-4", "v1s1", ["--steps", "4"]),
    ("mdlm-8", "mdlm", ["--steps", "8"]),
    ("ar", "ar", []),
]


def train_models(root: Path) -> dict[str, Path]:
    """Train the five small models into ``root`` (CLI commands, in-process); their model folders by name."""
    from flowlm.cli import main

    cache = f"data.cache_dir={root / 'cache'}"

    def run(*args: str) -> None:
        assert main(list(args)) == 0, f"flowlm {' '.join(args)} failed"

    runs = {name: root / name for name in ("flm", "fmlm", "v1s1", "mdlm", "ar")}
    run("train", *TRAIN, cache, "--steps", "20", "--out", str(runs["flm"]))
    run("train", *TRAIN, cache, "--method", "mdlm", "--steps", "20", "--out", str(runs["mdlm"]))
    run("train", *TRAIN, cache, "--method", "ar", "--steps", "20", "--out", str(runs["ar"]))
    distill = [
        "--quiet",
        "--teacher",
        str(runs["flm"]),
        "--steps",
        "8",
        "train.lr=3e-3",
        "train.log_every=1",
        "train.val_every=8",
        "train.warmup_steps=2",
    ]
    run("distill", *distill, "--out", str(runs["fmlm"]))
    run("distill", *distill, "--recipe", "v1-stage1", "--out", str(runs["v1s1"]))
    return {name: path / "model" for name, path in runs.items()}


def sample_ids(models: dict[str, Path], root: Path) -> dict[str, list[list[int]]]:
    """Token ids of every case in :data:`CASES` (``flowlm sample ... -n 2 --seed 3 --out FILE``)."""
    from flowlm.cli import main

    ids = {}
    for name, model, extra in CASES:
        out = root / f"{name}.jsonl"
        assert main(["sample", str(models[model]), "-n", "2", "--seed", "3", *extra, "--out", str(out)]) == 0
        ids[name] = [json.loads(line)["tokens"] for line in out.read_text().splitlines()]
    return ids


def golden_ids(root: Path) -> dict[str, list[list[int]]]:
    with single_thread():
        return sample_ids(train_models(root), root)


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/golden_sampling.py --record")
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden_ids(Path(tmp)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
