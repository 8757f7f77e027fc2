"""The paper's headline claim on the Markov language (issue 25): one FMLM step against the few-step quality of
distilled discrete diffusion (MDLM + SDTT, DUO + DCD), raw and at matched entropy.

Language: the chain of the statistical tests (tests/markov.py: K = 8 symbols, i -> i+1 w.p. 0.7, else i+3; 16 per
sequence). Quality is a count, not a judge's opinion: the share of adjacent pairs that are not a chain move (0 for the
language). Entropy as ``flowlm eval`` measures it: the mean over samples of the entropy of each sample's symbol
histogram (nats); the language's own value is measured on 4,000 true sequences.

Same network for every model (the statistical tests' 2-block width-64 DiT, no dropout) and the same compute:

* Teachers: FLM, MDLM and DUO, 1,500 AdamW steps each of batch 128 at lr 2e-3, EMA 0.99 (the FLM is the tests'
  ``markov_flm``; DUO spends its first half on the Gaussian-relaxation curriculum, its default share).
* Students, at the compute of one PSD run of the tests (1,000 steps of batch 128, 4.5 teacher-forward equivalents per
  row on average: PSD costs 4 per diagonal row and 5 per off-diagonal one, half each): FMLM = PSD, 1,000 steps;
  SDTT (5 per row: two teacher sub-steps and the student's forward and backward) and DCD (4 per row: one teacher step,
  the student's forward at s and its forward and backward at t) in 6 rounds from a 64-step teacher (64 -> 1 step),
  150 and 188 steps a round (4,500 / 5 / 6 and 4,500 / 4 / 6). Each round starts from the last round's student
  and distils toward it; lr 1e-3, betas (0.9, 0.95), EMA 0.99 as the tests' distillations.
* Sampled: 2,000 sequences per (model, steps, temperature), temperatures 0.6 / 0.8 / 1.0 and untempered. A student of
  round r is sampled at 64 / 2^r steps (its own step count); teachers at 64 and at the students' step counts.
  DUO with its Greedy-Tail (its default).

Matched entropy: for each row the invalid share is interpolated linearly in entropy between the bracketing tempered
points at the language's entropy (no extrapolation: "—" when the row does not reach it). Intervals are binomial
(95%, over 30,000 pairs) on the raw points; the interpolated value carries the larger interval of its two points.

Restartable: models are saved under ``--out`` (``*.pt``, git-ignored) and results to ``results.json`` as they come;
a finished stage is skipped. One intra-op thread.

    PYTHONPATH=src:tests OMP_NUM_THREADS=1 python experiments/markov_claim.py --out runs/markov-claim
    PYTHONPATH=src:tests python experiments/markov_claim.py --out runs/markov-claim --report
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from conftest import MARKOV_BATCH as BATCH
from conftest import MARKOV_K as K
from conftest import MARKOV_LENGTH as LENGTH
from conftest import train_loop
from markov import MarkovChain, single_thread

from flowlm.methods.dcd import dcd_loss
from flowlm.methods.duo import Curriculum, duo_loss, duo_sample
from flowlm.methods.flm import flm_loss, flm_sample
from flowlm.methods.fmlm import fmlm_sample, init_student, psd_loss
from flowlm.methods.mdlm import mdlm_loss, mdlm_sample
from flowlm.methods.sdtt import sdtt_loss
from flowlm.methods.tempering import OFF, Tempering
from flowlm.nn.dit import DiT, DiTConfig

TEACHER_STEPS, PSD_STEPS, ROUNDS, TEACHER_SAMPLER_STEPS = 1500, 1000, 6, 64
ROUND_STEPS = {"sdtt": round(PSD_STEPS * 4.5 / 5 / ROUNDS), "dcd": round(PSD_STEPS * 4.5 / 4 / ROUNDS)}
SAMPLES, DATA_SAMPLES = 2000, 4000
TEMPERATURES = (None, 0.6, 0.8, 1.0)  # None: the untempered sampler


def network(kind: str) -> DiT:
    options = {} if kind == "flm" else {"logit_cap": None, "mask_input": kind == "mdlm"}  # raw logits, as in the tests
    return DiT(DiTConfig(vocab_size=K, seq_len=LENGTH, hidden_size=64, n_blocks=2, n_heads=4, cond_dim=32,
                         dropout=0.0, pos_embed=True, **options))  # fmt: skip


def train_teacher(kind: str, chain: MarkovChain) -> DiT:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = network(kind)

    def loss(step):
        tokens = chain.sample(BATCH, LENGTH, g)
        if kind == "flm":
            return flm_loss(net, tokens, K, generator=g)["loss"]
        if kind == "mdlm":
            return mdlm_loss(net, tokens, K, generator=g)["loss"]
        relax = Curriculum() if step < TEACHER_STEPS // 2 else None
        return duo_loss(net, tokens, K, generator=g, curriculum=relax)["loss"]

    ema = train_loop(net, TEACHER_STEPS, loss, 2e-3)
    net.load_state_dict(ema.weights())
    return net.eval().requires_grad_(False)


def distill_psd(teacher: DiT, chain: MarkovChain) -> DiT:
    g = torch.Generator().manual_seed(0)
    student = init_student(teacher).train()

    def loss(step):
        tokens = chain.sample(BATCH, LENGTH, g)
        return psd_loss(student, teacher, tokens, K, generator=g, sample_offset=step * BATCH)["loss"]

    ema = train_loop(student, PSD_STEPS, loss, 1e-3, betas=(0.9, 0.95))
    student.load_state_dict(ema.weights())
    return student.eval().requires_grad_(False)


def distill_round(recipe: str, teacher: DiT, teacher_steps: int, chain: MarkovChain, seed: int) -> DiT:
    g = torch.Generator().manual_seed(seed)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    fn = sdtt_loss if recipe == "sdtt" else dcd_loss

    def loss(_step):
        return fn(student, teacher, chain.sample(BATCH, LENGTH, g), K, teacher_steps, generator=g)["loss"]

    ema = train_loop(student, ROUND_STEPS[recipe], loss, 1e-3, betas=(0.9, 0.95))
    student.load_state_dict(ema.weights())
    return student.eval().requires_grad_(False)


def sample(kind: str, net: DiT, steps: int, temperature: float | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    tempering = OFF if temperature is None else Tempering(temperature=temperature)
    if kind == "flm":
        return flm_sample(net, SAMPLES, LENGTH, K, steps, generator=g, tempering=tempering)
    if kind == "fmlm":
        return fmlm_sample(net, SAMPLES, LENGTH, K, steps, generator=g, tempering=tempering)
    if kind == "mdlm":
        return mdlm_sample(net, SAMPLES, LENGTH, K, steps, g, tempering=tempering)
    return duo_sample(net, SAMPLES, LENGTH, K, steps, g, tempering=tempering)


def sample_entropy(tokens: torch.Tensor) -> float:
    """Mean over samples of the entropy (nats) of each sample's symbol histogram (``flowlm eval``'s entropy)."""
    counts = torch.nn.functional.one_hot(tokens, K).sum(1).double()
    p = counts / counts.sum(-1, keepdim=True)
    return float(-(p * torch.where(p > 0, p.log(), 0.0)).sum(-1).mean())


def measure(chain: MarkovChain, tokens: torch.Tensor) -> dict:
    stats = chain.statistics(tokens)
    pairs = tokens.shape[0] * (LENGTH - 1)
    p = stats["invalid"]
    return {"invalid": p, "ci": 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / pairs), "entropy": sample_entropy(tokens),
            "distinct": stats["distinct"]}  # fmt: skip


class Study:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.json"
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.chain = MarkovChain(K)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1))
        tmp.replace(self.path)

    def model(self, name: str, build) -> DiT:
        path = self.out / f"{name}.pt"
        if path.exists():
            return torch.load(path, weights_only=False)
        start = time.perf_counter()
        net = build()
        torch.save(net, path)
        print(f"{name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        return net

    def evaluate(self, row: str, kind: str, net: DiT, steps: int) -> None:
        for temperature in TEMPERATURES:
            key = f"{row}|{steps}|{temperature}"
            if key not in self.results:
                self.results[key] = measure(self.chain, sample(kind, net, steps, temperature))
                self.save()
                print(key, self.results[key], flush=True)

    def run(self) -> None:
        if "data" not in self.results:
            self.results["data"] = measure(self.chain, self.chain.sample(DATA_SAMPLES, LENGTH,
                                                                         torch.Generator().manual_seed(7)))  # fmt: skip
            self.save()
        teachers = {kind: self.model(kind, lambda kind=kind: train_teacher(kind, self.chain))
                    for kind in ("flm", "mdlm", "duo")}  # fmt: skip
        fmlm = self.model("fmlm-psd", lambda: distill_psd(teachers["flm"], self.chain))
        for steps in (1, 2, 4):
            self.evaluate("FMLM (PSD)", "fmlm", fmlm, steps)
        self.evaluate("FLM teacher", "flm", teachers["flm"], TEACHER_SAMPLER_STEPS)
        for recipe, kind, title in (("sdtt", "mdlm", "MDLM"), ("dcd", "duo", "DUO")):
            teacher = teachers[kind]
            for steps in (TEACHER_SAMPLER_STEPS, 8, 4, 2, 1):
                self.evaluate(f"{title} teacher", kind, teachers[kind], steps)
            for r in range(1, ROUNDS + 1):
                steps = TEACHER_SAMPLER_STEPS >> r
                args = (recipe, teacher, 2 * steps, self.chain, r)
                student = self.model(f"{recipe}-round{r}", lambda args=args: distill_round(*args))
                if steps <= 8:
                    self.evaluate(f"{title} + {recipe.upper()}", kind, student, steps)
                teacher = student


def interpolate(points: list[dict], target: float) -> tuple[float, float] | None:
    """The invalid share at entropy ``target``, linear between the bracketing points (None when not bracketed)."""
    points = sorted(points, key=lambda p: p["entropy"])
    for lo, hi in zip(points, points[1:], strict=False):
        if lo["entropy"] <= target <= hi["entropy"] and hi["entropy"] > lo["entropy"]:
            w = (target - lo["entropy"]) / (hi["entropy"] - lo["entropy"])
            return lo["invalid"] + w * (hi["invalid"] - lo["invalid"]), max(lo["ci"], hi["ci"])
    return None


def report(results: dict) -> str:
    data = results["data"]
    target = data["entropy"]
    rows: dict[tuple[str, int], dict] = {}
    for key, value in results.items():
        if key == "data":
            continue
        row, steps, temperature = key.split("|")
        rows.setdefault((row, int(steps)), {})[temperature] = value
    lines = [f"Markov language: entropy {target:.3f} nats per sample (invalid 0). Invalid share ± 95% (entropy).", "",
             "| model | steps | untempered | T 0.6 | T 0.8 | T 1.0 | at entropy " + f"{target:.3f} |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (row, steps), by_t in rows.items():
        cells = [f"{by_t[t]['invalid']:.3f} ± {by_t[t]['ci']:.3f} ({by_t[t]['entropy']:.3f})" if t in by_t else "—"
                 for t in ("None", "0.6", "0.8", "1.0")]  # fmt: skip
        tempered = [by_t[t] for t in ("0.6", "0.8", "1.0") if t in by_t]
        matched = interpolate(tempered, target)
        cells.append("—" if matched is None else f"{matched[0]:.3f} ± {matched[1]:.3f}")
        lines.append(f"| {row} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/markov-claim"))
    parser.add_argument("--report", action="store_true", help="print the tables from results.json")
    args = parser.parse_args()
    study = Study(args.out)
    if not args.report:
        with single_thread():
            study.run()
    print(report(study.results))


if __name__ == "__main__":
    main()
