"""Issue 17: the English demo models (shipped as ``demo:flm`` / ``demo:fmlm``), trained on CPU cores across
sessions (``--profile cpu``) or in one short run on a lent GPU (``--profile gpu``, through ``demo_gpu.sh``).

Corpus: the public-domain prose of ``../shared/data/pd-english`` (15 Gutenberg classics, 233 State of the Union
addresses) plus flowlm's embedded Shakespeare (42 works), one document per work (``demo_corpus.py``); every
20th work in (source, name) order is held out (14 of 290 works, 3.0% of the bytes; the list is in
``demo_state/split.json``). Tokenizer: a byte-level BPE of 8,192 tokens learnt from the training works, kept
in ``demo_state/tokenizer`` so every run encodes with the very same ids. Model: the ``demo`` preset.

Stages (``<state>/stages.json`` records each one's command, attempts and seconds; finished ones are skipped,
a failed one is retried when the script is rerun):

1. ``corpus``: writes the corpus file and checks it against the recorded split (and learns the BPE once);
2. ``flm-1``, ``flm-2``, ...: FLM training in chunks of at most ``--flm-chunk`` optimizer steps;
3. ``fmlm-1``, ...: PSD distillation of the final FLM, in chunks;
4. ``ar-1``, ...: the AR baseline of the same size and data, in chunks;
5. ``eval-*``, ``reference``, ``compare``: samples, Gen PPL (offline judge) and entropy, as in wikitext2.py.

**The shipped weights** came from ``--profile gpu`` (``experiments/demo_gpu.sh``, one H200, 2026-11-30; record
in ``docs/results/demo-gpu/``): each phase one chunk ending at its ``--minutes`` (``train.max_minutes``), batch
256, dropout 0.1. Its products were copied into ``src/flowlm/assets/demo/{flm,fmlm}``; the AR model (also 19.2
MB) is not shipped, which keeps the wheel under 50 MB. To rerun on a GPU machine, from the repository root:
``BUDGET=540 bash experiments/demo_gpu.sh`` (see its header), then ``python experiments/demo.py --profile gpu
--state runs/demo-gpu/state ...`` here evaluates what it made (every phase is final, so only evaluation runs).

Why chunks (``--profile cpu``): a session's background job dies when the session ends, and only committed files
survive. A chunk lasts at most ~2 hours; when it finishes, its exported EMA weights are copied in half
precision to ``<state>/<phase>/`` (one folder per phase, overwritten, under 20 MB) and its record to
``stages.json``: commit both. The next chunk warm-starts from those weights (``train.init_from``: network and
EMA from the file; a fresh AdamW with a 100-step warm-up, its own seed for data order and noise) - not an exact
resume, which would need the ~115 MB training checkpoint. Within a session an interrupted chunk resumes exactly
from its run folder's checkpoint. A chunk stopped early (the session ends: ``--hours`` does it, or ``save``
after a stop by hand) keeps what its last checkpoint holds (every 50 steps) and records the steps done; the
phase's next chunk trains the rest. The CPU run of 2026-11-29 (1,650 FLM steps, superseded by the GPU run; its
record is ``docs/results/demo-cpu-stages.json``) went this way.

Each chunk's record also holds the validation loss of its weights in float32 and rounded to float16
(``precision``: the same 8 validation batches of 32, times and noise), the check that half-precision storage
costs nothing; the final evaluation samples the float16 files that would ship.

    # from the repository root (the run folders record the corpus path relative to it); --hours: stop (and
    # save) the running chunk when this session's time is up, start none with under 10 minutes left
    OMP_NUM_THREADS=1 nohup nice -n 10 python experiments/demo.py --pd-english ../shared/data/pd-english \\
        --hours 2 > runs/demo/log.txt 2>&1 &
    python experiments/demo.py save          # after stopping a chunk by hand (kill -INT the flowlm process)
    git add experiments/demo_state && git commit -m "demo: chunk N"

Sizes, measured on this machine (2 cores shared with 4 other agents' tests: load average 3 to 8; one torch
thread, ``nice``; 16-step runs of batch 32 x 128 tokens, mean of the logged tokens/s after the first interval;
commands in docs/results.md): FLM d = 256 x 6 blocks (9.59M parameters, 19.2 MB in fp16) 901 tokens/s (load 3);
4 blocks (7.81M) 1,325 (load 3.3); d = 192 x 4 (5.27M) 1,415 (load 3.5-4.8); at 6 x 256: AR 607 (load 5-8),
PSD distillation 293 (load 6-8). The 6-block model is the largest whose FMLM file fits 20 MB with this
tokenizer, and the smaller ones are not proportionally faster, so the preset takes it.

CPU plan (the defaults): FLM 3,600 steps (14.7M tokens, 2.2 epochs) = 3 chunks of 1,200 (~1.5 h each); PSD 600
steps = 2 chunks of 300 (~1.2 h each); AR 1,200 steps = 2 chunks of 600 (~1.1 h each; a third of the FLM's
tokens: the budget allows no more); evaluation ~0.75 h (estimated). About 10 hours in all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import demo_corpus  # noqa: E402
from wikitext2 import Stages, flowlm  # noqa: E402

from flowlm.errors import FlowLMError  # noqa: E402
from flowlm.training.preflight import fixed_by_teacher  # noqa: E402

STATE = HERE / "demo_state"
CORPUS_FILE = "demo-english.txt"
PHASES = ("flm", "fmlm", "ar")
MIN_CHUNK_SECONDS = 600  # with --hours, no chunk starts with less time left (start-up and one checkpoint)
WARM_UP_AGAIN = 100  # warm-up steps of a warm-started chunk (a fresh AdamW)
# Optimizer steps in all and per chunk (batch 32 x 128 tokens); see the module docstring for the measurements.
FLM_STEPS, FLM_CHUNK = 3600, 1200
FMLM_STEPS_TOTAL, FMLM_CHUNK = 600, 300
AR_STEPS, AR_CHUNK = 1200, 600
# PSD steps cost ~3 FLM steps: checkpoint more often, and an EMA short enough that 300 steps forget the
# student's initial weights (0.99^300 = 5%; the preset's 0.995 keeps 0.995^1200 = 0.2% of the FLM's random init)
PHASE_OVERRIDES = {
    "fmlm": ["train.ema_decay=0.99", "train.ckpt_every=50", "train.val_every=150", "train.warmup_steps=100"]
}
# --profile gpu (issue 17, item 2): the whole recipe in one run of under 10 minutes on one large GPU (an H200
# here): each phase trains in one chunk that ends at its time budget (train.max_minutes; the recorded steps are
# what it reached), with batches of 256 (bf16 autocast and fused attention come with train.precision=auto and
# model.attn_backend=auto on CUDA). Dropout 0.1 and a longer EMA. The run of 2026-11-30 (the shipped weights) had
# no train.compile and 128-row head chunks: 828 FLM steps in 3.4 minutes (~145k tokens/s, 4 epochs); profiled
# after it (benchmarks/profile_train_step.py, docs/gpu.md), an FLM step took 184 ms uncompiled and 31 ms compiled,
# so the profile now compiles, and the head's chunks are sized by memory on a GPU.
PROFILES = {
    "cpu": {"minutes": {}, "overrides": {}, "min_chunk_seconds": MIN_CHUNK_SECONDS},
    "gpu": {
        "minutes": {"flm": 3.4, "fmlm": 2.1, "ar": 1.1},
        "min_chunk_seconds": 30,
        "steps": 1_000_000,
        "overrides": {
            "all": ["train.batch_size=256", "train.ckpt_every=1000", "train.val_every=500", "train.log_every=100",
                    "train.compile=true"],  # fmt: skip
            "flm": ["model.dropout=0.1", "train.ema_decay=0.999"],
            "ar": ["model.dropout=0.1", "train.ema_decay=0.999"],
            "fmlm": ["train.ema_decay=0.995"],
        },
    },
}
VALIDATION_BATCH = 32  # sequences per batch of the float32 / float16 validation check (the CPU chunks' batch)
STEPS = "1,2,4,8,16,32,64,256"  # FLM sampler steps evaluated
FMLM_STEPS = "1,2,4,8"


class ChunkStages(Stages):
    """:class:`wikitext2.Stages` whose stages may run ``after`` (saving their product, which returns fields for
    the record) before they count as done: a chunk whose export failed is retried, not skipped.

    With ``seconds``, a stage still running after that long is stopped (SIGINT, as Ctrl-C: flowlm keeps its last
    checkpoint) and, if ``after`` can save what it holds, recorded as done with ``stopped_early``; ``run`` then
    returns False (the time is up) instead of True."""

    def run(self, name, command, before=None, after=None, seconds: float | None = None) -> bool:
        if after is None:
            super().run(name, command, before)
            return True
        entry = self.state.setdefault(name, {"command": shlex.join(command), "seconds": 0.0, "attempts": 0})
        if entry.get("done"):
            print(f"[{name}] done before ({entry['seconds']:.0f} s), skipped")
            return True
        print(f"[{name}] {shlex.join(command)}", flush=True)
        entry["attempts"] += 1
        entry["done"] = False
        start = time.perf_counter()
        # SIGINT back to its default in the child: a script started in the background (nohup ... &) has it ignored,
        # which the child would inherit, and then the stop below could not interrupt it
        proc = subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            code, stopped = proc.wait(timeout=seconds), False
        except subprocess.TimeoutExpired:
            print(f"[{name}] out of time after {seconds:.0f} s: stopping it", flush=True)
            proc.send_signal(signal.SIGINT)
            try:
                code, stopped = proc.wait(timeout=300), True
            except subprocess.TimeoutExpired:
                proc.kill()
                code, stopped = proc.wait(), True
        entry["seconds"] += time.perf_counter() - start
        self.save(name)
        if code != 0 and not stopped:
            sys.exit(f"[{name}] failed with exit code {code}; rerun this script to resume")
        try:
            fields = after()
        except FlowLMError as err:
            if not stopped:
                raise
            print(f"[{name}] stopped before its first checkpoint, nothing saved ({err})", flush=True)
            return False
        entry.update(fields, done=True, **({"stopped_early": True} if stopped else {}))
        self.save(name)
        print(f"[{name}] {'stopped' if stopped else 'finished'} and saved ({entry['seconds']:.0f} s)", flush=True)
        return not stopped


def chunk_plan(records: dict, phase: str, total: int, chunk: int) -> tuple[int, int, int] | None:
    """(chunk number k, its steps, steps done before it) for the next chunk of ``phase``, or None when the
    recorded chunks ``phase-1``, ``phase-2``, ... (their ``steps``) add up to ``total`` or one of them ran on a
    time budget (``final``: ``--minutes`` trains a phase in one chunk that ends when its time is up)."""
    done, k, final = 0, 1, False
    while records.get(f"{phase}-{k}", {}).get("done"):
        done += records[f"{phase}-{k}"]["steps"]
        final = final or records[f"{phase}-{k}"].get("final", False)
        k += 1
    if done >= total or final:
        return None
    return k, min(chunk, total - done), done


def export_half(model_dir: Path, target: Path) -> dict:
    """Copy the model folder ``model_dir`` to ``target`` with its float32 weights stored as float16."""
    import torch

    from flowlm.data.tokenizer import Tokenizer
    from flowlm.training.checkpoint import TOKENIZER, read_meta, read_weights, save_model

    meta = read_meta(model_dir)
    weights = read_weights(model_dir, meta)
    largest = max(float(v.abs().max()) for v in weights.values() if v.is_floating_point())
    if largest >= torch.finfo(torch.float16).max:
        raise SystemExit(f"{model_dir}: a weight of size {largest:g} overflows float16; store this model in float32")
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "weights_sha256")}
    save_model(target, half, {**keep, "storage_dtype": "float16"}, Tokenizer.load(model_dir / TOKENIZER))
    return {"step": meta.get("step"), "bytes": (target / "model.safetensors").stat().st_size}


def validation_loss(run_dir: Path, weights: dict, batches: int = 8) -> float:
    """The run's validation metric (denoising CE, NLL, ...) of ``weights`` on ``batches`` fixed validation
    batches of ``VALIDATION_BATCH`` sequences with fixed times and noise (seed 0), the same for every call and
    every training batch size; computed on the CPU."""
    import torch

    from flowlm.config import RunConfig
    from flowlm.data import prepare_blocks
    from flowlm.data.tokenizer import load_tokenizer
    from flowlm.training.batches import StepBatches
    from flowlm.training.module import FlowLMModule
    from flowlm.training.run import load_frozen

    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text())["run"])
    cfg.train.init_from = None
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    blocks = prepare_blocks(cfg.data.corpus, tokenizer, cfg.data.seq_len, "validation", progress=False)
    teacher, stage1, _ = load_frozen(cfg)
    module = FlowLMModule(cfg, tokenizer.vocab_size, teacher=teacher, stage1=stage1)
    module.net.load_state_dict({k: v.float() for k, v in weights.items()})
    module.net.eval()
    data = StepBatches(blocks, VALIDATION_BATCH, seed=1, length=batches)
    total = 0.0
    with torch.no_grad():
        for i in range(batches):
            generator = torch.Generator().manual_seed(i)
            total += float(module.method_loss(module.net, data[i][1], generator)[module.metric_key])
    return total / batches


def precision(run_dir: Path) -> dict:
    """Validation loss of a run's exported EMA weights in float32 and rounded to float16."""
    from flowlm.training.checkpoint import read_meta, read_weights

    model_dir = run_dir / "model"
    weights = read_weights(model_dir, read_meta(model_dir))
    fp32 = validation_loss(run_dir, weights)
    fp16 = validation_loss(run_dir, {k: v.half() if v.is_floating_point() else v for k, v in weights.items()})
    return {"val_fp32": round(fp32, 5), "val_fp16": round(fp16, 5)}


def save_chunk(run_dir: Path, state: Path, phase: str) -> dict:
    """Export a finished (or stopped) chunk into ``state/phase`` in half precision: its stages.json fields."""
    from flowlm.training.checkpoint import read_meta

    meta = read_meta(run_dir / "model")
    exported = export_half(run_dir / "model", state / phase)
    return {"steps": meta["step"], "bytes": exported["bytes"], **precision(run_dir)}


def training_command(args, state: Path, phase: str, k: int, steps: int) -> list[str]:
    out = str(Path(args.out) / f"{phase}-{k}")
    options = ["--steps", str(steps), "--out", out, "--quiet"]
    warm = [f"train.init_from={state / phase}", f"train.warmup_steps={WARM_UP_AGAIN}"] if k > 1 else []
    profile = PROFILES[args.profile]["overrides"]
    timed = [f"train.max_minutes={args.minutes[phase]}"] if phase in args.minutes else []
    phase_sets = [o.split(":", 1)[1] for o in args.set if o.startswith(f"{phase}:")]
    common_sets = [o for o in args.set if not o.startswith(tuple(f"{p}:" for p in PHASES))]
    if phase == "fmlm":  # the student copies its teacher's network and length: a common model.* set is the teacher's
        common_sets = [o for o in common_sets if not fixed_by_teacher(o.partition("=")[0].strip())]
    overrides = [f"train.seed={k - 1}", *PHASE_OVERRIDES.get(phase, []), *profile.get("all", []),
                 *profile.get(phase, []), *warm, *timed, *common_sets, *phase_sets]  # fmt: skip
    corpus = str(Path(args.out) / "corpus" / CORPUS_FILE)  # relative to the repository root, as --out is
    if phase == "fmlm":  # the teacher's data and tokenizer; its corpus path named again, for another checkout
        return flowlm("distill", "--teacher", str(state / "flm"), *options, f"data.corpus={corpus}", *overrides)
    data = ["--data", corpus, "--tokenizer", str(state / "tokenizer")]
    return flowlm("train", "--preset", "demo", "--method", phase, *data, *options, *overrides)


def corpus_stage(args) -> None:
    """Write the corpus file; record its split in state/split.json, or check it against the recorded one; learn
    the tokenizer once (kept in state/tokenizer)."""
    state = Path(args.state)
    manifest = demo_corpus.build(
        Path(args.pd_english), Path(args.out) / "corpus" / CORPUS_FILE, shakespeare=not args.without_shakespeare
    )
    recorded = state / "split.json"
    if recorded.is_file():
        before = json.loads(recorded.read_text())
        if before["sha256"] != manifest["sha256"]:
            sys.exit(
                f"the corpus differs from the one recorded in {recorded} (sha256 {manifest['sha256'][:12]} vs "
                f"{before['sha256'][:12]}): the committed tokenizer and weights were made on the recorded one"
            )
    else:
        state.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps(manifest, indent=1))
    if not (state / "tokenizer").is_dir():
        from flowlm.data import prepare_tokenizer

        corpus = str(Path(args.out) / "corpus" / CORPUS_FILE)
        prepare_tokenizer(f"bpe:{args.bpe}", corpus, cache_dir=Path(args.out) / "cache").save(state / "tokenizer")


def save_stopped(args) -> None:
    """Record the running (stopped) chunk of the first unfinished phase as done with the steps it reached."""
    state = Path(args.state)
    stages = ChunkStages(state)
    for phase, total, chunk in phase_sizes(args):
        plan = chunk_plan(stages.state, phase, total, chunk)
        if plan is None:
            continue
        k = plan[0]
        run_dir = Path(args.out) / f"{phase}-{k}"
        if not (run_dir / "model").is_dir():
            sys.exit(f"{run_dir} holds no exported model yet: nothing to save")
        entry = stages.state.setdefault(f"{phase}-{k}", {"command": "", "seconds": 0.0, "attempts": 1})
        entry.update(save_chunk(run_dir, state, phase), done=True, stopped_early=True)
        stages.save(f"{phase}-{k}")
        print(f"saved {phase}-{k} at step {entry['steps']} to {state / phase}; commit {state}")
        return
    print("every training phase is complete: nothing to save")


def phase_sizes(args) -> list[tuple[str, int, int]]:
    return [
        ("flm", args.flm_steps, args.flm_chunk),
        ("fmlm", args.fmlm_steps, args.fmlm_chunk),
        ("ar", args.ar_steps, args.ar_chunk),
    ]


def run(args) -> None:
    state, out = Path(args.state), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = ChunkStages(state)
    state.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--state", str(state), "--out", str(out), "--pd-english", str(args.pd_english), "--bpe", str(args.bpe)]
    if args.without_shakespeare:
        common.append("--without-shakespeare")
    if not (out / "corpus" / CORPUS_FILE).is_file():
        stages.state.pop("corpus", None)  # a new session: the corpus file is rebuilt (and checked)
    stages.run("corpus", [*me, "corpus", *common])
    chunks, end = 0, time.monotonic() + args.hours * 3600 if args.hours else None
    for phase, total, chunk in phase_sizes(args):
        while (plan := chunk_plan(stages.state, phase, total, chunk)) is not None:
            if args.max_chunks is not None and chunks >= args.max_chunks:
                print(f"stopping after {chunks} training chunk(s) (--max-chunks); commit {state} and rerun")
                return
            left = None if end is None else end - time.monotonic()
            if left is not None and left < PROFILES[args.profile]["min_chunk_seconds"]:
                print(f"--hours: {max(left, 0):.0f} s left, too few for a chunk; commit {state} and rerun")
                return
            k, steps, done = plan
            print(f"[{phase}-{k}] {steps} steps after {done} of {total}", flush=True)
            run_dir = out / f"{phase}-{k}"
            in_time = stages.run(
                f"{phase}-{k}",
                training_command(args, state, phase, k, steps),
                after=lambda run_dir=run_dir, phase=phase: {
                    **save_chunk(run_dir, state, phase),
                    **({"final": True, "minutes": args.minutes[phase]} if phase in args.minutes else {}),
                },
                seconds=left,
            )
            chunks += 1
            if not in_time:
                print(f"--hours: time is up; commit {state} and rerun to continue")
                return
        if args.stop_after == phase:
            return
    evaluate(args, stages, state, out)


def evaluate(args, stages: ChunkStages, state: Path, out: Path) -> None:
    """Sample and score the half-precision models that would ship, and held-out text, as wikitext2.py does."""
    n, offline = ["--num-samples", str(args.num_samples), "--seed", "0"], ["--judge", args.judge, "--quiet"]
    models = {"flm": STEPS, "fmlm": FMLM_STEPS, "ar": None}
    labels = {"flm": "FLM", "fmlm": "FMLM", "ar": "AR", "data": "held-out works"}
    for name, steps in models.items():
        step_option = ["--steps", steps] if steps else []
        report = ["--out", str(out / "eval" / name)]
        stages.run(f"eval-{name}", flowlm("eval", str(state / name), *step_option, *n, *offline, *report))
    data = ["--data", str(out / "corpus" / CORPUS_FILE)]
    stages.run(
        "reference", flowlm("reference", str(state / "flm"), *data, *n, *offline, "--out", str(out / "eval" / "data"))
    )
    results = [str(out / "eval" / name / "results.json") for name in labels]
    names = ["--labels", ",".join(labels.values())]
    stages.run("compare", flowlm("compare", *results, *names, "--out", str(out / "report")))


def parse_minutes(parser: argparse.ArgumentParser, given: list[str]) -> dict[str, float]:
    minutes = {}
    for item in given:
        phase, _, value = item.partition("=")
        try:
            minutes[phase] = float(value)
        except ValueError:
            minutes[phase] = -1.0
        if phase not in PHASES or minutes[phase] <= 0:
            parser.error(f"--minutes {item}: give PHASE=M with PHASE one of {', '.join(PHASES)} and M > 0 minutes")
    return minutes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", default="run", choices=("run", "corpus", "save"))
    parser.add_argument("--pd-english", default=str(HERE.parents[1] / "shared" / "data" / "pd-english"))
    parser.add_argument("--out", default="runs/demo", help="run folders, corpus file, evaluation (not committed)")
    parser.add_argument("--state", default=str(STATE), help="committed products: tokenizer, weights, stages.json")
    parser.add_argument("--flm-steps", type=int, default=FLM_STEPS, help="FLM optimizer steps in all")
    parser.add_argument("--flm-chunk", type=int, default=FLM_CHUNK, help="FLM steps per chunk")
    parser.add_argument("--fmlm-steps", type=int, default=FMLM_STEPS_TOTAL, help="PSD steps in all")
    parser.add_argument("--fmlm-chunk", type=int, default=FMLM_CHUNK, help="PSD steps per chunk")
    parser.add_argument("--ar-steps", type=int, default=AR_STEPS, help="AR steps in all")
    parser.add_argument("--ar-chunk", type=int, default=AR_CHUNK, help="AR steps per chunk")
    parser.add_argument("--max-chunks", type=int, help="train at most this many chunks in this invocation")
    parser.add_argument(
        "--hours",
        type=float,
        help="time budget of this invocation: a chunk still running then is stopped and its last checkpoint saved",
    )
    parser.add_argument("--stop-after", choices=PHASES, help="stop once this training phase is complete")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--judge", default="smollm2-offline")
    parser.add_argument("--bpe", type=int, default=8192, help="BPE size, if demo_state holds no tokenizer yet")
    parser.add_argument("--without-shakespeare", action="store_true", help="leave out the embedded works (tests)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="[PHASE:]KEY=VALUE",
        help="extra training override, for every phase or (flm:, fmlm:, ar:) for one",
    )  # fmt: skip
    parser.add_argument(
        "--profile", choices=tuple(PROFILES), default="cpu",
        help="cpu: chunks of fixed steps across sessions; gpu: each phase in one chunk ending at its --minutes",
    )  # fmt: skip
    parser.add_argument(
        "--minutes", action="append", default=[], metavar="PHASE=M",
        help="train PHASE (flm, fmlm, ar) in one chunk that stops after M minutes (the gpu profile sets them)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.minutes = {**PROFILES[args.profile]["minutes"], **parse_minutes(parser, args.minutes)}
    if args.profile == "gpu":  # the step counts only bound the timed chunks
        for phase in PHASES:
            setattr(args, f"{phase}_steps", PROFILES["gpu"]["steps"])
            setattr(args, f"{phase}_chunk", PROFILES["gpu"]["steps"])
    if args.action == "corpus":
        corpus_stage(args)
    elif args.action == "save":
        save_stopped(args)
    else:
        if not Path(args.pd_english).is_dir():
            sys.exit(f"no corpus at {args.pd_english}: pass --pd-english path/to/shared/data/pd-english")
        run(args)


if __name__ == "__main__":
    main()
