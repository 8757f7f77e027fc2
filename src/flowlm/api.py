"""The Python face of flowlm: ``flowlm.load(path).generate(...)`` and ``flowlm.train(...)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowlm.checks import check_device, check_whole
from flowlm.data import Tokenizer
from flowlm.demo_models import PREFIX, demo_path
from flowlm.errors import CheckpointError, ConfigError
from flowlm.methods import registry
from flowlm.methods.base import Method, SampleRequest
from flowlm.methods.condition import make_condition
from flowlm.methods.lowrank import check_input_noise
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.prompts import layout
from flowlm.training.checkpoint import META, TOKENIZER, load_state_strict, read_consistent, read_weights

DEFAULT_STEPS = 64  # sampling steps when none are given (every method that takes steps)


def resolve_steps(method: Method, steps: int | None) -> int | None:
    """The number of sampling steps of ``method``: ``steps`` (default 64); None for a method without steps."""
    return method.resolve_steps(steps, DEFAULT_STEPS)


def sampler_options(method: Method, defaults: dict | None = None, **given) -> dict:
    """Every sampler option of ``method``, checked, defaults filled in; options left None count as not given.
    ``defaults``: a model's own defaults (``flowlm.json``'s ``sampler_defaults``, e.g. an imported released
    model's γ), used where an option is not given."""
    chosen = {**(defaults or {}), **{k: v for k, v in given.items() if v is not None}}
    return method.resolve_options(chosen, registry.sampler_options())


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch`` of a sampling request seeded with ``seed``: 63 bits of NumPy's
    ``SeedSequence([seed, batch])``, so distinct pairs give unrelated streams (no ``seed + batch`` overlap)."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ConfigError(f"seed={seed!r}: use a whole number >= 0")
    return int(np.random.SeedSequence([int(seed), int(batch)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class FlowLM:
    """A trained model with its tokenizer, ready to sample. Build it with :func:`load`."""

    def __init__(self, net: DiT, tokenizer: Tokenizer, meta: dict, path: Path, teacher: DiT | None = None):
        self.net = net.eval()
        self.teacher = teacher.eval() if teacher is not None else None  # v1 stage 1 samples with its teacher
        self.tokenizer = tokenizer
        self.meta = meta
        self.path = path
        self.method = meta["method"]  # the name recorded in flowlm.json
        self.method_def = registry.for_meta(meta, where=str(path))  # what that name means (flowlm.methods)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def sampler(self) -> str:
        """Name of the sampler :meth:`sample_tokens` uses for this model's method."""
        return self.method_def.sampler_name

    @property
    def seq_len(self) -> int:
        return self.net.config.seq_len

    def to(self, device) -> FlowLM:
        self.net.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    @torch.no_grad()
    def sample_tokens(
        self,
        num_samples: int,
        steps: int | None = None,
        seed: int = 0,
        seq_len: int | None = None,
        guidance: float | None = None,
        gamma: float | None = None,
        batch_size: int = 64,
        batches: Sequence[int] | None = None,
        input_noise: str = "auto",
        known: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        condition_mode: str | None = None,
        **options,
    ) -> torch.Tensor:
        """Token ids [num_samples, seq_len]; identical for identical arguments (seeded).

        FLM models use the Euler sampler (optionally with autoguidance ``guidance`` = η); FMLM models
        use the flow-map sampler with churn ``gamma`` ∈ [0, 1] (0: deterministic); MDLM models use the
        ancestral sampler. For these ``steps`` (default 64) is the number of sampler steps (network calls;
        MDLM skips a call after a step that revealed nothing). AR models decode token by token from BOS with
        a KV cache at temperature 1 and take no ``steps`` (passing one is an error). ``input_noise`` (FLM /
        FMLM): ``auto`` (exact low-rank states ``x @ W`` when V > d), ``lowrank`` or ``naive`` (full
        [n, L, V] states); equal in distribution, different draws.

        The request is cut into batches of ``batch_size`` (the last may be shorter); batch ``j`` holds
        samples ``j * batch_size ...`` and draws from its own seed :func:`batch_seed` ``(seed, j)``, so a
        batch's samples do not depend on which other batches are generated, in what order or where.
        ``batches`` (default: all) selects the batches to generate; the rows of the selected batches are
        returned in the order given, e.g. rank ``r`` of ``w`` asks for ``range(r, n_batches, w)``.

        ``known`` / ``known_mask`` (ids and bool, [num_samples, seq_len] or one row [seq_len] for all): positions
        where the mask is True are held to ``known`` and the rest is generated; the returned ids equal ``known``
        there (each method holds them its own way, :mod:`flowlm.methods.condition`; AR takes a prefix only).
        :meth:`generate` builds them from a prompt, a suffix or a template. ``condition_mode`` (continuous
        samplers): ``clean`` (default: known positions given as clean one-hot rows at every step) or ``path``
        (on their noisy path ``(1 − t)·x₀ + t·onehot``); on the Markov test an FLM continues a prompt with 8%
        illegal boundary moves given clean context and 43% on the path (tests/test_conditioning_statistical.py).

        Other keyword ``options`` go to the method's sampler (:attr:`flowlm.methods.Method.options`); an option
        the method does not have is an error unless it is given at its "off" value (``gamma=0``).
        """
        check_whole("num_samples", num_samples)
        check_whole("seq_len", seq_len, 2, optional=True)
        method = self.method_def
        steps = resolve_steps(method, steps)
        check_input_noise(input_noise)
        defaults = self.meta.get("sampler_defaults")
        resolved = sampler_options(method, defaults, guidance=guidance, gamma=gamma, **options)
        method.check_request(self, resolved)
        seq_len = seq_len or self.seq_len
        if seq_len > self.seq_len:
            raise ConfigError(
                f"seq_len={seq_len} exceeds the model's {self.seq_len}: ask for at most {self.seq_len} tokens"
            )
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: use a whole number >= 1")
        condition = make_condition(known, known_mask, num_samples, seq_len, self.net.config.vocab_size)
        method.check_condition(condition)
        if condition is not None:
            condition.clean = self.condition_mode(condition_mode) == "clean"
        n_batches = -(-num_samples // batch_size)
        batches = range(n_batches) if batches is None else [int(j) for j in batches]
        if any(not 0 <= j < n_batches for j in batches):
            raise ConfigError(f"batches {list(batches)}: the request has batches 0 ... {n_batches - 1} only")
        seeds = [batch_seed(seed, j) for j in batches]
        chunks = [torch.empty(0, seq_len, dtype=torch.long)]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for j, batch_seed_j in zip(batches, seeds, strict=True):
                n = min(batch_size, num_samples - j * batch_size)
                rows = slice(j * batch_size, j * batch_size + n)
                torch.manual_seed(batch_seed_j)
                generator = torch.Generator(device=self.device).manual_seed(batch_seed_j)
                request = SampleRequest(
                    net=self.net,
                    num_samples=n,
                    seq_len=seq_len,
                    vocab_size=self.net.config.vocab_size,
                    steps=steps,
                    generator=generator,
                    device=self.device,
                    options=resolved,
                    input_noise=input_noise,
                    teacher=self.teacher,
                    bos_id=self.tokenizer.bos_id,
                    condition=None if condition is None else condition.rows(rows).to(self.device),
                )
                tokens = method.sample(request)
                chunks.append(tokens.cpu())
        return torch.cat(chunks)

    @staticmethod
    def condition_mode(mode: str | None = None) -> str:
        """``mode`` checked (None: ``clean``, the measured better one; see :meth:`sample_tokens`)."""
        if mode is None:
            return "clean"
        if mode not in ("path", "clean"):
            raise ConfigError(f"condition_mode={mode!r}: use path (noisy known positions) or clean")
        return mode

    def save_pretrained(self, directory: str | os.PathLike, license: str | None = None) -> Path:
        """Write this model as a model folder (weights, ``flowlm.json``, tokenizer, model card)."""
        from flowlm.hub import save_pretrained

        return save_pretrained(self, directory, license=license)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload this model folder to the Hugging Face Hub (see :func:`flowlm.hub.push_to_hub`)."""
        from flowlm.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row.tolist()) for row in tokens]

    def generate(
        self,
        num_samples: int = 1,
        steps: int | None = None,
        seed: int = 0,
        *,
        prompt: str | None = None,
        suffix: str | None = None,
        template: str | None = None,
        **kwargs,
    ) -> list[str]:
        """Sample ``num_samples`` sequences (``steps`` and other options as in :meth:`sample_tokens`) as text.

        ``prompt`` continues a prefix, ``suffix`` ends with the given text (before the block's EOS), and
        ``template`` fills blanks: ``"The [BLANK:6] sat on the [BLANK:3]."`` (``[BLANK:k]`` is k generated
        tokens, ``[BLANK]`` 8; see :mod:`flowlm.prompts`). The texts include the given parts; for a template
        only its span is returned."""
        if prompt is None and suffix is None and template is None:
            return self.decode(self.sample_tokens(num_samples, steps, seed=seed, **kwargs))
        seq_len = kwargs.pop("seq_len", None) or self.seq_len
        plan = layout(self.tokenizer, seq_len, prompt=prompt, suffix=suffix, template=template)
        known, mask = torch.tensor(plan.ids), torch.tensor(plan.mask)
        tokens = self.sample_tokens(num_samples, steps, seed=seed, seq_len=seq_len, known=known, known_mask=mask,
                                    **kwargs)  # fmt: skip
        return self.decode(tokens[:, : plan.end])


def read_model(directory: Path, meta: dict) -> tuple[DiTConfig, Tokenizer, Method, dict[str, torch.Tensor]]:
    """The network config, tokenizer, method and weights (verified against ``meta``'s hash) of the model folder
    ``directory`` whose ``flowlm.json`` is ``meta``, checked against each other. :func:`load` calls it through
    :func:`flowlm.training.checkpoint.read_consistent`, so that all of them come from one export."""
    try:
        config = DiTConfig(**meta["model"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{directory} has an invalid model config ({err}): re-export the checkpoint") from None
    tokenizer = Tokenizer.load(directory / TOKENIZER)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {directory} has {tokenizer.vocab_size} tokens but the model expects "
            f"{config.vocab_size}: the checkpoint was assembled from mismatched parts; re-export it"
        )
    return config, tokenizer, registry.for_meta(meta, where=str(directory)), read_weights(directory, meta)


def load(path: str | os.PathLike, device: str | torch.device = "cpu", revision: str | None = None) -> FlowLM:
    """Load a model folder written by ``flowlm train`` (or the run folder holding it), a Hugging Face Hub
    repository ``owner/name`` holding one (downloaded once into the Hub cache; ``revision`` picks a branch,
    tag or commit), or a shipped demo model ``"demo:fmlm"`` / ``"demo:flm"`` (:mod:`flowlm.demo`). A released
    reference model (``config.json`` + ``model.safetensors``, by Hub id or as a local folder) is converted once into
    the flowlm cache (:func:`flowlm.interop.released.cached_conversion`). Strict."""
    from flowlm.hub import download, is_hub_id

    check_device(device, "device")
    if str(path).startswith(PREFIX):
        path = demo_path(str(path))
    if is_hub_id(str(path)):
        hub_id, path = str(path), download(str(path), revision=revision)
        if not (path / META).is_file():  # a released reference model: converted once, then cached
            from flowlm.interop.released import cached_conversion

            path = cached_conversion(path, hub_id, revision)
    else:
        from flowlm.interop.released import cached_conversion, is_released_folder

        if is_released_folder(Path(path)):  # the same files in a local folder: converted once, then cached
            path = cached_conversion(Path(path), None)
    directory, meta, (config, tokenizer, method, weights) = read_consistent(path, read_model)
    net = DiT(config)
    load_state_strict(net, weights, str(directory))
    teacher = None
    if method.samples_with_teacher:
        # E.g. the v1 stage-1 map adds g to the teacher's velocity: it samples with its (verified) teacher.
        recorded = meta["teacher"]
        teacher_model = load(recorded["path"], device=device)
        if teacher_model.meta.get("weights_sha256") != recorded["weights_sha256"]:
            raise CheckpointError(
                f"the teacher at {recorded['path']} is not the one {directory} was distilled from (weights hash "
                "differs): restore that teacher checkpoint"
            )
        teacher = teacher_model.net
    return FlowLM(net.to(device), tokenizer, meta, directory, teacher=teacher)


def from_pretrained(repo_id_or_dir: str | os.PathLike, device: str | torch.device = "cpu", **kwargs) -> FlowLM:
    """Same as :func:`load`, named as in other Hub libraries."""
    return load(repo_id_or_dir, device=device, **kwargs)
