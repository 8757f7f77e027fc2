"""The method protocol: one :class:`Method` object says everything the library asks about a method.

A method (FLM, a flow-map recipe, a baseline, or one a user defines) is one subclass instance,
registered by name in :mod:`flowlm.methods.registry`. The training harness, the sampling API, the CLI,
the config, the Hub code, evaluation and the model card ask it, never compare method names:

- **identity**: ``name`` (the registry key), ``records`` (the ``method`` written into ``flowlm.json``;
  ``reads`` lists the recorded names it loads), ``train_method`` / ``recipe`` (the ``train.method`` and
  ``distill.recipe`` values that select it for training), ``title`` and ``card_text`` (how people read it);
- **network**: ``dit_options`` (DiT options fixed by the method: ``causal``, ``mask_input``, …),
  ``time_inputs`` (1, or 2 for a flow map) and :meth:`build_network`;
- **training**: :meth:`loss` with the harness's ``generator`` / ``sample_offset`` / ``rows`` arguments, the
  validation metric (``metric_key`` in the loss dict, ``metric_name`` in the logs; ``logged``: more entries logged in
  training) and ``perplexity_name``
  (set only when the metric is a likelihood, so that its exp is logged), ``needs`` (frozen networks besides
  its own: ``teacher``, ``stage1``);
- **sampling**: ``sampler_name`` (provenance), ``takes_steps``, ``options`` (:class:`Option`: default,
  check, help) and :meth:`sample`, which takes one :class:`SampleRequest` so that a new request field reaches
  every sampler through one type;
- **likelihood** (optional): ``likelihoods`` (the bounds :meth:`nll_bound` can compute, name -> one line saying what
  it is, the default first; empty for a method without one; ``likelihood`` is the default's line),
  ``likelihood_draws`` (default Monte-Carlo draws per block), ``likelihood_exact`` (no Monte-Carlo error),
  :meth:`nll_bound` (``flowlm nll``; the math in :mod:`flowlm.methods.likelihood` and :mod:`flowlm.methods.elbo`)
  and :meth:`validation_metrics` (extra numbers logged at validation, such as the FLM ELBO as ``val/nll_bound``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from flowlm.errors import ConfigError
from flowlm.methods.condition import Condition

if TYPE_CHECKING:
    from flowlm.config import RunConfig
    from flowlm.methods.elbo import ElboOptions
    from flowlm.methods.likelihood import FlowBoundOptions

OFF = object()  # Option.off when no value of the option means "not used"


@dataclass(frozen=True)
class Option:
    """A sampler option such as ``gamma`` or ``guidance``.

    ``check(value)`` returns the value to use or raises a one-line :class:`~flowlm.errors.ConfigError`;
    ``default`` is used when the option is not given. ``off`` is the value that means "this option does
    nothing" (``gamma=0``): a method without the option accepts it, so a caller may pass it everywhere.
    ``refusal`` is the error a method without the option gives for any other value (``{method}`` is
    replaced by the method's title).
    """

    name: str
    default: Any
    check: Callable[[Any], Any]
    help: str
    off: Any = OFF
    refusal: str = "{name} is not an option of the {method} sampler"

    def refuse(self, method: Method) -> ConfigError:
        return ConfigError(self.refusal.format(name=self.name, method=method.title))


@dataclass
class SampleRequest:
    """One batch of a sampling request, as every sampler receives it.

    ``net`` is the model's network and ``teacher`` its frozen teacher when the method samples with one;
    ``options`` holds every option of the method, defaults filled in (:meth:`Method.resolve_options`);
    ``condition`` the known positions of these rows (a prompt, a suffix, a template), None when unconditional.
    The sampler returns token ids [num_samples, seq_len] (int64) on ``device``.
    """

    net: torch.nn.Module
    num_samples: int
    seq_len: int
    vocab_size: int
    steps: int | None
    generator: torch.Generator
    device: torch.device
    options: Mapping[str, Any] = field(default_factory=dict)
    input_noise: str = "auto"
    teacher: torch.nn.Module | None = None
    bos_id: int | None = None
    condition: Condition | None = None

    @property
    def sizes(self) -> tuple[int, int, int, int | None]:
        """``(num_samples, seq_len, vocab_size, steps)``: the leading arguments of the built-in samplers."""
        return self.num_samples, self.seq_len, self.vocab_size, self.steps

    @property
    def draws(self) -> dict[str, Any]:
        """``generator``, ``device`` and ``condition`` as keyword arguments of the built-in samplers."""
        return {"generator": self.generator, "device": self.device, "condition": self.condition}


@dataclass
class LossContext:
    """What a loss needs besides its network and tokens: the vocabulary size, the run config, the
    frozen networks named in :attr:`Method.needs` (in that order), the learnable time weighting, the optimizer step
    and whether this is a training step (False at validation)."""

    vocab_size: int
    cfg: RunConfig
    frozen: tuple[torch.nn.Module, ...] = ()
    weighting: torch.nn.Module | None = None
    step: int = 0
    training: bool = True


class Method:
    """Base class of every method; subclasses set the attributes and implement :meth:`loss`, :meth:`sample`
    (and :meth:`build_network` when the network is not a fresh DiT)."""

    name: str
    title: str
    card_text: str
    records: str
    reads: tuple[str, ...] = ()
    train_method: str | None = None
    recipe: str | None = None
    # network
    dit_options: Mapping[str, Any] = {}
    time_inputs: int = 1
    # training
    metric_key: str = "loss"
    metric_name: str = "loss"
    logged: tuple[str, ...] = ()  # other (detached, 0-d) entries of the loss dict logged in training as train/<key>
    perplexity_name: str | None = None
    learnable_weighting: bool = True
    conditional_training: bool = False  # train.condition_frac > 0 allowed (clean context in the loss)
    always_weighted: bool = False
    # times the learnable loss weighting reads; 2 (τ_s and τ_t) is flowlm's variant for flow maps, where the reference
    # reads τ_s only (common.LossWeighting)
    weighting_times: int = 1
    draws_noise: bool = True
    needs: tuple[str, ...] = ()
    default_boundary_frac: float | None = None
    default_diag_frac: float = 0.5  # share of diagonal pairs (distill.diag_frac unset); SPEC §3's half
    teachers: tuple[str, ...] = ("flm",)  # recorded methods this method distills from (when it needs a teacher)
    halves_steps: bool = False  # a few-step distillation: the student takes half its teacher's distill.teacher_steps
    stage1_provider: bool = False
    # sampling
    sampler_name: str = "sampler"
    takes_steps: bool = True
    no_steps_reason: str = "its sampler takes no number of steps"
    options: tuple[Option, ...] = ()
    conditioning: str = "none"  # known positions its sampler honours: "none", "prefix" (a prompt) or "any"
    suggested_steps: int | None = 64
    card_options: str = ""
    samples_with_teacher: bool = False
    unpublishable: str | None = None
    next_token_model: bool = False
    # likelihood
    likelihoods: Mapping[str, str] = {}
    likelihood_draws: int = 1
    likelihood_exact: bool = False

    def __repr__(self) -> str:
        return f"<method {self.name}>"

    @property
    def recorded_names(self) -> tuple[str, ...]:
        return (self.records, *self.reads)

    @property
    def likelihood(self) -> str | None:
        """One line on the default bound of :meth:`nll_bound` (None: the method has no likelihood)."""
        return next(iter(self.likelihoods.values()), None)

    @property
    def distills(self) -> bool:
        """Whether training starts from a frozen teacher (``flowlm distill``)."""
        return "teacher" in self.needs

    # ------------------------------------------------------------------------------------------ network

    def build_network(self, cfg: RunConfig, vocab_size: int, frozen: tuple[torch.nn.Module, ...] = ()):
        """The network to train: a fresh DiT of ``cfg.model`` with this method's DiT options."""
        from flowlm.nn.dit import DiT

        return DiT(cfg.model.dit(vocab_size, cfg.data.seq_len, self.dit_options))

    # ----------------------------------------------------------------------------------------- training

    def loss(
        self,
        net,
        tokens: torch.Tensor,
        ctx: LossContext,
        *,
        generator: torch.Generator | None = None,
        sample_offset: int = 0,
        rows: tuple[int, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss dict of tokens [B, L]: ``loss`` to minimize and ``metric_key`` (detached), nats/token.
        ``rows = (first, total)``: ``tokens`` are rows [first, first + B) of a global micro-batch of ``total``
        rows that starts at sample ``sample_offset``; ``generator`` drives every draw."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- sampling

    def sample(self, request: SampleRequest) -> torch.Tensor:
        """Token ids [request.num_samples, request.seq_len]."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------------- likelihood

    def nll_bound(
        self,
        net,
        tokens: torch.Tensor,
        vocab_size: int,
        *,
        draws: int,
        options: FlowBoundOptions | ElboOptions | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Upper bounds on ``−log p(block)`` in nats, ``draws`` Monte-Carlo estimates per block of ``tokens``
        [B, L]: float64 [B, draws] (an exact method returns [B, 1]). Only methods with ``likelihoods``; ``options``
        picks the bound where there are several (:class:`ElboOptions`: the ELBO, :class:`FlowBoundOptions`: the ODE
        bound) and is None for a method with one bound and no options."""
        raise NotImplementedError(f"{self.title} models have no likelihood")

    def validation_metrics(
        self, net, tokens: torch.Tensor, ctx: LossContext, generator=None, rows: tuple[int, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Extra numbers to log at validation besides the loss's metric (name -> 0-d tensor, nats per token), drawn
        from ``generator`` after the loss's draws (``rows`` as for :meth:`loss`). A ``nll_bound`` is also logged as
        ``ppl_bound`` (exp of its mean)."""
        return {}

    def resolve_steps(self, steps: int | None, default: int) -> int | None:
        """The step count to sample with: ``steps`` (``default`` when None) checked >= 1; None for a method
        without steps, which refuses a given one."""
        from flowlm.methods.flm import check_steps

        if not self.takes_steps:
            if steps is not None:
                raise ConfigError(f"steps={steps}: {self.no_steps_reason}; leave steps (--steps) unset")
            return None
        return check_steps(default if steps is None else steps)

    def resolve_options(self, given: Mapping[str, Any], known: Mapping[str, Option]) -> dict[str, Any]:
        """Every option of this method (checked ``given`` values over defaults). ``known`` holds the options
        of all registered methods: one of another method is refused unless it is given at its ``off`` value."""
        mine = {option.name: option for option in self.options}
        resolved = {name: option.default for name, option in mine.items()}
        for name, value in given.items():
            if name in mine:
                resolved[name] = mine[name].check(value)
            elif name in known:
                if known[name].off is OFF or value is OFF or not _equal(value, known[name].off):
                    raise known[name].refuse(self)
            else:
                choices = ", ".join(sorted(mine)) or "none"
                raise ConfigError(f"unknown sampler option {name!r} for {self.title} models (its options: {choices})")
        return resolved

    def check_request(self, model, options: Mapping[str, Any]) -> None:
        """Checks of resolved options against the loaded model (e.g. guidance needs dropout)."""

    def check_teacher(self, model_config: Mapping[str, Any], path: str) -> None:
        """Checks of a distillation's teacher network (its ``flowlm.json`` model config) beyond its method. By default
        a teacher that takes a guidance scale (a fixed-point denoiser) is refused: only PSD passes w on."""
        if model_config.get("guidance_input", False):
            raise ConfigError(
                f"the teacher {path} is a fixed-point denoiser, which takes the guidance scale w as an input; the "
                f"{self.recipe} recipe would distill it at w = 1 only: use --recipe psd, which trains the flow map "
                "over the range of w"
            )

    def check_condition(self, condition: Condition | None) -> None:
        """Refuse known positions this method's sampler cannot honour (see :attr:`conditioning`)."""
        if condition is None or not bool(condition.mask.any()):
            return
        if self.conditioning == "none":
            raise ConfigError(f"the {self.title} sampler cannot hold known positions (a prompt, suffix or template)")
        if self.conditioning == "prefix" and not condition.is_prefix():
            raise ConfigError(
                f"a {self.title} model can only continue a prompt (known positions must be a prefix of each row): "
                "use an FLM, FMLM or MDLM model to infill or to end with a suffix"
            )


def clean_positions(cfg: RunConfig, tokens: torch.Tensor, generator, rows) -> torch.Tensor | None:
    """The clean positions [B, L] of conditional training (``train.condition_frac`` of the rows, drawn for the
    global micro-batch and sliced like every other draw), or None without conditioning (nothing is drawn)."""
    from flowlm.methods.common import check_rows
    from flowlm.methods.condition import training_condition

    t = cfg.train
    if not t.condition_frac:
        return None
    first, total = check_rows(rows, tokens.shape[0])
    clean = training_condition(total, tokens.shape[1], t.condition_frac, t.condition, generator, tokens.device)
    return clean[first : first + tokens.shape[0]]


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and not isinstance(a, bool)
    except Exception:  # noqa: BLE001 - any comparison failure means "not the off value"
        return False
