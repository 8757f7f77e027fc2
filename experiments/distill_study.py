"""Distillation study (issue 18): one-step quality of the flow map against distillation compute.

Two synthetic languages whose valid output is known exactly (so quality is a count, not a judge's opinion):

* ``markov``: the first-order chain of the statistical tests (tests/markov.py: K = 8, i -> i+1 w.p. 0.7, else
  i+3); invalid = adjacent pairs that are not a chain move (15 per sequence of 16).
* ``order2``: a second-order chain on K = 8 symbols drawn once from a fixed seed: after the pair (a, b) the next
  symbol is one of two symbols chosen for that pair, with a probability drawn in [0.2, 0.8]; the first two
  symbols are uniform. Invalid = triples not allowed by the chain (14 per sequence of 16).

Per language ONE teacher is trained once (the FLM of tests/conftest.py: 2-block, width-64 DiT, 1,500 AdamW steps
of batch 128 at lr 2e-3, EMA 0.99) and reused by every distillation. Each distillation is a ``flowlm`` API call
chain: a :class:`flowlm.config.RunConfig` (the ``flowlm distill`` defaults of the tiny preset, then the factor
under study), the registered method's network and loss (``registry.for_config(cfg)``), AdamW with linear
warm-up, gradient clipping and the EMA exactly as ``flowlm.training.module`` builds them. The config is recorded
in each result. At every point of a fixed compute grid the EMA weights sample 1,000 sequences with 1, 2 and 4
deterministic flow-map steps (γ = 0) and the invalid share is measured with a 95% interval over samples.

Compute is counted in teacher-forward equivalents (TFE) per sequence, a backward pass costing two forwards:
PSD costs 4 per diagonal row (teacher forward + student forward/backward) and 5 per off-diagonal or boundary row
(two student forwards for the target + forward/backward); ``lsd`` 6 per off-diagonal row (two student forwards
and one teacher forward for the target); a recipe states its own costs (``ROW_COST``). The grid
is fractions 1/8, 1/4, 1/2, 1 (and 2, 4 for the long runs) of the teacher's training compute, 1,500 x 128 x 3
= 576,000 TFE.

Restartable: each run writes ``<out>/<language>/<run>.json`` (after every grid point; ``complete`` says whether it
finished) (and the teacher ``teacher.pt``, the last EMA weights
``<run>.pt``, both git-ignored) and is skipped when that file exists. One intra-op thread.

    PYTHONPATH=src:tests nice -n 5 python experiments/distill_study.py [--out docs/results/distill-study]
        [--only markov] [--runs default,lr-1e-3]      # subsets
    PYTHONPATH=src:tests python experiments/distill_study.py --plot   # plots + table from the JSON files
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from markov import MarkovChain, single_thread

from flowlm.config import ModelConfig, RunConfig
from flowlm.eval.flow_map_fit import fit_report, format_report
from flowlm.methods import registry
from flowlm.methods.base import LossContext
from flowlm.methods.common import LossWeighting
from flowlm.methods.flm import flm_sample
from flowlm.methods.fmlm import fmlm_sample
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.ema import EMA

K, LENGTH, TEACHER_BATCH, TEACHER_STEPS, TEACHER_LR = 8, 16, 128, 1500, 2e-3
TEACHER_TFE = TEACHER_STEPS * TEACHER_BATCH * 3
GRID = (1 / 8, 1 / 4, 1 / 2, 1.0)
LONG_GRID = (*GRID, 2.0, 4.0)
SAMPLES = 1000
STEPS = (1, 2, 4)
# teacher-forward equivalents per (diagonal, off-diagonal) row of a distillation step, by recipe
# (lsd-ref: its forward-mode pass counted as three forwards, its backward two, its landing pass one)
ROW_COST = {"psd": (4, 5), "lsd": (4, 6), "lsd-teacher": (4, 6), "lsd-ref": (4, 6)}  # lsd: lsd-teacher's old name

# The ``flowlm distill`` defaults for a tiny-preset teacher (training/run.py: distill_config): lr 3e-4, betas
# (0.9, 0.95), the preset's batch 32, EMA 0.995 with warm-up, 100 warm-up steps; PSD pairs as SPEC §3.
DEFAULTS = {
    "train.lr": 3e-4,
    "train.betas": (0.9, 0.95),
    "train.batch_size": 32,
    "train.ema_decay": 0.995,
    "train.ema_warmup": True,
    "train.warmup_steps": 100,
    "train.loss_weighting": False,
    "distill.recipe": "psd",
    "distill.diag_frac": 0.5,
    "distill.boundary_frac": 1 / 64,
    "distill.pairs": "uniform",
    "distill.curriculum_frac": 0.5,
    "seed": 0,
    "grid": GRID,
    "ema_variants": (),
}

# One factor at a time from the defaults.
RUNS = {
    "default": {},
    "lsd": {"distill.recipe": "lsd"},
    "lr-1e-3": {"train.lr": 1e-3},
    "lr-3e-3": {"train.lr": 3e-3},
    "batch-128": {"train.batch_size": 128},
    "pairs-curriculum": {"distill.pairs": "curriculum"},
    "diag-0.25": {"distill.diag_frac": 0.25},
    "boundary-0.125": {"distill.boundary_frac": 0.125},
    "pairs-stratified": {"distill.pairs": "stratified"},
    "ema-0.99": {"train.ema_decay": 0.99},
    "ema-0.999": {"train.ema_decay": 0.999},
    "ema-no-warmup": {"train.ema_warmup": False},
    "diag-0.75": {"distill.diag_frac": 0.75},
    "boundary-0": {"distill.boundary_frac": 0.0},
    "weighting": {"train.loss_weighting": True},
    "lr-1e-4": {"train.lr": 1e-4},
    "batch-8": {"train.batch_size": 8},
    # combinations, second seeds and longer budgets (2x and 4x the teacher's compute) of the candidates
    "lsd-lr-1e-3": {"distill.recipe": "lsd", "train.lr": 1e-3},
    # EMA factors: the EMA never feeds back into training (PSD/lsd targets use the current student), so other decays
    # are measured on the same trajectory as extra EMAs of one run, a paired comparison (saved as their own runs)
    "default-seed1": {"seed": 1, "ema_variants": (("ema-0.99-seed1", 0.99, True), ("ema-0.999-seed1", 0.999, True),
                                                  ("ema-no-warmup-seed1", 0.995, False))},  # fmt: skip
    "lsd-seed1": {"distill.recipe": "lsd", "seed": 1},
    "lr-1e-3-seed1": {"train.lr": 1e-3, "seed": 1},
    "lsd-lr-1e-3-seed1": {"distill.recipe": "lsd", "train.lr": 1e-3, "seed": 1},
    "boundary-0.125-seed1": {"distill.boundary_frac": 0.125, "seed": 1},
    "diag-0.25-seed1": {"distill.diag_frac": 0.25, "seed": 1},
    "tuned-psd": {"train.lr": 1e-3, "distill.diag_frac": 0.25, "distill.boundary_frac": 0.125},
    "tuned-lsd": {"distill.recipe": "lsd", "train.lr": 1e-3, "distill.diag_frac": 0.25, "distill.boundary_frac": 0.125},
    "tuned-lsd-seed1": {"distill.recipe": "lsd", "train.lr": 1e-3, "distill.diag_frac": 0.25,
                        "distill.boundary_frac": 0.125, "seed": 1},  # fmt: skip
    "default-long": {"grid": LONG_GRID},
    # issue 24: the one-step jump. From the current `flowlm distill` default for a tiny-preset teacher (lr 1e-3): an end
    # time embedding that resolves t -> 1 (distill.end_stretch), larger boundary shares, and the two combined
    "i24-base": {"train.lr": 1e-3},
    "i24-stretch": {"train.lr": 1e-3, "distill.end_stretch": True},
    "i24-boundary-0.125": {"train.lr": 1e-3, "distill.boundary_frac": 0.125},
    "i24-boundary-0.25": {"train.lr": 1e-3, "distill.boundary_frac": 0.25},
    "i24-stretch-boundary-0.125": {"train.lr": 1e-3, "distill.end_stretch": True, "distill.boundary_frac": 0.125},
    "i24-base-seed1": {"train.lr": 1e-3, "seed": 1},
    "i24-stretch-seed1": {"train.lr": 1e-3, "distill.end_stretch": True, "seed": 1},
    "i24-stretch-boundary-0.125-seed1": {"train.lr": 1e-3, "distill.end_stretch": True, "distill.boundary_frac": 0.125,
                                         "seed": 1},  # fmt: skip
    "lsd-lr-1e-3-long": {"distill.recipe": "lsd", "train.lr": 1e-3, "grid": LONG_GRID},
    # issue 24 item 3: the reference's LSD (its own split: half diagonal, 1/64 boundary, as the defaults)
    "i24-lsd-ref": {"distill.recipe": "lsd-ref", "train.lr": 1e-3},
    "i24-lsd-ref-seed1": {"distill.recipe": "lsd-ref", "train.lr": 1e-3, "seed": 1},
    # the boundary pairs anchored to the teacher's 16-step sampler (distill.boundary_teacher_steps), alone, with an
    # eighth boundary pairs, and with end_stretch (whose collapse the anchor should prevent)
    "i24-anchor-16": {"train.lr": 1e-3, "distill.boundary_teacher_steps": 16},
    "i24-anchor-16-boundary-0.125": {"train.lr": 1e-3, "distill.boundary_teacher_steps": 16,
                                     "distill.boundary_frac": 0.125},  # fmt: skip
    "i24-anchor-16-stretch": {"train.lr": 1e-3, "distill.boundary_teacher_steps": 16, "distill.end_stretch": True},
    "i24-anchor-16-seed1": {"train.lr": 1e-3, "distill.boundary_teacher_steps": 16, "seed": 1},
}


# --- languages ---------------------------------------------------------------------------------------------


class Order2Chain:
    """Second-order chain on K symbols: after (a, b) one of two symbols ``succ[a, b]`` with probabilities
    ``(p[a, b], 1 − p[a, b])``; the table is drawn once from ``seed``."""

    def __init__(self, k: int = K, seed: int = 2026):
        g = torch.Generator().manual_seed(seed)
        self.k = k
        self.succ = torch.stack([torch.randperm(k, generator=g)[:2] for _ in range(k * k)]).view(k, k, 2)
        self.p = 0.2 + 0.6 * torch.rand(k, k, generator=g)

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        seq = torch.empty(n, length, dtype=torch.long)
        seq[:, :2] = torch.randint(0, self.k, (n, 2), generator=generator)
        for i in range(2, length):
            a, b = seq[:, i - 2], seq[:, i - 1]
            first = torch.rand(n, generator=generator) < self.p[a, b]
            seq[:, i] = torch.where(first, self.succ[a, b, 0], self.succ[a, b, 1])
        return seq

    def invalid(self, seq: torch.Tensor) -> torch.Tensor:
        """Per-sample share of triples the chain never emits [n]."""
        a, b, c = seq[:, :-2], seq[:, 1:-1], seq[:, 2:]
        ok = (self.succ[a, b, 0] == c) | (self.succ[a, b, 1] == c)
        return 1.0 - ok.float().mean(dim=1)


class Markov:
    """The statistical tests' chain with a per-sample invalid share."""

    def __init__(self):
        self.chain = MarkovChain(K)

    def sample(self, n, length, generator):
        return self.chain.sample(n, length, generator)

    def invalid(self, seq: torch.Tensor) -> torch.Tensor:
        delta = (seq[:, 1:] - seq[:, :-1]) % K
        ok = (delta == 1) | (delta == self.chain.jump % K)
        return 1.0 - ok.float().mean(dim=1)


LANGUAGES = {"markov": Markov, "order2": Order2Chain}


def share(per_sample: torch.Tensor, tokens: torch.Tensor) -> dict:
    """Invalid share (equal checks per sample, so the mean of per-sample shares) and a 95% normal interval
    whose standard error treats samples, not checks, as the independent units; ``distinct``, the share of distinct
    sequences among the samples, flags a collapse to a few valid sequences (the 1-step FLM does that on order2)."""
    n = per_sample.numel()
    mean = per_sample.double().mean().item()
    se = per_sample.double().std().item() / math.sqrt(n)
    distinct = len({tuple(row) for row in tokens.tolist()}) / n
    return {"invalid": mean, "se": se, "lo": mean - 1.96 * se, "hi": mean + 1.96 * se, "n": n, "distinct": distinct}


# --- teacher -----------------------------------------------------------------------------------------------


def teacher_config() -> DiTConfig:
    return DiTConfig(vocab_size=K, seq_len=LENGTH, hidden_size=64, n_blocks=2, n_heads=4, cond_dim=32,
                     dropout=0.0, pos_embed=True)  # fmt: skip


def measure_teacher(teacher: DiT, language) -> dict:
    out = {}
    for steps in (1, 128):
        tokens = flm_sample(teacher, SAMPLES, LENGTH, K, steps, generator=torch.Generator().manual_seed(1))
        out[f"flm_{steps}"] = share(language.invalid(tokens), tokens)
    return out


def get_teacher(language, folder: Path) -> tuple[DiT, dict]:
    """The language's FLM teacher (trained once, saved to ``teacher.pt``) and its 128-step invalid share."""
    path, info_path = folder / "teacher.pt", folder / "teacher.json"
    teacher = DiT(teacher_config())
    if path.exists() and info_path.exists():
        teacher.load_state_dict(torch.load(path, weights_only=True))
        teacher.eval().requires_grad_(False)
        info = json.loads(info_path.read_text())
        if "distinct" not in info["flm_1"]:  # measured before the distinct share was recorded
            info.update(measure_teacher(teacher, language))
            info_path.write_text(json.dumps(info, indent=1))
        return teacher, info
    start = time.perf_counter()
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({"train": {"method": "flm", "lr": TEACHER_LR, "ema_decay": 0.99}})
    method, g = registry.for_config(cfg), torch.Generator().manual_seed(0)
    net = DiT(teacher_config()).train()
    ctx = LossContext(K, cfg)
    ema = EMA(net, 0.99)
    opt = torch.optim.AdamW(net.parameters(), lr=TEACHER_LR)
    for _ in range(TEACHER_STEPS):
        loss = method.loss(net, language.sample(TEACHER_BATCH, LENGTH, g), ctx, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update()
    teacher.load_state_dict(ema.weights())
    teacher.eval().requires_grad_(False)
    info = {"train_seconds": time.perf_counter() - start, "steps": TEACHER_STEPS, "batch": TEACHER_BATCH,
            "lr": TEACHER_LR, "tfe": TEACHER_TFE}  # fmt: skip
    info.update(measure_teacher(teacher, language))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(teacher.state_dict(), tmp)
    tmp.replace(path)
    info_path.write_text(json.dumps(info, indent=1))
    return teacher, info


# --- distillation ------------------------------------------------------------------------------------------


def run_config(settings: dict, steps: int) -> RunConfig:
    # the network that runs (the teacher's copy) is recorded in place of the ModelConfig defaults (12 x 768)
    options = {f.name for f in dataclasses.fields(ModelConfig)}
    net = {k: v for k, v in vars(teacher_config()).items() if k in options}
    raw: dict = {"train": {"method": "fmlm", "max_steps": steps}, "distill": {"teacher": "teacher.pt"},
                 "model": net, "data": {"seq_len": LENGTH}}  # fmt: skip
    for key, value in settings.items():
        section, _, name = key.partition(".")
        if section in ("train", "distill"):
            raw.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
    return RunConfig.from_dict(raw)


def step_cost(cfg: RunConfig) -> float:
    """Teacher-forward equivalents of one distillation step (per the batch's expected split). A boundary row anchored
    to the teacher's N-step sampler (distill.boundary_teacher_steps) costs N + 3 instead of the composition's 5."""
    diag_cost, off_cost = ROW_COST[cfg.distill.recipe]
    diag = cfg.distill.resolved_diag_frac()
    anchor = cfg.distill.boundary_teacher_steps
    extra = cfg.distill.resolved_boundary_frac() * (anchor + 3 - off_cost) if anchor else 0.0
    return cfg.train.batch_size * (diag * diag_cost + (1 - diag) * off_cost + extra)


def evaluate(student: DiT, ema: EMA, language) -> dict:
    with ema.applied():
        student.eval()
        out = {}
        for steps in STEPS:
            tokens = fmlm_sample(student, SAMPLES, LENGTH, K, steps, generator=torch.Generator().manual_seed(1))
            out[str(steps)] = share(language.invalid(tokens), tokens)
        student.train()
    return out


def distill(language, teacher: DiT, settings: dict, weights: Path, save, save_variant) -> dict:
    grid = settings["grid"]
    probe = run_config(settings, 1)
    cost = step_cost(probe)
    checkpoints = [max(1, round(f * TEACHER_TFE / cost)) for f in grid]
    cfg = run_config(settings, checkpoints[-1])
    seed = settings["seed"]
    torch.manual_seed(seed + 1)
    method = registry.for_config(cfg)
    student = method.build_network(cfg, K, frozen=(teacher,))
    weighting = LossWeighting(128, two_times=True) if cfg.train.loss_weighting else None  # the width it ran at
    ctx = LossContext(K, cfg, (teacher,), weighting)
    t = cfg.train
    params = [p for p in student.parameters() if p.requires_grad]
    params += [] if weighting is None else list(weighting.parameters())
    opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / max(1, t.warmup_steps)))
    ema = EMA(student, t.ema_decay, warmup=t.ema_warmup)
    variants = {name: EMA(student, decay, warmup=warm) for name, decay, warm in settings["ema_variants"]}
    variant_points = {name: [] for name in variants}
    g = torch.Generator().manual_seed(seed)
    points, start = [], time.perf_counter()
    for step in range(checkpoints[-1]):
        tokens = language.sample(t.batch_size, LENGTH, g)
        out = method.loss(student, tokens, ctx, generator=g, sample_offset=step * t.batch_size)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        sched.step()
        ema.update()
        for extra in variants.values():
            extra.update()
        if step + 1 in checkpoints:
            point = {"steps": step + 1, "tfe": (step + 1) * cost, "teacher_fraction": (step + 1) * cost / TEACHER_TFE,
                     "seconds": time.perf_counter() - start, "loss": out["loss"].item()}  # fmt: skip
            for name, extra in variants.items():
                variant_points[name].append({**point, **evaluate(student, extra, language)})
                save_variant(name, variant_points[name])
            point.update(evaluate(student, ema, language))
            points.append(point)
            save({"config": cfg.to_dict(), "settings": settings, "step_cost_tfe": cost, "points": points,
                  "complete": False})  # fmt: skip
            print(f"    {step + 1:>6} steps  {point['teacher_fraction']:.3f}x teacher  "
                  + "  ".join(f"{n}-step {point[str(n)]['invalid']:.4f} ({point[str(n)]['distinct']:.2f} distinct)"
                              for n in STEPS), flush=True)  # fmt: skip
    torch.save(ema.weights(), weights)  # the last point's EMA weights, to re-measure without retraining
    with ema.applied():
        fit = fit_of(student, teacher, language)
    print("    " + format_report(fit).replace("\n", "\n    "), flush=True)
    return {"config": cfg.to_dict(), "settings": {k: v for k, v in settings.items()}, "step_cost_tfe": cost,
            "points": points, "fit": fit, "complete": True}  # fmt: skip


def fit_of(student: DiT, teacher: DiT, language) -> dict:
    """The fit report (issue 24) of a flow map on 256 fresh sequences of the language (seed 7), with the teacher's
    64-step sampler as the anchor of the pairs ending at t = 1."""
    return fit_report(student, teacher, language.sample(256, LENGTH, torch.Generator().manual_seed(7)), K)


def refit(out: Path, only: list[str] | None, runs: list[str] | None) -> None:
    """Recompute the fit report of finished runs from their saved EMA weights (``<run>.pt``) and the saved teacher,
    and store it in ``<run>.json`` (runs measured before the report gained its teacher anchor)."""
    for name, make in LANGUAGES.items():
        if only and name not in only:
            continue
        language, folder = make(), out / name
        teacher = DiT(teacher_config())
        teacher.load_state_dict(torch.load(folder / "teacher.pt", weights_only=True))
        teacher.eval()
        for run in runs or RUNS:
            path, weights = folder / f"{run}.json", folder / f"{run}.pt"
            if not (path.exists() and weights.exists()):
                continue
            result = json.loads(path.read_text())
            cfg = run_config({**DEFAULTS, **result["settings"]}, 1)
            student = registry.for_config(cfg).build_network(cfg, K, frozen=(teacher,))
            student.load_state_dict(torch.load(weights, weights_only=True))
            result["fit"] = fit_of(student.eval(), teacher, language)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1, default=list))
            tmp.replace(path)
            print(f"{name} / {run}: " + format_report(result["fit"]).splitlines()[-1], flush=True)


def study(out: Path, only: list[str] | None, runs: list[str] | None) -> None:
    unknown = [run for run in runs or () if run not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}: choose among {', '.join(RUNS)}")
    for name, make in LANGUAGES.items():
        if only and name not in only:
            continue
        language, folder = make(), out / name
        teacher, info = get_teacher(language, folder)
        print(f"{name}: teacher 128-step invalid {info['flm_128']['invalid']:.4f} ± {1.96 * info['flm_128']['se']:.4f}"
              f", 1-step {info['flm_1']['invalid']:.4f}", flush=True)  # fmt: skip
        for run in runs or RUNS:  # in the order given
            factor = RUNS[run]
            path = folder / f"{run}.json"
            if path.exists() and json.loads(path.read_text()).get("complete", True):
                continue
            print(f"  {name} / {run}", flush=True)

            def save(result, path=path, info=info):
                """Atomic write; a run interrupted after some grid points keeps them (``complete: false``)
                and is started again from scratch on the next call."""
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({**result, "teacher": info}, indent=1, default=list))
                tmp.replace(path)

            def save_variant(variant, points, run=run, save=save, folder=folder):
                """An extra EMA of this run's trajectory, written as run ``variant``."""
                decay, warm = next((d, w) for n, d, w in RUNS[run]["ema_variants"] if n == variant)
                settings = {**DEFAULTS, **RUNS[run], "train.ema_decay": decay, "train.ema_warmup": warm}
                done = len(points) == len(settings["grid"])
                save({"settings": settings, "points": points, "complete": done, "trajectory_of": run},
                     folder / f"{variant}.json")  # fmt: skip

            save(distill(language, teacher, {**DEFAULTS, **factor}, folder / f"{run}.pt", save, save_variant))


# --- report ------------------------------------------------------------------------------------------------


def load_results(out: Path) -> dict:
    results = {}
    for name in LANGUAGES:
        folder = out / name
        if not (folder / "teacher.json").exists():
            continue
        info = json.loads((folder / "teacher.json").read_text())
        runs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.stem != "teacher"}
        results[name] = (info, runs)
    return results


def table(out: Path) -> str:
    lines = []
    for name, (info, runs) in load_results(out).items():
        ref = info["flm_128"]
        lines.append(f"\n{name}: teacher 128 steps {ref['invalid']:.4f} ± {1.96 * ref['se']:.4f} (target ≤ "
                     f"{2 * ref['invalid']:.4f}), teacher 1 step {info['flm_1']['invalid']:.4f}")  # fmt: skip
        lines.append("| run | compute (× teacher) | 1 step | 2 steps | 4 steps |")
        lines.append("|---|---|---|---|---|")
        for run, result in runs.items():
            for p in result["points"]:
                cells = [f"{p[str(n)]['invalid']:.4f} ± {1.96 * p[str(n)]['se']:.4f}" for n in STEPS]
                label = run if result.get("complete", True) else f"{run} (interrupted)"
                lines.append(f"| {label} | {p['teacher_fraction']:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fit_table(out: Path) -> str:
    """Markdown: per language, every run with a fit report: its 1- and 2-step invalid shares at 1x, the KL at (0, 1)
    and its ratio to the median of the other pairs, both entropies there, and the one-step map's agreement with the
    teacher's 64-step tokens from the same noise (with their cross-entropy under the map)."""
    lines = []
    for name, (_, runs) in load_results(out).items():
        lines += [
            f"\n{name}: fit at (0, 1), 256 sequences",
            "| run | 1 step | 2 steps | KL(0, 1) [95%] | ratio to median | H target / H map "
            "| agreement with teacher tokens | their CE |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run, result in runs.items():
            points = [p for p in result.get("points", []) if abs(p["teacher_fraction"] - 1) < 0.01]
            fit, point = result.get("fit"), (points[0] if points else None)
            if not fit or point is None:
                continue
            edge, summary_ = fit["pairs"][0], fit["summary"]
            ode = edge.get("teacher_ode")
            anchor = (f"{ode['agreement']['mean']:.3f} [{ode['agreement']['low']:.3f}–{ode['agreement']['high']:.3f}] "
                      f"| {ode['cross_entropy']['mean']:.3f}") if ode else "– | –"  # fmt: skip
            kl = edge["kl"]
            lines.append(
                f"| {run} | {point['1']['invalid']:.3f} | {point['2']['invalid']:.3f} | {kl['mean']:.4f} "
                f"[{kl['low']:.4f}–{kl['high']:.4f}] | {summary_['boundary_over_median']:.1f} | "
                f"{edge['entropy_target']['mean']:.3f} / {edge['entropy_student']['mean']:.3f} | {anchor} |"
            )
    return "\n".join(lines)


def factor_chart(plt, out: Path, name: str, info: dict, runs: dict) -> None:
    """1- and 2-step invalid share of every run at the teacher's compute (1x), with 95% intervals."""
    at_one = {}
    for run, result in runs.items():
        point = next((p for p in result["points"] if abs(p["teacher_fraction"] - 1.0) < 0.01), None)
        if point is not None:
            at_one[run] = point
    order = sorted(at_one, key=lambda run: at_one[run]["1"]["invalid"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.32 * len(order) + 1.5), sharey=True)
    for ax, steps in zip(axes, ("1", "2"), strict=True):
        y = range(len(order))
        x = [at_one[run][steps]["invalid"] for run in order]
        err = [1.96 * at_one[run][steps]["se"] for run in order]
        colors = ["tab:blue" if run.startswith("default") else "tab:gray" for run in order]
        ax.barh(list(y), x, xerr=err, color=colors, capsize=2)
        if "default" in at_one:
            ax.axvline(at_one["default"][steps]["invalid"], color="tab:blue", linewidth=1)
        ax.axvline(2 * info["flm_128"]["invalid"], color="k", linestyle=":", linewidth=1)
        ax.set_xlabel(f"{steps}-step invalid share at 1x the teacher's compute (dotted: target)")
    axes[0].set_yticks(list(range(len(order))), order, fontsize=8)
    fig.suptitle(f"{name}: one factor at a time from the defaults")
    fig.tight_layout()
    fig.savefig(out / f"{name}-factors.png", dpi=110)
    plt.close(fig)


def summary(out: Path, fraction: float = 1.0) -> str:
    """Markdown: every run's 1-, 2- and 4-step invalid share (± 95% half-width) at ``fraction`` x the teacher's compute,
    one column group per language."""
    results = load_results(out)
    names = sorted({run for _, runs in results.values() for run in runs}, key=lambda r: (r != "default", r))
    head = "| run | " + " | ".join(f"{lang} 1 / 2 / 4 steps" for lang in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for lang, (info, _) in results.items():
        ref = info["flm_128"]
        lines.insert(len(lines) - 2, f"{lang}: teacher 128 steps {ref['invalid']:.3f} ± {1.96 * ref['se']:.3f}, "
                     f"target ≤ {2 * ref['invalid']:.3f}; teacher 1 step {info['flm_1']['invalid']:.3f} "
                     f"({info['flm_1']['distinct']:.3f} distinct)  ")  # fmt: skip
    lines.insert(len(lines) - 2, "")
    for run in names:
        cells = []
        for _, runs in results.values():
            result = runs.get(run)
            point = None if result is None else next(
                (p for p in result["points"] if abs(p["teacher_fraction"] - fraction) < 0.01), None
            )
            cells.append("–" if point is None else " / ".join(
                f"{point[str(n)]['invalid']:.3f}" + (f" ± {1.96 * point[str(n)]['se']:.3f}" if n == 1 else "")
                for n in STEPS))  # fmt: skip
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, (info, runs) in load_results(out).items():
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, steps in zip(axes, (1, 2), strict=True):
            for run, result in runs.items():
                x = [p["teacher_fraction"] for p in result["points"]]
                y = [p[str(steps)]["invalid"] for p in result["points"]]
                err = [1.96 * p[str(steps)]["se"] for p in result["points"]]
                style = "-" if run == "default" else "--"
                ax.errorbar(x, y, yerr=err, label=run, linestyle=style, marker="o", markersize=3, capsize=2)
            ref = info["flm_128"]["invalid"]
            ax.axhline(ref, color="k", linewidth=1, label="teacher, 128 steps")
            ax.axhline(2 * ref, color="k", linewidth=1, linestyle=":", label="target: 2 × teacher")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("distillation compute (× the teacher's training compute, TFE)")
            ax.set_title(f"{name}: {steps}-step flow map")
        axes[0].set_ylabel("invalid share (95% interval over samples)")
        axes[1].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        factor_chart(plt, out, name, info, runs)
    (out / "table.md").write_text(table(out) + "\n")
    print(summary(out))
    print(fit_table(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/results/distill-study")
    parser.add_argument("--only", help="comma-separated languages")
    parser.add_argument("--runs", help="comma-separated run names")
    parser.add_argument("--plot", action="store_true", help="only write the plots and table from the results")
    parser.add_argument("--refit", action="store_true", help="recompute the fit reports of finished runs")
    args = parser.parse_args()
    out = Path(args.out)
    if args.plot:
        plot(out)
        return
    split = lambda v: v.split(",") if v else None  # noqa: E731
    with single_thread():
        (refit if args.refit else study)(out, split(args.only), split(args.runs))


if __name__ == "__main__":
    main()
