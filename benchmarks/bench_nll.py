"""FLM likelihood bounds (issues 15 and 27): cost per block, estimator variance, and the bias–variance trade-off.

    PYTHONPATH=src python benchmarks/bench_nll.py --out benchmarks/results/nll-cpu
    PYTHONPATH=src python benchmarks/bench_nll.py --sections elbo --model runs/wikitext2/flm/model \
        --out benchmarks/results/elbo-cpu

writes ``<out>.json`` and ``<out>.md``. ``--quick`` shrinks every section (a smoke test). ``--model`` (default the
shipped demo FLM) and ``--data`` (default: the model's own held-out split; the demo's corpus is not shipped, so pass
a text file for it) say whose blocks the variance sections score. Sections:

* ``elbo`` (issue 27): seconds per block and draw of the diffusion ELBO (16 time strata: 17 forward calls) and of
  the ODE bound (RK4, 32 steps, 1 probe: 129 forward + backward calls) on random DiTs of the ``tiny`` preset
  (V = 1,024, L = 64, 4 × 128; both end to end) and of ``lm1b-small`` (V = 30,522, L = 128, 12 × 768; the ELBO end
  to end, the ODE bound extrapolated from one call); then, on ``--model``, the ELBO's Monte-Carlo error against its
  number of time strata K: mean bound and per-draw standard deviation (8 draws per block), and that deviation times
  √(K + 1), the error at equal network calls (smaller is better); and the ELBO of the chain in x itself
  (``full_space=True``), which counts the directions the network does not see;

* ``time``: seconds per network call (forward + backward for the trace) with P Hutchinson probes, and the
  resulting seconds per block of the bound for steps × probes (RK4: 4 calls per step, plus one decoder call).
  ``tiny``: the shipped demo FLM (V = 1,024, L = 64, 4 × 128), measured end to end on a batch of blocks;
  ``lm1b-small``: a random DiT of the preset (V = 30,522, L = 128, 12 × 768), one call timed per probe count
  and the block cost extrapolated from the call count (a full block is minutes on a CPU);
* ``variance``: per-probe variance of the tr J estimate with Rademacher probes in h-space (L·d) and in
  V-space (L·V), on states z ~ q(z | x) of held-out Shakespeare blocks at several τ, demo FLM;
* ``tradeoff``: the demo FLM's bound (nats/token) on 8 held-out blocks × 2 draws vs ODE steps and solver and
  vs probes (at τ_max 0.999, the stiffest setting), and vs τ_max (RK4, 16 steps), each setting with the same
  seeds (same ε and probes), and the per-draw standard deviation.

One torch thread (the machine is shared); the markdown states the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

import flowlm
from flowlm.config import load_preset
from flowlm.eval.likelihood import held_out_blocks
from flowlm.methods.elbo import ElboOptions, diffusion_elbo
from flowlm.methods.likelihood import (
    SOLVERS,
    FlowBoundOptions,
    denoise_and_trace,
    flow_nll_bound,
    network_denoiser,
    probe_pairs,
    t_max_of,
)
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.schedule import get_schedule


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


SOURCE = {"model": "demo:flm", "data": None}  # set from --model / --data


def demo_blocks(n: int):
    model = flowlm.load(SOURCE["model"])
    blocks, _ = held_out_blocks(model, SOURCE["data"], "validation", n, 0, None, progress=False)
    return model, blocks


def random_net(preset: str) -> DiT:
    """A DiT of ``preset``'s size with its tokenizer's vocabulary (tiny: 1,024; lm1b-small: 30,522), random output
    layer (a fresh DiT's is zero, which would make every call cheaper than a trained one's)."""
    run = load_preset(preset)
    vocab = 1024 if preset == "tiny" else 30522
    net = DiT(run.model.dit(vocab, run.data.seq_len, {})).eval().requires_grad_(False)
    torch.nn.init.normal_(net.vocab_embed.embedding, std=1.0)
    for p in net.output_layer.parameters() if hasattr(net, "output_layer") else ():
        torch.nn.init.normal_(p, std=0.02)
    return net


def seconds_per_block(preset: str, quick: bool, g: torch.Generator) -> dict:
    """The ELBO (16 strata) and the ODE bound (RK4 32, 1 probe) on 2 random blocks of a random DiT of ``preset``."""
    net = random_net(preset)
    v, length = net.config.vocab_size, net.config.seq_len if not quick else 16
    blocks = torch.randint(0, v, (2, length), generator=g)
    points, steps = (2, 2) if quick else (16, 32)
    elbo = timed(lambda: diffusion_elbo(net, blocks, v, 1, ElboOptions(time_points=points), g), 1) / len(blocks)
    row = {"seq_len": length, "elbo_calls": points + 1, "elbo_seconds_per_block": elbo, "ode_calls": 4 * steps + 1}
    fn, w = network_denoiser(net)
    if preset == "tiny":
        opts = FlowBoundOptions(steps=steps, probes=1)
        row["ode_seconds_per_block"] = timed(lambda: flow_nll_bound(fn, w, blocks, v, opts, g), 1) / len(blocks)
        row["ode_measured"] = "end to end"
    else:
        h = torch.randn(1, length, v, generator=g) @ w
        pairs = probe_pairs(1, length, v, w, 1, "v", g, "cpu")
        row["ode_seconds_per_block"] = timed(lambda: denoise_and_trace(fn, h, 0.5, pairs, False), 1) * row["ode_calls"]
        row["ode_measured"] = "extrapolated from one call"
    row["ratio_ode_over_elbo"] = row["ode_seconds_per_block"] / row["elbo_seconds_per_block"]
    return row


def validation_cost(quick: bool, g: torch.Generator) -> dict:
    """Seconds per validation batch (32 blocks of 64 tokens, the WikiText-2 study's network: V = 4,096, 4 × 128) of
    the FLM's denoising cross-entropy and of the ELBO logged beside it (``train.val_bound_points`` = 4)."""
    from flowlm.methods.flm import flm_loss

    vocab, length, batch = (256, 16, 4) if quick else (4096, 64, 32)
    net = DiT(DiTConfig(vocab_size=vocab, seq_len=length, hidden_size=128, n_blocks=4, n_heads=4, cond_dim=64))
    net.eval().requires_grad_(False)
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    with torch.no_grad():
        ce = timed(lambda: flm_loss(net, tokens, vocab, generator=g), 3)
    elbo = timed(lambda: diffusion_elbo(net, tokens, vocab, 1, ElboOptions(time_points=4), g), 3)
    return {"denoising_ce_seconds": ce, "elbo_seconds": elbo, "ratio": elbo / ce, "batch": batch, "seq_len": length}


def section_elbo(quick: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    out: dict = {"time": {p: seconds_per_block(p, quick, g) for p in (("tiny",) if quick else ("tiny", "lm1b-small"))}}
    out["validation"] = validation_cost(quick, g)
    out["strata"] = {}
    model, blocks = demo_blocks(2 if quick else 16)
    v = model.net.config.vocab_size
    tokens = blocks.shape[1] - 1
    draws = 8
    for points in (1, 2) if quick else (1, 2, 4, 8, 16, 32, 64):
        start = time.perf_counter()
        bound = diffusion_elbo(model.net, blocks, v, draws, ElboOptions(time_points=points),
                               torch.Generator().manual_seed(4))["bound"] / tokens  # fmt: skip
        sd = bound.std(dim=1).square().mean().sqrt().item()  # per-draw s.d., pooled over blocks
        out["strata"][str(points)] = {
            "nats_per_token": bound.mean().item(),
            "mc_se_of_mean": sd / math.sqrt(bound.numel()),
            "per_draw_sd": sd,
            "sd_at_equal_calls": sd * math.sqrt(points + 1),
            "seconds_per_block_draw": (time.perf_counter() - start) / bound.numel(),
        }
    full = diffusion_elbo(model.net, blocks, v, draws, ElboOptions(), torch.Generator().manual_seed(4),
                          full_space=True)["bound"] / tokens  # fmt: skip
    se = full.std().item() / math.sqrt(full.numel())
    out["x_space"] = {"nats_per_token": full.mean().item(), "mc_se_of_mean": se}
    out["model"], out["blocks"] = SOURCE["model"], len(blocks)
    return out


def section_time(quick: bool) -> dict:
    out: dict = {"tiny": {}, "lm1b-small": {}}
    model, blocks = demo_blocks(8)
    fn, w = network_denoiser(model.net)
    v = model.net.config.vocab_size
    batch = 2 if quick else 8
    rows = blocks[:batch]
    for probes in (1, 4):
        for steps in (2,) if quick else (8, 32):
            opts = FlowBoundOptions(steps=steps, probes=probes)
            gen = torch.Generator().manual_seed(0)
            seconds = timed(lambda o=opts, g=gen: flow_nll_bound(fn, w, rows, v, o, g), 1) / batch
            out["tiny"][f"rk4 steps={steps} probes={probes}"] = {"calls": 4 * steps + 1, "seconds_per_block": seconds}
    run = load_preset("lm1b-small")
    big = DiT(run.model.dit(30522, run.data.seq_len, {})).eval().requires_grad_(False)
    big_fn, big_w = network_denoiser(big)
    length = 16 if quick else run.data.seq_len
    h = torch.randn(1, length, 30522, generator=torch.Generator().manual_seed(0)) @ big_w
    for probes in (1, 4) if not quick else (1,):
        pairs = probe_pairs(1, length, 30522, big_w, probes, "h", torch.Generator().manual_seed(1), "cpu")
        seconds = timed(lambda p=pairs: denoise_and_trace(big_fn, h, 0.5, p, False), 1)
        out["lm1b-small"][f"probes={probes}"] = {
            "seq_len": length,
            "seconds_per_call": seconds,
            "seconds_per_block_rk4_32": seconds * (4 * 32 + 1),
        }
    return out


def section_variance(quick: bool) -> dict:
    model, blocks = demo_blocks(2 if quick else 8)
    fn, w = network_denoiser(model.net)
    v = model.net.config.vocab_size
    schedule = get_schedule(v)
    n_probes = 8 if quick else 64
    out = {}
    for tau in (0.1, 0.5, 0.9, 0.99):
        t = float(schedule.t_from_tau(torch.tensor(tau, dtype=torch.float64)))
        g = torch.Generator().manual_seed(2)
        onehot = torch.nn.functional.one_hot(blocks, v).float()
        z = t * onehot + (1 - t) * torch.randn(onehot.shape, generator=g)
        h = z @ w
        row = {}
        for space in ("h", "v"):
            estimates = []
            for b in range(len(blocks)):
                a, bb = probe_pairs(1, blocks.shape[1], v, w, n_probes, space, g, "cpu")
                with torch.enable_grad():
                    x = h[b : b + 1].expand(n_probes, -1, -1).clone().requires_grad_(True)
                    p = torch.softmax(fn(x, torch.full((n_probes,), tau)), -1)
                    (grad,) = torch.autograd.grad((p * a[:, 0]).sum(), x)
                estimates.append((grad * bb[:, 0]).sum((-1, -2)).double())
            est = torch.stack(estimates)  # [blocks, probes]
            row[space] = {
                "mean_trace": est.mean().item(),
                "per_probe_variance": est.var(dim=1).mean().item(),
            }
        row["variance_ratio_v_over_h"] = row["v"]["per_probe_variance"] / row["h"]["per_probe_variance"]
        out[f"tau={tau}"] = row
    return out


def section_tradeoff(quick: bool) -> dict:
    model, blocks = demo_blocks(2 if quick else 8)
    fn, w = network_denoiser(model.net)
    v = model.net.config.vocab_size
    tokens = blocks.shape[1] - 1
    draws = 2

    def bound(**kw) -> dict:
        rows = blocks.repeat_interleave(draws, 0)
        start = time.perf_counter()
        out = flow_nll_bound(fn, w, rows, v, FlowBoundOptions(**kw), torch.Generator().manual_seed(3))
        seconds = time.perf_counter() - start
        per = {k: out[k].view(len(blocks), draws) / tokens for k in ("bound", "decoder", "prior", "divergence")}
        return {
            "nats_per_token": per["bound"].mean().item(),
            "per_draw_sd": per["bound"].std(dim=1).mean().item() * math.sqrt(math.pi / 2)
            if draws == 2
            else per["bound"].std(dim=1).mean().item(),
            "decoder": per["decoder"].mean().item(),
            "prior": per["prior"].mean().item(),
            "divergence": per["divergence"].mean().item(),
            "seconds_per_block_draw": seconds / len(rows),
        }

    out: dict = {"steps": {}, "tau_max": {}, "probes": {}}
    for solver in ("heun", "rk4"):
        for steps in (2, 4) if quick else ((8, 16, 32, 64) if solver == "rk4" else (16, 64)):
            out["steps"][f"{solver} {steps}"] = bound(steps=steps, solver=solver, tau_max=0.999)  # the stiffest
    for tau_max in (0.5, 0.999) if quick else (0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999, 0.9999):
        row = bound(tau_max=tau_max, steps=4 if quick else 16)
        out["tau_max"][str(tau_max)] = {"t_max": t_max_of(v, tau_max), **row}
    for probes, space in ((1, "h"), (1, "v"), (4, "v")) if not quick else ((1, "v"),):
        out["probes"][f"{probes} {space}"] = bound(
            steps=4 if quick else 16, probes=probes, divergence=space, tau_max=0.999
        )
    return out


def markdown(results: dict, command: str) -> str:
    lines = [f"# FLM likelihood bounds: cost, variance, trade-off\n\n`{command}`\n", results["machine"], ""]
    e = results.get("elbo")
    if e:
        lines += ["## ELBO vs ODE bound: seconds per block (one draw, random weights)\n",
                  "| size | L | ELBO calls | ELBO s/block | ODE calls | ODE s/block | ODE / ELBO |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for preset, r in e["time"].items():
            lines.append(
                f"| {preset} | {r['seq_len']} | {r['elbo_calls']} | {r['elbo_seconds_per_block']:.2f} | "
                f"{r['ode_calls']} | {r['ode_seconds_per_block']:.1f} ({r['ode_measured']}) | "
                f"{r['ratio_ode_over_elbo']:.0f}x |"
            )
        lines += ["", f"## ELBO error vs time strata K ({e['model']}, {e['blocks']} held-out blocks × 8 draws)\n",
                  "| K | calls/draw | bound, nats/token | s.e. of the mean | per-draw s.d. | s.d. × √calls | "
                  "s/block/draw |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for k, r in e["strata"].items():
            lines.append(
                f"| {k} | {int(k) + 1} | {r['nats_per_token']:.4f} | {r['mc_se_of_mean']:.4f} | "
                f"{r['per_draw_sd']:.4f} | {r['sd_at_equal_calls']:.3f} | {r['seconds_per_block_draw']:.3f} |"
            )
        v = e["validation"]
        lines += ["", f"Validation (a batch of {v['batch']} blocks of {v['seq_len']} tokens, V = 4,096, 4 × 128): the "
                      f"denoising cross-entropy {v['denoising_ce_seconds']:.3f} s, the ELBO with 4 strata "
                      f"{v['elbo_seconds']:.3f} s ({v['ratio']:.1f}×)."]  # fmt: skip
        x = e["x_space"]
        lines += ["", f"The ELBO of the chain in x itself (`full_space=True`, K = 16, same blocks): "
                      f"{x['nats_per_token']:.4f} ± {x['mc_se_of_mean']:.4f} nats/token.", ""]  # fmt: skip
    t = results.get("time")
    if t:
        lines += ["## Seconds per block (one draw)\n", "| size | setting | calls | s/block |", "|---|---|---|---|"]
        for k, r in t["tiny"].items():
            lines.append(f"| tiny (demo FLM) | {k} | {r['calls']} | {r['seconds_per_block']:.2f} |")
        for k, r in t["lm1b-small"].items():
            lines.append(
                f"| lm1b-small (L={r['seq_len']}) | {k}: {r['seconds_per_call']:.2f} s/call | 129 (rk4, 32 steps) "
                f"| {r['seconds_per_block_rk4_32']:.0f} (extrapolated) |"
            )
        lines.append("")
    var = results.get("variance")
    if var:
        lines += [
            "## Per-probe variance of tr J (Rademacher), demo FLM\n",
            "| τ | tr J | var, h-space probes | var, V-space probes | V/h |",
            "|---|---|---|---|---|",
        ]
        for k, r in var.items():
            lines.append(
                f"| {k[4:]} | {r['h']['mean_trace']:.1f} | {r['h']['per_probe_variance']:.3g} | "
                f"{r['v']['per_probe_variance']:.3g} | {r['variance_ratio_v_over_h']:.2f} |"
            )
        lines.append("")
    tr = results.get("tradeoff")
    if tr:
        lines += ["## Bound vs settings (demo FLM, held-out Shakespeare, same seeds), nats/token\n",
                  "| setting | bound | per-draw s.d. | decoder | prior | divergence | s/block/draw |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for group in ("steps", "tau_max", "probes"):
            for k, r in tr[group].items():
                label = {"steps": f"solver/steps {k}", "tau_max": f"τ_max {k}", "probes": f"probes, space {k}"}[group]
                lines.append(
                    f"| {label} | {r['nats_per_token']:.4f} | {r['per_draw_sd']:.4f} | {r['decoder']:.4f} | "
                    f"{r['prior']:.4f} | {r['divergence']:.4f} | {r['seconds_per_block_draw']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/nll-cpu")
    parser.add_argument("--sections", default="time,variance,tradeoff")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="demo:flm", help="the FLM whose held-out blocks the variance sections use")
    parser.add_argument("--data", help="text to draw its blocks from (default: its own held-out split)")
    args = parser.parse_args()
    SOURCE.update(model=args.model, data=args.data)
    torch.set_num_threads(1)
    load = os.getloadavg()
    results: dict = {}
    for name in args.sections.split(","):
        start = time.perf_counter()
        sections = {"elbo": section_elbo, "time": section_time, "variance": section_variance,
                    "tradeoff": section_tradeoff}  # fmt: skip
        results[name] = sections[name](args.quick)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    results["machine"] = (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; load average "
        f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after; solvers: {', '.join(SOLVERS)}"
    )
    command = "PYTHONPATH=src python benchmarks/bench_nll.py " + " ".join(
        f"--{k} {v}" if not isinstance(v, bool) else f"--{k}" for k, v in vars(args).items() if v
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results, command))
    print(markdown(results, command))


if __name__ == "__main__":
    main()
