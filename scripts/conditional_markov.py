"""Conditional distillation on the Markov language of the tests: a flow map distilled with and without clean context.

    PYTHONPATH=src:tests nice -n 10 python scripts/conditional_markov.py        # ~7 min on 2 busy cores

Teacher: the FLM of tests/conftest.py (``markov_flm``: 1,500 steps, no conditional training). Students: PSD, 1,000
steps from the teacher as conftest's ``markov_fmlm``, once without clean context (exactly that fixture) and once with
``condition_frac`` 0.5 of spans (the clean positions drawn by ``training_condition`` from the step's generator, as
``flowlm distill`` does for a teacher trained with them). Each student is sampled 1,000 times per case in 1 step and
4 steps (γ = 0 and γ = 1), with known positions clean and on their noisy path; printed: the share of illegal moves
overall (unconditional samples) and at the condition's boundaries, as in tests/test_conditioning_statistical.py
(prompt: symbols 0-5 given; infill: 0-5 and 11-15 given).
"""

from __future__ import annotations

import time

import torch
from conftest import MARKOV_BATCH, MARKOV_K, MARKOV_LENGTH, MARKOV_PSD_STEPS, MARKOV_TEACHER_STEPS, train_loop
from markov import MarkovChain, single_thread

from flowlm.methods.condition import Condition, training_condition
from flowlm.methods.flm import flm_loss
from flowlm.methods.fmlm import fmlm_sample, init_student, psd_loss
from flowlm.nn.dit import DiT, DiTConfig

SAMPLES, PROMPT, GAP = 1000, 6, (6, 11)


def teacher(chain: MarkovChain) -> DiT:
    """conftest's ``markov_flm``."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = DiTConfig(vocab_size=MARKOV_K, seq_len=MARKOV_LENGTH, hidden_size=64, n_blocks=2, n_heads=4, cond_dim=32,
                    dropout=0.0, pos_embed=True)  # fmt: skip
    net = DiT(cfg)
    ema = train_loop(net, MARKOV_TEACHER_STEPS, lambda _: flm_loss(
        net, chain.sample(MARKOV_BATCH, MARKOV_LENGTH, g), MARKOV_K, generator=g)["loss"], 2e-3)  # fmt: skip
    out = DiT(cfg)
    out.load_state_dict(ema.weights())
    return out.eval().requires_grad_(False)


def student(chain: MarkovChain, flm: DiT, condition_frac: float) -> DiT:
    """conftest's ``markov_fmlm``, with clean spans in ``condition_frac`` of the rows when it is > 0."""
    g = torch.Generator().manual_seed(0)
    net = init_student(flm).train()

    def psd(step):
        tokens = chain.sample(MARKOV_BATCH, MARKOV_LENGTH, g)
        clean = training_condition(MARKOV_BATCH, MARKOV_LENGTH, condition_frac, "spans", g) if condition_frac else None
        return psd_loss(net, flm, tokens, MARKOV_K, generator=g, sample_offset=step * MARKOV_BATCH, clean=clean)["loss"]

    ema = train_loop(net, MARKOV_PSD_STEPS, psd, 1e-3, betas=(0.9, 0.95))
    net.load_state_dict(ema.weights())
    return net.eval()


def illegal(chain: MarkovChain, tokens: torch.Tensor, at: int) -> float:
    delta = (tokens[:, at] - tokens[:, at - 1]) % MARKOV_K
    return 1.0 - ((delta == 1) | (delta == chain.jump % MARKOV_K)).float().mean().item()


def draw(net: DiT, steps: int, gamma: float, condition: Condition | None) -> torch.Tensor:
    return fmlm_sample(net, SAMPLES, MARKOV_LENGTH, MARKOV_K, steps, gamma=gamma,
                       generator=torch.Generator().manual_seed(9), condition=condition)  # fmt: skip


def main() -> None:
    start = time.perf_counter()
    chain = MarkovChain(MARKOV_K)
    with single_thread():
        flm = teacher(chain)
        students = {"without": student(chain, flm, 0.0), "with 0.5 spans": student(chain, flm, 0.5)}
        print(f"trained in {time.perf_counter() - start:.0f} s")
        real = chain.sample(SAMPLES, MARKOV_LENGTH, torch.Generator().manual_seed(7))
        prompt = torch.zeros(SAMPLES, MARKOV_LENGTH, dtype=torch.bool)
        prompt[:, :PROMPT] = True
        infill = torch.ones(SAMPLES, MARKOV_LENGTH, dtype=torch.bool)
        infill[:, GAP[0] : GAP[1]] = False
        print("| PSD with clean context | steps, γ | known positions | overall | prompt | infill left | infill right |")
        print("|---|---|---|---|---|---|---|")
        for name, net in students.items():
            for steps, gamma in ((1, 0.0), (4, 0.0), (4, 1.0)):
                overall = chain.statistics(draw(net, steps, gamma, None))["invalid"]
                for clean in (True, False):
                    continued = draw(net, steps, gamma, Condition(real, prompt, clean))
                    filled = draw(net, steps, gamma, Condition(real, infill, clean))
                    cells = [overall, illegal(chain, continued, PROMPT), illegal(chain, filled, GAP[0]),
                             illegal(chain, filled, GAP[1])]  # fmt: skip
                    print(f"| {name} | {steps}, {gamma:g} | {'clean' if clean else 'path'} | "
                          + " | ".join(f"{c:.3f}" for c in cells) + " |")  # fmt: skip
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
