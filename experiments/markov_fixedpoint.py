"""Issue 26, parts 2-3, on the Markov language: the fixed-point flow map against PSD from the plain FLM, at equal
distillation compute, per training seed.

Language, network and measure as in ``experiments/markov_selfcond.py`` (the tests' chain; invalid share of adjacent
pairs, 0 for the language, ± a 95% binomial interval over 30,000 pairs; entropy of each sample's symbol histogram).

* Teachers (``markov_selfcond.train``): the plain FLM (1,500 steps) and the self-conditioned FLM at the same compute
  (1,286 steps).
* ``probe``: how fast the iteration of the guided self-conditioning map converges on the self-conditioned teacher: the
  fixed-point residual after K = 2..32 teacher calls, plain (β = 1) and damped (β = ½), at w = 1, 2, 3, 5 (512 data
  sequences at stratified times).
* Distillation compute, counted in teacher-forward equivalents (TFE) per row, a backward costing two forwards:
  PSD costs 4.5 per row on average, a fixed-point step K + 3 (K teacher calls, the student's forward and backward).
  Budget per chain: 6,750 TFE per row of batch 128, i.e.
  - ``psd``: PSD from the plain FLM, 1,500 steps;
  - ``fp``: the fixed-point denoiser, 250 steps at K = 8, β = ½ (2,750; ``--damping 1``: plain Picard, ``fp-b1``),
    then ``fp-psd``: PSD from it, w drawn per micro-batch on [0.5, 5], 889 steps (4,000).
* Diagnostics of the fixed-point stage: ``fit``, KL(p* ‖ student) and KL(p* ‖ teacher without an estimate) at data
  states; ``exact-fp``, the Euler sampler whose denoiser is the fixed-point target itself (8 teacher calls a step),
  what a perfectly fitted student would give, at w = 1 and 2, 64 steps.
* Sampled, 2,000 sequences each (seed 1): flow maps at 1, 2 and 4 steps (``fp-psd`` at w = 1, 2, 3 and 5); the
  teachers at 64 steps (the self-conditioned one also at ``sc_guidance`` 2) and the fixed-point denoiser at 64 steps
  for every w.

Restartable (models ``*.pt`` and ``results.json`` under ``--out``). One intra-op thread.

    PYTHONPATH=src:tests OMP_NUM_THREADS=1 python experiments/markov_fixedpoint.py --out runs/markov-fixedpoint --seed 0
    PYTHONPATH=src:tests python experiments/markov_fixedpoint.py --out runs/markov-fixedpoint --report
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from conftest import MARKOV_BATCH as BATCH
from conftest import MARKOV_K as K
from conftest import MARKOV_LENGTH as LENGTH
from conftest import train_loop
from markov import MarkovChain, single_thread
from markov_claim import Study as ClaimStudy
from markov_claim import measure
from markov_selfcond import train as train_teacher

from flowlm.methods.common import interpolate, stratified_times, velocity
from flowlm.methods.fixed_point import fixed_point_loss, fixed_point_target, guidance_draws, init_fixed_point_student
from flowlm.methods.flm import flm_sample, time_grid
from flowlm.methods.fmlm import fmlm_sample, init_student, psd_loss
from flowlm.methods.lowrank import NaiveInputs
from flowlm.nn.dit import DiT, guidance_bound
from flowlm.schedule import get_schedule

BUDGET = 6750  # TFE per row
ITERATIONS = 8
FP_STEPS = 250
PSD_STEPS = round(BUDGET / 4.5)
FP_PSD_STEPS = round((BUDGET - FP_STEPS * (ITERATIONS + 3)) / 4.5)
SAMPLES, WS, MAP_STEPS = 2000, (1.0, 2.0, 3.0, 5.0), (1, 2, 4)
GUIDANCE_RANGE = (0.5, 5.0)


def distill_psd(teacher: DiT, chain: MarkovChain, steps: int, seed: int, guided: bool) -> DiT:
    g = torch.Generator().manual_seed(seed)
    student = init_student(teacher).train()

    def loss(step):
        w = guidance_draws(1, *GUIDANCE_RANGE, generator=g)[0] if guided else 1.0
        tokens = chain.sample(BATCH, LENGTH, g)
        with guidance_bound([student, teacher], w):
            return psd_loss(student, teacher, tokens, K, generator=g, sample_offset=step * BATCH)["loss"]

    ema = train_loop(student, steps, loss, 1e-3, betas=(0.9, 0.95))
    student.load_state_dict(ema.weights())
    return student.eval().requires_grad_(False)


def distill_fixed_point(teacher: DiT, chain: MarkovChain, seed: int, damping: float, steps: int) -> DiT:
    g = torch.Generator().manual_seed(seed)
    student = init_fixed_point_student(teacher).train()

    def loss(_step):
        out = fixed_point_loss(student, teacher, chain.sample(BATCH, LENGTH, g), K, generator=g,
                               iterations=ITERATIONS, damping=damping, guidance_range=GUIDANCE_RANGE)  # fmt: skip
        return out["loss"]

    ema = train_loop(student, steps, loss, 1e-3, betas=(0.9, 0.95))
    student.load_state_dict(ema.weights())
    return student.eval().requires_grad_(False)


def data_states(chain: MarkovChain, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """States [n, L, K] of ``n`` true sequences at stratified times, and the times [n] (fixed seed)."""
    g = torch.Generator().manual_seed(5)
    tokens = chain.sample(n, LENGTH, g)
    tau = stratified_times(n, g)
    t = get_schedule(K, "cpu").t_from_tau(tau)
    return interpolate(torch.randn(n, LENGTH, K, generator=g), torch.nn.functional.one_hot(tokens, K).float(), t), tau


@torch.no_grad()
def exact_fixed_point_sample(teacher: DiT, w: float, steps: int = 64) -> torch.Tensor:
    """The Euler sampler whose denoiser is the teacher's fixed-point target itself (K = 8 calls a step, β = ½): what
    a perfectly fitted fixed-point denoiser would sample. Seed 1, as every other row."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, LENGTH, K, generator=g)
    taus, ts = time_grid(K, steps)
    scale = torch.full((SAMPLES,), w)
    for k in range(steps):
        p, _ = fixed_point_target(teacher, NaiveInputs(), x, torch.full((SAMPLES,), taus[k]), scale, ITERATIONS, 0.5)
        if k < steps - 1:
            x = x + (ts[k + 1] - ts[k]) * velocity(p, x, ts[k])
    return p.argmax(-1)


@torch.no_grad()
def fit(teacher: DiT, student: DiT, chain: MarkovChain) -> dict:
    """KL(p* ‖ ·) per position, averaged over data states: of the fixed-point student and of the teacher without an
    estimate (where the student starts), at w = 1, 2, 3."""
    x, tau = data_states(chain)
    out = {}
    for w in (1.0, 2.0, 3.0):
        scale = torch.full((x.shape[0],), w)
        target, _ = fixed_point_target(teacher, NaiveInputs(), x, tau, scale, ITERATIONS, 0.5)
        for name, logits in (("student", student(x, tau, guidance=scale)), ("start", teacher(x, tau))):
            log_q = torch.log_softmax(logits, -1)
            out[f"{name}|w={w}"] = float((target * (target.clamp_min(1e-30).log() - log_q)).sum(-1).mean())
    return out


@torch.no_grad()
def probe(teacher: DiT, chain: MarkovChain) -> dict:
    """Mean fixed-point residual of the K-th iterate, by damping β, w and K, on data states at stratified times."""
    x, tau = data_states(chain)
    out = {}
    for beta in (1.0, 0.5):
        for w in (1.0, 2.0, 3.0, 5.0):
            for k in (2, 4, 8, 16, 32):
                _, residual = fixed_point_target(teacher, NaiveInputs(), x, tau, torch.full((512,), w), k, beta)
                out[f"beta={beta}|w={w}|K={k}"] = float(residual.mean())
    return out


class Study(ClaimStudy):
    """The claim study's results file and model cache, with every model named by its training seed."""

    def __init__(self, out: Path, seed: int, damping: float, fp_steps: int):
        super().__init__(out)
        self.seed, self.damping, self.fp_steps = seed, damping, fp_steps

    def model(self, name: str, build) -> DiT:
        return super().model(f"{name}-seed{self.seed}", build)

    def evaluate(self, name: str, steps: int, w: float | None, draw) -> None:
        key = f"{name}|{self.seed}|{steps}|{w}"
        if key not in self.results:
            self.results[key] = measure(self.chain, draw())
            self.save()
            print(key, self.results[key], flush=True)

    def run(self) -> None:
        chain, seed = self.chain, self.seed
        flm = self.model("flm", lambda: train_teacher(chain, False, seed))
        sc = self.model("flm-sc", lambda: train_teacher(chain, True, seed))
        if f"probe|{seed}" not in self.results or "beta=0.5|w=5.0|K=8" not in self.results[f"probe|{seed}"]:
            self.results[f"probe|{seed}"] = probe(sc, chain)
            self.save()
            print("probe", self.results[f"probe|{seed}"], flush=True)
        psd = self.model("psd", lambda: distill_psd(flm, chain, PSD_STEPS, seed, guided=False))
        tag = ("fp" if self.damping == 0.5 else f"fp-b{self.damping:g}") + (
            "" if self.fp_steps == FP_STEPS else f"-s{self.fp_steps}")  # fmt: skip
        fp = self.model(tag, lambda: distill_fixed_point(sc, chain, seed, self.damping, self.fp_steps))
        fp_psd = self.model(f"{tag}-psd", lambda: distill_psd(fp, chain, FP_PSD_STEPS, seed, guided=True))

        def gen():
            return torch.Generator().manual_seed(1)

        for steps in MAP_STEPS:
            self.evaluate("psd", steps, None, lambda s=steps: fmlm_sample(psd, SAMPLES, LENGTH, K, s, generator=gen()))
            for w in WS:
                def draw(s=steps, w=w):
                    with guidance_bound([fp_psd], w):
                        return fmlm_sample(fp_psd, SAMPLES, LENGTH, K, s, generator=gen())

                self.evaluate(f"{tag}-psd", steps, w, draw)
        self.evaluate("flm", 64, None, lambda: flm_sample(flm, SAMPLES, LENGTH, K, 64, generator=gen()))
        for w in (None, 2.0):
            self.evaluate("flm-sc", 64, w, lambda w=w: flm_sample(sc, SAMPLES, LENGTH, K, 64, generator=gen(),
                                                                  sc_guidance=w))  # fmt: skip
        for w in WS:
            def draw(w=w):
                with guidance_bound([fp], w):
                    return flm_sample(fp, SAMPLES, LENGTH, K, 64, generator=gen())

            self.evaluate(tag, 64, w, draw)
        if f"fit|{tag}|{seed}" not in self.results:
            self.results[f"fit|{tag}|{seed}"] = fit(sc, fp, chain)
            self.save()
        for w in (1.0, 2.0):
            self.evaluate("exact-fp", 64, w, lambda w=w: exact_fixed_point_sample(sc, w))


def report(results: dict) -> str:
    lines = ["| model | seed | steps | w | invalid share ± 95% | entropy |", "|---|---|---|---|---|---|"]
    for key, r in results.items():
        if key.startswith(("probe", "fit")):
            continue
        name, seed, steps, w = key.split("|")
        lines.append(f"| {name} | {seed} | {steps} | {'—' if w == 'None' else w} | {r['invalid']:.4f} ± {r['ci']:.4f} "
                     f"| {r['entropy']:.3f} |")  # fmt: skip
    lines += ["", "KL(p* ‖ ·) at data states (K = 8, β = ½): the fixed-point student, and the teacher without an "
              "estimate (its start):", "", "| student | seed | w = 1 | w = 2 | w = 3 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for key, r in results.items():
        if key.startswith("fit"):
            _, tag, seed = key.split("|")
            for name in ("student", "start"):
                cells = [f"{r[f'{name}|w={w}']:.4f}" for w in (1.0, 2.0, 3.0)]
                lines.append(f"| {tag if name == 'student' else 'start (teacher, no estimate)'} | {seed} | "
                             + " | ".join(cells) + " |")  # fmt: skip
    for key, probe_result in results.items():
        if key.startswith("probe"):
            lines += ["", f"Fixed-point residual ½|F(p) − p|₁ after K teacher calls, seed {key.split('|')[1]}:", "",
                      "| β | w | K=2 | K=4 | K=8 | K=16 | K=32 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
            for beta in ("1.0", "0.5"):
                for w in ("1.0", "2.0", "3.0", "5.0"):
                    cells = [f"{probe_result[f'beta={beta}|w={w}|K={k}']:.1e}" for k in (2, 4, 8, 16, 32)]
                    lines.append(f"| {beta} | {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/markov-fixedpoint"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--damping", type=float, default=0.5, help="β of the fixed-point iteration (models fp-b<β> "
                        "unless ½)")  # fmt: skip
    parser.add_argument("--fp-steps", type=int, default=FP_STEPS, help="steps of the fixed-point stage (a diagnostic "
                        f"beyond the equal-compute budget unless {FP_STEPS}: models fp-s<steps>)")  # fmt: skip
    parser.add_argument("--report", action="store_true", help="print the tables from results.json")
    args = parser.parse_args()
    study = Study(args.out, args.seed, args.damping, args.fp_steps)
    if not args.report:
        with single_thread():
            study.run()
    print(report(study.results))


if __name__ == "__main__":
    main()
