"""``flowlm nll`` / ``flowlm.nll``: a method's likelihood bound on held-out blocks, aggregated with intervals.

A thin layer: blocks are drawn as ``flowlm reference`` draws them (seeded, from a split of the model's corpus
or ``data``); each method's :meth:`~flowlm.methods.Method.nll_bound` gives nats per block (K Monte-Carlo draws);
this module averages, divides by tokens and reports a percentile bootstrap over blocks (the helper of
:class:`~flowlm.eval.metrics.GenPPLResult`) and the Monte-Carlo standard error. Math: docs/likelihood.md.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowlm.errors import ConfigError
from flowlm.eval.metrics import GenPPLResult
from flowlm.methods import registry
from flowlm.methods.elbo import ElboOptions
from flowlm.methods.likelihood import FlowBoundOptions

HELD_OUT = "held-out"
DEFINITION = (
    "nats per token = mean over blocks of the method's bound on -log p(block), divided by L - 1 (the positions "
    "after the first; AR conditions on the first token, BOS, and the diffusion bounds also pay for it, which "
    "only makes them larger); interval: percentile bootstrap over blocks (2,000 resamples); mc_se: standard "
    "error of the Monte-Carlo part, sqrt(sum_b s_b^2 / K) / (n (L - 1)) with s_b^2 the variance of block b's K draws"
)
BOUND_OPTIONS = {
    "elbo": ("t_max", "tau_max", "time_points", "grid"),
    "ode": ("t_max", "tau_max", "ode_steps", "solver", "grid", "probes", "divergence"),
}


def check_blocks(num_blocks: int, batch_size: int) -> None:
    for name, value in (("num_blocks (-n)", num_blocks), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r}: use an integer >= 1")


def held_out_blocks(model, data: str | None, split: str, num_blocks: int, seed: int, cache_dir, progress: bool):
    """``num_blocks`` blocks [n, L] drawn (seeded) from ``split`` of the model's corpus or ``data``, as
    ``flowlm reference`` draws them; returns ``(blocks, corpus)``."""
    from flowlm.eval.run import draw_blocks

    corpus = None if data in (None, HELD_OUT) else data
    return draw_blocks(model, corpus, split, num_blocks, seed, cache_dir, progress, "-n")


def bound_options(method, bound: str | None, given: dict[str, Any]):
    """``(bound, options)``: the bound to compute (``bound``, or the method's default) and its checked options built
    from ``given`` (the options the caller set); one-line errors for a bound or an option the method lacks."""
    names = list(method.likelihoods)
    bound = names[0] if bound is None else bound
    if bound not in names:
        if len(names) == 1:
            raise ConfigError(
                f"bound={bound!r}: {method.title} models have one likelihood ({names[0]}: {method.likelihood}); "
                "leave --bound unset"
            )
        raise ConfigError(f"bound={bound!r}: use one of {', '.join(names)} for {method.title} models")
    allowed = BOUND_OPTIONS.get(bound, ())
    stray = [k for k in given if k not in allowed]
    if stray:
        if not allowed:
            raise ConfigError(
                f"{', '.join(stray)}: options of the FLM and FMLM bounds; the {method.title} likelihood "
                f"({method.likelihood}) has none: leave them unset"
            )
        raise ConfigError(
            f"{', '.join(stray)}: not options of the {bound} bound (its options: {', '.join(allowed)}); "
            f"leave them unset{' or use --bound ode' if bound == 'elbo' else ' or use --bound elbo'}"
        )
    if bound == "elbo":
        return bound, ElboOptions(**given).check()
    if bound == "ode":
        return bound, FlowBoundOptions(**{("steps" if k == "ode_steps" else k): v for k, v in given.items()}).check()
    return bound, None


def summarize(draws: np.ndarray, tokens_per_block: int, exact: bool, seed: int = 0) -> dict[str, Any]:
    """Aggregate nats per block ``draws`` [n, K]: mean nats (and bits) per token, the bootstrap 95% interval over
    blocks and the Monte-Carlo standard error (0 for an exact method; None when K = 1 leaves it unknown)."""
    n, k = draws.shape
    per_block = draws.mean(axis=1)
    mean = float(per_block.sum() / (n * tokens_per_block))
    # GenPPLResult's bootstrap works on exp(nats per token); shifting by the mean keeps exp() finite for any bound.
    shifted = GenPPLResult.from_samples(
        per_block - mean * tokens_per_block, [tokens_per_block] * n, judge="likelihood", definition=DEFINITION
    )
    lo, hi = (mean + math.log(v) for v in shifted.bootstrap_interval(seed=seed))
    if exact:
        mc_se: float | None = 0.0
    elif k >= 2:
        mc_se = float(math.sqrt(draws.var(axis=1, ddof=1).sum() / k) / (n * tokens_per_block))
    else:
        mc_se = None
    bits = 1.0 / math.log(2.0)
    return {
        "nats_per_token": mean,
        "bits_per_token": mean * bits,
        "interval_95_nats": [lo, hi],
        "interval_95_bits": [lo * bits, hi * bits],
        "mc_se_nats": mc_se,
        "mc_se_bits": None if mc_se is None else mc_se * bits,
        "nats_per_block": float(per_block.mean()),
    }


def nll(
    model: Any,
    data: str | None = None,
    *,
    split: str = "validation",
    num_blocks: int = 64,
    batch_size: int = 8,
    draws: int | None = None,
    bound: str | None = None,
    t_max: float | None = None,
    tau_max: float | None = None,
    time_points: int | None = None,
    ode_steps: int | None = None,
    solver: str | None = None,
    grid: str | None = None,
    probes: int | None = None,
    divergence: str | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    blocks: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The likelihood bound of ``model`` (a :class:`flowlm.FlowLM`, or a path / Hub id to load) on held-out text.

    ``num_blocks`` blocks of the model's length are drawn (seeded by ``seed``) from ``split`` of ``data`` (a
    corpus spec or text file; None or ``"held-out"``: the model's own corpus), or given as ``blocks`` [n, L].
    ``draws``: Monte-Carlo draws per block (default per method: FLM/FMLM 2, MDLM 16, AR 1, exact). ``bound``
    (FLM and FMLM): ``elbo`` (default; the diffusion ELBO, options ``t_max`` or ``tau_max``, ``time_points``, ``grid``:
    :class:`~flowlm.methods.elbo.ElboOptions`) or ``ode`` (the probability-flow ODE bound, options ``t_max`` or
    ``tau_max``, ``ode_steps``, ``solver``, ``grid``, ``probes`` (0: exact trace) and ``divergence``:
    :class:`~flowlm.methods.likelihood.FlowBoundOptions`). Batch j of blocks draws from a generator seeded by
    ``(seed, j)``.

    Returns (and with ``out`` writes as JSON) nats and bits per token, the bootstrap 95% interval over blocks,
    the Monte-Carlo standard error, the options used, per-block values and timing.
    """
    from flowlm.api import batch_seed, load
    from flowlm.paths import require_writable_file

    check_blocks(num_blocks, batch_size)
    if out is not None:  # a file (an existing folder is refused), checked before any work
        out = require_writable_file(out, "--out", "nll.json")
    if not hasattr(model, "method_def"):
        model = load(model, device=device)
    method = registry.of_model(model)
    if method.likelihood is None:
        raise ConfigError(
            f"{method.title} models have no likelihood in flowlm; flowlm nll takes FLM, FMLM (PSD or v1 stage 2), "
            "MDLM and AR models"
        )
    given = dict(t_max=t_max, tau_max=tau_max, time_points=time_points, ode_steps=ode_steps, solver=solver,
                 grid=grid, probes=probes, divergence=divergence)  # fmt: skip
    bound, options = bound_options(method, bound, {k: v for k, v in given.items() if v is not None})
    k = method.likelihood_draws if draws is None else draws
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"draws={k!r}: use an integer >= 1 (Monte-Carlo draws per block)")
    corpus = None
    if blocks is None:
        blocks, corpus = held_out_blocks(model, data, split, num_blocks, seed, cache_dir, progress)
    blocks = blocks.to(model.device)
    n, length = blocks.shape
    if length < 2:
        raise ConfigError(f"blocks of {length} token(s): a likelihood per token needs blocks of at least 2 tokens")
    vocab_size = model.net.config.vocab_size if hasattr(model.net, "config") else int(blocks.max()) + 1
    batches = range(math.ceil(n / batch_size))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="nll", unit="batch")
    values = []
    start = time.perf_counter()
    for j in batches:
        generator = torch.Generator(device=model.device).manual_seed(batch_seed(seed, j))
        rows = blocks[j * batch_size : (j + 1) * batch_size]
        values.append(method.nll_bound(model.net, rows, vocab_size, draws=k, options=options, generator=generator))
    seconds = time.perf_counter() - start
    table = torch.cat(values).double().cpu().numpy()
    result = {
        "model": str(model.path),
        "method": method.name,
        "bound": bound,
        "likelihood": method.likelihoods[bound],
        "weights_sha256": model.meta.get("weights_sha256"),
        "corpus": corpus,
        "split": split if corpus is not None else None,
        "blocks": n,
        "seq_len": length,
        "tokens_per_block": length - 1,
        "draws": table.shape[1],
        **summarize(table, length - 1, exact=method.likelihood_exact, seed=seed),
        "options": {} if options is None else {**asdict(options), "t_max": options.resolve_t_max(vocab_size)},
        "seed": seed,
        "seconds": seconds,
        "seconds_per_block": seconds / n,
        "definition": DEFINITION,
        "per_block_nats": table.mean(axis=1).tolist(),
    }
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_nll(result: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    lo, hi = result["interval_95_bits"]
    se = result["mc_se_bits"]
    mc = "exact" if se == 0.0 else ("Monte-Carlo s.e. unknown with 1 draw" if se is None else f"MC s.e. {se:.4f}")
    return (
        f"{result['method']}: {result['bits_per_token']:.4f} bits/token ({result['nats_per_token']:.4f} nats), "
        f"95% interval over blocks [{lo:.4f}, {hi:.4f}] bits, {mc}\n"
        f"  {result['blocks']} blocks of {result['seq_len']} tokens, {result['draws']} draw(s) per block; "
        f"{result['likelihood']}; {result['seconds_per_block']:.2f} s/block"
    )
