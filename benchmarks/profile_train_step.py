"""Where one training step's time goes, without Lightning: the method's loss, backward, AdamW and the EMA update,
timed apart, then the top operators of a few profiled steps (torch.profiler). For a GPU machine (the issue-17 run
on an H200 trained the 9.6M-parameter demo FLM at ~145k tokens/s, far below its FLOPs); on the CPU it runs too.

Usage: ``PYTHONPATH=src python benchmarks/profile_train_step.py --methods flm,ar --batch 256 [--compile]``
(prints a table per method; ``--json PATH`` also writes the timings).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from flowlm.config import apply_overrides, load_preset
from flowlm.training.module import FlowLMModule


def synced(fn, device: str) -> float:
    """Seconds ``fn()`` takes, its queued device work included."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def profile(method: str, args) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = apply_overrides(
        load_preset(args.preset),
        [f"train.method={method}", f"train.batch_size={args.batch}", f"model.dropout={args.dropout}",
         f"model.attn_backend={args.attn}"],
    )  # fmt: skip
    module = FlowLMModule(cfg, args.vocab).to(device)
    net = torch.compile(module.net) if args.compile else module.net
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, cfg.data.seq_len), generator=g, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    state = {}

    def loss():
        with autocast:
            state["loss"] = module.method_loss(net, tokens, generator=g, rows=(0, args.batch))["loss"]

    parts = {"loss": loss, "backward": lambda: state["loss"].backward(), "adamw": opt.step,
             "zero_grad": opt.zero_grad, "ema": module.ema.update}  # fmt: skip
    for _ in range(args.warmup):
        for fn in parts.values():
            fn()
    times = {name: 0.0 for name in parts}
    for _ in range(args.steps):
        for name, fn in parts.items():
            times[name] += synced(fn, device)
    per_step = {name: t / args.steps for name, t in times.items()}
    total = sum(per_step.values())
    print(f"\n== {method}: batch {args.batch} x {cfg.data.seq_len}, {device}, attn {args.attn}, compile {args.compile}")
    for name, t in per_step.items():
        print(f"{name:>10}: {t * 1e3:8.2f} ms")
    print(f"{'step':>10}: {total * 1e3:8.2f} ms = {args.batch * cfg.data.seq_len / total:,.0f} tokens/s")
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else []
    )
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            for fn in parts.values():
                fn()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    if device == "cuda":
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    return {"ms": {k: round(v * 1e3, 3) for k, v in per_step.items()}, "tokens_per_s": args.batch * 128 / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="flm,ar")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--attn", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {m: profile(m, args) for m in args.methods.split(",")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
