"""Issue 25: the paper's headline claim on WikiText-2 — one FMLM step against distilled discrete diffusion's few steps.

Needs the study of ``experiments/wikitext2.py`` (its MDLM and AR models, the same data and network size) and the PSD
student at the teacher's compute of ``experiments/wikitext2_distill.py`` (``distill/models/psd-x1``). Every stage is
one ``flowlm`` command, printed before it runs; the script is restartable (``<study>/claim/stages.json``).

* ``train-duo``: DUO with the study's network, data and budget (2,000 steps of batch 32, the first half on its
  Gaussian-relaxation curriculum), into ``<study>/duo``.
* ``distill-sdtt`` (MDLM teacher) and ``distill-dcd`` (DUO teacher): 6 rounds from a 64-step teacher, each halving the
  steps (students at 32, 16, 8, 4, 2, 1 steps), at the same total compute as the PSD student's: one teacher training,
  2,000 × 32 rows × 3 network passes (a backward counted as two forwards) = 192,000. An SDTT row costs 5 (student
  forward and backward, two teacher forwards), a DCD row 4, so SDTT takes 1,200 steps (200 per round) and DCD 1,500
  (250 per round), batch 32.
* ``eval-*``: each model at its step counts, 64 samples, at temperatures 0.8, 0.9 and 1.0 (``flowlm eval
  --temperatures``: a Gen PPL–entropy frontier per step count) under the offline judge; FMLM at 1, 2, 4 steps; each
  distilled student at its own step count (round 6: 1 step, 5: 2, 4: 4, 3: 8); the MDLM and DUO teachers at 64 steps.
  ``score-*-ar``: the same samples under the study's AR model as the in-domain judge.
* ``eval-low-*``: FMLM and the 8-step SDTT student at lower temperatures too (down toward the arg-max's entropy).
* ``eval-ancestral-*`` (its own ``--only`` entry): the DUO teacher and the DCD students with the ancestral tail
  (``--tail ancestral``: the last step drawn from the Bayes posterior instead of the Greedy-Tail's arg-max), whose
  entropy reaches the others' (the Greedy-Tail teacher writes 3.2 nats at every temperature tried).
* ``--report`` prints the raw table (both judges), Gen PPL at matched entropies 3.55–3.8 on each model's merged
  frontiers, and the ``flowlm compare --entropy`` command for the entropy given by ``--entropy`` (default 3.8 nats,
  near the held-out data's 3.83).

    OMP_NUM_THREADS=1 python experiments/wikitext2_claim.py --study runs/wikitext2 --only train-duo,distill-dcd
    OMP_NUM_THREADS=1 python experiments/wikitext2_claim.py --study runs/wikitext2 --only distill-sdtt
    OMP_NUM_THREADS=1 python experiments/wikitext2_claim.py --study runs/wikitext2 --only eval
    OMP_NUM_THREADS=1 python experiments/wikitext2_claim.py --study runs/wikitext2 --only eval-ancestral
    python experiments/wikitext2_claim.py --study runs/wikitext2 --report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wikitext2 import MODEL, Stages, flowlm

from flowlm.eval.frontier import at_entropy

ROUNDS, TEACHER_STEPS = 6, 64
TEACHER_TFE = 2000 * 32 * 3
ROW_COST = {"sdtt": 5, "dcd": 4}
TEMPERATURES = "0.8,0.9,1.0"
# lower temperatures, toward the arg-max's entropy, for the models whose frontiers reach it (eval-low stages)
LOW_TEMPERATURES = {"fmlm-psd": "0.3,0.5,0.7", "mdlm-sdtt-8": "0.5,0.6,0.7"}
MATCHED = (3.55, 3.6, 3.7, 3.8)  # entropies (nats) of the merged matched-entropy table
# the stage whose model an evaluation needs (the others come from experiments/wikitext2*.py)
PRODUCERS = {"duo-teacher": "train-duo", "mdlm-sdtt": "distill-sdtt", "duo-dcd": "distill-dcd"}


def round_steps(recipe: str) -> int:
    """Optimizer steps per round (batch 32) that spend one teacher training over all rounds."""
    return round(TEACHER_TFE / (32 * ROW_COST[recipe]) / ROUNDS)


def evaluations(study: Path, claim: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model folder, step counts) of every evaluation."""
    out = {
        "fmlm-psd": (study / "distill" / "models" / "psd-x1", "1,2,4"),
        "mdlm-teacher": (study / "mdlm" / "model", "64"),
        "duo-teacher": (study / "duo" / "model", "64"),
    }
    for recipe, base in (("sdtt", "mdlm"), ("dcd", "duo")):
        for k in range(3, ROUNDS + 1):
            steps = TEACHER_STEPS >> k
            out[f"{base}-{recipe}-{steps}"] = (claim / recipe / f"round-{k}" / "model", str(steps))
    return out


def report(claim: Path, entropy: float) -> None:
    lines = ["| model | steps | temperature | offline Gen PPL [95%] | AR-judge Gen PPL [95%] | entropy |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    frontiers = []
    for name in evaluations(Path("."), claim):
        folder = claim / "eval" / name
        if not (folder / "frontier.json").is_file():
            continue
        frontiers.append(str(folder / "frontier.json"))
        for sub in sorted(folder.glob("temperature-*")):
            offline = json.loads((sub / "results.json").read_text())
            ar_path = claim / "eval" / f"{name}-ar" / sub.name / "results.json"
            ar = {r["steps"]: r for r in json.loads(ar_path.read_text())["results"]} if ar_path.is_file() else {}
            for row in offline["results"]:
                cells = []
                for r in (row, ar.get(row["steps"])):
                    cells.append("" if r is None else f"{r['gen_ppl']:.0f} [{r['gen_ppl_ci95'][0]:.0f}–"
                                 f"{r['gen_ppl_ci95'][1]:.0f}]")  # fmt: skip
                lines.append(f"| {name} | {row['steps']} | {sub.name.split('-')[1]} | {cells[0]} | {cells[1]} | "
                             f"{row['entropy']:.2f} |")  # fmt: skip
    lines += ["", "Gen PPL (offline judge) at matched entropies, on each model's frontiers (eval and eval-low merged):",
              "", "| model | steps | " + " | ".join(f"entropy {h}" for h in MATCHED) + " |",
              "|---|---|" + "---|" * len(MATCHED)]  # fmt: skip
    rows = [(name, name, ("eval", "eval-low")) for name in evaluations(Path("."), claim)]
    rows += [(name, f"{name} (ancestral tail)", ("eval-ancestral",)) for name in evaluations(Path("."), claim)
             if name.startswith("duo")]  # fmt: skip
    for name, title, folders in rows:
        files = [claim / folder / name / "frontier.json" for folder in folders]
        points = [p for f in files if f.is_file() for p in json.loads(f.read_text())["points"]]
        for steps in sorted({p["steps"] for p in points}):
            cells = []
            for h in MATCHED:
                hit = at_entropy({"points": points}, steps, h)
                cells.append("–" if hit is None else f"{hit['gen_ppl']:.0f} [{hit['gen_ppl_ci95'][0]:.0f}–"
                             f"{hit['gen_ppl_ci95'][1]:.0f}]")  # fmt: skip
            lines.append(f"| {title} | {steps} | " + " | ".join(cells) + " |")
    (claim / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if frontiers:
        print(f"\nmatched entropy: flowlm compare {' '.join(frontiers)} --entropy {entropy} --out {claim / 'matched'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    parser.add_argument("--study", default="runs/wikitext2", help="output folder of experiments/wikitext2.py")
    parser.add_argument("--data", default=str(here.parents[1] / "shared" / "data" / "wikitext2-valid.txt"))
    parser.add_argument("--only", default="train-duo,distill-sdtt,distill-dcd,eval",
                        help="comma-separated: train-duo, distill-sdtt, distill-dcd, eval, eval-ancestral")  # fmt: skip
    parser.add_argument("--judge", default="smollm2-offline", help="the general-purpose judge")
    parser.add_argument("--entropy", type=float, default=3.8, help="entropy (nats) of the matched-entropy table")
    parser.add_argument("--report", action="store_true", help="only print the tables of finished stages")
    args = parser.parse_args()

    study = Path(args.study)
    claim = study / "claim"
    if args.report:
        report(claim, args.entropy)
        return
    for needed in (study / "mdlm" / "model", study / "ar" / "model", study / "distill" / "models" / "psd-x1"):
        if not (needed / "flowlm.json").is_file():
            sys.exit(f"no model at {needed}: run experiments/wikitext2.py and wikitext2_distill.py first")
    claim.mkdir(parents=True, exist_ok=True)
    stages = Stages(claim)
    only = set(args.only.split(","))
    if "train-duo" in only:
        stages.run("train-duo", flowlm("train", "--method", "duo", "--out", str(study / "duo"), "--data",
                                       str(Path(args.data).resolve()), "--tokenizer", "bpe:4096", "--steps", "2000",
                                       "--quiet", *MODEL))  # fmt: skip
    for recipe, teacher in (("sdtt", "mdlm"), ("dcd", "duo")):
        if f"distill-{recipe}" in only:
            rounds = ["--rounds", str(ROUNDS), "--steps", str(round_steps(recipe)), "--out", str(claim / recipe)]
            stages.run(f"distill-{recipe}", flowlm(
                "distill", "--teacher", str(study / teacher), "--recipe", recipe, *rounds, "--quiet",
                f"distill.teacher_steps={TEACHER_STEPS}", "train.ckpt_every=100", "train.val_every=250",
            ))  # fmt: skip
    if "eval" in only or "eval-ancestral" in only:
        for name, (model, steps) in evaluations(study, claim).items():
            producer = PRODUCERS.get(name.rsplit("-", 1)[0] if name[-1].isdigit() else name)
            finished = json.loads((claim / "stages.json").read_text()) if (claim / "stages.json").is_file() else {}
            if producer is not None and not finished.get(producer, {}).get("done"):
                print(f"[eval-{name}] its stage {producer} has not finished: skipped (rerun once it has)")
                continue
            if "eval-ancestral" in only and name.startswith("duo"):
                stages.run(f"eval-ancestral-{name}", flowlm(
                    "eval", str(model), "--steps", steps, "--temperatures", TEMPERATURES, "--tail", "ancestral",
                    "--num-samples", "64", "--seed", "0", "--judge", args.judge, "--quiet",
                    "--out", str(claim / "eval-ancestral" / name),
                ))  # fmt: skip
            if "eval" not in only:
                continue
            folder = claim / "eval" / name
            stages.run(f"eval-{name}", flowlm("eval", str(model), "--steps", steps, "--temperatures", TEMPERATURES,
                                              "--num-samples", "64", "--seed", "0", "--judge", args.judge, "--quiet",
                                              "--out", str(folder)))  # fmt: skip
            for t in TEMPERATURES.split(","):
                sub = folder / f"temperature-{float(t):g}"
                samples = sorted(str(f) for f in sub.glob("samples_*.jsonl"))
                stages.run(f"score-{name}-T{t}-ar", flowlm("score", *samples, "--judge", str(study / "ar" / "model"),
                                                           "--out", str(claim / "eval" / f"{name}-ar" / sub.name),
                                                           "--quiet"))  # fmt: skip
            if name in LOW_TEMPERATURES:
                stages.run(f"eval-low-{name}", flowlm(
                    "eval", str(model), "--steps", steps, "--temperatures", LOW_TEMPERATURES[name], "--num-samples",
                    "64", "--seed", "0", "--judge", args.judge, "--quiet", "--out", str(claim / "eval-low" / name),
                ))  # fmt: skip


if __name__ == "__main__":
    main()
