"""Issue 26, parts 2-3, on WikiText-2: the fixed-point flow map against the best PSD map, at equal distillation
compute, from the study's teachers.

Needs the study of ``experiments/wikitext2.py`` (its FLM and AR judge: ``--only train-flm,train-ar``) and the
self-conditioned FLM of ``experiments/wikitext2_selfcond.py --only train`` (trained at the FLM's compute). Every stage
is one ``flowlm`` command, printed before it runs; restartable (``<study>/fixedpoint/stages.json``).

Compute in teacher-forward equivalents (TFE) per row, a backward costing two forwards, as ``wikitext2_distill.py``
counts it; the FLM's training is 2,000 × 32 × 3 = 192,000 TFE. Each chain gets 1.5 × that:

* ``distill-psd``: the best PSD map of issue 24 (a quarter boundary pairs, ``distill.boundary_frac=0.25``) from the
  plain FLM: 4.5 TFE per row, 2,000 steps.
* ``distill-fp``: the fixed-point denoiser from the self-conditioned FLM (``--recipe fixed-point``, K teacher calls per
  target, ``distill.fp_iterations``): K + 3 TFE per row, half the FLM's compute; then ``distill-fp-psd``: PSD with the
  same options from it (w drawn on [0.5, 5] per micro-batch), the rest of the budget.
* ``eval``: 64 samples, seed 0, the offline judge and the AR judge on the same samples (``flowlm score``): both flow
  maps at 1, 2 and 4 steps (the fixed-point map at w = 1, 3 and 5), the fixed-point denoiser and both teachers at 256
  Euler steps (the denoiser at w = 1 and 3).
* ``frontier``: the flow maps (PSD; the fixed-point map at w = 1 and 3) at temperatures 0.5, 0.7 and 0.9, offline
  judge (``flowlm eval --temperatures``), so that Gen PPL can be read at matched entropies (the untempered maps sit
  below the teacher's entropy).
* ``frontier-teachers``: the plain and the self-conditioned FLM at 256 steps and temperatures 0.8, 0.9 and 1.0, the
  matched-entropy comparison of part 1 (their untempered rows differ by 0.05 nats).

    OMP_NUM_THREADS=1 python experiments/wikitext2_fixedpoint.py --study runs/wikitext2 --only distill-psd
    OMP_NUM_THREADS=1 python experiments/wikitext2_fixedpoint.py --study runs/wikitext2 --only distill-fp,distill-fp-psd
    OMP_NUM_THREADS=1 python experiments/wikitext2_fixedpoint.py --study runs/wikitext2 --only eval
    python experiments/wikitext2_fixedpoint.py --study runs/wikitext2 --report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wikitext2 import Stages, flowlm

from flowlm.eval.frontier import at_entropy

TEACHER_TFE, BATCH = 2000 * 32 * 3, 32
BUDGET = 1.5 * TEACHER_TFE
ITERATIONS = 8
PSD_OPTIONS = ["distill.boundary_frac=0.25"]
PSD_STEPS = round(BUDGET / (BATCH * 4.5))
FP_STEPS = round(0.5 * TEACHER_TFE / (BATCH * (ITERATIONS + 3)))
FP_PSD_STEPS = round((BUDGET - FP_STEPS * BATCH * (ITERATIONS + 3)) / (BATCH * 4.5))
MAP_STEPS, MAP_WS, EULER_STEPS, EULER_WS = "1,2,4", ("1", "3", "5"), "256", ("1", "3")
TEMPERATURES, FRONTIERS, MATCHED = "0.5,0.7,0.9", ("psd", "fp-psd-w1", "fp-psd-w3"), (3.6, 3.7, 3.8)
TEACHER_TEMPERATURES, TEACHER_FRONTIERS = "0.8,0.9,1.0", ("flm", "flm-sc")


def evaluations(study: Path) -> dict[str, tuple[Path, str, list[str]]]:
    """name -> (model, step counts, extra sampler options)."""
    out = study / "fixedpoint"
    rows = {"psd": (out / "psd" / "model", MAP_STEPS, [])}
    rows |= {f"fp-psd-w{w}": (out / "fp-psd" / "model", MAP_STEPS, ["--sc-guidance", w]) for w in MAP_WS}
    rows |= {f"fp-w{w}": (out / "fp" / "model", EULER_STEPS, ["--sc-guidance", w]) for w in EULER_WS}
    rows |= {"flm": (study / "flm" / "model", EULER_STEPS, []), "flm-sc": (study / "flm-sc" / "model", EULER_STEPS, [])}
    return rows


def cell(row: dict | None) -> str:
    return "" if row is None else f"{row['gen_ppl']:.0f} [{row['gen_ppl_ci95'][0]:.0f}–{row['gen_ppl_ci95'][1]:.0f}]"


def report(study: Path) -> None:
    out = study / "fixedpoint"
    lines = ["| model | steps | offline Gen PPL [95%] | AR-judge Gen PPL [95%] | entropy |", "|---|---|---|---|---|"]
    table = {}
    for name in evaluations(study):
        offline, ar = out / "eval" / name / "results.json", out / "eval" / f"{name}-ar" / "results.json"
        if not offline.is_file():
            continue
        by_steps = {r["steps"]: r for r in json.loads(ar.read_text())["results"]} if ar.is_file() else {}
        for row in json.loads(offline.read_text())["results"]:
            judged = by_steps.get(row["steps"])
            table.setdefault(name, {})[row["steps"]] = {"offline": row["gen_ppl"], "offline_ci95": row["gen_ppl_ci95"],
                                                        "ar": None if judged is None else judged["gen_ppl"],
                                                        "ar_ci95": None if judged is None else judged["gen_ppl_ci95"],
                                                        "entropy": row["entropy"]}  # fmt: skip
            lines.append(f"| {name} | {row['steps']} | {cell(row)} | {cell(judged)} | {row['entropy']:.2f} |")
    lines += ["", "Offline-judge Gen PPL at matched entropy, on each map's temperature frontier:", "",
              "| model | steps | " + " | ".join(f"entropy {h}" for h in MATCHED) + " |",
              "|---|---|" + "---|" * len(MATCHED)]  # fmt: skip
    for name in (*FRONTIERS, *TEACHER_FRONTIERS):
        path = out / "frontier" / name / "frontier.json"
        if not path.is_file():
            continue
        frontier = json.loads(path.read_text())
        for steps in sorted({p["steps"] for p in frontier["points"]}):
            hits = [at_entropy(frontier, steps, h) for h in MATCHED]
            table.setdefault("matched", {}).setdefault(name, {})[steps] = hits
            lines.append(f"| {name} | {steps} | " + " | ".join("–" if h is None else cell(h) for h in hits) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(table, indent=1))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    parser.add_argument("--study", default="runs/wikitext2", help="output folder of experiments/wikitext2.py")
    parser.add_argument("--only", default="distill-psd,distill-fp,distill-fp-psd,eval,frontier",
                        help="comma-separated: distill-psd, distill-fp, distill-fp-psd, eval, frontier, "
                        "frontier-teachers")  # fmt: skip
    parser.add_argument("--judge", default="smollm2-offline")
    parser.add_argument("--names", help="eval and frontier stages: only these models (comma-separated names of the "
                        "report; default all), so that two processes can share the cores")  # fmt: skip
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--data", default=str(here.parents[1] / "shared" / "data" / "wikitext2-valid.txt"))
    args = parser.parse_args()
    study = Path(args.study)
    if args.report:
        report(study)
        return
    out = study / "fixedpoint"
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    only = set(args.only.split(","))
    needed = {"flm": bool(only & {"distill-psd", "eval"}), "flm-sc": bool(only & {"distill-fp", "eval"})}
    for teacher in (name for name, need in needed.items() if need):
        if not (study / teacher / "model" / "flowlm.json").is_file():
            sys.exit(f"no {teacher} model in {study}: run wikitext2.py --only train-flm and wikitext2_selfcond.py "
                     "--only train first")  # fmt: skip
    common = ["--quiet", "train.ckpt_every=100", "train.val_every=500"]
    if "distill-psd" in only:
        stages.run("distill-psd", flowlm("distill", "--teacher", str(study / "flm" / "model"), "--out",
                                         str(out / "psd"), "--steps", str(PSD_STEPS), *common, *PSD_OPTIONS))
    if "distill-fp" in only:
        stages.run("distill-fp", flowlm("distill", "--teacher", str(study / "flm-sc" / "model"), "--recipe",
                                        "fixed-point", "--out", str(out / "fp"), "--steps", str(FP_STEPS), *common,
                                        f"distill.fp_iterations={ITERATIONS}"))  # fmt: skip
    if "distill-fp-psd" in only:
        stages.run("distill-fp-psd", flowlm("distill", "--teacher", str(out / "fp" / "model"), "--out",
                                            str(out / "fp-psd"), "--steps", str(FP_PSD_STEPS), *common, *PSD_OPTIONS))
    names = set(args.names.split(",")) if args.names else None
    if "eval" in only:
        ar_judge = study / "ar" / "model"
        for name, (model, steps, extra) in evaluations(study).items():
            if names is not None and name not in names:
                continue
            folder = out / "eval" / name
            stages.run(f"eval-{name}", flowlm("eval", str(model), "--steps", steps, *extra, "--num-samples", "64",
                                              "--seed", "0", "--judge", args.judge, "--quiet", "--out", str(folder)))
            samples = sorted(str(f) for f in folder.glob("samples_*.jsonl"))
            stages.run(f"score-{name}-ar", flowlm("score", *samples, "--judge", str(ar_judge), "--quiet", "--out",
                                                  str(out / "eval" / f"{name}-ar")))  # fmt: skip
    rows = evaluations(study)
    frontiers = {"frontier": (FRONTIERS, TEMPERATURES), "frontier-teachers": (TEACHER_FRONTIERS, TEACHER_TEMPERATURES)}
    for stage, (chosen, temperatures) in frontiers.items():
        if stage not in only:
            continue
        for name in chosen:
            if names is not None and name not in names:
                continue
            model, steps, extra = rows[name]
            stages.run(f"frontier-{name}", flowlm("eval", str(model), "--steps", steps, *extra, "--temperatures",
                                                  temperatures, "--num-samples", "64", "--seed", "0", "--judge",
                                                  args.judge, "--quiet", "--out", str(out / "frontier" / name)))


if __name__ == "__main__":
    main()
