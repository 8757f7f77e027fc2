"""Low-rank vs naive input noise (issue 6): training and sampling throughput and peak memory, one run.

    PYTHONPATH=src python benchmarks/bench_lowrank.py --out benchmarks/results/lowrank-cpu

writes ``lowrank-cpu.json`` and ``lowrank-cpu.md`` (the command is repeated in the markdown). ``--quick``
runs every section at toy sizes (a smoke test, seconds).

What is measured, all on this machine in this one invocation:

* ``matmul``: the machine's large-matmul rate (fp32 ``n x n`` GEMM), the yardstick for training FLOP/s;
* ``train``: one FLM training step (loss, backward, AdamW) of a preset's DiT at L = 128 and the given
  vocabularies, naive vs low-rank. Every (preset, V, mode) runs in its own subprocess, naive and low-rank
  alternating, ``--repeats`` times; each subprocess times ``--steps`` steps after one warm-up step. Reported:
  median and range of the per-subprocess median step time, tokens/s, and the *peak activation memory*:
  the process's peak resident set size during the steps (``ru_maxrss``) minus its resident size just
  before them, when parameters, gradients and AdamW moments already exist — i.e. everything one training
  step allocates on top of the model and optimizer state (activations, the noise/state tensors, logits,
  temporaries). The achieved FLOP/s of a low-rank step counts 6 FLOPs per parameter per token for the
  matmul parameters (blocks and head; the input lookup is not a matmul) plus attention, and is reported as a
  fraction of ``matmul``;
* ``sample``: FLM (Euler) and FMLM (flow map, γ = 0) sampling tokens/s at 1, 4, 16, 64, 256 and 1024 steps,
  naive vs low-rank, tiny preset at the first vocabulary (random weights: the cost does not depend on them).
  Every count is timed (one call per count, method and mode, interleaved; no repeats: a 1024-step call is
  over a minute);
* ``ar``: autoregressive decoding tokens/s of the causal tiny DiT at the same size, with and without the KV
  cache (one call each after a warm-up);
* ``crossover``: one FLM loss + backward call of a one-block DiT of width d = 768 at V = 30,522 for several
  token counts N per call, naive vs low-rank: where ``input_noise=auto`` should switch (it picks low-rank from
  N >= d/2, :data:`flowlm.methods.lowrank.AUTO_MIN_TOKENS_PER_WIDTH`).

Every process uses ``--threads`` torch threads (default 1: the machine is shared, and on 2 busy cores a
second thread mostly waits for the other jobs); the markdown states the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from flowlm.config import load_preset
from flowlm.methods.ar import ar_sample
from flowlm.methods.flm import flm_loss, flm_sample
from flowlm.methods.fmlm import fmlm_sample
from flowlm.nn.dit import DiT, DiTConfig

MODES = ("naive", "lowrank")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def build(preset: str, vocab: int, seq: int, time_inputs: int = 1, causal: bool = False) -> DiT:
    cfg = load_preset(preset).model.dit(vocab, seq)
    cfg.time_inputs = time_inputs
    cfg.causal = causal
    torch.manual_seed(0)
    return DiT(cfg)


def matmul_flops(size: int, repeats: int) -> float:
    """Best fp32 ``size x size`` GEMM rate in FLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def train_flops_per_token(net: DiT, seq: int) -> float:
    """6 FLOPs per matmul parameter per token (forward + backward) plus attention (12·L·d per layer)."""
    cfg = net.config
    matmul_params = sum(p.numel() for n, p in net.named_parameters() if p.ndim == 2 and not n.startswith("vocab_"))
    return 6 * matmul_params + 12 * cfg.n_blocks * seq * cfg.hidden_size


def train_child(preset: str, vocab: int, seq: int, batch: int, mode: str, steps: int, threads: int) -> dict:
    """Runs in a fresh process: time ``steps`` FLM training steps after one warm-up; peak memory above
    the model + optimizer state."""
    torch.set_num_threads(threads)
    net = build(preset, vocab, seq).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    for p in net.parameters():  # allocate gradients and AdamW moments before measuring
        p.grad = torch.zeros_like(p)
    opt.step()
    tokens = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    base = rss_bytes()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        out = flm_loss(net, tokens, vocab, generator=torch.Generator().manual_seed(step), input_noise=mode)
        out["loss"].backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - start)
    return {
        "step_times": times,
        "peak_activation_bytes": peak_rss_bytes() - base,
        "flops_per_token": train_flops_per_token(net, seq),
    }


def run_child(args: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def measure_train(presets, vocabs, seq, batches, step_counts, repeats, threads) -> list[dict]:
    rows = []
    for preset, batch, steps in zip(presets, batches, step_counts, strict=True):
        for vocab in vocabs:
            runs = {m: [] for m in MODES}
            for _ in range(repeats):  # interleaved: naive, low-rank, naive, ...
                for mode in MODES:
                    runs[mode].append(
                        run_child(
                            dict(preset=preset, vocab=vocab, seq=seq, batch=batch, mode=mode, steps=steps)
                            | {"threads": threads}
                        )
                    )
            row = {"preset": preset, "vocab": vocab, "seq": seq, "batch": batch}
            for mode in MODES:
                step_s = [t for r in runs[mode] for t in r["step_times"]]
                row[mode] = {
                    "step_s": summary(step_s),
                    "tokens_per_s": batch * seq / statistics.median(step_s),
                    "peak_activation_mb": summary([r["peak_activation_bytes"] / 2**20 for r in runs[mode]]),
                }
            row["flops_per_token"] = runs["lowrank"][0]["flops_per_token"]
            row["speedup"] = row["naive"]["step_s"]["median"] / row["lowrank"]["step_s"]["median"]
            row["memory_ratio"] = (
                row["naive"]["peak_activation_mb"]["median"] / row["lowrank"]["peak_activation_mb"]["median"]
            )
            rows.append(row)
            print(f"train {preset} V={vocab}: {row['speedup']:.2f}x faster, {row['memory_ratio']:.2f}x less memory")
    return rows


def seconds_sampling(sampler, net, num_samples: int, seq: int, vocab: int, steps: int, mode: str) -> float:
    """Seconds of one sampler call (the caller warms up once per configuration)."""
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    sampler(net, num_samples, seq, vocab, steps, generator=g, input_noise=mode)
    return time.perf_counter() - start


def measure_sampling(preset, vocab, seq, num_samples, step_counts) -> list[dict]:
    """Tokens/s at each step count: one timed call per (count, method, mode), naive and low-rank interleaved,
    after one warm-up call each."""
    nets = {"flm": build(preset, vocab, seq).eval(), "fmlm": build(preset, vocab, seq, time_inputs=2).eval()}
    samplers = {"flm": flm_sample, "fmlm": fmlm_sample}
    for method, net in nets.items():
        for mode in MODES:
            seconds_sampling(samplers[method], net, num_samples, seq, vocab, 1, mode)  # warm-up
    rows = []
    for steps in step_counts:
        row = {"steps": steps, "preset": preset, "vocab": vocab, "seq": seq, "num_samples": num_samples}
        for method, net in nets.items():
            for mode in MODES:
                seconds = seconds_sampling(samplers[method], net, num_samples, seq, vocab, steps, mode)
                row[f"{method}_{mode}_tokens_per_s"] = num_samples * seq / seconds
            row[f"{method}_speedup"] = row[f"{method}_lowrank_tokens_per_s"] / row[f"{method}_naive_tokens_per_s"]
        rows.append(row)
        print(f"sampled {steps} steps", flush=True)
    return rows


def measure_ar(preset, vocab, seq, num_samples) -> dict:
    """AR decoding tokens/s of the causal DiT of ``preset`` (random weights), with and without the KV cache:
    one timed call each after a warm-up. Decoding produces ``seq − 1`` tokens per sample (the BOS is given)."""
    net = build(preset, vocab, seq, causal=True).eval()
    out = {"preset": preset, "vocab": vocab, "seq": seq, "num_samples": num_samples}
    for cached in (True, False):
        ar_sample(net, num_samples, 8, bos_id=0, generator=torch.Generator().manual_seed(0), use_cache=cached)
        start = time.perf_counter()
        ar_sample(net, num_samples, seq, bos_id=0, generator=torch.Generator().manual_seed(0), use_cache=cached)
        out["cached" if cached else "uncached"] = num_samples * (seq - 1) / (time.perf_counter() - start)
    return out


def measure_crossover(vocab, width, token_counts, seq) -> list[dict]:
    """Seconds of one FLM loss + backward call, naive vs low-rank, of a one-block DiT of ``width`` for each
    number of tokens per call (batch = N / seq rows of ``seq`` tokens, or one row of N < seq tokens)."""
    cfg = DiTConfig(vocab_size=vocab, seq_len=seq, hidden_size=width, n_blocks=1, n_heads=width // 64, dropout=0.0)
    torch.manual_seed(0)
    net = DiT(cfg)
    rows = []
    for n in token_counts:
        length = min(n, seq)
        tokens = torch.randint(0, vocab, (n // length, length), generator=torch.Generator().manual_seed(0))
        row = {"width": width, "vocab": vocab, "tokens": n}
        for mode in MODES:
            flm_loss(net, tokens, vocab, input_noise=mode)["loss"].backward()  # warm-up
        for mode in MODES:
            start = time.perf_counter()
            flm_loss(net, tokens, vocab, input_noise=mode)["loss"].backward()
            row[f"{mode}_s"] = time.perf_counter() - start
        rows.append(row)
        print(f"crossover d={width} N={n}: naive {row['naive_s']:.2f} s, low-rank {row['lowrank_s']:.2f} s", flush=True)
    return rows


def fmt(summary_: dict) -> str:
    return f"{summary_['median']:.3g} [{summary_['min']:.3g}–{summary_['max']:.3g}]"


def markdown(report: dict) -> str:
    lines = [
        "# Low-rank vs naive input noise",
        "",
        f"Command: `{report['command']}` ({report['seconds']:.0f} s)  ",
        f"Machine: {report['machine']}; torch {report['torch']}, {report['threads']} torch thread(s) per process; "
        f"large-matmul rate {report['matmul_gflops']:.1f} GFLOP/s "
        f"(fp32 {report['matmul_size']}² GEMM, same threads).  ",
        f"Load average (1 min) before / after the run: {report['load_before']:.2f} / {report['load_after']:.2f} "
        "on 2 cores shared with other jobs: absolute times are inflated and noisy; naive and low-rank are "
        "interleaved so that their ratios see the same load.",
        "",
        "## Training step (FLM loss + backward + AdamW), L = 128",
        "",
        "Step time: median [range] over all timed steps of all processes; peak activation memory: peak RSS during "
        "the steps minus RSS with parameters, gradients and AdamW state allocated, median [range] over processes. "
        "FLOP/s counts model FLOPs (6 per matmul parameter per token + attention; the head's recomputation in "
        "backward is not counted).",
        "",
        "| preset | V | batch | naive s/step | low-rank s/step | speed-up | naive tok/s | low-rank tok/s "
        "| naive peak MB | low-rank peak MB | memory ratio | low-rank FLOP/s / matmul |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["train"]:
        n, lr = r["naive"], r["lowrank"]
        flops = r["flops_per_token"] * lr["tokens_per_s"]
        lines.append(
            f"| {r['preset']} | {r['vocab']} | {r['batch']} | {fmt(n['step_s'])} | {fmt(lr['step_s'])} "
            f"| {r['speedup']:.2f}× | {n['tokens_per_s']:.0f} | {lr['tokens_per_s']:.0f} "
            f"| {fmt(n['peak_activation_mb'])} | {fmt(lr['peak_activation_mb'])} | {r['memory_ratio']:.2f}× "
            f"| {flops / 1e9:.1f} GFLOP/s = {flops / report['matmul_flops']:.0%} |"
        )
    s = report["sample"]
    lines += [
        "",
        f"## Sampling tokens/s ({s[0]['preset']}, V = {s[0]['vocab']}, L = {s[0]['seq']}, "
        f"{s[0]['num_samples']} sample per call)",
        "",
        "Every step count is timed: one call per count, method and mode (no repeats), interleaved.",
        "",
        "| steps | FLM naive | FLM low-rank | ratio | FMLM naive | FMLM low-rank | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s:
        lines.append(
            f"| {r['steps']} | {r['flm_naive_tokens_per_s']:.1f} | {r['flm_lowrank_tokens_per_s']:.1f} "
            f"| {r['flm_speedup']:.2f}× | {r['fmlm_naive_tokens_per_s']:.1f} "
            f"| {r['fmlm_lowrank_tokens_per_s']:.1f} | {r['fmlm_speedup']:.2f}× |"
        )
    a = report["ar"]
    lines += [
        "",
        f"## AR decoding tokens/s ({a['preset']} causal DiT, V = {a['vocab']}, L = {a['seq']}, "
        f"{a['num_samples']} sample per call, one timed call each)",
        "",
        "| KV cache | no cache | ratio |",
        "|---|---|---|",
        f"| {a['cached']:.1f} | {a['uncached']:.1f} | {a['cached'] / a['uncached']:.2f}× |",
        "",
        f"## Crossover: one FLM loss + backward call, one-block DiT, d = {report['crossover'][0]['width']}, "
        f"V = {report['crossover'][0]['vocab']}",
        "",
        "`input_noise=auto` picks low-rank from N ≥ d/2 tokens per call.",
        "",
        "| tokens per call N | N / d | naive s | low-rank s | low-rank speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in report["crossover"]:
        lines.append(
            f"| {r['tokens']} | {r['tokens'] / r['width']:.2f} | {r['naive_s']:.3g} | {r['lowrank_s']:.3g} "
            f"| {r['naive_s'] / r['lowrank_s']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/lowrank-cpu", help="output path without suffix")
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke test of every section")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_child(**json.loads(args.child))))
        return

    torch.set_num_threads(args.threads)
    if args.quick:
        presets, batches, vocabs, seq, steps, repeats = ["tiny"], [2], [2048], 16, [1], 1
        step_counts, num_samples, matmul_size = [1, 2, 4], 1, 256
        cross_width, cross_tokens = 128, [16, 64]
    else:
        # lm1b-small at batch 4: 512 tokens per call, above the d/2 = 384 where auto switches to low-rank
        presets, batches, vocabs, seq, steps, repeats = ["tiny", "lm1b-small"], [8, 4], [30522, 50258], 128, [2, 1], 1
        step_counts, num_samples, matmul_size = [1, 4, 16, 64, 256, 1024], 1, 2048
        cross_width, cross_tokens = 768, [128, 256, 512, 768]
    started = time.perf_counter()
    load_before = load_average()
    matmul = matmul_flops(matmul_size, 5)
    report = {
        "command": "PYTHONPATH=src python benchmarks/bench_lowrank.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "torch": torch.__version__,
        "threads": args.threads,
        "load_before": load_before,
        "matmul_size": matmul_size,
        "matmul_flops": matmul,
        "matmul_gflops": matmul / 1e9,
        "train": measure_train(presets, vocabs, seq, batches, steps, repeats, args.threads),
        "sample": measure_sampling("tiny", vocabs[0], seq, num_samples, step_counts),
        "ar": measure_ar("tiny", vocabs[0], seq, num_samples),
        "crossover": measure_crossover(vocabs[0], cross_width, cross_tokens, seq),
    }
    report["load_after"] = load_average()
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out}.json and {out}.md in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
