"""Measure two fidelity choices on the Markov language of the statistical tests (tests/markov.py):
PSD targets with the student's dropout on or off, and the paper's vs the exact γ-sampler.

Setup as tests/test_fmlm_statistical.py (2-block width-64 DiT teacher, 1,500 FLM steps; 1,000 PSD steps; EMA
0.99 with warm-up; 1,000 samples of 16 symbols per sampler), except that the network has dropout 0.1 (the
reference's; the test's network has none, so there the two target settings coincide). One thread.

    PYTHONPATH=src:tests nice -n 10 python scripts/fidelity_markov.py [--psd-steps 1000] [--seed 0]

Prints, per student and sampler: the invalid-pair share (0 for the language itself), its standard error
sqrt(p(1−p)/15000), the +1 share among valid moves (0.7 for the language) and the unigram total variation.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from conftest import MARKOV_BATCH as BATCH
from conftest import MARKOV_K as K
from conftest import MARKOV_LENGTH as LENGTH
from conftest import MARKOV_TEACHER_STEPS, train_loop
from markov import MarkovChain, single_thread

from flowlm.methods.flm import flm_loss, flm_sample
from flowlm.methods.fmlm import fmlm_sample, init_student, psd_loss
from flowlm.nn.dit import DiT, DiTConfig

SAMPLES = 1000


def train_teacher(seed: int, dropout: float):
    torch.manual_seed(seed)
    chain = MarkovChain(K)
    g = torch.Generator().manual_seed(seed)
    cfg = DiTConfig(vocab_size=K, seq_len=LENGTH, hidden_size=64, n_blocks=2, n_heads=4, cond_dim=32,
                    dropout=dropout, pos_embed=True)  # fmt: skip
    net = DiT(cfg).train()

    def loss(_step):
        return flm_loss(net, chain.sample(BATCH, LENGTH, g), K, generator=g)["loss"]

    ema = train_loop(net, MARKOV_TEACHER_STEPS, loss, 2e-3)
    teacher = DiT(cfg)
    teacher.load_state_dict(ema.weights())
    return chain, teacher.eval().requires_grad_(False)


def distill(chain, teacher, steps: int, target_dropout: bool, seed: int):
    torch.manual_seed(seed + 1)
    g = torch.Generator().manual_seed(seed)
    student = init_student(teacher).train()

    def psd(step):
        tokens = chain.sample(BATCH, LENGTH, g)
        out = psd_loss(student, teacher, tokens, K, generator=g, sample_offset=step * BATCH,
                       target_dropout=target_dropout)  # fmt: skip
        return out["loss"]

    ema = train_loop(student, steps, psd, 1e-3, betas=(0.9, 0.95))
    student.load_state_dict(ema.weights())
    return student.eval()


def report(name: str, chain, tokens) -> None:
    s = chain.statistics(tokens)
    se = math.sqrt(s["invalid"] * (1 - s["invalid"]) / (tokens.shape[0] * (tokens.shape[1] - 1)))
    print(f"{name:<44} invalid {s['invalid']:.4f} ± {se:.4f}  +1 share {s['step_share']:.3f}  "
          f"unigram TV {s['unigram_tv']:.4f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--psd-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with single_thread():
        start = time.perf_counter()
        chain, teacher = train_teacher(args.seed, dropout=0.1)
        print(f"teacher: {MARKOV_TEACHER_STEPS} steps, {time.perf_counter() - start:.0f} s", flush=True)
        for steps in (1, 128):
            tokens = flm_sample(teacher, SAMPLES, LENGTH, K, steps, generator=torch.Generator().manual_seed(1))
            report(f"FLM teacher, {steps} steps", chain, tokens)
        for target_dropout in (True, False):
            start = time.perf_counter()
            student = distill(chain, teacher, args.psd_steps, target_dropout, args.seed)
            label = "dropout" if target_dropout else "eval"
            print(f"student, PSD targets {label}: {args.psd_steps} steps, {time.perf_counter() - start:.0f} s")
            runs = [(1, 0.0, "paper"), (2, 0.0, "paper"), (4, 0.0, "paper"), (4, 1.0, "paper")]
            runs += [(4, g, m) for g in (0.5, 0.8) for m in ("paper", "exact")]
            runs += [(8, g, m) for g in (0.5, 0.8) for m in ("paper", "exact")]
            for n, gamma, mode in runs:
                tokens = fmlm_sample(student, SAMPLES, LENGTH, K, n, gamma=gamma, gamma_mode=mode,
                                     generator=torch.Generator().manual_seed(1))  # fmt: skip
                report(f"  targets {label}: {n} steps γ={gamma:g} {mode}", chain, tokens)


if __name__ == "__main__":
    main()
