"""Seconds per sample: FMLM at 1, 2, 4 steps vs FLM at 64, 256, 1024 steps (same model size, one run).

Sampling cost does not depend on what the weights are, so both models are the same DiT
configuration with random weights (the FMLM has the second time embedding). Every timing is the
minimum over ``--repeats`` runs of ``--num-samples`` samples, measured in this one process.

    python benchmarks/bench_sampling.py --preset tiny --out benchmarks/results/sampling-tiny.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from flowlm.config import load_preset
from flowlm.methods.flm import flm_sample
from flowlm.methods.fmlm import fmlm_sample
from flowlm.nn.dit import DiT


def seconds_per_sample(fn, num_samples: int, repeats: int) -> float:
    fn()  # warm-up: schedule tables, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best / num_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--flm-steps", default="64,256,1024")
    parser.add_argument("--fmlm-steps", default="1,2,4")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    cfg = load_preset(args.preset)
    flm_cfg = cfg.model.dit(args.vocab_size, cfg.data.seq_len)
    torch.manual_seed(0)
    flm = DiT(flm_cfg).to(args.device).eval()
    fmlm_cfg = cfg.model.dit(args.vocab_size, cfg.data.seq_len)
    fmlm_cfg.time_inputs = 2
    fmlm = DiT(fmlm_cfg).to(args.device).eval()
    n, L, V = args.num_samples, cfg.data.seq_len, args.vocab_size

    rows = []
    for steps in [int(s) for s in args.fmlm_steps.split(",")]:
        sec = seconds_per_sample(lambda s=steps: fmlm_sample(fmlm, n, L, V, s, device=args.device), n, args.repeats)
        rows.append({"method": "fmlm", "steps": steps, "seconds_per_sample": sec})
        print(rows[-1], flush=True)
    for steps in [int(s) for s in args.flm_steps.split(",")]:
        sec = seconds_per_sample(lambda s=steps: flm_sample(flm, n, L, V, s, device=args.device), n, args.repeats)
        rows.append({"method": "flm", "steps": steps, "seconds_per_sample": sec})
        print(rows[-1], flush=True)
    one_step = rows[0]["seconds_per_sample"]
    for row in rows:
        row["ratio_to_fmlm_1_step"] = row["seconds_per_sample"] / one_step
    report = {
        "preset": args.preset,
        "vocab_size": V,
        "seq_len": L,
        "num_samples": n,
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print("| method | steps | s/sample | × FMLM 1 step |\n|---|---|---|---|")
    for row in rows:
        sec, ratio = row["seconds_per_sample"], row["ratio_to_fmlm_1_step"]
        print(f"| {row['method']} | {row['steps']} | {sec:.4f} | {ratio:.0f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
