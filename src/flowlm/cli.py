"""``flowlm`` command line: thin wrappers over :mod:`flowlm.api` and :func:`flowlm.train`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flowlm.errors import ConfigError, FlowLMError, TrainingInterrupted
from flowlm.paths import require_writable_dir


def add_run_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by the commands that train (train, distill)."""
    parser.add_argument("--steps", type=int, help="number of optimizer steps (train.max_steps)")
    parser.add_argument("--out", help=f"run folder (default {default_out})")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """``--<option>`` for every sampler option of the registered methods (``--guidance``, ``--gamma``, ...)."""
    from flowlm.methods import registry

    owners: dict[str, list[str]] = {}
    for kind in registry.methods():
        for option in kind.options:
            owners.setdefault(option.name, [])
            if kind.title not in owners[option.name]:
                owners[option.name].append(kind.title)
    for name, option in registry.sampler_options().items():
        kind = type(option.default) if option.default is not None else float
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"option_{name}",
            type=kind,
            help=f"{option.help} ({', '.join(owners[name])}; default {option.default})",
        )


def given_options(args: argparse.Namespace) -> dict:
    """The sampler options given on the command line (see :func:`add_sampler_options`)."""
    prefix = "option_"
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


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
        "(autoregressive, causal DiT of the same size); any method registered in flowlm.methods.registry",
    )
    tr.add_argument("--data", help="corpus: shakespeare (embedded), a .txt file or folder, lm1b, openwebtext, wikitext")
    tr.add_argument("--tokenizer", help="bert-base-uncased, gpt2, bpe:<size>, or a Hugging Face tokenizer name")
    add_run_options(tr, "runs/<preset>-<method>")

    di = sub.add_parser(
        "distill",
        help="distill an FLM into a one-step flow map (FMLM, PSD recipe), or an MDLM (SDTT) or DUO (DCD) model into "
        "a few-step one",
        description="Distill a trained FLM into an FMLM (SPEC §3, PSD), an MDLM into an MDLM that needs half the steps "
        "(--recipe sdtt) or a DUO model likewise (--recipe dcd; --rounds halves again, each round's student the next "
        "round's teacher). The student starts from the teacher's EMA weights and uses its data and tokenizer; any "
        "option can be overridden as section.key=value (e.g. train.lr=1e-4 distill.boundary_frac=0.03). Resumes an "
        "interrupted run in the same --out folder.",
    )
    di.add_argument("--teacher", required=True, help="model folder (or its run folder) to distill")
    di.add_argument(
        "--recipe",
        default="psd",
        help="psd (SPEC §3, default); the paper's v1 two-stage recipe (SPEC §4): v1-stage1, v1-stage2; lsd-ref (the "
        "reference code's Lagrangian self-distillation: student diagonal, JVP, sparsemax); lsd-teacher (formerly lsd: "
        "Lagrangian targets with the teacher at the landing point). Both Lagrangian recipes are experimental: on "
        "WikiText-2 their 1-step maps lose most (lsd-teacher) or a third (lsd-ref) of the teacher's entropy "
        "(docs/results.md); sdtt (an MDLM teacher: self-distillation through time); dcd (a DUO teacher: discrete "
        "consistency distillation); fixed-point (a self-conditioned FLM teacher: the FLM that predicts the fixed point "
        "of its guided self-conditioning in one call and takes the guidance scale w as an input; distill that with psd "
        "for a flow map that takes w, docs/self_conditioning.md)",
    )
    di.add_argument(
        "--rounds", type=int, default=1,
        help="sdtt, dcd: distillation rounds, each from the previous round's model with half its teacher_steps, in "
        "OUT/round-K (default 1)",
    )  # fmt: skip
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
    add_sampler_options(sa)
    sa.add_argument("--prompt", help="continue this text (every sample starts with it)")
    sa.add_argument("--suffix", help="end every sample with this text (not for AR models)")
    sa.add_argument(
        "--template", help="fill the blanks of a template: 'The [BLANK:6] sat on the [BLANK:3].' (not for AR models)"
    )
    sa.add_argument(
        "--prompts", help="a text file of prompts, one per line: -n continuations of each, written as JSONL (--out)"
    )
    sa.add_argument(
        "--condition-mode",
        choices=("clean", "path"),
        help="how FLM/FMLM samplers give known positions: clean one-hot rows (default) or their noisy path",
    )
    sa.add_argument("--batch-size", type=int, default=64, help="samples per network call (default 64)")
    sa.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    sa.add_argument("--out", help="write JSONL here instead of printing")
    de = sub.add_parser(
        "demo",
        help="one-step generation from the shipped demo FMLM beside multi-step FLM samples (offline, seconds)",
        description="Samples the demo models shipped with flowlm (9.6M parameters, trained on public-domain English "
        "prose and Shakespeare): the distilled flow map (FMLM) in 1, 2 and 4 network calls, its FLM teacher in 1 and "
        "256, and the FMLM continuing a prompt in 4, each timed.",
    )
    de.add_argument("--num-samples", "-n", type=int, default=3, help="samples per row (default 3)")
    de.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    de.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    im = sub.add_parser(
        "import-reference",
        help="convert a model of the reference implementation (.ckpt, or a released Hub model) into a model folder",
        description="Convert a Lightning .ckpt of the reference FLM/FMLM code or of the MDLM / SDTT / DUO / DCD "
        "baselines, or a released model in its Hub format (a folder or a Hub id such as david3684/FMLM-B-OWT or "
        "kuleshov-group/mdlm-owt, downloaded once) into a flowlm model folder. A .ckpt "
        "is read without running pickled code; the weights must match the network exactly. Settings the model's "
        "config does not settle are errors naming the option to pass.",
    )
    im.add_argument("checkpoint", help="the reference .ckpt file, a Hub-format folder, or a Hub id (owner/name)")
    im.add_argument("--out", required=True, help="model folder to write")
    im.add_argument(
        "--tokenizer",
        help="tokenizer spec or folder (default: the checkpoint's data.tokenizer_name_or_path)",
    )
    im.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA (default) or raw weights (.ckpt)")
    im.add_argument(
        "--logit-cap",
        default="auto",
        help="soft cap on the logits: a number, 'none', or 'auto' (default: inferred from the config; v2/v3 code 30)",
    )
    im.add_argument("--gamma", type=float, help="default sampling churn of a flow map (default: LM1B 0.8, OWT 1.0)")
    im.add_argument("--seq-len", type=int, help="sequence length (default: the config's model.length)")
    im.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    im.add_argument(
        "--method",
        choices=("mdlm", "duo"),
        help="the kind of a discrete-diffusion baseline whose config does not say it (default: read from the config)",
    )

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
    add_sampler_options(ev)
    ev.add_argument(
        "--temperatures",
        metavar="T1,T2,...",
        help="evaluate at each temperature (OUT/temperature-T) and write the Gen PPL-entropy frontier of each step "
        "count to OUT/frontier.json, .md and .png (flowlm compare --entropy reads Gen PPL off it)",
    )
    ev.add_argument("--batch-size", type=int, default=64, help="samples per network call (default 64)")
    ev.add_argument(
        "--prompt-tokens",
        type=int,
        metavar="K",
        help="conditional: give the first K tokens of held-out blocks and generate the rest; scores the continuation "
        "given the prompt, MAUVE against the real continuations, and writes the real ones as the data line to OUT/data",
    )
    ev.add_argument(
        "--infill-frac",
        type=float,
        metavar="F",
        help="conditional: give a random share F of the positions of held-out blocks (seeded) and generate the others",
    )
    ev.add_argument(
        "--infill-middle",
        type=float,
        metavar="F",
        help="conditional: generate the middle share F of the positions of held-out blocks, given the rest (e.g. 0.5: "
        "the middle half)",
    )
    ev.add_argument("--data", help="conditional: corpus spec or text file of the blocks (default: the model's corpus)")
    ev.add_argument("--split", default="validation", help="conditional: split of the blocks (default validation)")
    ev.add_argument("--cache-dir", help="conditional: token cache folder (default: flowlm's cache)")
    add_judge_options(ev)

    sc = sub.add_parser(
        "score",
        help="rescore saved samples (from flowlm eval) with another judge, without resampling",
        description="Score samples_*.jsonl files written by flowlm eval with --judge and write the same report "
        "(results.json, results.md, plots) to --out. Under torchrun the batches are spread over the ranks.",
    )
    sc.add_argument("samples", nargs="+", help="samples_*.jsonl files of one flowlm eval run")
    sc.add_argument(
        "--real",
        metavar="FILE",
        help="conditional samples: the data line of the same flowlm eval (OUT/data/samples_data.jsonl); rescored too "
        "(written to --out/data), and every row gets MAUVE against it under this judge",
    )
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

    nl = sub.add_parser(
        "nll",
        help="the model's likelihood bound on held-out text, in nats and bits per token (FLM, FMLM, MDLM, AR)",
        description="Draw -n blocks (seeded) from the validation split of the model's corpus (or --data) and "
        "compute each method's bound on -log p(block): AR exact, MDLM its NELBO, FLM and FMLM the diffusion ELBO "
        "(--bound elbo, default) or a variational bound through the probability-flow ODE (--bound ode; "
        "docs/likelihood.md). Prints bits per token with a bootstrap 95% interval over blocks and the Monte-Carlo "
        "standard error; --out writes the JSON.",
    )
    nl.add_argument("checkpoint", help="model folder, Hub id or demo:flm / demo:fmlm")
    nl.add_argument("--data", help="corpus spec or text file (default held-out: the model's corpus)")
    nl.add_argument("--split", default="validation", help="split to draw from (default validation)")
    nl.add_argument("--num-blocks", "-n", type=int, default=64, help="blocks to score (default 64)")
    nl.add_argument("--batch-size", type=int, default=8, help="blocks per batch (default 8)")
    nl.add_argument("--draws", type=int, help="Monte-Carlo draws per block (default: FLM/FMLM 2, MDLM 16)")
    nl.add_argument(
        "--bound", choices=("elbo", "ode"),
        help="FLM and FMLM: the diffusion ELBO (default; informative when V > d) or the probability-flow ODE bound",
    )  # fmt: skip
    nl.add_argument("--t-max", type=float, help="FLM bounds: time t of the decoder (default T_V^-1(--tau-max))")
    nl.add_argument(
        "--tau-max", type=float, help="FLM bounds: the same in the network clock (default: ELBO 0.9, ODE 0.9)"
    )
    nl.add_argument("--time-points", type=int, help="ELBO: time strata per draw, network calls - 1 (default 16)")
    nl.add_argument("--ode-steps", type=int, help="ODE bound: solver steps (default 32)")
    nl.add_argument("--solver", help="ODE bound: euler, heun or rk4 (default rk4)")
    nl.add_argument("--grid", help="FLM bounds: grid or strata uniform in tau (default) or t")
    nl.add_argument("--probes", type=int, help="ODE bound: Hutchinson probes per call, 0 = exact trace (default 1)")
    nl.add_argument(
        "--divergence",
        help="ODE bound: trace space h (L x d), v (L x V) or auto (default: the smaller space for the exact trace, "
        "V-space for probes, whose variance measured lower; docs/likelihood.md)",
    )  # fmt: skip
    nl.add_argument("--seed", type=int, default=0, help="seed of the block draw and the Monte-Carlo draws")
    nl.add_argument("--out", help="write the result as JSON to this file")
    nl.add_argument("--cache-dir", help="token cache folder (default: flowlm's cache)")
    nl.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    nl.add_argument("--quiet", action="store_true", help="no progress bar")

    fi = sub.add_parser(
        "fit-report",
        help="how well a flow map fits its distillation target, pair of times by pair of times",
        description="Draw --blocks held-out blocks (seeded) and print, for each pair (tau_s, tau_t), the KL from the "
        "PSD target to the flow map (teacher denoiser on the diagonal, the map's own midpoint composition off it; at "
        "(0, 1) that is its own 2-step output), both entropies and the arg-max agreement, in nats per token with "
        "95%% intervals over blocks; pairs ending at tau_t = 1 also against the teacher's own --ode-steps sampler "
        "(docs/results.md, issue 24).",
    )
    fi.add_argument("checkpoint", help="flow-map model folder (flowlm distill), Hub id or demo:fmlm")
    fi.add_argument("--teacher", help="the FLM teacher (default: the one recorded in its flowlm.json)")
    fi.add_argument("--pairs", help="tau_s:tau_t,... (default: 11 pairs from (0, 1) to the diagonal)")
    fi.add_argument("--data", help="corpus spec or text file (default: the model's corpus)")
    fi.add_argument("--split", default="validation", help="split to draw from (default validation)")
    fi.add_argument("--blocks", type=int, default=64, help="held-out blocks (default 64)")
    fi.add_argument("--batch-size", type=int, default=16, help="blocks per batch (default 16)")
    fi.add_argument("--seed", type=int, default=0, help="seed of the block draw and the noise")
    fi.add_argument(
        "--ode-steps", type=int, default=64,
        help="steps of the teacher's sampler that anchors the pairs ending at tau_t = 1 (default 64; 0: none)",
    )  # fmt: skip
    fi.add_argument("--out", help="write the report as JSON to this file")
    fi.add_argument("--cache-dir", help="token cache folder (default: flowlm's cache)")
    fi.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    fi.add_argument("--quiet", action="store_true", help="no progress bar")

    co = sub.add_parser(
        "compare",
        help="merge several models' results.json into one table and one pair of plots",
        description="Merge results.json files (same judge) into comparison.json, comparison.md, "
        "genppl_vs_steps.png and genppl_vs_seconds.png in --out.",
    )
    co.add_argument(
        "results", nargs="+",
        help="results.json files written by flowlm eval / score, or frontier.json files (flowlm eval --temperatures)",
    )  # fmt: skip
    co.add_argument(
        "--entropy", type=float,
        help="report each frontier's Gen PPL interpolated at this entropy (nats), with its interval",
    )  # fmt: skip
    co.add_argument("--labels", help="comma-separated names of the models, in the order of the files")
    co.add_argument("--out", required=True, help="folder for the comparison")
    return parser


def run_demo(args: argparse.Namespace) -> None:
    from flowlm.demo import format_demo, run_demo

    check_args(args)
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples}: ask for at least one sample")
    print(format_demo(run_demo(args.num_samples, seed=args.seed, device=args.device)))
    print("Sample your own: flowlm sample demo:fmlm --steps 1 -n 8   (see flowlm --help)")


def run_import_reference(args: argparse.Namespace) -> None:
    from flowlm.interop.released import import_reference

    out = import_reference(
        args.checkpoint,
        args.out,
        args.tokenizer,
        args.weights,
        args.logit_cap,
        args.gamma,
        args.seq_len,
        args.revision,
        args.method,
    )
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
        from flowlm.methods import registry
        from flowlm.training.checkpoint import read_meta

        print(f"model written to {model_dir}")
        steps = " --steps 64" if registry.for_meta(read_meta(model_dir)).takes_steps else ""
        print(f"sample from it with: flowlm sample {model_dir}{steps}")


def run_distill(args: argparse.Namespace) -> None:
    from flowlm.methods import registry
    from flowlm.training.checkpoint import read_meta
    from flowlm.training.run import distill_config, resolve_teacher, train

    teacher_dir = resolve_teacher(args.teacher)
    run_name = teacher_dir.parent.name if teacher_dir.name == "model" else teacher_dir.name
    student = registry.for_recipe(args.recipe)
    if isinstance(args.rounds, bool) or args.rounds < 1 or (args.rounds > 1 and not student.halves_steps):
        raise ConfigError(
            f"--rounds {args.rounds}: rounds halve the step count of a few-step recipe (sdtt, dcd), at least 1; "
            f"--recipe {args.recipe} trains one flow map: leave --rounds at 1"
        )
    out = Path(args.out or f"runs/{student.records}-{args.recipe}-{run_name}")
    teacher, extra = str(teacher_dir), []
    for k in range(1, args.rounds + 1):
        model_dir = train(
            config=distill_config(teacher, recipe=args.recipe, stage1=args.stage1),
            overrides=[*args.overrides, *extra],
            out=out if args.rounds == 1 else out / f"round-{k}",
            steps=args.steps,
            resume=not args.no_resume,
            progress=not args.quiet,
        )
        if student.halves_steps:  # the next round distills this student, taking half its steps as its teacher's
            steps = read_meta(model_dir)["run"]["distill"]["teacher_steps"] // 2
            teacher, extra = str(model_dir), [f"distill.teacher_steps={steps}"]
            if is_main_process() and args.rounds > 1:
                print(f"round {k}: {model_dir}, a {steps}-step sampler")
    if is_main_process():
        print(f"{student.title} model written to {model_dir}")
        print(f"sample from it with: flowlm sample {model_dir} --steps {steps if student.halves_steps else 1}")


def check_args(args: argparse.Namespace) -> None:
    """The numeric and device options a command has, checked before any model or judge is loaded."""
    from flowlm.checks import check_device, check_whole

    for option in ("num_samples", "batch_size", "judge_batch_size"):
        if hasattr(args, option):
            check_whole(f"--{option.replace('_', '-')}", getattr(args, option))
    if hasattr(args, "seq_len"):
        check_whole("--seq-len", args.seq_len, 2, optional=True)
    if hasattr(args, "device"):
        check_device(args.device)


def run_sample(args: argparse.Namespace) -> None:
    import flowlm
    from flowlm.api import resolve_steps
    from flowlm.eval.run import option_provenance
    from flowlm.paths import require_writable_file
    from flowlm.training.checkpoint import code_version

    check_args(args)
    if args.out is not None:
        require_writable_file(args.out, "--out")
    prompts = condition_texts(args)
    model = flowlm.load(args.checkpoint, device=args.device)
    options = given_options(args)
    known = conditions(args, model, prompts)
    start = time.perf_counter()
    tokens = model.sample_tokens(
        len(known["plans"]) if known else args.num_samples,
        args.steps,
        seed=args.seed,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        known=known.get("ids"),
        known_mask=known.get("mask"),
        condition_mode=args.condition_mode,
        **options,
    )
    seconds = time.perf_counter() - start
    ends = [plan.end for plan in known["plans"]] if known else [tokens.shape[1]] * tokens.shape[0]
    texts = [model.tokenizer.decode(row[:end]) for row, end in zip(tokens.tolist(), ends, strict=True)]
    steps = resolve_steps(model.method_def, args.steps)
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
        **option_provenance(model, options),
        "steps": steps,
        "seed": args.seed,
        "precision": "float32",
        "num_samples": len(texts),
        "seconds_per_sample": seconds / args.num_samples,
        "code_version": code_version(),
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for i, (text, row) in enumerate(zip(texts, tokens.tolist(), strict=True)):
            line = {"index": i, "text": text, "tokens": row}
            if known:
                plan = known["plans"][i]
                line["prompt"] = prompts[i]
                line["continuation"] = model.tokenizer.decode(row[plan.prompt_len : plan.end])
            f.write(json.dumps({**line, "provenance": provenance}) + "\n")
    print(f"wrote {len(texts)} samples to {out}")


def condition_texts(args: argparse.Namespace) -> list[str]:
    """The prompt (or template) of each sample from --prompt/--suffix/--template/--prompts, checked before the model
    is loaded; [] when none is given."""
    if args.prompts is not None:
        if args.prompt is not None or args.template is not None:
            raise ConfigError("--prompts gives one prompt per line: leave --prompt and --template unset")
        path = Path(args.prompts)
        if not path.is_file():
            raise ConfigError(f"--prompts {args.prompts}: no such file (one prompt per line)")
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ConfigError(
                f"--prompts {args.prompts} is not UTF-8 text: give a text file, one prompt per line"
            ) from None
        if not lines:
            raise ConfigError(f"--prompts {args.prompts} holds no prompt: write one per line")
        if args.out is None:
            raise ConfigError("--prompts writes JSONL (prompt and continuation apart): give --out FILE")
        return [line for line in lines for _ in range(args.num_samples)]
    if args.template is not None:
        given = {"--prompt": args.prompt, "--suffix": args.suffix}
        dropped = " and ".join(name for name, value in given.items() if value is not None)
        if dropped:
            raise ConfigError(
                f"--template places all the given text itself, so {dropped} would be dropped: write that text into "
                "the template ('Once upon a time [BLANK:20]'), or leave --template out"
            )
        return [args.template] * args.num_samples
    if args.prompt is not None or args.suffix is not None:
        return [args.prompt] * args.num_samples
    return []


def conditions(args: argparse.Namespace, model, prompts: list[str]) -> dict:
    """{"ids", "mask", "plans"}: the known positions of each sample's prompt or template (:func:`condition_texts`);
    {} when none is given."""
    import torch

    from flowlm.prompts import layout

    if not prompts:
        return {}
    seq_len = args.seq_len or model.seq_len
    plans, cache = [], {}
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = layout(model.tokenizer, seq_len, prompt=None if args.template else prompt,
                                   suffix=args.suffix, template=args.template)  # fmt: skip
        plans.append(cache[prompt])
    ids = torch.tensor([plan.ids for plan in plans])
    mask = torch.tensor([plan.mask for plan in plans])
    return {"ids": ids, "mask": mask, "plans": plans}


def _print_report(results: dict, out: str) -> None:
    from flowlm.eval.report import results_markdown

    if is_main_process():  # under torchrun only rank 0 reports
        print(results_markdown(results).split("\n\nJudge:")[0])
        print(f"wrote results.json, results.md and plots to {out}")


def run_eval(args: argparse.Namespace) -> None:
    import flowlm
    from flowlm.eval import distributed, load_judge, plots
    from flowlm.eval.frontier import frontier_markdown
    from flowlm.eval.run import evaluate, evaluate_frontier, parse_steps

    steps = parse_steps(args.steps or DEFAULT_EVAL_STEPS)
    check_args(args)
    check_eval_args(args)
    require_writable_dir(args.out, "--out")
    plots.require_matplotlib()
    device = distributed.init_from_env(args.device)
    try:
        model = flowlm.load(args.checkpoint, device=device)
        if not model.method_def.takes_steps and args.steps:
            print(f"flowlm: note: {model.method} has no step count; --steps ignored, evaluated once", file=sys.stderr)
        judge = load_judge(args.judge, device=device)
        settings = dict(
            num_samples=args.num_samples, seed=args.seed, batch_size=args.batch_size,
            judge_batch_size=args.judge_batch_size, seq_len=args.seq_len, progress=not args.quiet,
            prompt_tokens=args.prompt_tokens, infill_frac=args.infill_frac, infill_middle=args.infill_middle,
            data=args.data, split=args.split, cache_dir=args.cache_dir, **given_options(args),
        )  # fmt: skip
        if args.temperatures:
            frontier = evaluate_frontier(model, judge, steps, args.out, args.temperatures, **settings)
        else:
            results = evaluate(model, judge, steps, args.out, **settings)
    finally:
        distributed.finish()
    if not args.temperatures:
        _print_report(results, args.out)
    elif is_main_process():
        print(frontier_markdown(frontier))
        print(f"wrote frontier.json, frontier.md and frontier.png to {args.out} (each temperature in its own folder)")


def check_eval_args(args: argparse.Namespace) -> None:
    """The options of flowlm eval that need neither the model nor the judge, checked before either is loaded: the
    condition, its corpus and split, and (from the model's flowlm.json, read without loading it) the length and
    the sampler options."""
    from flowlm.api import sampler_options
    from flowlm.checks import recorded_meta
    from flowlm.data import load_corpus
    from flowlm.data.corpus import normalize_split
    from flowlm.eval.run import check_condition
    from flowlm.methods import registry

    if args.temperatures:
        from flowlm.eval.frontier import parse_temperatures

        parse_temperatures(args.temperatures)
        if args.option_temperature is not None:
            raise ConfigError("--temperature with --temperatures: the frontier sets the temperature; give one of them")
    meta = recorded_meta(args.checkpoint) or {}
    length = (meta.get("model") or {}).get("seq_len")
    if length is not None and args.seq_len is not None and args.seq_len > length:
        raise ConfigError(f"--seq-len {args.seq_len} exceeds the model's {length}: ask for at most {length} tokens")
    if check_condition(args.prompt_tokens, args.infill_frac, args.infill_middle, length):
        if length is not None and args.seq_len not in (None, length):
            raise ConfigError(f"--seq-len {args.seq_len}: a conditional evaluation samples whole blocks of {length}")
        corpus = args.data or ((meta.get("run") or {}).get("data") or {}).get("corpus")
        if corpus:  # a spec is read lazily: this checks the name, the split and that a file exists, nothing more
            load_corpus(corpus, args.split)
        else:
            normalize_split(args.split)
    if meta:
        method = registry.for_meta(meta, where=str(args.checkpoint))
        sampler_options(method, meta.get("sampler_defaults"), **given_options(args))


def run_score(args: argparse.Namespace) -> None:
    from flowlm.eval import distributed, load_judge, plots
    from flowlm.eval.run import check_real_line, load_sample_files, score_files
    from flowlm.eval.samples import read_samples

    check_args(args)
    require_writable_dir(args.out, "--out")
    plots.require_matplotlib()
    sample_sets = load_sample_files(args.samples)  # bad files fail before the judge is loaded
    real = None if args.real is None else read_samples(args.real)
    if real is not None:
        check_real_line(real, sample_sets[0])
    device = distributed.init_from_env(args.device)
    try:
        judge = load_judge(args.judge, device=device)
        results = score_files(
            sample_sets, judge, args.out, judge_batch_size=args.judge_batch_size, progress=not args.quiet, real=real
        )
    finally:
        distributed.finish()
    _print_report(results, args.out)


def run_reference(args: argparse.Namespace) -> None:
    import flowlm
    from flowlm.eval import distributed, load_judge, plots
    from flowlm.eval.run import reference

    check_args(args)
    require_writable_dir(args.out, "--out")
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


def run_nll(args: argparse.Namespace) -> None:
    from flowlm.eval.likelihood import format_nll, nll

    check_args(args)
    result = nll(
        args.checkpoint, args.data, split=args.split, num_blocks=args.num_blocks, batch_size=args.batch_size,
        draws=args.draws, bound=args.bound, t_max=args.t_max, tau_max=args.tau_max, time_points=args.time_points,
        ode_steps=args.ode_steps, solver=args.solver,
        grid=args.grid, probes=args.probes, divergence=args.divergence, seed=args.seed, out=args.out,
        device=args.device, cache_dir=args.cache_dir, progress=not args.quiet,
    )  # fmt: skip
    print(format_nll(result))
    if args.out:
        print(f"wrote {args.out}")


def run_fit_report(args: argparse.Namespace) -> None:
    from flowlm.checks import check_whole
    from flowlm.eval.flow_map_fit import DEFAULT_PAIRS, format_report, model_fit_report, parse_pairs
    from flowlm.paths import require_writable_file

    check_args(args)
    check_whole("--blocks", args.blocks)
    check_whole("--ode-steps", args.ode_steps, minimum=0)
    pairs = parse_pairs(args.pairs) if args.pairs else DEFAULT_PAIRS
    if args.out:
        require_writable_file(args.out, "--out", "fit.json")
    report = model_fit_report(
        args.checkpoint, teacher=args.teacher, data=args.data, split=args.split, blocks=args.blocks, pairs=pairs,
        seed=args.seed, batch_size=args.batch_size, device=args.device, cache_dir=args.cache_dir,
        progress=not args.quiet, ode_steps=args.ode_steps,
    )  # fmt: skip
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")


def run_compare(args: argparse.Namespace) -> None:
    from flowlm.eval.report import comparison_markdown
    from flowlm.eval.run import compare_results

    require_writable_dir(args.out, "--out")
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    comparison = compare_results(args.results, args.out, labels, args.entropy)
    print(comparison_markdown(comparison).split("\n\nJudge:")[0])
    if args.entropy is not None:
        from flowlm.eval.frontier import matched_markdown

        print(matched_markdown(comparison["frontiers"], args.entropy))
    print(f"wrote comparison.json, comparison.md and plots to {args.out}")


COMMANDS = {
    "train": run_train,
    "distill": run_distill,
    "sample": run_sample,
    "eval": run_eval,
    "score": run_score,
    "reference": run_reference,
    "nll": run_nll,
    "compare": run_compare,
    "fit-report": run_fit_report,
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
    except TrainingInterrupted as err:
        print(f"flowlm: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("flowlm: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
