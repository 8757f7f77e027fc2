"""Issue 18 on WikiText-2: one-step quality of PSD and ``lsd`` against distillation compute, from one teacher.

The teacher is the FLM of ``experiments/wikitext2.py`` (run its ``train-flm`` stage first). Each recipe distils it
with ``flowlm distill`` in stages that resume one run folder to 1/4, 1/2 and 1 x the teacher's training compute;
after each stage the EMA student samples 64 texts at 1, 2 and 4 flow-map steps (``flowlm eval``, seed 0), scored by
the offline judge and by the study's AR model. The teacher samples at 1,024 Euler steps the same way: the target
is 1-step Gen PPL <= 1.25 x that, with entropy within 0.1 nats, under both judges.

Compute is counted as in ``experiments/distill_study.py``, in teacher-forward equivalents (TFE) per sequence, a
backward pass costing two forwards: the teacher's training is 2,000 steps x batch 32 x 3 = 192,000 TFE; a PSD row
costs 4 (diagonal) or 5 (other), an ``lsd`` row 4 or 6.

Runs (at the teacher's learning rate, 1e-3, unless said otherwise; batch 32):
* ``psd``: the ``flowlm distill`` defaults (PSD, half diagonal pairs, 1/64 boundary pairs);
* ``lsd``: ``--recipe lsd`` with the split tuned on the synthetic languages (a quarter diagonal, an eighth boundary).
* ``psd-lr3e-4``: PSD at lr 3e-4, the ``flowlm distill`` default before the synthetic study (checks that change).
* ``psd-stretch``, ``psd-stretch-boundary-0.125`` (issue 24): PSD with ``distill.end_stretch=true``, and with an eighth
  boundary pairs too. Every flow map also gets ``flowlm fit-report`` (64 validation blocks, seed 0) beside its eval.
* ``psd-boundary-0.25``: PSD with a quarter boundary pairs; ``lsd-ref``: the reference's LSD (``--recipe lsd-ref``).
* ``psd-anchor-16`` (and ``-stretch``): PSD whose boundary pairs are trained toward the teacher's 16-step sampler
  output (``distill.boundary_teacher_steps=16``; a boundary row then costs 16 + 3 TFE instead of 5).
* ``<run>-seed1``: the same with ``train.seed=1`` (when ``--runs`` names it).

Restartable like wikitext2.py (``stages.json`` in --out). Two processes can share the cores with ``--runs``:

    OMP_NUM_THREADS=1 python experiments/wikitext2_distill.py --study runs/wikitext2 --runs psd
    OMP_NUM_THREADS=1 python experiments/wikitext2_distill.py --study runs/wikitext2 --runs lsd,teacher
    python experiments/wikitext2_distill.py --study runs/wikitext2 --report   # the table (markdown + JSON)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from wikitext2 import Stages, flowlm

TEACHER_TFE = 2000 * 32 * 3
BATCH = 32
FRACTIONS = (0.25, 0.5, 1.0)
STEPS = "1,2,4"
ROW_COST = {"psd": (4, 5), "lsd": (4, 6), "lsd-ref": (4, 6)}  # TFE per (diagonal, other) row, as in distill_study.py
RUNS = {
    "psd": ("psd", 0.5, []),
    "lsd": ("lsd", 0.25, ["--recipe", "lsd", "distill.diag_frac=0.25", "distill.boundary_frac=0.125"]),
    "psd-lr3e-4": ("psd", 0.5, ["train.lr=3e-4"]),  # the learning rate flowlm distill used before issue 18
    # issue 24: the end time also embedded on a clock that resolves t -> 1; and with an eighth boundary pairs
    "psd-stretch": ("psd", 0.5, ["distill.end_stretch=true"]),
    "psd-stretch-boundary-0.125": ("psd", 0.5, ["distill.end_stretch=true", "distill.boundary_frac=0.125"]),
    "psd-boundary-0.25": ("psd", 0.5, ["distill.boundary_frac=0.25"]),  # a quarter boundary pairs
    "lsd-ref": ("lsd-ref", 0.5, ["--recipe", "lsd-ref"]),  # the reference's LSD, its own split (as PSD's)
    # the boundary pairs anchored to the teacher's 16-step sampler; and with end_stretch, which collapsed without it
    "psd-anchor-16": ("psd", 0.5, ["distill.boundary_teacher_steps=16"]),
    "psd-anchor-16-stretch": ("psd", 0.5, ["distill.boundary_teacher_steps=16", "distill.end_stretch=true"]),
    "psd-anchor-64": ("psd", 0.5, ["distill.boundary_teacher_steps=64"]),  # a better (and costlier) anchor
}


def run_spec(name: str) -> tuple[str, float, list[str]]:
    base, _, seed = name.partition("-seed")
    recipe, diag, options = RUNS[base]
    return recipe, diag, options + ([f"train.seed={seed}"] if seed else [])


def steps_at(name: str, fraction: float) -> int:
    """Steps at ``fraction`` of the teacher's compute; a boundary row anchored to the teacher's N-step sampler
    (distill.boundary_teacher_steps=N) costs N + 3 instead of 5."""
    recipe, diag, options = run_spec(name)
    diag_cost, other_cost = ROW_COST[recipe]
    settings = dict(o.split("=", 1) for o in options if "=" in o)
    anchor = int(settings.get("distill.boundary_teacher_steps", 0))
    boundary = float(settings.get("distill.boundary_frac", 1 / 64))
    extra = boundary * (anchor + 3 - other_cost) if anchor else 0.0
    return round(fraction * TEACHER_TFE / (BATCH * (diag * diag_cost + (1 - diag) * other_cost + extra)))


def results(folder: Path) -> dict:
    """steps -> (Gen PPL, interval, entropy) of one report folder."""
    rows = json.loads((folder / "results.json").read_text())["results"]
    return {r["steps"]: (r["gen_ppl"], r["gen_ppl_ci95"], r["entropy"]) for r in rows}


def report(study: Path) -> None:
    out = study / "distill"
    teacher = {judge: results(out / "eval" / f"teacher-{judge}")[1024] for judge in ("offline", "ar")}
    table = {"teacher_1024": teacher, "runs": {}}
    lines = [
        "| run | compute | PSD/lsd steps | judge | 1 step | 2 steps | 4 steps | 1-step / teacher | entropy 1 step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for folder in sorted((out / "eval").glob("*-offline")):
        name = folder.name.removesuffix("-offline")
        if name.startswith("teacher"):
            continue
        run, _, fraction = name.rpartition("-x")
        for judge in ("offline", "ar"):
            rows = results(out / "eval" / f"{name}-{judge}")
            ratio = rows[1][0] / teacher[judge][0]
            table["runs"].setdefault(name, {})[judge] = {"rows": rows, "ratio_1step": ratio}
            cells = [f"{rows[k][0]:.0f} [{rows[k][1][0]:.0f}–{rows[k][1][1]:.0f}]" for k in (1, 2, 4)]
            lines.append(
                f"| {run} | {float(fraction):g}× | {steps_at(run, float(fraction))} | {judge} | {' | '.join(cells)} "
                f"| {ratio:.2f} | {rows[1][2]:.2f} |"
            )
    for judge, (ppl, ci, entropy) in teacher.items():
        cell = f"{ppl:.0f} [{ci[0]:.0f}–{ci[1]:.0f}]"
        lines.append(f"| teacher FLM, 1,024 steps | | | {judge} | {cell} | | | 1 | {entropy:.2f} |")
    lines += fit_lines(out)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(table, indent=1))
    plot(table, out / "report.png")
    print("\n".join(lines))


def fit_lines(out: Path) -> list[str]:
    """Markdown: each flow map's fit report at (0, 1) (``flowlm fit-report``, 64 validation blocks): the KL from its
    target, its ratio to the median of the other pairs, the entropies there, and the agreement with the teacher's
    64-step tokens from the same noise with their cross-entropy under the map (reports without that anchor: –)."""
    lines = [
        "",
        "| run | KL(0, 1) [95%] | ratio to median | H target / H map | agreement with teacher tokens [95%] | CE |",
        "|---|---|---|---|---|---|",
    ]
    for path in sorted((out / "fit").glob("*.json")):
        fit = json.loads(path.read_text())
        edge = next(r for r in fit["pairs"] if (r["tau_s"], r["tau_t"]) == (0.0, 1.0))
        ode, kl = edge.get("teacher_ode"), edge["kl"]
        anchor = (f"{ode['agreement']['mean']:.3f} [{ode['agreement']['low']:.3f}–{ode['agreement']['high']:.3f}] | "
                  f"{ode['cross_entropy']['mean']:.2f}") if ode else "– | –"  # fmt: skip
        lines.append(
            f"| {path.stem} | {kl['mean']:.4f} [{kl['low']:.4f}–{kl['high']:.4f}] | "
            f"{fit['summary']['boundary_over_median']:.1f} | {edge['entropy_target']['mean']:.2f} / "
            f"{edge['entropy_student']['mean']:.2f} | {anchor} |"
        )
    return lines


def plot(table: dict, path: Path) -> None:
    """1-step Gen PPL / the teacher's (both judges) and 1-step entropy against compute, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    runs: dict[str, list] = {}
    for name, judged in table["runs"].items():
        run, _, fraction = name.rpartition("-x")
        runs.setdefault(run, []).append((float(fraction), judged))
    for run, points in sorted(runs.items()):
        points.sort(key=lambda p: p[0])
        xs = [f for f, _ in points]
        for ax, judge in zip(axes[:2], ("ar", "offline"), strict=True):
            ax.plot(xs, [j[judge]["ratio_1step"] for _, j in points], "o-", label=run)
        axes[2].plot(xs, [j["offline"]["rows"][1][2] for _, j in points], "o-", label=run)
    for ax, title in zip(axes, ("1-step Gen PPL / teacher's 1,024-step, AR judge", "the same, offline judge",
                                "1-step entropy (nats)"), strict=True):  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distillation compute / teacher's training compute")
        ax.set_title(title, fontsize=9)
    for ax in axes[:2]:
        ax.axhline(1.25, color="grey", ls="--", lw=0.8)
    axes[2].axhline(table["teacher_1024"]["offline"][2], color="grey", ls="--", lw=0.8, label="teacher, 1,024 steps")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="runs/wikitext2", help="output folder of experiments/wikitext2.py")
    parser.add_argument("--runs", default="psd,lsd,teacher", help="comma-separated: psd, lsd, <run>-seed1, teacher")
    parser.add_argument("--judge", default="smollm2-offline", help="the general-purpose judge")
    parser.add_argument(
        "--fractions",
        default=",".join(f"{f:g}" for f in FRACTIONS),
        help="budgets as multiples of the teacher's training compute (default 0.25,0.5,1; the runs of docs/results.md "
        "extended psd with 2)",
    )
    parser.add_argument("--report", action="store_true", help="only print and write the table of finished stages")
    args = parser.parse_args()

    study = Path(args.study)
    if args.report:
        report(study)
        return
    teacher, ar_judge = study / "flm", study / "ar" / "model"
    meta = teacher / "model" / "flowlm.json"
    if not meta.is_file() or json.loads(meta.read_text())["step"] != TEACHER_TFE // (BATCH * 3):
        sys.exit(f"no finished teacher at {teacher}: run experiments/wikitext2.py --only train-flm first")
    out = study / "distill"
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    offline = ["--num-samples", "64", "--seed", "0", "--judge", args.judge, "--quiet"]

    def evaluate(label: str, model: Path, steps: str) -> None:
        if not (ar_judge / "flowlm.json").is_file():
            sys.exit(f"no AR judge at {ar_judge}: run experiments/wikitext2.py --only train-ar, then this again")
        report_dir = out / "eval" / f"{label}-offline"
        stages.run(f"eval-{label}", flowlm("eval", str(model), "--steps", steps, *offline, "--out", str(report_dir)))
        samples = sorted(str(f) for f in report_dir.glob("samples_*.jsonl"))
        stages.run(
            f"score-{label}-ar",
            flowlm("score", *samples, "--judge", str(ar_judge), "--out", str(out / "eval" / f"{label}-ar"), "--quiet"),
        )

    runs = args.runs.split(",")
    fractions = [float(f) for f in args.fractions.split(",")]
    # every distillation first (each stage resumes the run folder to the next budget and keeps a copy of the model
    # it reached), then the evaluations, which need the AR judge: the distillations need only the teacher
    for name in (r for r in runs if r != "teacher"):
        _, _, options = run_spec(name)
        for fraction in fractions:
            snapshot = out / "models" / f"{name}-x{fraction:g}"
            command = flowlm(
                "distill", "--teacher", str(teacher), "--out", str(out / name), "--steps",
                str(steps_at(name, fraction)), "--quiet", *options, "train.ckpt_every=100", "train.val_every=500",
            )  # fmt: skip
            stages.run(f"distill-{name}-x{fraction:g}", command, before=lambda s=snapshot: shutil.rmtree(s, True))
            if not snapshot.exists():
                reached = json.loads((out / name / "model" / "flowlm.json").read_text())["step"]
                if reached != steps_at(name, fraction):
                    sys.exit(f"{out / name / 'model'} is at step {reached}, not the {fraction:g}x budget: delete it")
                shutil.copytree(out / name / "model", snapshot)
    for name in runs:
        if name == "teacher":
            evaluate("teacher", teacher / "model", "1024")
            continue
        for fraction in fractions:
            label, model = f"{name}-x{fraction:g}", out / "models" / f"{name}-x{fraction:g}"
            (out / "fit").mkdir(exist_ok=True)
            fit = ["--teacher", str(teacher / "model"), "--blocks", "64", "--quiet", "--out"]
            stages.run(f"fit-{label}", flowlm("fit-report", str(model), *fit, str(out / "fit" / f"{label}.json")))
            evaluate(label, model, STEPS)


if __name__ == "__main__":
    main()
