"""Training-step cost of a self-conditioned FLM against the plain FLM (issue 26), measured in one run on one machine.

One step = the FLM loss (for the self-conditioned model: the two-pass scheme, a gradient-free first pass for half the
sequences), backward and an AdamW update, on the same batch, alternating the two models step by step so that drifts
of the machine hit both alike. Reports the median seconds per step of each and their ratio with a 95% interval
(bootstrap over the paired steps). The expected ratio is about 1 + (1/2)·(1/3) = 1.17: half the sequences get one
extra forward, a third of a forward-and-backward.

    PYTHONPATH=src python benchmarks/bench_self_condition.py [--preset tiny] [--vocab 4096] [--batch 32] [--steps 30]
        [--json benchmarks/results/self-condition-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from flowlm.config import load_preset
from flowlm.methods.flm import flm_loss
from flowlm.nn.dit import DiT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model (after 3 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_preset(args.preset)
    seq = cfg.data.seq_len
    nets, opts = {}, {}
    for name, sc in (("plain", False), ("self-conditioned", True)):
        torch.manual_seed(0)
        model = cfg.model.dit(args.vocab, seq)
        model.self_condition = sc
        nets[name] = DiT(model).train()
        opts[name] = torch.optim.AdamW(nets[name].parameters(), lr=1e-4)
    tokens = torch.randint(0, args.vocab, (args.batch, seq), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in nets}
    for step in range(args.steps + 3):
        for name, net in nets.items():
            start = time.perf_counter()
            loss = flm_loss(net, tokens, args.vocab, generator=torch.Generator().manual_seed(step))["loss"]
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if step >= 3:
                times[name].append(time.perf_counter() - start)
    ratios = [s / p for p, s in zip(times["plain"], times["self-conditioned"], strict=True)]
    g = torch.Generator().manual_seed(1)
    boot = sorted(statistics.median([ratios[i] for i in torch.randint(0, len(ratios), (len(ratios),), generator=g)])
                  for _ in range(2000))  # fmt: skip
    result = {
        "preset": args.preset, "vocab": args.vocab, "batch": args.batch, "seq_len": seq, "threads": args.threads,
        "steps": args.steps, "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_median": statistics.median(ratios), "ratio_ci95": [boot[50], boot[1949]],
        "machine": f"{torch.get_num_threads()} thread(s), torch {torch.__version__}",
    }  # fmt: skip
    print(f"{args.preset}, V = {args.vocab}, batch {args.batch} x {seq}, {args.threads} thread(s), {args.steps} steps:")
    for name, value in result["median_s"].items():
        print(f"  {name:17s} {value:.4f} s/step")
    print(f"  ratio {result['ratio_median']:.3f} [{boot[50]:.3f}-{boot[1949]:.3f}]")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
