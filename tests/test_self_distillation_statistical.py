"""Statistical test of SDTT and DCD on the Markov language: is a distilled model at k steps measurably closer to its
teacher at many steps than the teacher at k steps is?

Teachers: conftest ``markov_discrete`` (MDLM 400 steps, DUO 1,000 steps). One round each, ``teacher_steps = 4``: the
student learns to do in 2 steps what the teacher does in 4; 300 AdamW steps of batch 128 (lr 1e-3, betas (0.9, 0.95),
clip 1, EMA 0.99), student initialized from the teacher. Samples: 2,000 sequences of 16 symbols each (DUO: greedy
tail). Distance to the many-step teacher: the share of invalid adjacent pairs (the language has none), whose 64-step
value is the reference.

The claim, fixed before measuring: the student's 2-step invalid share is below the teacher's 2-step one by more than
4 standard errors of their difference (binomial over 30,000 pairs each). Measured (2026-12-07): **DCD** 0.170 against
its teacher's 0.395 (teacher at 4 steps: 0.221, at 64: 0.037) — the claim holds. **SDTT** 0.442 against 0.447 — no
measurable change, and none at 4 steps from an 8-step teacher either (0.260 vs 0.264), nor with the forward KL. That
is what SDTT's target implies for a teacher close to the exact posterior: MDLM predictions are a martingale, so the
target averages to the teacher's own one-step prediction (``tests/test_self_distillation.py`` checks this on an exact
teacher), and a factorized student cannot hold the correlations of positions revealed together; the reverse KL only
sharpens it. So for SDTT this test asserts, after the measurement, only that the student is not worse than its teacher
beyond 4 standard errors; the gain it reports on text is a finding of docs/results.md, not of this language.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import MARKOV_BATCH, MARKOV_K, MARKOV_LENGTH, train_loop
from known_warnings import TORCH_FORWARD_AD_JIT
from markov import single_thread

from flowlm.methods.dcd import dcd_loss
from flowlm.methods.duo import duo_sample
from flowlm.methods.mdlm import mdlm_sample
from flowlm.methods.sdtt import sdtt_loss

pytestmark = [pytest.mark.slow, TORCH_FORWARD_AD_JIT]

TEACHER_STEPS, DISTILL_STEPS, SAMPLES = 4, 300, 2000
LOSSES = {"mdlm": sdtt_loss, "duo": dcd_loss}
SAMPLERS = {"mdlm": mdlm_sample, "duo": duo_sample}


@pytest.fixture(scope="module", params=["mdlm", "duo"])
def distilled(request, markov_discrete):
    kind = request.param
    chain, nets = markov_discrete
    teacher = nets[kind]
    with single_thread():
        g = torch.Generator().manual_seed(0)
        student = copy.deepcopy(teacher).train().requires_grad_(True)

        def loss(step):
            tokens = chain.sample(MARKOV_BATCH, MARKOV_LENGTH, g)
            return LOSSES[kind](student, teacher, tokens, MARKOV_K, TEACHER_STEPS, generator=g)["loss"]

        ema = train_loop(student, DISTILL_STEPS, loss, 1e-3, betas=(0.9, 0.95))
        student.load_state_dict(ema.weights())
        student.eval()

        def invalid(net, steps):
            tokens = SAMPLERS[kind](net, SAMPLES, MARKOV_LENGTH, MARKOV_K, steps, torch.Generator().manual_seed(1))
            return chain.statistics(tokens)["invalid"]

        shares = {"teacher@64": invalid(teacher, 64), "teacher@4": invalid(teacher, 4),
                  "teacher@2": invalid(teacher, 2), "student@2": invalid(student, 2)}  # fmt: skip
    return kind, shares


def test_two_distilled_steps_move_toward_the_many_step_teacher(distilled):
    kind, shares = distilled
    print(f"\n{kind} {'SDTT' if kind == 'mdlm' else 'DCD'} invalid shares: {shares}")
    pairs = SAMPLES * (MARKOV_LENGTH - 1)
    a, b = shares["teacher@2"], shares["student@2"]
    se = math.sqrt((a * (1 - a) + b * (1 - b)) / pairs)
    if kind == "duo":
        assert a - b > 4 * se, shares
    else:  # SDTT: no measurable change on this language (module docstring); it must not get worse
        assert b - a < 4 * se, shares
