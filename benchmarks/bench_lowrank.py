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
* ``sample``: FLM (Euler) and FMLM (flow map, γ = 0) sampling tokens/s at 1 ... 1024 steps, naive vs
  low-rank, tiny preset at the first vocabulary (random weights: the cost does not depend on them); timed
  up to 64 steps, the 256- and 1024-step rates derived from the timed per-step cost (a 1024-step run of
  both methods and modes would take most of an hour on a shared 2-core CPU);
* ``ar``: autoregressive decoding tokens/s at the same size — reported as missing until the causal DiT
  with a KV cache exists (see :func:`measure_ar`).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from flowlm.config import load_preset
from flowlm.methods.flm import flm_loss, flm_sample
from flowlm.methods.fmlm import fmlm_sample
from flowlm.nn.dit import DiT

MODES = ("naive", "lowrank")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def build(preset: str, vocab: int, seq: int, time_inputs: int = 1) -> DiT:
    cfg = load_preset(preset).model.dit(vocab, seq)
    cfg.time_inputs = time_inputs
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


def train_child(preset: str, vocab: int, seq: int, batch: int, mode: str, steps: int) -> dict:
    """Runs in a fresh process: time ``steps`` FLM training steps after one warm-up; peak memory above
    the model + optimizer state."""
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
        "step_s": statistics.median(times),
        "peak_activation_bytes": peak_rss_bytes() - base,
        "flops_per_token": train_flops_per_token(net, seq),
    }


def run_child(args: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def measure_train(presets, vocabs, seq, batches, steps, repeats) -> list[dict]:
    rows = []
    for preset, batch in zip(presets, batches, strict=True):
        for vocab in vocabs:
            runs = {m: [] for m in MODES}
            for _ in range(repeats):  # interleaved: naive, low-rank, naive, ...
                for mode in MODES:
                    runs[mode].append(
                        run_child(dict(preset=preset, vocab=vocab, seq=seq, batch=batch, mode=mode, steps=steps))
                    )
            row = {"preset": preset, "vocab": vocab, "seq": seq, "batch": batch}
            for mode in MODES:
                step_s = [r["step_s"] for r in runs[mode]]
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


def measure_sampling(preset, vocab, seq, num_samples, measured, derived) -> list[dict]:
    """Tokens/s at each step count of ``measured`` (one timed call each, naive and low-rank interleaved) and,
    for ``derived``, from the measured cost: ``t(N) = t(N_a) + (N − N_a)·(t(N_b) − t(N_a))/(N_b − N_a)`` with
    N_a, N_b the two largest measured counts (every step after the first costs the same)."""
    nets = {"flm": build(preset, vocab, seq).eval(), "fmlm": build(preset, vocab, seq, time_inputs=2).eval()}
    samplers = {"flm": flm_sample, "fmlm": fmlm_sample}
    seconds = {}
    for method, net in nets.items():
        for mode in MODES:
            seconds_sampling(samplers[method], net, num_samples, seq, vocab, 1, mode)  # warm-up
    for steps in measured:
        for method, net in nets.items():
            for mode in MODES:
                seconds[method, mode, steps] = seconds_sampling(
                    samplers[method], net, num_samples, seq, vocab, steps, mode
                )
        print(f"sampled {steps} steps", flush=True)
    n_a, n_b = sorted(measured)[-2:]
    for steps in derived:
        for key in {(m, mode) for m, mode, _ in seconds}:
            per_step = (seconds[(*key, n_b)] - seconds[(*key, n_a)]) / (n_b - n_a)
            seconds[(*key, steps)] = seconds[(*key, n_a)] + (steps - n_a) * per_step
    rows = []
    for steps in list(measured) + list(derived):
        row = {"steps": steps, "measured": steps in measured, "preset": preset, "vocab": vocab, "seq": seq}
        row["num_samples"] = num_samples
        for method in nets:
            for mode in MODES:
                row[f"{method}_{mode}_tokens_per_s"] = num_samples * seq / seconds[method, mode, steps]
            row[f"{method}_speedup"] = row[f"{method}_lowrank_tokens_per_s"] / row[f"{method}_naive_tokens_per_s"]
        rows.append(row)
    return rows


def measure_ar(preset, vocab, seq) -> dict:
    """AR decoding tokens/s (causal DiT + KV cache) at the same size: not in this tree yet."""
    return {"status": "missing", "reason": "no causal DiT with a KV cache in flowlm yet; add it here when it lands"}


def markdown(report: dict) -> str:
    lines = [
        "# Low-rank vs naive input noise",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; torch {report['torch']}, {report['threads']} threads; "
        f"large-matmul rate {report['matmul_gflops']:.1f} GFLOP/s (fp32 {report['matmul_size']}² GEMM).",
        "",
        "## Training step (FLM loss + backward + AdamW), L = 128",
        "",
        "Median of the per-process median step time over the repeats (range in brackets); peak activation "
        "memory = peak RSS during the steps minus RSS with parameters, gradients and AdamW state allocated.",
        "",
        "| preset | V | batch | naive s/step | low-rank s/step | speed-up | naive tok/s | low-rank tok/s "
        "| naive peak MB | low-rank peak MB | memory ratio | low-rank FLOP/s / matmul |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["train"]:
        n, lr = r["naive"], r["lowrank"]
        fmt = lambda s: f"{s['median']:.3g} [{s['min']:.3g}–{s['max']:.3g}]"  # noqa: E731
        flops = r["flops_per_token"] * lr["tokens_per_s"]
        lines.append(
            f"| {r['preset']} | {r['vocab']} | {r['batch']} | {fmt(n['step_s'])} | {fmt(lr['step_s'])} "
            f"| {r['speedup']:.2f}× | {n['tokens_per_s']:.0f} | {lr['tokens_per_s']:.0f} "
            f"| {fmt(n['peak_activation_mb'])} | {fmt(lr['peak_activation_mb'])} | {r['memory_ratio']:.2f}× "
            f"| {flops / 1e9:.1f} GFLOP/s = {flops / report['matmul_flops']:.0%} |"
        )
    s = report["sample"]
    if s:
        lines += [
            "",
            f"## Sampling tokens/s ({s[0]['preset']}, V = {s[0]['vocab']}, L = {s[0]['seq']}, "
            f"{s[0]['num_samples']} samples per call, one timed call)",
            "",
            "Steps marked * are derived from the measured per-step cost (see `measure_sampling`), not timed.",
            "",
            "| steps | FLM naive | FLM low-rank | ratio | FMLM naive | FMLM low-rank | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in s:
            lines.append(
                f"| {r['steps']}{'' if r['measured'] else '*'} | {r['flm_naive_tokens_per_s']:.1f} "
                f"| {r['flm_lowrank_tokens_per_s']:.1f} "
                f"| {r['flm_speedup']:.2f}× | {r['fmlm_naive_tokens_per_s']:.1f} "
                f"| {r['fmlm_lowrank_tokens_per_s']:.1f} | {r['fmlm_speedup']:.2f}× |"
            )
    lines += ["", f"## AR decoding: {report['ar']['status']} ({report['ar']['reason']})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/lowrank-cpu", help="output path without suffix")
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke test of every section")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_child(**json.loads(args.child))))
        return

    if args.quick:
        presets, batches, vocabs, seq, steps, repeats = ["tiny"], [2], [2048], 16, 1, 1
        measured, derived, num_samples, matmul_size = [1, 2, 4], [8], 1, 256
    else:
        presets, batches, vocabs, seq, steps, repeats = ["tiny", "lm1b-small"], [8, 2], [30522, 50258], 128, 2, 2
        measured, derived, num_samples, matmul_size = [1, 4, 16, 64], [256, 1024], 1, 2048
    started = time.perf_counter()
    matmul = matmul_flops(matmul_size, 5)
    report = {
        "command": "PYTHONPATH=src python benchmarks/bench_lowrank.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_size": matmul_size,
        "matmul_flops": matmul,
        "matmul_gflops": matmul / 1e9,
        "train": measure_train(presets, vocabs, seq, batches, steps, repeats),
        "sample": measure_sampling("tiny", vocabs[0], seq, num_samples, measured, derived),
        "ar": measure_ar("tiny", vocabs[0], seq),
    }
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out}.json and {out}.md in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
