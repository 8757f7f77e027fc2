"""Typed run configuration: presets (YAML in ``flowlm/presets``) plus dotted ``key=value`` overrides.

A run is ``RunConfig(data, model, train)``. ``model`` holds the DiT sizes except the vocabulary
size and length, which come from the tokenizer and ``data.seq_len``, and the options that follow from
the method (``causal`` for AR, ``mask_input`` for MDLM: each method's ``dit_options``, see
:mod:`flowlm.methods.registry`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any

import yaml

from flowlm.errors import ConfigError
from flowlm.methods import registry
from flowlm.methods.condition import CONDITIONS
from flowlm.methods.fmlm import PAIR_DRAWS
from flowlm.methods.lowrank import INPUT_NOISE
from flowlm.nn.dit import DiTConfig

PRESET_ALIASES = {"small": "lm1b-small"}
STRATEGIES = ("auto", "ddp")


@dataclass
class DataConfig:
    corpus: str = "shakespeare"
    tokenizer: str = "bpe:1024"
    seq_len: int = 64
    cache_dir: str | None = None


def _dit(self, vocab_size: int, seq_len: int, options: dict | None = None) -> DiTConfig:
    """The DiTConfig of these sizes; ``options`` are the DiT options a method fixes (its ``dit_options``)."""
    return DiTConfig(vocab_size=vocab_size, seq_len=seq_len, **{**asdict(self), **(options or {})})


# The DiT options without ``vocab_size``/``seq_len`` (they come from the tokenizer and data.seq_len), without the
# method's options, without ``end_stretch`` (a flow-map student's, set by distill.end_stretch), ``time_transform``
# (an imported DUO checkpoint's) and ``guidance_input`` (set by the fixed-point recipe), derived from DiTConfig so the
# two can never drift apart.
_NOT_USER_OPTIONS = ("vocab_size", "seq_len", "causal", "mask_input", "end_stretch", "time_transform", "guidance_input")
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [(f.name, f.type, field(default=f.default)) for f in fields(DiTConfig) if f.name not in _NOT_USER_OPTIONS],
    namespace={"dit": _dit, "__doc__": "DiT options (see flowlm.nn.dit.DiTConfig) without vocab_size/seq_len."},
)


@dataclass
class TrainConfig:
    method: str = "flm"
    max_steps: int = 1_000_000
    max_minutes: float | None = None
    batch_size: int = 512
    micro_batch_size: int | None = None
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 2500
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    loss_weighting: bool = False
    condition_frac: float = 0.0
    condition: str = "prefix"
    input_noise: str = "auto"
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    init_from: str | None = None
    log_every: int = 50
    ckpt_every: int = 1000
    val_every: int = 1000
    val_batches: int = 4
    val_bound_points: int = 2
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"


@dataclass
class DuoConfig:
    """DUO training (``train.method=duo``): the Gaussian-relaxation curriculum runs for the first ``curriculum_frac``
    of ``train.max_steps`` (the reference: 500k of 1M), feeding the network ``softmax(w / curriculum_temperature)``
    (the reference: 1e-3); 0 turns it off."""

    curriculum_frac: float = 0.5
    curriculum_temperature: float = 1e-3


@dataclass
class DistillConfig:
    """Flow-map distillation (``train.method=fmlm``): the frozen FLM teacher, the recipe and its batch split.

    ``diag_frac`` and ``boundary_frac`` default to the recipe's (psd: 1/2 and 1/64, SPEC §3; lsd: 1/4 and 1/8, the
    distillation study's).

    ``recipe``: ``psd`` (SPEC §3, the main recipe), ``v1-stage1`` (SPEC §4: the raw second-order network g on top of
    the teacher velocity, with learnable loss weighting) or ``v1-stage2`` (one softmax network regressed onto the
    stage-1 map; ``stage1`` names the stage-1 checkpoint). ``boundary_frac`` defaults to the recipe's: 1/64 (psd:
    0.5/32; v1 stage 1: 1/64) or 1/128 (v1 stage 2). ``target_dropout`` (psd, lsd-ref, v1 stage 1): the student
    (g-network) passes that build the off-diagonal targets run with dropout, as in the reference (default), or
    without (eval mode). ``pairs`` (psd): how off-diagonal jumps τ_t − τ_s are drawn: ``uniform`` (SPEC §3),
    ``stratified`` over each micro-batch, or ``curriculum`` (short jumps first, the full clock after the first
    ``curriculum_frac`` of ``train.max_steps``; see ``flowlm.methods.fmlm.pair_times``). ``end_stretch``: the
    student gets a third time embedding, of its end time on a clock that resolves t → 1
    (``flowlm.nn.dit.end_stretch_clock``; recorded as ``model.end_stretch`` in the distilled model). Experimental:
    with PSD alone its 1-step map collapsed to one constant sequence on the order-2 language and on WikiText-2
    (docs/results.md, "The one-step jump"); with ``boundary_teacher_steps`` it did not, but did not beat PSD either.
    ``boundary_teacher_steps`` (psd): 0 (default) trains the boundary pairs (0, 1) toward the student's own
    composition; N > 0 toward the teacher's N-step sampler output from the same noise
    (``flowlm.methods.fmlm.anchor_boundary``).
     ``teacher_steps`` (sdtt, dcd): the step count of the
    teacher's sampler; the student learns to take half as many (default 1024, SDTT's first round; DCD's reference
    starts at 512). ``divergence`` (sdtt, dcd): ``kl-reverse`` (KL(student ‖ teacher), default) or ``kl-forward``.
    ``fp_iterations`` and ``fp_damping`` (fixed-point): the teacher calls of each fixed-point target and the step β of
    its damped Picard iteration of the guided self-conditioning map (``flowlm.methods.fixed_point``).
    ``sc_guidance_min`` / ``sc_guidance_max`` (fixed-point, and psd from a fixed-point denoiser): the range of the
    guidance scale w drawn in training, ``1 + w`` log-uniform (the reference's 0.5 to 5).
    """

    teacher: str | None = None
    recipe: str = "psd"
    stage1: str | None = None
    diag_frac: float | None = None
    boundary_frac: float | None = None
    target_dropout: bool = True
    pairs: str = "uniform"
    curriculum_frac: float = 0.5
    end_stretch: bool = False
    boundary_teacher_steps: int = 0
    teacher_steps: int = 1024
    divergence: str = "kl-reverse"
    fp_iterations: int = 8
    fp_damping: float = 0.5
    sc_guidance_min: float = 0.5
    sc_guidance_max: float = 5.0

    def resolved_diag_frac(self) -> float:
        if self.diag_frac is not None:
            return self.diag_frac
        return registry.for_recipe(self.recipe).default_diag_frac

    def resolved_boundary_frac(self) -> float:
        if self.boundary_frac is not None:
            return self.boundary_frac
        return registry.for_recipe(self.recipe).default_boundary_frac


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    duo: DuoConfig = field(default_factory=DuoConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> RunConfig:
        cfg = cls()
        for section, values in (raw or {}).items():
            for key, value in (values or {}).items():
                set_field(cfg, f"{section}.{key}", value)
        validate(cfg)
        return cfg


def available_presets() -> list[str]:
    names = [p.name[: -len(".yaml")] for p in resources.files("flowlm.presets").iterdir() if p.name.endswith(".yaml")]
    return sorted(names + list(PRESET_ALIASES))


def load_preset(name: str) -> RunConfig:
    """The named preset as a :class:`RunConfig`; unknown names raise a ConfigError listing the choices."""
    file = resources.files("flowlm.presets") / f"{PRESET_ALIASES.get(name, name)}.yaml"
    if not file.is_file():
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(available_presets())}")
    return RunConfig.from_dict(yaml.safe_load(file.read_text()))


def set_field(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set ``section.key`` on ``cfg``, coercing ``value`` to the field's type."""
    section_name, _, key = dotted.partition(".")
    section = getattr(cfg, section_name, None) if section_name in {f.name for f in fields(cfg)} else None
    if section is None or not key:
        raise ConfigError(f"unknown option {dotted!r}: options look like data.X, model.X, train.X or distill.X")
    known = {f.name: f for f in fields(section)}
    if key not in known:
        raise ConfigError(f"unknown option {dotted!r}: {section_name} has {', '.join(sorted(known))}")
    setattr(section, key, coerce(dotted, value, getattr(section, key), known[key]))


def coerce(dotted: str, value: Any, current: Any, spec: dataclasses.Field) -> Any:
    kind = str(spec.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{dotted} cannot be null")
    if isinstance(current, bool) or kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{dotted}={value!r}: expected true or false")
    if kind.startswith("tuple"):
        if isinstance(value, (list, tuple)) and len(value) == len(current):
            return tuple(float(v) for v in value)
        raise ConfigError(f"{dotted}={value!r}: expected a list like [0.9, 0.999]")
    if isinstance(value, bool) and ("int" in kind or "float" in kind):
        raise ConfigError(f"{dotted}={value!r}: expected a number, not true/false")
    try:
        if "int" in kind and "str" in kind:
            return value if isinstance(value, str) else int(value)
        if "int" in kind and not isinstance(value, float):
            return int(value)
        if "float" in kind or "int" in kind:
            as_float = float(value)
            if "float" not in kind:
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            return as_float
    except (TypeError, ValueError, OverflowError):
        expected = "a number" if "float" in kind else "a whole number"
        raise ConfigError(f"{dotted}={value!r}: expected {expected}") from None
    return str(value)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML) and re-validate."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value: write e.g. train.lr=1e-3")
        key, _, raw = item.partition("=")
        set_field(cfg, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    validate(cfg)
    return cfg


def device_count(devices: int | str) -> int | None:
    """Devices per node named by ``train.devices``: a count, ``"0,1,..."`` ids, or None for auto/-1 (all GPUs)."""
    if devices in ("auto", -1, "-1"):
        return None
    if isinstance(devices, int):
        return devices
    parts = [p for p in str(devices).strip("[] ").split(",") if p.strip()]
    try:
        return int(parts[0]) if len(parts) == 1 else len({int(p) for p in parts})
    except ValueError:
        return 0


def validate_distributed(t: TrainConfig) -> None:
    if t.strategy == "fsdp":
        raise ConfigError(
            "train.strategy=fsdp is not supported: the EMA and the model export read whole, unsharded parameters, "
            "and Lightning's FSDP needs CUDA, so it could not be tested against ddp on CPU; use train.strategy=ddp "
            "(the paper's 170M-parameter models fit one GPU each, see docs/scaling.md)"
        )
    if t.strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy={t.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if t.num_nodes < 1:
        raise ConfigError(f"train.num_nodes={t.num_nodes} must be >= 1")
    count = device_count(t.devices)
    if count is not None and count < 1:
        raise ConfigError(
            f"train.devices={t.devices!r}: use a device count (8), GPU ids ('0,1,2,3'), or auto / -1 for all GPUs"
        )


# Every numeric option and its range (None stays allowed where the field's type allows it).
WHOLE_AT_LEAST = {
    "data.seq_len": 3,
    "model.hidden_size": 2,
    "model.n_blocks": 1,
    "model.n_heads": 1,
    "model.cond_dim": 1,
    "model.mlp_ratio": 1,
    "train.max_steps": 1,
    "train.batch_size": 1,
    "train.micro_batch_size": 1,
    "train.warmup_steps": 0,
    "train.seed": 0,
    "train.log_every": 1,
    "train.ckpt_every": 1,
    "train.val_every": 1,
    "train.val_batches": 1,
    "train.val_bound_points": 0,
    "train.num_workers": 0,
}
POSITIVE = ("train.lr", "train.eps", "model.input_std", "model.attn_softcap", "model.logit_cap",
            "duo.curriculum_temperature")
NON_NEGATIVE = ("train.weight_decay", "train.grad_clip")
BELOW_ONE = ("model.dropout", "train.ema_decay")  # in [0, 1)
MAX_SEED = 2**32 - 1  # what torch/numpy seeding accepts
MAX_WHOLE = 2**31 - 1  # the largest count, size or length flowlm accepts (a product of two still fits in int64)
MAX_MINUTES = 1e9  # train.max_minutes: ~1,900 years, far inside what datetime.timedelta holds
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "64", "64-true")


def _get(cfg: RunConfig, dotted: str):
    section, _, key = dotted.partition(".")
    return getattr(getattr(cfg, section), key)


def _numbers(cfg: RunConfig):
    """``(section.key, value)`` of every option that holds a number now (true/false excluded)."""
    for section in fields(cfg):
        for spec in fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), spec.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield f"{section.name}.{spec.name}", value


def validate_ranges(cfg: RunConfig) -> None:
    """Each numeric option within its range, with a one-line ConfigError naming the option and the range; no
    option holds an infinite or NaN number, and no whole number exceeds :data:`MAX_WHOLE`."""
    for name, low in WHOLE_AT_LEAST.items():
        value = _get(cfg, name)
        if value is not None and value < low:
            why = " (a block holds BOS, EOS and text)" if name == "data.seq_len" else ""
            raise ConfigError(f"{name}={value}: use a whole number >= {low}{why}")
    for name in POSITIVE:
        value = _get(cfg, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name}={value}: use a finite number > 0")
    for name in NON_NEGATIVE:
        value = _get(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name}={value}: use a finite number >= 0")
    for name in BELOW_ONE:
        value = _get(cfg, name)
        if not 0 <= value < 1:
            raise ConfigError(f"{name}={value}: use a number in [0, 1)")
    if not all(0 <= b < 1 for b in cfg.train.betas):
        raise ConfigError(f"train.betas={list(cfg.train.betas)}: use two numbers in [0, 1), e.g. [0.9, 0.999]")
    if cfg.train.seed > MAX_SEED:
        raise ConfigError(f"train.seed={cfg.train.seed}: use a whole number in [0, {MAX_SEED}]")
    if cfg.train.accelerator not in ACCELERATORS:
        raise ConfigError(f"train.accelerator={cfg.train.accelerator!r}: use one of {', '.join(ACCELERATORS)}")
    for name in ("data.corpus", "data.tokenizer"):
        if not str(_get(cfg, name)).strip():
            raise ConfigError(f"{name} is empty: name a corpus / tokenizer (see flowlm train --help)")
    for name, value in _numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}={value}: use a finite number")
        if isinstance(value, int) and name != "train.seed" and abs(value) > MAX_WHOLE:
            raise ConfigError(f"{name}={value}: use a whole number of at most {MAX_WHOLE} (2**31 - 1)")


def validate(cfg: RunConfig) -> None:
    validate_ranges(cfg)
    t = cfg.train
    d = cfg.distill
    d.recipe = registry.RENAMED_RECIPES.get(d.recipe, d.recipe)  # an old name runs (and is recorded) as the new one
    if d.recipe not in registry.distillation_recipes():
        raise ConfigError(f"distill.recipe={d.recipe!r}: choose one of {', '.join(registry.distillation_recipes())}")
    method = registry.for_config(cfg)
    minutes = t.max_minutes
    if minutes is not None and not (isinstance(minutes, (int, float)) and 0 < minutes <= MAX_MINUTES):
        raise ConfigError(
            f"train.max_minutes={t.max_minutes!r}: give a positive number of minutes of training (at most "
            f"{MAX_MINUTES:g}), or null for none"
        )
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision={t.precision!r}: use one of {', '.join(PRECISIONS)}")
    validate_distributed(t)
    if t.loss_weighting and not method.learnable_weighting:
        raise ConfigError(
            f"train.loss_weighting learns a time weighting of the flow losses; train.method={t.method} has its own "
            "fixed weighting: set train.loss_weighting=false"
        )
    if not 0.0 <= t.condition_frac <= 1.0:
        raise ConfigError(f"train.condition_frac={t.condition_frac}: the share of conditioned sequences is in [0, 1]")
    if t.condition not in CONDITIONS:
        raise ConfigError(f"train.condition={t.condition!r}: use one of {', '.join(CONDITIONS)}")
    if t.condition_frac > 0 and not method.conditional_training:
        raise ConfigError(
            f"train.condition_frac={t.condition_frac}: {method.title} training has no conditional variant "
            "(an AR model conditions on a prompt by construction): "
            "set train.condition_frac=0"
        )
    if t.input_noise not in INPUT_NOISE:
        raise ConfigError(
            f"train.input_noise={t.input_noise!r}: use auto (low-rank states when V > d), lowrank or naive"
        )
    if method.distills and not d.teacher:
        raise ConfigError(f"train.method={t.method} distills a teacher: use flowlm distill --teacher CKPT")
    if "stage1" in method.needs and not d.stage1:
        raise ConfigError(f"distill.recipe={d.recipe} regresses onto a stage-1 map: pass --stage1 CKPT")
    if d.pairs not in PAIR_DRAWS:
        raise ConfigError(f"distill.pairs={d.pairs!r}: choose one of {', '.join(PAIR_DRAWS)}")
    if not 0.0 <= d.curriculum_frac <= 1.0:
        raise ConfigError(f"distill.curriculum_frac={d.curriculum_frac}: use the share of the run in [0, 1]")
    if not 0.0 <= cfg.duo.curriculum_frac <= 1.0:
        raise ConfigError(f"duo.curriculum_frac={cfg.duo.curriculum_frac}: use the share of the run in [0, 1]")
    if isinstance(d.teacher_steps, bool) or not isinstance(d.teacher_steps, int) or d.teacher_steps < 2:
        raise ConfigError(
            f"distill.teacher_steps={d.teacher_steps!r}: the teacher's sampler steps (sdtt, dcd), a whole number >= 2; "
            "the student learns half of them"
        )
    from flowlm.methods.common import check_divergence

    check_divergence(d.divergence)
    from flowlm.methods.fixed_point import check_damping, check_guidance_range, check_iterations

    check_iterations(d.fp_iterations)
    check_damping(d.fp_damping)
    check_guidance_range(d.sc_guidance_min, d.sc_guidance_max)
    steps = d.boundary_teacher_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 4096:
        raise ConfigError(f"distill.boundary_teacher_steps={steps!r}: use a whole number of teacher steps, 0 to 4096")
    if steps:
        if d.recipe != "psd":
            raise ConfigError(
                f"distill.boundary_teacher_steps={d.boundary_teacher_steps}: only the psd recipe anchors its boundary "
                f"pairs to the teacher's sampler, not {d.recipe}: drop it or use --recipe psd"
            )
    diag, boundary = d.resolved_diag_frac(), d.resolved_boundary_frac()
    if not (0 <= diag and 0 <= boundary and diag + boundary <= 1):
        raise ConfigError("distill.diag_frac and distill.boundary_frac must be >= 0 and sum to at most 1")
    cfg.model.dit(vocab_size=2, seq_len=cfg.data.seq_len, options=method.dit_options)
