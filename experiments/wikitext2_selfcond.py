"""Issue 26, first part: a self-conditioned FLM against the plain FLM on WikiText-2, at equal training compute.

Needs the study of ``experiments/wikitext2.py`` (its plain FLM, data, network size and AR judge). Every stage is one
``flowlm`` command, printed before it runs; the script is restartable (``<study>/selfcond/stages.json``).

* ``train``: the study's FLM command with ``model.self_condition=true``, at the plain FLM's training compute counted
  in network passes: a plain step costs 3 per row (forward, and backward as two), a self-conditioned one 3.5 (half
  the rows add a gradient-free forward), so 2,000 × 3 / 3.5 = 1,714 steps instead of 2,000.
* ``eval``: both models at 64, 256 and 1,024 steps, 64 samples, seed 0, untempered, the offline judge (Gen PPL and
  entropy per row) and the AR judge on the same samples; the self-conditioned model also with guidance
  ``--sc-guidance 2`` (two network calls a step) at 64 and 256 steps.
* ``--report`` prints the table.

    OMP_NUM_THREADS=1 python experiments/wikitext2_selfcond.py --study runs/wikitext2 --only train
    OMP_NUM_THREADS=1 python experiments/wikitext2_selfcond.py --study runs/wikitext2 --only eval
    python experiments/wikitext2_selfcond.py --study runs/wikitext2 --report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wikitext2 import MODEL, Stages, flowlm

PLAIN_STEPS = 2000
STEPS = round(PLAIN_STEPS * 3 / 3.5)
EVAL_STEPS, GUIDED_STEPS, GUIDANCE = "64,256,1024", "64,256", "2"


def evaluations(study: Path) -> dict[str, tuple[Path, str, list[str]]]:
    """name -> (model, step counts, extra sampler options)."""
    return {
        "flm": (study / "flm" / "model", EVAL_STEPS, []),
        "flm-sc": (study / "flm-sc" / "model", EVAL_STEPS, []),
        f"flm-sc-w{GUIDANCE}": (study / "flm-sc" / "model", GUIDED_STEPS, ["--sc-guidance", GUIDANCE]),
    }


def report(out: Path) -> None:
    lines = ["| model | steps | offline Gen PPL [95%] | AR-judge Gen PPL [95%] | entropy |", "|---|---|---|---|---|"]
    for name in evaluations(Path(".")):
        offline, ar = out / "eval" / name / "results.json", out / "eval" / f"{name}-ar" / "results.json"
        if not offline.is_file():
            continue
        by_steps = {r["steps"]: r for r in json.loads(ar.read_text())["results"]} if ar.is_file() else {}
        for row in json.loads(offline.read_text())["results"]:
            cells = ["" if r is None else f"{r['gen_ppl']:.0f} [{r['gen_ppl_ci95'][0]:.0f}–{r['gen_ppl_ci95'][1]:.0f}]"
                     for r in (row, by_steps.get(row["steps"]))]  # fmt: skip
            lines.append(f"| {name} | {row['steps']} | {cells[0]} | {cells[1]} | {row['entropy']:.2f} |")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    parser.add_argument("--study", default="runs/wikitext2", help="output folder of experiments/wikitext2.py")
    parser.add_argument("--data", default=str(here.parents[1] / "shared" / "data" / "wikitext2-valid.txt"))
    parser.add_argument("--only", default="train,eval", help="comma-separated: train, eval")
    parser.add_argument("--judge", default="smollm2-offline")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    study = Path(args.study)
    out = study / "selfcond"
    if args.report:
        report(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    only = set(args.only.split(","))
    if "train" in only:
        stages.run("train", flowlm("train", "--method", "flm", "--out", str(study / "flm-sc"), "--data", args.data,
                                   "--tokenizer", "bpe:4096", "--steps", str(STEPS), "--quiet", *MODEL,
                                   "model.self_condition=true"))  # fmt: skip
    if "eval" in only:
        for name, (model, steps, extra) in evaluations(study).items():
            folder = out / "eval" / name
            stages.run(f"eval-{name}", flowlm("eval", str(model), "--steps", steps, *extra, "--num-samples", "64",
                                              "--seed", "0", "--judge", args.judge, "--quiet", "--out", str(folder)))
            samples = sorted(str(f) for f in folder.glob("samples_*.jsonl"))
            stages.run(f"score-{name}-ar", flowlm("score", *samples, "--judge", str(study / "ar" / "model"), "--out",
                                                  str(out / "eval" / f"{name}-ar"), "--quiet"))  # fmt: skip


if __name__ == "__main__":
    main()
