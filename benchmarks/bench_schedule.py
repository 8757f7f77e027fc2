"""Accuracy and speed of the t <-> tau tables in flowlm.schedule.

Usage: python benchmarks/bench_schedule.py [--vocabs 2 27 30522 ...] [--random 5] [--device cpu]

For each vocabulary size prints the table build time and the worst absolute errors against the
float64 quadrature oracle (exact_tau_from_t / exact_t_from_tau):

  fwd64/fwd32   |tau_from_t(t) - T(t)|                  float64 / float32 inputs
  inv64/inv32   |t_from_tau(tau) - T^-1(tau)|           (in t)
  rt64/rt32     |T(t_from_tau(tau)) - tau|              round trip through the exact forward map

then the per-call latency of tau_from_t / t_from_tau for a few batch sizes.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from flowlm import schedule as S

DEFAULT_VOCABS = [2, 3, 5, 27, 100, 1000, 4096, 30522, 50257, 50258]


def _points(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    t = torch.cat(
        [
            torch.rand(4000, generator=g, dtype=f64),
            torch.linspace(0, 1, 4001, dtype=f64),
            torch.logspace(-12, 0, 500, dtype=f64),
            1 - torch.logspace(-12, 0, 500, dtype=f64),
            0.55 + 0.4 * torch.rand(4000, generator=g, dtype=f64),
        ]
    ).clamp(0, 1)
    tau = torch.cat(
        [
            torch.rand(4000, generator=g, dtype=f64),
            torch.linspace(0, 1, 2001, dtype=f64),
            torch.logspace(-15, 0, 300, dtype=f64),
            1 - torch.logspace(-15, 0, 300, dtype=f64),
        ]
    ).clamp(0, 1)
    return t, tau


def accuracy(vocab: int) -> dict[str, float]:
    builds = []
    for _ in range(3):  # best of 3: the build is deterministic, the machine may be busy
        S._build_tables.cache_clear()
        start = time.perf_counter()
        S._build_tables(vocab)
        builds.append(time.perf_counter() - start)
    build = min(builds)
    sched = S.TimeSchedule(vocab)
    t, tau = _points(vocab)
    out = {"build_ms": 1e3 * build}
    t32 = t.float().double()
    out["fwd64"] = (sched.tau_from_t(t) - S.exact_tau_from_t(t, vocab)).abs().max().item()
    fwd32 = sched.tau_from_t(t32.float()).double()
    out["fwd32"] = (fwd32 - S.exact_tau_from_t(t32, vocab)).abs().max().item()
    ti64 = sched.t_from_tau(tau)
    out["inv64"] = (ti64 - S.exact_t_from_tau(tau, vocab)).abs().max().item()
    tau32 = tau.float().double()
    ti32 = sched.t_from_tau(tau32.float())
    out["inv32"] = (ti32.double() - S.exact_t_from_tau(tau32, vocab)).abs().max().item()
    out["rt64"] = (S.exact_tau_from_t(ti64, vocab) - tau).abs().max().item()
    out["rt32"] = (S.exact_tau_from_t(ti32, vocab) - tau32).abs().max().item()
    return out


def latency(device: str, vocab: int = 50257) -> None:
    sched = S.get_schedule(vocab, device)
    for n in (256, 65536, 1 << 20):
        for dtype in (torch.float32, torch.float64):
            x = torch.rand(n, device=device, dtype=dtype)
            for name, fn in (("tau_from_t", sched.tau_from_t), ("t_from_tau", sched.t_from_tau)):
                fn(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                reps = 20
                start = time.perf_counter()
                for _ in range(reps):
                    fn(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                us = 1e6 * (time.perf_counter() - start) / reps
                print(f"  {name:10s} n={n:8d} {str(dtype):14s} {us:10.1f} us/call")


def _row(res: dict[str, float], cols: list[str]) -> str:
    return " ".join(f"{res[c]:9.1f}" if c == "build_ms" else f"{res[c]:9.1e}" for c in cols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", type=int, nargs="*", default=DEFAULT_VOCABS)
    parser.add_argument("--random", type=int, default=5, help="extra random vocab sizes in [2, 50258]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--latency-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vocabs = list(args.vocabs) + random.Random(args.seed).sample(range(2, 50259), args.random)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.latency_only:
        latency(args.device)
        return
    cols = ["build_ms", "fwd64", "fwd32", "inv64", "inv32", "rt64", "rt32"]
    print(f"{'V':>7s} " + " ".join(f"{c:>9s}" for c in cols))
    worst = dict.fromkeys(cols, 0.0)
    for v in vocabs:
        res = accuracy(v)
        worst = {c: max(worst[c], res[c]) for c in cols}
        print(f"{v:7d} " + _row(res, cols))
    print(f"{'worst':>7s} " + _row(worst, cols))
    print(f"latency on {args.device}:")
    latency(args.device)


if __name__ == "__main__":
    main()
