"""``flowlm`` command line: thin wrappers over :mod:`flowlm.api` and :func:`flowlm.train`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flowlm.errors import ConfigError, FlowLMError


def add_run_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by the commands that train (train, distill)."""
    parser.add_argument("--steps", type=int, help="number of optimizer steps (train.max_steps)")
    parser.add_argument("--out", help=f"run folder (default {default_out})")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowlm", description="Flow language models: train and sample.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = sub.add_parser(
        "train",
        help="train a model (resumes an interrupted run in the same --out folder)",
        description="Train a model from a preset; any option can be overridden as section.key=value "
        "(e.g. train.lr=1e-3 model.n_blocks=6 data.seq_len=128).",
    )
    tr.add_argument(
        "--preset",
        default="tiny",
        help="tiny (CPU, default), demo (the English demo models: experiments/demo.py), small / lm1b-small, owt-small",
    )
    tr.add_argument(
        "--method",
        help="flm (flow language model, the presets' default), or a baseline: mdlm (masked diffusion) or ar "
        "(autoregressive, causal DiT of the same size)",
    )
    tr.add_argument("--data", help="corpus: shakespeare (embedded), a .txt file or folder, lm1b, openwebtext, wikitext")
    tr.add_argument("--tokenizer", help="bert-base-uncased, gpt2, bpe:<size>, or a Hugging Face tokenizer name")
    add_run_options(tr, "runs/<preset>-<method>")

    di = sub.add_parser(
        "distill",
        help="distill an FLM checkpoint into a one-step flow map (FMLM, PSD recipe)",
        description="Distill a trained FLM into an FMLM (SPEC §3, PSD). The student starts from the teacher's "
        "EMA weights and uses its data and tokenizer; any option can be overridden as section.key=value "
        "(e.g. train.lr=1e-4 distill.boundary_frac=0.03). Resumes an interrupted run in the same --out folder.",
    )
    di.add_argument("--teacher", required=True, help="FLM model folder (or its run folder) to distill")
    di.add_argument(
        "--recipe",
        default="psd",
        choices=("psd", "v1-stage1", "v1-stage2"),
        help="psd (SPEC §3, default) or the paper's v1 two-stage recipe (SPEC §4)",
    )
    di.add_argument("--stage1", help="v1-stage2 only: the v1-stage1 model folder to regress onto")
    add_run_options(di, "runs/fmlm-<recipe>-<teacher run name>")

    sa = sub.add_parser(
        "sample",
        help="generate text from a checkpoint",
        description="Generate text from a model folder (or a run folder). Prints the texts, or writes JSONL "
        "with provenance when --out is given.",
    )
    sa.add_argument("checkpoint", help="model folder written by flowlm train (or its run folder)")
    sa.add_argument(
        "--steps",
        type=int,
        help="sampler steps per sample (default 64); not for AR models, which decode token by token",
    )
    sa.add_argument("--num-samples", "-n", type=int, default=4, help="how many samples (default 4)")
    sa.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sa.add_argument("--seq-len", type=int, help="tokens per sample (default: the model's length)")
    sa.add_argument("--guidance", type=float, help="autoguidance strength η (FLM; default off)")
    sa.add_argument("--gamma", type=float, default=0.0, help="churn γ in [0, 1] of the flow-map sampler (FMLM)")
    sa.add_argument("--batch-size", type=int, default=64, help="samples per network call (default 64)")
    sa.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    sa.add_argument("--out", help="write JSONL here instead of printing")
    de = sub.add_parser(
        "demo",
        help="one-step generation from the shipped demo FMLM beside multi-step FLM samples (offline, seconds)",
        description="Samples the demo models shipped with flowlm (trained on the embedded Shakespeare corpus): the "
        "distilled flow map (FMLM) in 1 and 2 network calls, and its FLM teacher in 1 and 256, each timed.",
    )
    de.add_argument("--num-samples", "-n", type=int, default=3, help="samples per row (default 3)")
    de.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    de.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    im = sub.add_parser(
        "import-reference",
        help="convert a checkpoint of the reference implementation (david3684/flm) into a model folder",
        description="Convert a Lightning .ckpt of the reference FLM/FMLM code into a flowlm model folder. The file "
        "is read without running pickled code; the weights must match the network exactly.",
    )
    im.add_argument("checkpoint", help="the reference .ckpt file")
    im.add_argument("--out", required=True, help="model folder to write")
    im.add_argument(
        "--tokenizer",
        help="tokenizer spec or folder (default: the checkpoint's data.tokenizer_name_or_path)",
    )
    im.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA (default) or raw weights")
    im.add_argument("--logit-cap", type=float, help="soft cap on the logits, for checkpoints trained with one")

    ev = sub.add_parser(
        "eval",
        help="sample at several step counts, time it, score it (Gen PPL, entropy, diversity), write a report",
        description="For each step count: sample, time (seconds per sample), score with a judge LM, then write "
        "the samples (JSONL), results.json, results.md, genppl_vs_steps.png and genppl_vs_seconds.png to --out, "
        "all with provenance. Under torchrun the batches are spread over the ranks and gathered.",
    )
    ev.add_argument("checkpoint", help="model folder written by flowlm train / distill (or its run folder)")
    ev.add_argument("--steps", help=f"comma-separated step counts (default {DEFAULT_EVAL_STEPS}; AR: ignored)")
    ev.add_argument("--num-samples", "-n", type=int, default=256, help="samples per step count (default 256)")
    ev.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ev.add_argument("--seq-len", type=int, help="tokens per sample (default: the model's length)")
    ev.add_argument("--guidance", type=float, help="autoguidance strength η (FLM; default off)")
    ev.add_argument("--gamma", type=float, default=0.0, help="churn γ in [0, 1] of the flow-map sampler (FMLM)")
    ev.add_argument("--batch-size", type=int, default=64, help="samples per network call (default 64)")
    add_judge_options(ev)

    sc = sub.add_parser(
        "score",
        help="rescore saved samples (from flowlm eval) with another judge, without resampling",
        description="Score samples_*.jsonl files written by flowlm eval with --judge and write the same report "
        "(results.json, results.md, plots) to --out. Under torchrun the batches are spread over the ranks.",
    )
    sc.add_argument("samples", nargs="+", help="samples_*.jsonl files of one flowlm eval run")
    add_judge_options(sc)

    rf = sub.add_parser(
        "reference",
        help="score held-out real text like samples: the Gen PPL and entropy of the data, for orientation",
        description="Draw --num-samples blocks (seeded) from a split of the model's own training corpus (or "
        "--data), cut with the model's tokenizer and length, decode them as samples are decoded, score them "
        "with --judge and write samples_data.jsonl and the usual report to --out. flowlm compare shows it as "
        "a line without steps.",
    )
    rf.add_argument("checkpoint", help="model folder whose tokenizer, length and corpus define the blocks")
    rf.add_argument("--data", help="corpus spec or text file (default: the corpus the model was trained on)")
    rf.add_argument("--split", default="validation", help="split to draw from (default validation: held out)")
    rf.add_argument("--num-samples", "-n", type=int, default=256, help="blocks to score (default 256)")
    rf.add_argument("--seed", type=int, default=0, help="random seed of the draw (default 0)")
    rf.add_argument("--batch-size", type=int, default=64, help="blocks per judge batch group (default 64)")
    rf.add_argument("--cache-dir", help="token cache folder (default: flowlm's cache)")
    add_judge_options(rf)

    co = sub.add_parser(
        "compare",
        help="merge several models' results.json into one table and one pair of plots",
        description="Merge results.json files (same judge) into comparison.json, comparison.md, "
        "genppl_vs_steps.png and genppl_vs_seconds.png in --out.",
    )
    co.add_argument("results", nargs="+", help="results.json files written by flowlm eval / score")
    co.add_argument("--labels", help="comma-separated names of the models, in the order of the files")
    co.add_argument("--out", required=True, help="folder for the comparison")
    return parser


def run_demo(args: argparse.Namespace) -> None:
    from flowlm.demo import format_demo, run_demo

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples}: ask for at least one sample")
    print(format_demo(run_demo(args.num_samples, seed=args.seed, device=args.device)))
    print("Sample your own: flowlm sample demo:fmlm --steps 1 -n 8   (see flowlm --help)")


def run_import_reference(args: argparse.Namespace) -> None:
    from flowlm.interop.reference import import_reference

    out = import_reference(args.checkpoint, args.out, args.tokenizer, args.weights, args.logit_cap)
    print(f"model written to {out}")
    print(f"sample from it with: flowlm sample {out} --steps 64")


DEFAULT_EVAL_STEPS = "1,2,4,8,16,32,64"


def add_judge_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that score (eval, score)."""
    parser.add_argument(
        "--judge",
        default="smollm2-offline",
        help="smollm2-offline (default, no network), a local Hugging Face model folder, or a Hub name (gpt2-large)",
    )
    parser.add_argument("--judge-batch-size", type=int, default=8, help="judge windows per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu; under torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--out", required=True, help="folder for the samples, results and plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def is_main_process() -> bool:
    """False on the ranks > 0 of a distributed run (so a launch with N processes prints its result once): the
    process group's rank while one exists (Lightning's own launches), else torchrun's ``RANK`` (the group of
    eval / score / reference is destroyed before they report)."""
    import os

    from flowlm.eval.distributed import rank_and_world

    return rank_and_world()[0] == 0 and os.environ.get("RANK", "0") == "0"


def run_train(args: argparse.Namespace) -> None:
    from flowlm.training.run import train

    model_dir = train(
        args.preset,
        args.overrides,
        out=args.out,
        method=args.method,
        data=args.data,
        tokenizer=args.tokenizer,
        steps=args.steps,
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    if is_main_process():
        print(f"model written to {model_dir}")
        steps = "" if args.method == "ar" else " --steps 64"
        print(f"sample from it with: flowlm sample {model_dir}{steps}")


def run_distill(args: argparse.Namespace) -> None:
    from flowlm.training.checkpoint import resolve_model_dir
    from flowlm.training.run import distill_config, train

    teacher_dir = resolve_model_dir(args.teacher)
    run_name = teacher_dir.parent.name if teacher_dir.name == "model" else teacher_dir.name
    model_dir = train(
        config=distill_config(str(teacher_dir), recipe=args.recipe, stage1=args.stage1),
        overrides=args.overrides,
        out=args.out or f"runs/fmlm-{args.recipe}-{run_name}",
        steps=args.steps,
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    if is_main_process():
        print(f"flow-map model written to {model_dir}")
        print(f"sample from it in one step with: flowlm sample {model_dir} --steps 1")


def run_sample(args: argparse.Namespace) -> None:
    import flowlm
    from flowlm.api import resolve_steps
    from flowlm.training.checkpoint import code_version

    model = flowlm.load(args.checkpoint, device=args.device)
    start = time.perf_counter()
    tokens = model.sample_tokens(
        args.num_samples,
        args.steps,
        seed=args.seed,
        seq_len=args.seq_len,
        guidance=args.guidance,
        gamma=args.gamma,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - start
    texts = model.decode(tokens)
    steps = resolve_steps(model.method, args.steps)
    if args.out is None:
        for i, text in enumerate(texts):
            print(f"--- sample {i} ---\n{text}")
        what = "KV-cached decoding" if steps is None else f"{steps} steps"
        print(f"[{args.num_samples} samples, {what}, {seconds / args.num_samples:.3f} s/sample]", file=sys.stderr)
        return
    provenance = {
        "checkpoint": str(model.path),
        "weights_sha256": model.meta.get("weights_sha256"),
        "method": model.method,
        "sampler": model.sampler,
        "gamma": args.gamma if model.method == "fmlm" else None,
        "steps": steps,
        "seed": args.seed,
        "guidance": args.guidance,
        "precision": "float32",
        "num_samples": args.num_samples,
        "seconds_per_sample": seconds / args.num_samples,
        "code_version": code_version(),
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for i, (text, row) in enumerate(zip(texts, tokens.tolist(), strict=True)):
            f.write(json.dumps({"index": i, "text": text, "tokens": row, "provenance": provenance}) + "\n")
    print(f"wrote {len(texts)} samples to {out}")


def _print_report(results: dict, out: str) -> None:
    from flowlm.eval.report import results_markdown

    if is_main_process():  # under torchrun only rank 0 reports
        print(results_markdown(results).split("\n\nJudge:")[0])
        print(f"wrote results.json, results.md and plots to {out}")


def run_eval(args: argparse.Namespace) -> None:
    import flowlm
    from flowlm.eval import distributed, load_judge, plots
    from flowlm.eval.run import STEPLESS_METHODS, evaluate, parse_steps

    steps = parse_steps(args.steps or DEFAULT_EVAL_STEPS)
    plots.require_matplotlib()
    device = distributed.init_from_env(args.device)
    try:
        model = flowlm.load(args.checkpoint, device=device)
        if model.method in STEPLESS_METHODS and args.steps:
            print(f"flowlm: note: {model.method} has no step count; --steps ignored, evaluated once", file=sys.stderr)
        judge = load_judge(args.judge, device=device)
        results = evaluate(
            model, judge, steps, args.out, num_samples=args.num_samples, seed=args.seed, batch_size=args.batch_size,
            judge_batch_size=args.judge_batch_size, seq_len=args.seq_len, gamma=args.gamma, guidance=args.guidance,
            progress=not args.quiet,
        )  # fmt: skip
    finally:
        distributed.finish()
    _print_report(results, args.out)


def run_score(args: argparse.Namespace) -> None:
    from flowlm.eval import distributed, load_judge, plots
    from flowlm.eval.run import load_sample_files, score_files

    plots.require_matplotlib()
    sample_sets = load_sample_files(args.samples)  # bad files fail before the judge is loaded
    device = distributed.init_from_env(args.device)
    try:
        judge = load_judge(args.judge, device=device)
        results = score_files(
            sample_sets, judge, args.out, judge_batch_size=args.judge_batch_size, progress=not args.quiet
        )
    finally:
        distributed.finish()
    _print_report(results, args.out)


def run_reference(args: argparse.Namespace) -> None:
    import flowlm
    from flowlm.eval import distributed, load_judge, plots
    from flowlm.eval.run import reference

    plots.require_matplotlib()
    device = distributed.init_from_env(args.device)
    try:
        model = flowlm.load(args.checkpoint, device=device)
        judge = load_judge(args.judge, device=device)
        results = reference(
            model, judge, args.out, data=args.data, split=args.split, num_samples=args.num_samples, seed=args.seed,
            batch_size=args.batch_size, judge_batch_size=args.judge_batch_size, cache_dir=args.cache_dir,
            progress=not args.quiet,
        )  # fmt: skip
    finally:
        distributed.finish()
    _print_report(results, args.out)


def run_compare(args: argparse.Namespace) -> None:
    from flowlm.eval.report import comparison_markdown
    from flowlm.eval.run import compare_results

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    comparison = compare_results(args.results, args.out, labels)
    print(comparison_markdown(comparison).split("\n\nJudge:")[0])
    print(f"wrote comparison.json, comparison.md and plots to {args.out}")


COMMANDS = {
    "train": run_train,
    "distill": run_distill,
    "sample": run_sample,
    "eval": run_eval,
    "score": run_score,
    "reference": run_reference,
    "compare": run_compare,
    "import-reference": run_import_reference,
    "demo": run_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except FlowLMError as err:
        print(f"flowlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flowlm: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
