"""``flowlm eval`` and ``flowlm score``: generate, time, score, summarize; sharded over ranks when
``torch.distributed`` is initialized.

:func:`evaluate` samples a model at each step count, batch by batch (batch ``j`` is seeded from
``(seed, j)``, see :func:`flowlm.api.batch_seed`, so the samples do not depend on how batches are spread
over ranks), times the sampling, scores every batch with the judge, gathers everything on every rank and
lets rank 0 write the sample files and the report. :func:`score_files` rescores saved sample files with
another judge and writes the same report, without resampling.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowlm.errors import ConfigError, DataError
from flowlm.eval import frontier as frontiers_
from flowlm.eval import plots, report
from flowlm.eval.distributed import barrier, gather, my_batches, rank_and_world
from flowlm.eval.metrics import (
    GenPPLResult,
    decode_for_judge,
    distinct_n,
    mean_unigram_entropy,
    self_bleu,
    split_sample,
)
from flowlm.eval.samples import Chunk, SampleSet, file_name, read_samples, sha256_of, write_samples
from flowlm.methods import registry
from flowlm.methods.condition import Condition

DIVERSITY_N = 4

ENTROPY_DEFINITION = (
    "mean over samples of the unigram entropy (nats) of each sample's whole generated block of ids "
    "(BOS, EOS and ids after the first EOS included, as MDLM / DUO); data entropy: LM1B 4.31, OWT 5.44 (SPEC §6)"
)
DIVERSITY_DEFINITION = (
    f"distinct-{DIVERSITY_N}: distinct {DIVERSITY_N}-grams / all {DIVERSITY_N}-grams pooled over the samples' whole "
    f"id blocks (1 = nothing repeats); self-BLEU-{DIVERSITY_N}: mean BLEU-{DIVERSITY_N} of each sample's ids "
    "against all other samples (clipped precision, NLTK method1 smoothing, brevity penalty; lower = more diverse)"
)
INTERVAL_DEFINITION = (
    "percentile bootstrap over samples (2,000 resamples of the whole sample set with replacement, numpy seed 0, "
    "Gen PPL recomputed token-weighted each time): how much Gen PPL moves with another draw of as many samples "
    "from the same model, under the same judge; a difference inside it is not evidence"
)
CONDITIONAL_ENTROPY_DEFINITION = (
    "mean over samples of the unigram entropy (nats) of the ids at each sample's generated positions (the given "
    "positions left out; the data line: the real ids at the same positions)"
)
PROMPT_DEFINITION = (
    "conditional: held-out blocks of the corpus, the first {k} ids of each (BOS included) given, the rest generated; "
    "the judge scores the continuation's text given the prompt's text (the prompt's judge tokens sit before it in "
    "the windows and are not scored; SPEC §6's EOS rule applies to the continuation); the data line scores the "
    "real continuations the same way"
)
INFILL_DEFINITION = (
    "conditional: held-out blocks of the corpus, {n} of the {length} positions of each given (a uniformly random "
    "subset per block, torch seed {seed}), the others generated; the judge scores the whole infilled block (given "
    "and generated tokens alike: a causal judge cannot condition a position on the text after it), so the gap to "
    "the data line, which scores the real blocks the same way, comes from the generated positions"
)
MIDDLE_DEFINITION = (
    "conditional: held-out blocks of the corpus, positions {start} to {end} of the {length} (the middle {share:g}) "
    "generated and the others given; the judge scores the whole infilled block (given and generated tokens alike: a "
    "causal judge cannot condition a position on the text after it), so the gap to the data line, which scores the "
    "real blocks the same way, comes from the middle and from how the given end follows it"
)
TIMING_DEFINITION = (
    "wall-clock seconds (time.perf_counter) of the sampling calls, which return the ids "
    "on the CPU so device work is finished, summed over ranks and divided by the number of samples; each rank "
    "first generates one batch untimed (warm-up); decoding and scoring are not timed"
)


# ----------------------------------------------------------------------------------------- options


def parse_steps(text: str | Sequence[int]) -> list[int]:
    """``"1,2,4"`` (or a list) -> ``[1, 2, 4]``: distinct whole numbers >= 1, kept in the given order."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for part in parts:
        try:
            value = int(str(part).strip())
        except ValueError:
            raise ConfigError(f"--steps {text!r}: {part!r} is not a whole number; use e.g. --steps 1,2,4,8") from None
        if value < 1:
            raise ConfigError(f"--steps {text!r}: step counts must be >= 1")
        if value not in out:
            out.append(value)
    if not out:
        raise ConfigError("--steps is empty: use e.g. --steps 1,2,4,8")
    return out


def model_label(model: Any) -> str:
    """``<method> <run name>``: how reports and plots name a model."""
    path = Path(model.path)
    name = path.parent.name if path.name == "model" else path.name
    return f"{model.method} {name}"


def hardware(device: Any) -> dict:
    """Where the numbers were measured."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    _, world = rank_and_world()
    return {
        "device": str(device),
        "device_name": name,
        "torch_threads": torch.get_num_threads(),
        "world_size": world,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def option_provenance(model: Any, given: dict) -> dict:
    """The sampler options of a sampling run as provenance records them: every option any registered method
    has (None where this model's method lacks it), this method's defaults filled in, checked."""
    from flowlm.api import sampler_options

    defaults = (getattr(model, "meta", None) or {}).get("sampler_defaults")
    resolved = sampler_options(registry.of_model(model), defaults, **given)
    return {name: resolved.get(name) for name in registry.sampler_options()}


def sampling_provenance(model: Any, *, seed: int, options: dict, seq_len: int, batch_size: int) -> dict:
    """Provenance of sampling ``model`` with the given (unresolved) sampler ``options``."""
    from flowlm.training.checkpoint import provenance

    return provenance(
        checkpoint=str(model.path),
        weights_sha256=model.meta.get("weights_sha256"),
        checkpoint_step=model.meta.get("step"),
        label=model_label(model),
        method=model.method,
        sampler=model.sampler,
        **option_provenance(model, options),
        seed=seed,
        seq_len=seq_len,
        batch_size=batch_size,
        precision=str(next(model.net.parameters()).dtype).removeprefix("torch."),
        tokenizer=model.meta.get("tokenizer"),
        hardware=hardware(model.device),
    )


def check_counts(num_samples: Any, batch_size: Any) -> None:
    """Both must be whole numbers >= 1 (``--num-samples`` / ``--batch-size`` of eval and reference)."""
    for name, value in (("--num-samples", num_samples), ("--batch-size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ConfigError(f"{name} {value!r}: use a whole number >= 1")


# ------------------------------------------------------------------------------------------- stages


def generate_chunks(
    model: Any,
    steps: int | None,
    *,
    num_samples: int,
    seed: int,
    batch_size: int,
    seq_len: int | None = None,
    options: dict | None = None,
    progress: bool = True,
    condition: Conditioning | None = None,
) -> tuple[list[Chunk], float]:
    """This rank's batches of one sampling request (ids, judge texts, ended flags) and the wall-clock
    seconds they took, after one untimed warm-up batch (see :data:`TIMING_DEFINITION`). With ``condition`` the
    samples hold its known positions and are decoded as :meth:`Conditioning.chunk` does."""
    rank, _ = rank_and_world()
    n_batches = math.ceil(num_samples / batch_size)
    mine = my_batches(n_batches)
    kwargs = dict(seed=seed, seq_len=seq_len, batch_size=batch_size, **(options or {}))
    if condition is not None:
        kwargs.update(known=condition.blocks, known_mask=condition.mask)
    if mine:
        model.sample_tokens(num_samples, steps, batches=[mine[0]], **kwargs)
    chunks, seconds = [], 0.0
    label = f"sampling, {steps} steps" if steps is not None else f"sampling ({model.method})"
    for j in tqdm(mine, desc=label, unit="batch", disable=not progress or rank != 0):
        start = time.perf_counter()
        tokens = model.sample_tokens(num_samples, steps, batches=[j], **kwargs)
        seconds += time.perf_counter() - start
        if condition is not None:
            chunks.append(condition.chunk(j, tokens, model.tokenizer))
            continue
        texts, ended = decode_for_judge(tokens, model.tokenizer)
        chunks.append(Chunk(j, tokens.tolist(), texts, ended))
    return chunks, seconds


class Conditioning:
    """The condition of a conditional evaluation (:func:`conditioning`): held-out ``blocks`` [N, L], the ``mask``
    [N, L] of their given positions (the first ``prompt_tokens``, or a random ``infill_frac`` of each block), the
    batch size that cuts them into batches, and how reports describe it."""

    def __init__(self, blocks: torch.Tensor, mask: torch.Tensor, batch_size: int, description: dict, definition: str):
        self.blocks, self.mask, self.batch_size = blocks, mask, batch_size
        self.description, self.definition = description, definition

    @property
    def prompt(self) -> bool:
        return self.description["kind"] == "prompt"

    def real(self, j: int) -> torch.Tensor:
        """The real blocks of batch ``j`` [n, L]."""
        return self.blocks[j * self.batch_size : (j + 1) * self.batch_size]

    def chunk(self, j: int, tokens: torch.Tensor, tokenizer: Any) -> Chunk:
        """Batch ``j`` of ids [n, L] (samples, or the real blocks) decoded for the judge: with a prompt, ``contexts``
        are the prompts' texts and ``texts`` the continuations' (cut at their first EOS); when infilling, the whole
        blocks (:func:`decode_for_judge`). ``known`` lists each row's given positions."""
        rows = tokens.tolist()
        mask = self.mask[j * self.batch_size : j * self.batch_size + len(rows)]
        known = [m.nonzero().flatten().tolist() for m in mask]
        if not self.prompt:
            texts, ended = decode_for_judge(tokens, tokenizer)
            return Chunk(j, rows, texts, ended, known=known)
        k = int(self.description["prompt_tokens"])
        contexts, texts, ended = [], [], []
        for ids in rows:
            body, end = split_sample(ids[k:], bos_id=None, eos_id=tokenizer.eos_id)
            context = tokenizer.decode(ids[:k], skip_special=True)
            whole = tokenizer.decode(ids[:k] + body, skip_special=True)
            contexts.append(context)
            texts.append(whole[len(context) :] if whole.startswith(context) else tokenizer.decode(body, True))
            ended.append(end)
        return Chunk(j, rows, texts, ended, contexts=contexts, known=known)


def check_share(value: Any, option: str, purpose: str, length: int | None = None) -> None:
    """``value`` is a finite share in (0, 1); with the blocks' ``length`` known, ``round(value · length)`` keeps and
    generates at least one position."""
    share = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1  # NaN fails too
    if not share or (length is not None and not 1 <= round(value * length) < length):
        positions = "positions" if length is None else f"{length} positions"
        raise ConfigError(
            f"{option} {value!r}: give the share of each block's {positions} {purpose}, in (0, 1), keeping at "
            f"least one position and generating at least one (e.g. 0.5)"
        )


def check_condition(
    prompt_tokens: Any = None, infill_frac: Any = None, infill_middle: Any = None, length: int | None = None
) -> list[str]:
    """The options of a conditional evaluation (:func:`conditioning`) checked: at most one given, each in its range,
    against blocks of ``length`` tokens when known (None: before the model, which fixes it, is loaded). Returns the
    options given."""
    given_options = {"--prompt-tokens": prompt_tokens, "--infill-frac": infill_frac, "--infill-middle": infill_middle}
    named = [name for name, value in given_options.items() if value is not None]
    if len(named) > 1:
        raise ConfigError(f"{' and '.join(named)} are different conditions: give one of them")
    if prompt_tokens is not None:
        whole = isinstance(prompt_tokens, int | float) and not isinstance(prompt_tokens, bool)
        if not (whole and math.isfinite(prompt_tokens) and int(prompt_tokens) == prompt_tokens and prompt_tokens >= 1
                and (length is None or prompt_tokens < length)):  # fmt: skip
            upto = "" if length is None else f" to {length - 1}"
            why = "less than the model's length" if length is None else f"the model's blocks hold {length} tokens"
            raise ConfigError(
                f"--prompt-tokens {prompt_tokens!r}: give a whole number from 1{upto} ({why} and at least one must "
                "be generated)"
            )
    if infill_middle is not None:
        check_share(infill_middle, "--infill-middle", "to generate in its middle", length)
    if infill_frac is not None:
        check_share(infill_frac, "--infill-frac", "to keep", length)
    return named


def conditioning(
    blocks: torch.Tensor, batch_size: int, *, prompt_tokens: int | None = None, infill_frac: float | None = None,
    infill_middle: float | None = None, seed: int = 0,
) -> Conditioning | None:  # fmt: skip
    """The condition of ``flowlm eval --prompt-tokens k`` (the first k ids of each block given), ``--infill-frac f``
    (``round(f·L)`` positions of each block given, a uniformly random subset per block drawn from torch seed
    ``seed``) or ``--infill-middle f`` (the middle ``round(f·L)`` positions generated, from ``(L − round(f·L)) // 2``
    on, the others given), on held-out ``blocks`` [N, L]; None when none is given."""
    count, length = blocks.shape
    if not check_condition(prompt_tokens, infill_frac, infill_middle, length):
        return None
    mask = torch.zeros(count, length, dtype=torch.bool)
    if infill_middle is not None:
        generated = round(infill_middle * length)
        start, end = (length - generated) // 2, (length - generated) // 2 + generated
        mask[:] = True
        mask[:, start:end] = False
        description = {"kind": "infill", "infill_middle": float(infill_middle), "generated_span": [start, end]}
        definition = MIDDLE_DEFINITION.format(start=start, end=end - 1, length=length, share=infill_middle)
        return Conditioning(blocks, mask, batch_size, description, definition)
    if prompt_tokens is not None:
        mask[:, : int(prompt_tokens)] = True
        description = {"kind": "prompt", "prompt_tokens": int(prompt_tokens)}
        return Conditioning(blocks, mask, batch_size, description, PROMPT_DEFINITION.format(k=int(prompt_tokens)))
    given = round(infill_frac * length)
    order = torch.rand(count, length, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
    mask.scatter_(1, order[:, :given], True)
    description = {"kind": "infill", "infill_frac": float(infill_frac), "given_per_block": given, "mask_seed": seed}
    return Conditioning(blocks, mask, batch_size, description,
                        INFILL_DEFINITION.format(n=given, length=length, seed=seed))  # fmt: skip


def score_chunks(judge: Any, chunks: Sequence[Chunk], batch_size: int = 8, progress: bool = True) -> None:
    """Fill ``nll`` and ``counts`` of each chunk (per-sample judge NLL sums and token counts; a chunk with
    ``contexts`` is scored given them)."""
    rank, _ = rank_and_world()
    for chunk in tqdm(chunks, desc="scoring", unit="batch", disable=not progress or rank != 0):
        given = {} if chunk.contexts is None else {"contexts": chunk.contexts}
        chunk.nll, chunk.counts = judge.text_nll(chunk.texts, batch_size=batch_size, ended=chunk.ended, **given)


def featurize_chunks(judge: Any, chunks: Sequence[Chunk], batch_size: int = 8) -> None:
    """Fill ``features`` of each chunk: the judge's feature row of each text (given its context), for MAUVE."""
    for chunk in chunks:
        chunk.features = judge.features(chunk.texts, chunk.contexts, batch_size=batch_size).tolist()


def features_of(sample_set: SampleSet) -> torch.Tensor:
    return torch.tensor([row for c in sample_set.chunks for row in (c.features or [])], dtype=torch.float64)


def gather_chunks(chunks: list[Chunk], n_batches: int) -> list[Chunk]:
    """Every rank's chunks, on every rank, in batch order; checks that each batch arrived exactly once."""
    everything = sorted((c for part in gather(chunks) for c in part), key=lambda c: c.batch)
    if [c.batch for c in everything] != list(range(n_batches)):
        raise DataError(f"gathered batches {[c.batch for c in everything]}, expected 0 ... {n_batches - 1}")
    return everything


def judge_info(judge: Any) -> dict:
    return {
        "name": judge.name,
        "description": judge.description,
        "fingerprint": judge.fingerprint,
        "definition": judge.definition,
    }


def summarize(sample_set: SampleSet, judge: dict, out: Path, mauve: float | None = None) -> dict:
    """One row of the report: Gen PPL (token-weighted over every sample), entropy (of the generated positions when
    some were given), diversity, timing, and ``mauve`` when given; the sample file is named relative to the report
    folder ``out``."""
    nll = [x for c in sample_set.chunks for x in c.nll]
    counts = [x for c in sample_set.chunks for x in c.counts]
    tokens = sample_set.tokens
    if len(tokens) != sample_set.header["num_samples"] or len(nll) != len(tokens):
        raise DataError(f"{len(tokens)} samples and {len(nll)} scores for {sample_set.header['num_samples']} samples")
    result = GenPPLResult.from_samples(
        nll, counts, judge=judge["description"], definition=judge["definition"], judge_fingerprint=judge["fingerprint"]
    )
    long_enough = any(len(t) >= DIVERSITY_N for t in tokens)
    timing = sample_set.header.get("timing", {})
    return {
        "steps": sample_set.steps,
        "num_samples": result.num_samples,
        "judge": result.judge,
        "gen_ppl": result.gen_ppl,
        "gen_ppl_ci95": list(result.bootstrap_interval()),
        "mean_nll": result.mean_nll,
        "total_nll": result.total_nll,
        "total_tokens": result.total_tokens,
        "entropy": mean_unigram_entropy([ids for c in sample_set.chunks for ids in c.generated()]),
        "mauve": mauve,
        f"distinct_{DIVERSITY_N}": distinct_n(tokens, DIVERSITY_N) if long_enough else None,
        f"self_bleu_{DIVERSITY_N}": self_bleu(tokens, max_n=DIVERSITY_N) if len(tokens) >= 2 else None,
        "seconds_per_sample": timing.get("seconds_per_sample"),
        "wall_seconds": timing.get("wall_seconds"),
        "samples_file": os.path.relpath(sample_set.path, out) if sample_set.path else None,
        "samples_sha256": sha256_of(sample_set.path) if sample_set.path else None,
        "sample_nll": list(result.sample_nll),
        "sample_tokens": list(result.sample_tokens),
    }


def build_results(
    sample_sets: Sequence[SampleSet],
    judge: dict,
    sampling: dict,
    scoring_device: Any,
    out: Path,
    condition: str | None = None,
    mauve: Sequence[float | None] | None = None,
) -> dict:
    """The results dict of ``sample_sets``; a conditional evaluation states its ``condition`` (the definition of
    :class:`Conditioning`) in the Gen PPL definition, scores the entropy of the generated positions and adds MAUVE
    (``mauve``: one score per sample set, None where not computed)."""
    from flowlm.eval.mauve import DEFINITION as MAUVE_DEFINITION
    from flowlm.training.checkpoint import provenance

    definitions = {
        "gen_ppl": judge["definition"],
        "gen_ppl_ci95": INTERVAL_DEFINITION,
        "entropy": ENTROPY_DEFINITION,
        "diversity": DIVERSITY_DEFINITION,
        "seconds_per_sample": TIMING_DEFINITION,
    }
    if condition is not None:
        definitions.update(
            gen_ppl=f"{judge['definition']}; {condition}",
            entropy=CONDITIONAL_ENTROPY_DEFINITION,
            mauve=MAUVE_DEFINITION,
        )
    scores = list(mauve) if mauve is not None else [None] * len(sample_sets)
    return {
        "format": report.RESULTS_FORMAT,
        "label": sampling.get("label", sampling.get("method", "model")),
        "judge": judge,
        "definitions": definitions,
        "provenance": {"sampling": sampling, "scoring": provenance(hardware=hardware(scoring_device))},
        "results": [summarize(s, judge, out, m) for s, m in zip(sample_sets, scores, strict=True)],
    }


def write_outputs(results: dict, out: Path) -> dict:
    """``results.json``, ``results.md`` and the two plots in ``out`` (rank 0 only); returns ``results``."""
    rank, _ = rank_and_world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "results.json", results)
        (out / "results.md").write_text(report.results_markdown(results), encoding="utf-8")
        plots.plot_results([results], out)
    barrier()  # the files exist for every rank once this returns
    return results


# ----------------------------------------------------------------------------------------- commands


def evaluate(
    model: Any,
    judge: Any,
    steps: Sequence[int],
    out: str | Path,
    *,
    num_samples: int = 256,
    seed: int = 0,
    batch_size: int = 64,
    judge_batch_size: int = 8,
    seq_len: int | None = None,
    gamma: float | None = None,
    guidance: float | None = None,
    progress: bool = True,
    prompt_tokens: int | None = None,
    infill_frac: float | None = None,
    infill_middle: float | None = None,
    data: str | None = None,
    split: str = "validation",
    cache_dir: str | Path | None = None,
    **options: Any,
) -> dict:
    """Sample ``model`` at each step count, time, score with ``judge``, write samples and the report to ``out``.

    Runs sharded when ``torch.distributed`` is initialized (every rank calls it with the same
    arguments; rank 0 writes). A method without steps (``takes_steps`` false, e.g. AR) is evaluated once with
    ``steps=None`` whatever ``steps`` says. ``gamma``, ``guidance`` and other ``options`` go to the sampler
    (None: not given). Returns the results dict written to ``results.json``.

    Conditional evaluation: with ``prompt_tokens`` k (or ``infill_frac`` f, or ``infill_middle`` f), ``num_samples``
    held-out blocks are drawn from ``split`` of the model's corpus (or ``data``) as :func:`reference` draws them, their
    first k ids (or a random share f of their positions, or all but their middle share f: :func:`conditioning`) are
    given and the rest is generated. Gen PPL is then the judge's
    NLL of the continuation given the prompt's text (infilling: of the whole block), entropy that of the generated
    positions, and each row gets MAUVE between the generated and the real texts' judge features
    (:mod:`flowlm.eval.mauve`). The real blocks, decoded and scored the same way, are written as the data line to
    ``out/data`` (results.json, samples_data.jsonl), for ``flowlm compare``.
    """
    plots.require_matplotlib()
    check_counts(num_samples, batch_size)
    options = {k: v for k, v in dict(options, gamma=gamma, guidance=guidance).items() if v is not None}
    step_list: list[int | None] = parse_steps(steps) if registry.of_model(model).takes_steps else [None]
    seq_len = seq_len or model.seq_len
    out = Path(out)
    rank, world = rank_and_world()
    sampling = sampling_provenance(model, seed=seed, options=options, seq_len=seq_len, batch_size=batch_size)
    n_batches = math.ceil(num_samples / batch_size)
    condition = None
    if check_condition(prompt_tokens, infill_frac, infill_middle, model.seq_len):
        if seq_len != model.seq_len:
            raise ConfigError(f"--seq-len {seq_len}: a conditional evaluation samples whole blocks of {model.seq_len}")
        blocks, corpus = draw_blocks(model, data, split, num_samples, seed, cache_dir, progress, "--num-samples")
        condition = conditioning(blocks, batch_size, prompt_tokens=prompt_tokens, infill_frac=infill_frac,
                                 infill_middle=infill_middle, seed=seed)  # fmt: skip
        registry.of_model(model).check_condition(Condition(condition.blocks, condition.mask))
        sampling["condition"] = {**condition.description, "corpus": corpus, "split": split,
                                 "definition": condition.definition}  # fmt: skip
        real = real_line(model, judge, condition, sampling, n_batches, judge_batch_size, progress)
    sample_sets = []
    for steps_k in step_list:
        chunks, seconds = generate_chunks(
            model, steps_k, num_samples=num_samples, seed=seed, batch_size=batch_size, seq_len=seq_len,
            options=options, progress=progress, condition=condition,
        )  # fmt: skip
        rank_seconds = gather(seconds)
        header = {
            "steps": steps_k,
            "num_samples": num_samples,
            "batch_size": batch_size,
            "timing": {
                "seconds_per_sample": sum(rank_seconds) / num_samples,
                "wall_seconds": max(rank_seconds),
                "rank_seconds": rank_seconds,
                "warmup_batches_per_rank": 1,
            },
            "provenance": sampling,
        }
        sample_set = SampleSet(header, gather_chunks(chunks, n_batches))
        if rank == 0:  # the samples are on disk before the judge runs: a failed scoring loses none
            write_samples(out / file_name(steps_k, model.method), sample_set)
        score_chunks(judge, chunks, batch_size=judge_batch_size, progress=progress)
        if condition is not None:
            featurize_chunks(judge, chunks, judge_batch_size)
        sample_set.chunks = gather_chunks(chunks, n_batches)
        sample_sets.append(sample_set)
    if condition is None:
        return write_outputs(build_results(sample_sets, judge_info(judge), sampling, judge.device, out), out)
    from flowlm.eval.mauve import mauve

    real_features = features_of(real)
    scores = [mauve(real_features, features_of(s)).score for s in sample_sets]
    data_sampling = {**sampling, "label": f"data ({split})", "method": "data"}
    if rank == 0:
        write_samples(out / "data" / file_name(None, "data"), real)
    data_results = build_results([real], judge_info(judge), data_sampling, judge.device, out / "data",
                                 condition.definition)  # fmt: skip
    write_outputs(data_results, out / "data")
    results = build_results(sample_sets, judge_info(judge), sampling, judge.device, out, condition.definition, scores)
    return write_outputs(results, out)


def evaluate_frontier(model: Any, judge: Any, steps, out: str | Path, temperatures: Sequence[float],
                      **kwargs: Any) -> dict:  # fmt: skip
    """:func:`evaluate` at each temperature (into ``out/temperature-<T>``), then the frontier of
    those evaluations written to ``out`` (``frontier.json``, ``frontier.md``, ``frontier.png``); returns it.
    ``kwargs`` go to ``evaluate`` (a ``temperature`` among them is refused: the frontier sets it)."""
    if kwargs.get("temperature") is not None:
        raise ConfigError("--temperature with --temperatures: the frontier sets the temperature; give one of them")
    out = Path(out)
    paths = []
    for temperature in frontiers_.parse_temperatures(temperatures):
        folder = frontiers_.folder_of(out, temperature)
        evaluate(model, judge, steps, folder, temperature=temperature, **kwargs)
        paths.append(folder / "results.json")
    if rank_and_world()[0] != 0:  # under torchrun rank 0 wrote the evaluations and writes the frontier
        return {}
    frontier = frontiers_.build_frontier(paths, out)
    frontiers_.write_frontier(frontier, out)
    return frontier


def real_line(model: Any, judge: Any, condition: Conditioning, sampling: dict, n_batches: int, judge_batch_size: int,
              progress: bool) -> SampleSet:  # fmt: skip
    """The real blocks of a conditional evaluation as a scored sample set with features (the data line)."""
    chunks = [condition.chunk(j, condition.real(j), model.tokenizer) for j in my_batches(n_batches)]
    score_chunks(judge, chunks, batch_size=judge_batch_size, progress=progress)
    featurize_chunks(judge, chunks, judge_batch_size)
    header = {"steps": None, "num_samples": len(condition.blocks), "batch_size": condition.batch_size,
              "provenance": {**sampling, "label": "data", "method": "data"}}  # fmt: skip
    return SampleSet(header, gather_chunks(chunks, n_batches))


def draw_blocks(model: Any, data: str | None, split: str, count: int, seed: int, cache_dir, progress: bool,
                count_option: str) -> tuple[torch.Tensor, str]:  # fmt: skip
    """``count`` blocks [count, L] drawn (seeded, without replacement) from ``split`` of ``data`` or of the model's
    own corpus, cut with its tokenizer and length; returns ``(blocks, corpus)``. ``count_option`` names the
    option in the error for a split that holds too few blocks."""
    from flowlm.data import prepare_blocks

    corpus = data or model.meta.get("run", {}).get("data", {}).get("corpus")
    if not corpus:
        raise ConfigError(f"{model.path} does not record its training corpus: pass --data (a corpus spec or file)")
    if not data and corpus.endswith(".txt") and not Path(corpus).exists():
        raise ConfigError(
            f"{model.path} was trained on {corpus}, which is not on this machine (a shipped model's corpus is not "
            "shipped with it): pass --data (a corpus spec or text file) to draw the blocks from"
        )
    blocks = prepare_blocks(corpus, model.tokenizer, model.seq_len, split, cache_dir, progress=progress)
    if len(blocks) < count:
        raise ConfigError(
            f"the {split} split of {corpus} holds {len(blocks)} blocks of {model.seq_len} tokens, fewer than "
            f"{count_option} {count}: ask for at most {len(blocks)}"
        )
    picks = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return torch.stack([blocks[i] for i in picks]), str(corpus)


def reference(
    model: Any,
    judge: Any,
    out: str | Path,
    *,
    data: str | None = None,
    split: str = "validation",
    num_samples: int = 256,
    seed: int = 0,
    batch_size: int = 64,
    judge_batch_size: int = 8,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Score real text as a reference row: ``num_samples`` blocks drawn at random (seeded) from ``split`` of
    the model's own corpus (or ``data``), cut with the model's tokenizer and length and decoded for the judge
    exactly as samples are (SPEC §6 EOS rule). Writes ``samples_data.jsonl`` and the usual report to ``out``;
    the row has no step count and no timing, so ``flowlm compare`` draws it as a horizontal line.

    Raises:
        ConfigError: no corpus is known (the model does not record one and ``data`` is not given), or the
            split holds fewer blocks than ``num_samples``.
    """
    from flowlm.training.checkpoint import provenance

    plots.require_matplotlib()
    check_counts(num_samples, batch_size)
    blocks, corpus = draw_blocks(model, data, split, num_samples, seed, cache_dir, progress, "--num-samples")
    n_batches = math.ceil(num_samples / batch_size)
    chunks = []
    for j in my_batches(n_batches):
        ids = blocks[j * batch_size : (j + 1) * batch_size]
        texts, ended = decode_for_judge(ids, model.tokenizer)
        chunks.append(Chunk(j, ids.tolist(), texts, ended))
    score_chunks(judge, chunks, batch_size=judge_batch_size, progress=progress)
    sampling = provenance(
        checkpoint=str(model.path),
        label=f"data ({split})",
        method="data",
        corpus=str(corpus),
        split=split,
        seed=seed,
        seq_len=model.seq_len,
        batch_size=batch_size,
        tokenizer=model.meta.get("tokenizer"),
        hardware=hardware(model.device),
    )
    header = {"steps": None, "num_samples": num_samples, "batch_size": batch_size, "provenance": sampling}
    sample_set = SampleSet(header, gather_chunks(chunks, n_batches))
    out = Path(out)
    if rank_and_world()[0] == 0:
        write_samples(out / file_name(None, "data"), sample_set)
    return write_outputs(build_results([sample_set], judge_info(judge), sampling, judge.device, out), out)


def load_sample_files(paths: Sequence[str | Path]) -> list[SampleSet]:
    """Read sample files written by :func:`evaluate`, checking that they come from one model and sampling
    setup (e.g. the step counts of one ``flowlm eval`` run): before any judge is loaded."""
    if not paths:
        raise ConfigError("flowlm score needs at least one samples_*.jsonl file")
    sample_sets = [read_samples(p) for p in paths]
    first = sample_sets[0]
    for s in sample_sets[1:]:
        if _comparable(s.header["provenance"]) != _comparable(first.header["provenance"]):
            raise ConfigError(
                f"{s.path} and {first.path} were sampled from different models or settings: "
                "score them with separate flowlm score commands, then merge with flowlm compare"
            )
    return sample_sets


def score_files(
    samples: Sequence[str | Path | SampleSet],
    judge: Any,
    out: str | Path,
    *,
    judge_batch_size: int = 8,
    progress: bool = True,
    real: str | Path | SampleSet | None = None,
) -> dict:
    """Rescore sample files written by :func:`evaluate` (paths, or :func:`load_sample_files` output) with
    ``judge``; writes the same outputs as :func:`evaluate`, without resampling. The files must come from
    one model and sampling setup. Sharded like :func:`evaluate` when ``torch.distributed`` is initialized.

    Conditional samples are scored given their prompts. With ``real``, the data line of the same conditional
    evaluation (``<eval out>/data/samples_data.jsonl``), the real texts are rescored too (written to ``out/data``)
    and every row gets MAUVE between its texts and the real ones under this judge's features, as :func:`evaluate`
    computes it."""
    plots.require_matplotlib()
    if all(isinstance(s, SampleSet) for s in samples) and samples:
        sample_sets = list(samples)
    else:
        sample_sets = load_sample_files(samples)
    sample_sets.sort(key=lambda s: (s.steps is None, s.steps or 0))  # rows by step count, whatever the file order
    sampling = sample_sets[0].header["provenance"]
    real_set = None if real is None else real if isinstance(real, SampleSet) else read_samples(real)
    if real_set is not None:
        check_real_line(real_set, sample_sets[0])
    for s in [*sample_sets, *([real_set] if real_set is not None else [])]:
        mine = set(my_batches(len(s.chunks)))
        local = [c for c in s.chunks if c.batch in mine]
        score_chunks(judge, local, batch_size=judge_batch_size, progress=progress)
        if real_set is not None:
            featurize_chunks(judge, local, judge_batch_size)
        s.chunks = gather_chunks(local, len(s.chunks))
    out = Path(out)
    condition = (sampling.get("condition") or {}).get("definition")  # rescored given their prompts
    scores = None
    if real_set is not None:
        from flowlm.eval.mauve import mauve

        real_features = features_of(real_set)
        scores = [mauve(real_features, features_of(s)).score for s in sample_sets]
        real_sampling = real_set.header["provenance"]
        write_outputs(build_results([real_set], judge_info(judge), real_sampling, judge.device, out / "data",
                                    condition), out / "data")  # fmt: skip
    results = build_results(sample_sets, judge_info(judge), sampling, judge.device, out, condition, scores)
    return write_outputs(results, out)


def check_real_line(real: SampleSet, first: SampleSet) -> None:
    """``real`` must be the data line of the conditional evaluation that wrote the sample set ``first``."""
    sampling = first.header["provenance"]
    if sampling.get("condition") is None:
        raise ConfigError(
            "--real gives the real texts of a conditional evaluation, for MAUVE; these samples are unconditional "
            "(flowlm eval without --prompt-tokens / --infill-frac / --infill-middle): drop --real"
        )
    given = {k: v for k, v in _comparable(real.header.get("provenance", {})).items() if k not in ("label", "method")}
    wanted = {k: v for k, v in _comparable(sampling).items() if k not in ("label", "method")}
    if real.header.get("provenance", {}).get("method") != "data" or given != wanted:
        raise ConfigError(
            f"{real.path}: not the data line of the evaluation that wrote these samples (its model, condition or "
            "seed differ): pass the samples_data.jsonl in the data/ folder of the same flowlm eval --out"
        )


def _comparable(sampling: dict) -> dict:
    """Sampling provenance without when/how the command was launched or where it ran."""
    return {k: v for k, v in sampling.items() if k not in ("created", "command", "hardware")}


def compare_results(
    paths: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None, entropy: float | None = None
) -> dict:
    """Merge several models' ``results.json`` (same judge) into ``comparison.json``, ``comparison.md`` and
    the two plots, one line per model, in ``out``; see :func:`flowlm.eval.report.compare`.

    A ``frontier.json`` (``flowlm eval --temperatures``) among ``paths`` adds each of its temperatures' results to the
    table (labelled ``<model> T=<T>``), its curve to ``frontier.png``, and with ``entropy`` each step count's Gen PPL
    interpolated at that entropy (:mod:`flowlm.eval.frontier`) to ``comparison.md`` / ``comparison.json``."""
    plots.require_matplotlib()
    if labels is not None and len(labels) != len(paths):
        raise ConfigError(f"{len(labels)} labels for {len(paths)} files: give one label per file")
    results_paths, result_labels, frontiers = [], [], []
    for i, path in enumerate(paths):
        if _format_of(path) == frontiers_.FRONTIER_FORMAT:
            frontier = frontiers_.read_frontier(path)
            if labels is not None:
                frontier["label"] = labels[i]
            frontiers.append(frontier)
            for relative in dict.fromkeys(p["results"] for p in frontier["points"]):
                results_paths.append(Path(path).parent / relative)
                temperature = report.read_results(results_paths[-1])["provenance"]["sampling"].get("temperature")
                result_labels.append(f"{frontier['label']} T={temperature:g}")
        else:
            results_paths.append(path)
            result_labels.append(labels[i] if labels is not None else report.read_results(path)["label"])
    if entropy is not None and not frontiers:
        raise ConfigError(f"--entropy {entropy}: needs frontier.json files (flowlm eval --temperatures ...)")
    comparison = report.compare(results_paths, result_labels if frontiers or labels is not None else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = report.comparison_markdown(comparison)
    if frontiers:
        comparison["frontiers"] = frontiers
        frontiers_.plot_frontiers(frontiers, out / "frontier.png", entropy)
        if entropy is not None:
            rows = []
            for f in frontiers:
                for steps in frontiers_.step_counts(f):
                    hit = frontiers_.at_entropy(f, steps, entropy) or {"steps": steps, "gen_ppl": None}
                    rows.append({"model": f["label"], **hit})
            comparison["matched_entropy"] = {"entropy": entropy, "rows": rows}
            markdown += "\n" + frontiers_.matched_markdown(frontiers, entropy)
    report.write_json(out / "comparison.json", comparison)
    (out / "comparison.md").write_text(markdown, encoding="utf-8")
    plots.plot_results(comparison["models"], out)
    return comparison


def _format_of(path: str | Path) -> str | None:
    """The ``format`` field of a JSON file (None if it is not a JSON object; the readers give the errors)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("format") if isinstance(data, dict) else None
