"""Issues 14 and 15 on WikiText-2: conditional generation and held-out likelihood of the study's models.

Needs the models of ``experiments/wikitext2.py`` (FLM, MDLM, AR) and a distilled FMLM (by default the PSD student
at the teacher's training compute from ``experiments/wikitext2_distill.py``). Every stage is one ``flowlm`` command:

* ``prompt16``: ``flowlm eval --prompt-tokens 16``: 64 held-out blocks (seed 0), their first 16 tokens given and
  the other 48 generated, at several step counts (FLM 1-256 Euler steps, FMLM 1-4 flow-map steps, MDLM 4-256, AR
  once); the offline judge scores the continuation given the prompt, MAUVE against the real continuations. The real
  continuations are the data line. Rescored by the study's AR model with ``flowlm score --real`` (Gen PPL and MAUVE
  under the in-domain judge).
* ``middle``: ``flowlm eval --infill-middle 0.5``: the same blocks with their middle half (positions 16-47)
  generated and the rest given; FLM, FMLM and MDLM (an AR model cannot infill).
* ``nll``: ``flowlm nll -n 32`` on held-out blocks: AR exact, MDLM its NELBO, FLM and FMLM their default bound (the
  diffusion ELBO since issue 27) and the ODE bound (``--bound ode``), the FLM's ODE bound at ``--tau-max`` 0.1 and 0.5
  and its ELBO at 0.5 and 0.99; the unigram entropy of the training tokens and the held-out cost of that unigram
  model (``--report``); and the unconditional Gen PPL of MDLM (64 and 256 steps) and AR, to put beside them.

Restartable like wikitext2.py (``stages.json`` in ``<study>/conditional``); ``--only`` picks stages so two processes
can share the cores, ``--report`` prints the tables.

    OMP_NUM_THREADS=1 python experiments/wikitext2_conditional.py --study runs/wikitext2 --only prompt16
    OMP_NUM_THREADS=1 python experiments/wikitext2_conditional.py --study runs/wikitext2 --only middle,nll
    python experiments/wikitext2_conditional.py --study runs/wikitext2 --report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wikitext2 import Stages, flowlm

STEPS = {"flm": "1,4,16,64,256", "fmlm": "1,2,4", "mdlm": "4,16,64,256", "ar": None}
CONDITIONS = {"prompt16": ["--prompt-tokens", "16"], "middle": ["--infill-middle", "0.5"]}
NLL_BLOCKS = 32
# extra bounds: name -> (model, flowlm nll options); the FLM's bounds at other --tau-max than the default 0.9
BOUNDS = {
    "flm-ode": ("flm", ["--bound", "ode"]),
    "fmlm-ode": ("fmlm", ["--bound", "ode"]),
    "flm-ode-tau0.1": ("flm", ["--bound", "ode", "--tau-max", "0.1"]),
    "flm-ode-tau0.5": ("flm", ["--bound", "ode", "--tau-max", "0.5"]),
    "flm-elbo-tau0.5": ("flm", ["--tau-max", "0.5"]),
    "flm-elbo-tau0.99": ("flm", ["--tau-max", "0.99"]),
}


def models(study: Path, fmlm: Path) -> dict[str, Path]:
    return {"flm": study / "flm" / "model", "fmlm": fmlm, "mdlm": study / "mdlm" / "model",
            "ar": study / "ar" / "model"}  # fmt: skip


def table(out: Path, condition: str) -> list[str]:
    lines = [
        f"**{condition}** (cells: Gen PPL [95% interval] / MAUVE; entropy of the generated positions)",
        "",
        "| model | steps | offline judge | AR judge | entropy |",
        "|---|---|---|---|---|",
    ]
    for name in ("flm", "fmlm", "mdlm", "ar", "data"):
        # the data line: the real texts of the FLM's evaluation (every model's are the same blocks)
        offline_dir, ar_dir = (out / f"{condition}-{name}-{judge}" for judge in ("offline", "ar"))
        if name == "data":
            offline_dir, ar_dir = (out / f"{condition}-flm-{judge}" / "data" for judge in ("offline", "ar"))
        if not (offline_dir / "results.json").is_file() or not (ar_dir / "results.json").is_file():
            continue
        offline = json.loads((offline_dir / "results.json").read_text())["results"]
        ar = {r["steps"]: r for r in json.loads((ar_dir / "results.json").read_text())["results"]}
        for row in offline:
            cells = []
            for r in (row, ar[row["steps"]]):
                mauve = "" if r["mauve"] is None else f" / {r['mauve']:.3f}"
                cells.append(f"{r['gen_ppl']:.0f} [{r['gen_ppl_ci95'][0]:.0f}–{r['gen_ppl_ci95'][1]:.0f}]{mauve}")
            steps = "-" if row["steps"] is None else row["steps"]
            lines.append(f"| {name} | {steps} | {cells[0]} | {cells[1]} | {row['entropy']:.2f} |")
    return lines


def unigram(model_path: Path, path: Path) -> None:
    """The unigram entropy of the FLM's training tokens and the held-out cost, per token, of that unigram model
    (add-one smoothed) on the ``flowlm nll`` blocks (seed 0, positions 1..L−1 as ``flowlm nll`` counts them)."""
    import numpy as np

    import flowlm
    from flowlm.data.prepare import prepare_blocks
    from flowlm.eval.likelihood import held_out_blocks

    model = flowlm.load(model_path)
    train = prepare_blocks(model.meta["run"]["data"]["corpus"], model.tokenizer, model.seq_len, "train", progress=False)
    tokens = np.concatenate([train[i].numpy() for i in range(len(train))])
    counts = np.bincount(tokens, minlength=model.tokenizer.vocab_size).astype(float)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    smoothed = (counts + 1) / (counts.sum() + len(counts))
    blocks, _ = held_out_blocks(model, None, "validation", NLL_BLOCKS, 0, None, False)
    held_out = float(-np.log2(smoothed[blocks[:, 1:].numpy()]).mean())
    path.write_text(json.dumps({"train_entropy_bits": entropy, "held_out_bits": held_out, "blocks": NLL_BLOCKS}) + "\n")
    print(f"unigram: train entropy {entropy:.3f} bits/token, held-out {held_out:.3f}")


def report(out: Path) -> None:
    lines = []
    for condition in CONDITIONS:
        lines += [*table(out, condition), ""]
    lines += ["**held-out bits per token** (`flowlm nll`)", "", "| model | bits/token [95%] | MC s.e. | s/block |",
              "|---|---|---|---|"]  # fmt: skip
    for name in [*STEPS, *BOUNDS]:
        path = out / f"nll-{name}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            lo, hi = r["interval_95_bits"]
            label = f"{name} ({r.get('bound') or r['likelihood'].split(',')[0]}, τ_max {r['options']['tau_max']})" if (
                r["options"]) else name  # fmt: skip
            lines.append(
                f"| {label} | {r['bits_per_token']:.3f} [{lo:.3f}–{hi:.3f}] | {r['mc_se_bits']:.3f} | "
                f"{r['seconds_per_block']:.1f} |"
            )
    if (out / "unigram.json").is_file():
        u = json.loads((out / "unigram.json").read_text())
        lines += ["", f"unigram: entropy of the training tokens {u['train_entropy_bits']:.3f} bits/token; held-out "
                      f"cost of that unigram model (add-one) {u['held_out_bits']:.3f} bits/token, same positions"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="runs/wikitext2", help="output folder of experiments/wikitext2.py")
    parser.add_argument("--fmlm", help="the FMLM model folder (default <study>/distill/models/psd-x1)")
    parser.add_argument("--only", default="prompt16,middle,nll", help="comma-separated: prompt16, middle, nll")
    parser.add_argument("--judge", default="smollm2-offline", help="the general-purpose judge")
    parser.add_argument("--report", action="store_true", help="only print and write the tables of finished stages")
    args = parser.parse_args()

    study = Path(args.study)
    out = study / "conditional"
    if args.report:
        report(out)
        return
    paths = models(study, Path(args.fmlm) if args.fmlm else study / "distill" / "models" / "psd-x1")
    for name, path in paths.items():
        if not (path / "flowlm.json").is_file():
            sys.exit(f"no {name} model at {path}: run experiments/wikitext2.py (and wikitext2_distill.py) first")
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    offline = ["--num-samples", "64", "--seed", "0", "--judge", args.judge, "--quiet"]
    for part in args.only.split(","):
        if part == "nll":
            for name, path in paths.items():
                stages.run(f"nll-{name}", flowlm("nll", str(path), "-n", str(NLL_BLOCKS), "--quiet",
                                                 "--out", str(out / f"nll-{name}.json")))  # fmt: skip
            for name, (model, options) in BOUNDS.items():
                command = flowlm("nll", str(paths[model]), "-n", str(NLL_BLOCKS), *options, "--quiet",
                                 "--out", str(out / f"nll-{name}.json"))  # fmt: skip
                stages.run(f"nll-{name}", command)
            unigram(paths["flm"], out / "unigram.json")
            # unconditional Gen PPL of the MDLM and AR models, to put beside their bits per token (FLM and FMLM have
            # theirs in wikitext2_distill.py's report)
            for name, steps in (("mdlm", ["--steps", "64,256"]), ("ar", [])):
                report_dir = out / f"uncond-{name}-offline"
                stages.run(f"eval-uncond-{name}", flowlm("eval", str(paths[name]), *steps, *offline,
                                                         "--out", str(report_dir)))  # fmt: skip
                samples = sorted(str(f) for f in report_dir.glob("samples_*.jsonl"))
                ar_out = ["--out", str(out / f"uncond-{name}-ar")]
                stages.run(f"score-uncond-{name}-ar", flowlm("score", *samples, "--judge", str(paths["ar"]), *ar_out,
                                                             "--quiet"))  # fmt: skip
            continue
        for name, path in paths.items():
            if name == "ar" and part != "prompt16":
                continue
            report_dir = out / f"{part}-{name}-offline"
            steps = ["--steps", STEPS[name]] if STEPS[name] else []
            command = flowlm("eval", str(path), *steps, *CONDITIONS[part], *offline, "--out", str(report_dir))
            stages.run(f"eval-{part}-{name}", command)
            samples = sorted(str(f) for f in report_dir.glob("samples_*.jsonl"))
            real = ["--real", str(report_dir / "data" / "samples_data.jsonl")]
            ar_out = ["--out", str(out / f"{part}-{name}-ar")]
            stages.run(f"score-{part}-{name}-ar", flowlm("score", *samples, *real, "--judge", str(paths["ar"]),
                                                         *ar_out, "--quiet"))  # fmt: skip


if __name__ == "__main__":
    main()
