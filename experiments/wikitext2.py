"""Issue 5: the paper's claims at a scale two CPU cores can train, on WikiText-2.

Trains FLM, MDLM and AR with the same budget of training tokens (same backbone size, tokenizer, data,
batch and steps), distills the FLM into an FMLM (PSD), samples every model at several step counts, and
scores the samples with the offline judge (SmolLM2-135M) and with the AR model as an in-domain judge.

Every stage is one ``flowlm`` command (printed before it runs, so it can be rerun by hand). The script is
restartable: finished stages are skipped, an interrupted training resumes from its last checkpoint, and
``stages.json`` in the output folder accumulates each stage's wall-clock over all attempts.

    python experiments/wikitext2.py --data ../shared/data/wikitext2-valid.txt --out runs/wikitext2

The corpus is the WikiText-2 *validation* split (the only WikiText file in ../shared/data): its
paragraphs are documents and every 20th is held out (flowlm's rule for local text files). ``<unk>`` is
kept as written: the BPE learns it as a token like any other word.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("flm", "mdlm", "ar")
SAMPLERS = ("flm", "fmlm", "mdlm")
STEPS = (1, 2, 4, 8, 16, 32, 64, 256, 1024)
# ~2.1M parameters (1.0M in the blocks, 1.0M in the input and output matrices): d = 128, 4 blocks, a BPE of
# 4,096 tokens, L = 64; dropout against the small corpus (~0.27M training tokens, so 2,000 steps are ~15 epochs).
MODEL = [
    "model.hidden_size=128",
    "model.n_blocks=4",
    "model.n_heads=4",
    "model.cond_dim=64",
    "model.dropout=0.1",
    "data.seq_len=64",
    "train.batch_size=32",
    "train.lr=1e-3",
    "train.warmup_steps=200",
    "train.ema_decay=0.998",
    "train.ckpt_every=250",
    "train.val_every=250",
    "train.val_batches=20",
]


def flowlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowlm.cli", *args]


class Stages:
    """Runs named stages once each; ``stages.json`` records commands, attempts and seconds."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.state = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.path)

    def run(self, name: str, command: list[str]) -> None:
        entry = self.state.setdefault(name, {"command": shlex.join(command), "seconds": 0.0, "attempts": 0})
        if entry.get("done"):
            print(f"[{name}] done before ({entry['seconds']:.0f} s), skipped")
            return
        print(f"[{name}] {shlex.join(command)}", flush=True)
        entry["attempts"] += 1
        start = time.perf_counter()
        proc = subprocess.run(command)
        entry["seconds"] += time.perf_counter() - start
        entry["done"] = proc.returncode == 0
        self.save()
        if proc.returncode != 0:
            sys.exit(f"[{name}] failed with exit code {proc.returncode}; rerun this script to resume")
        print(f"[{name}] finished ({entry['seconds']:.0f} s in total)", flush=True)


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(here.parents[1] / "shared" / "data" / "wikitext2-valid.txt"))
    parser.add_argument("--out", default="runs/wikitext2")
    parser.add_argument("--train-steps", type=int, default=2000, help="optimizer steps of FLM, MDLM and AR each")
    parser.add_argument("--distill-steps", type=int, default=1000, help="PSD steps of the FMLM")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="step counts to evaluate")
    parser.add_argument("--judge", default="smollm2-offline", help="the general-purpose judge")
    parser.add_argument("--stop-after", help="stop after this stage (e.g. train-ar)")
    args = parser.parse_args()

    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"no corpus at {data}: pass --data path/to/wikitext2-valid.txt")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    common = ["--data", str(data.resolve()), "--tokenizer", "bpe:4096", "--steps", str(args.train_steps), "--quiet"]

    def stage(name: str, command: list[str]) -> None:
        stages.run(name, command)
        if name == args.stop_after:
            sys.exit(0)

    for method in METHODS:
        stage(f"train-{method}", flowlm("train", "--method", method, "--out", str(out / method), *common, *MODEL))
    stage(
        "distill-fmlm",
        flowlm(
            "distill", "--teacher", str(out / "flm"), "--out", str(out / "fmlm"), "--steps",
            str(args.distill_steps), "--quiet", "train.ckpt_every=250", "train.val_every=250",
        ),
    )
    judges = {"offline": args.judge, "ar": str(out / "ar" / "model")}
    for name in (*SAMPLERS, "ar"):
        steps = [] if name == "ar" else ["--steps", args.steps]
        stage(
            f"eval-{name}",
            flowlm(
                "eval", str(out / name / "model"), *steps, "--num-samples", str(args.num_samples), "--seed", "0",
                "--judge", judges["offline"], "--out", str(out / "eval" / f"{name}-offline"), "--quiet",
            ),
        )
        samples = sorted(str(f) for f in (out / "eval" / f"{name}-offline").glob("samples_*.jsonl"))
        stage(
            f"score-{name}-ar",
            flowlm("score", *samples, "--judge", judges["ar"], "--out", str(out / "eval" / f"{name}-ar"), "--quiet"),
        )
    for judge in judges:
        results = [str(out / "eval" / f"{name}-{judge}" / "results.json") for name in (*SAMPLERS, "ar")]
        stage(f"compare-{judge}", flowlm("compare", *results, "--out", str(out / "report" / judge)))


if __name__ == "__main__":
    main()
