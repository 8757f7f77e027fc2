"""Issue 5: the paper's claims at a scale two CPU cores can train, on WikiText-2.

Trains FLM, MDLM and AR with the same budget of training tokens (same backbone size, tokenizer, data,
batch and steps), distills the FLM into an FMLM (PSD) for 1,000 steps and continues that distillation to
4,000 steps in a copy, samples every model at several step counts, and scores the samples with the offline
judge (SmolLM2-135M) and with the AR model as an in-domain judge.
Held-out real text, cut into blocks and scored exactly like the samples (``flowlm reference``), is the
reference line every table and plot carries.

Every stage is one ``flowlm`` command (printed before it runs, so it can be rerun by hand). The script is
restartable: finished stages are skipped, an interrupted training resumes from its last checkpoint, and
``stages.json`` in the output folder accumulates each stage's wall-clock over all attempts.

    OMP_NUM_THREADS=1 python experiments/wikitext2.py --data ../shared/data/wikitext2-valid.txt --out runs/wikitext2

About 3 hours on two CPU cores; the results, commands and timings of one run are in docs/results.md, and
``experiments/pivot_tables.py`` prints the comparisons as the tables there.

The corpus is the WikiText-2 *validation* split (the only WikiText file in ../shared/data): its
paragraphs are documents and every 20th is held out (flowlm's rule for local text files). ``<unk>`` is
kept as written: the BPE learns it as a token like any other word.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

METHODS = ("flm", "mdlm", "ar")
STEPS = (1, 2, 4, 8, 16, 32, 64, 256, 1024)
# ~2.1M parameters (1.0M in the blocks, 1.0M in the input and output matrices): d = 128, 4 blocks, a BPE of
# 4,096 tokens, L = 64; dropout against the small corpus (299,840 training tokens, so 2,000 steps are 13.7 epochs).
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

    def save(self, name: str) -> None:
        """Writes this process's entry for ``name`` over the file's current state (another process may be
        running other stages with ``--only``)."""
        state = json.loads(self.path.read_text()) if self.path.is_file() else {}
        state[name] = self.state[name]
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.path)

    def run(self, name: str, command: list[str], before: Callable[[], None] | None = None) -> None:
        if self.path.is_file():  # another process (--only) may have finished this stage since we started
            self.state.update({k: v for k, v in json.loads(self.path.read_text()).items() if v.get("done")})
        entry = self.state.setdefault(name, {"command": shlex.join(command), "seconds": 0.0, "attempts": 0})
        if entry.get("done"):
            print(f"[{name}] done before ({entry['seconds']:.0f} s), skipped")
            return
        print(f"[{name}] {shlex.join(command)}", flush=True)
        entry["attempts"] += 1
        if before is not None:
            before()
        start = time.perf_counter()
        proc = subprocess.run(command)
        entry["seconds"] += time.perf_counter() - start
        entry["done"] = proc.returncode == 0
        self.save(name)
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
    parser.add_argument(
        "--long-distill-steps",
        type=int,
        default=4000,
        help="continue the FMLM's distillation in a copy (fmlm-long) to this many PSD steps and evaluate it too "
        "(default 4000; 0 = skip)",
    )
    parser.add_argument("--long-steps", default="1,2,4,8,16,32,64", help="step counts to evaluate fmlm-long at")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="step counts to evaluate")
    parser.add_argument("--judge", default="smollm2-offline", help="the general-purpose judge")
    parser.add_argument("--stop-after", help="stop after this stage (e.g. train-ar)")
    parser.add_argument(
        "--only",
        help="comma-separated stages to run, skipping the others (e.g. eval-flm,score-flm-ar); lets two "
        "processes share the cores once training is done",
    )
    args = parser.parse_args()

    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"no corpus at {data}: pass --data path/to/wikitext2-valid.txt")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    common = ["--data", str(data.resolve()), "--tokenizer", "bpe:4096", "--steps", str(args.train_steps), "--quiet"]

    only = set(args.only.split(",")) if args.only else None

    def stage(name: str, command: list[str], before: Callable[[], None] | None = None) -> None:
        if only is not None and name not in only:
            return
        stages.run(name, command, before)
        if name == args.stop_after:
            sys.exit(0)

    for method in METHODS:
        stage(f"train-{method}", flowlm("train", "--method", method, "--out", str(out / method), *common, *MODEL))

    def distill(folder: str, steps: int) -> list[str]:
        return flowlm(
            "distill", "--teacher", str(out / "flm"), "--out", str(out / folder), "--steps", str(steps), "--quiet",
            "train.ckpt_every=250", "train.val_every=250", "train.lr=3e-4",  # the documented runs' rate (issue 18)
        )  # fmt: skip

    def copy_student() -> None:
        """fmlm-long starts as a copy of the finished fmlm run, which its distillation then resumes: the
        learning rate is constant after warm-up and resumption is exact, so this is the longer run itself."""
        if not (out / "fmlm-long").exists():
            tmp = out / ".fmlm-long.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(out / "fmlm", tmp)
            os.replace(tmp, out / "fmlm-long")

    stage("distill-fmlm", distill("fmlm", args.distill_steps))
    # model folder -> step counts to evaluate (None: AR decoding, or real text) and its label in the reports
    models = {"flm": args.steps, "fmlm": args.steps}
    labels = {"flm": "FLM", "fmlm": f"FMLM ({args.distill_steps} PSD steps)"}
    if args.long_distill_steps:
        stage("distill-fmlm-long", distill("fmlm-long", args.long_distill_steps), before=copy_student)
        models["fmlm-long"] = args.long_steps
        labels["fmlm-long"] = f"FMLM ({args.long_distill_steps} PSD steps)"
    models.update(mdlm=args.steps, ar=None, data=None)
    labels.update(mdlm="MDLM", ar="AR", data="held-out data")
    judges = {"offline": args.judge, "ar": str(out / "ar" / "model")}
    n, offline = ["--num-samples", str(args.num_samples), "--seed", "0"], ["--judge", judges["offline"], "--quiet"]
    for name, steps in models.items():
        report = ["--out", str(out / "eval" / f"{name}-offline")]
        if name == "data":  # held-out real text, cut and scored like samples: the reference line
            command = flowlm("reference", str(out / "flm" / "model"), *n, *offline, *report)
        else:
            step_option = ["--steps", steps] if steps else []
            command = flowlm("eval", str(out / name / "model"), *step_option, *n, *offline, *report)
        stage(f"eval-{name}", command)
        samples = sorted(str(f) for f in (out / "eval" / f"{name}-offline").glob("samples_*.jsonl"))
        stage(
            f"score-{name}-ar",
            flowlm("score", *samples, "--judge", judges["ar"], "--out", str(out / "eval" / f"{name}-ar"), "--quiet"),
        )
    for judge in judges:
        results = [str(out / "eval" / f"{name}-{judge}" / "results.json") for name in models]
        names = ["--labels", ",".join(labels[name] for name in models)]
        stage(f"compare-{judge}", flowlm("compare", *results, *names, "--out", str(out / "report" / judge)))


if __name__ == "__main__":
    main()
