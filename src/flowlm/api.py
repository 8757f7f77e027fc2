"""The Python face of flowlm: ``flowlm.load(path).generate(...)`` and ``flowlm.train(...)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowlm.checks import check_device, check_whole
from flowlm.data import Tokenizer
from flowlm.demo import PREFIX, demo_path
from flowlm.errors import CheckpointError, ConfigError
from flowlm.methods.ar import ar_sample
from flowlm.methods.flm import check_steps, flm_sample
from flowlm.methods.fmlm import check_gamma, fmlm_sample, v1_stage1_sample
from flowlm.methods.lowrank import check_input_noise
from flowlm.methods.mdlm import mdlm_sample
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.checkpoint import TOKENIZER, load_state_strict, read_meta, read_weights, resolve_model_dir

METHODS = ("flm", "fmlm", "fmlm-v1-stage1", "mdlm", "ar")
# The sampler each method uses (recorded in sample provenance).
SAMPLERS = {
    "flm": "euler",
    "fmlm": "flow-map",
    "fmlm-v1-stage1": "v1-stage1-map",
    "mdlm": "ancestral",
    "ar": "ancestral-kv-cache",
}
DEFAULT_STEPS = 64  # sampling steps when none are given (every method but AR)


def resolve_steps(method: str, steps: int | None) -> int | None:
    """The number of sampling steps: ``steps`` (default 64); None for AR, which takes none."""
    if method == "ar":
        if steps is not None:
            raise ConfigError(
                f"steps={steps}: an autoregressive model decodes one token per network call (seq_len - 1 calls, "
                "KV-cached) and takes no number of steps; leave steps (--steps) unset"
            )
        return None
    return check_steps(DEFAULT_STEPS if steps is None else steps)


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
        self.method = meta["method"]

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def sampler(self) -> str:
        """Name of the sampler :meth:`sample_tokens` uses for this model's method."""
        return SAMPLERS[self.method]

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
        gamma: float = 0.0,
        batch_size: int = 64,
        batches: Sequence[int] | None = None,
        input_noise: str = "auto",
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
        """
        check_whole("num_samples", num_samples)
        check_whole("seq_len", seq_len, 2, optional=True)
        steps = resolve_steps(self.method, steps)
        check_input_noise(input_noise)
        check_gamma(gamma)
        if self.method != "flm" and guidance is not None:
            raise ConfigError("autoguidance applies to FLM models; for an FMLM model use gamma")
        if self.method != "fmlm" and gamma != 0.0:
            raise ConfigError("gamma is the churn of the flow-map sampler: it needs an FMLM model (flowlm distill)")
        if num_samples < 1:
            raise ConfigError(f"num_samples={num_samples}: ask for at least one sample")
        seq_len = seq_len or self.seq_len
        if seq_len > self.seq_len:
            raise ConfigError(
                f"seq_len={seq_len} exceeds the model's {self.seq_len}: ask for at most {self.seq_len} tokens"
            )
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: use a whole number >= 1")
        n_batches = -(-num_samples // batch_size)
        batches = range(n_batches) if batches is None else [int(j) for j in batches]
        if any(not 0 <= j < n_batches for j in batches):
            raise ConfigError(f"batches {list(batches)}: the request has batches 0 ... {n_batches - 1} only")
        seeds = [batch_seed(seed, j) for j in batches]
        chunks = [torch.empty(0, seq_len, dtype=torch.long)]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for j, batch_seed_j in zip(batches, seeds, strict=True):
                n = min(batch_size, num_samples - j * batch_size)
                torch.manual_seed(batch_seed_j)
                generator = torch.Generator(device=self.device).manual_seed(batch_seed_j)
                vocab = self.net.config.vocab_size
                if self.method == "fmlm-v1-stage1":
                    tokens = v1_stage1_sample(
                        self.net,
                        self.teacher,
                        n,
                        seq_len,
                        vocab,
                        steps,
                        generator=generator,
                        device=self.device,
                        input_noise=input_noise,
                    )
                elif self.method == "mdlm":
                    tokens = mdlm_sample(self.net, n, seq_len, vocab, steps, generator=generator, device=self.device)
                elif self.method == "ar":
                    tokens = ar_sample(
                        self.net, n, seq_len, self.tokenizer.bos_id, generator=generator, device=self.device
                    )
                elif self.method == "fmlm":
                    tokens = fmlm_sample(
                        self.net,
                        n,
                        seq_len,
                        vocab,
                        steps,
                        gamma=gamma,
                        generator=generator,
                        device=self.device,
                        input_noise=input_noise,
                    )
                else:
                    tokens = flm_sample(
                        self.net,
                        n,
                        seq_len,
                        vocab,
                        steps,
                        generator=generator,
                        device=self.device,
                        guidance=guidance,
                        input_noise=input_noise,
                    )
                chunks.append(tokens.cpu())
        return torch.cat(chunks)

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

    def generate(self, num_samples: int = 1, steps: int | None = None, seed: int = 0, **kwargs) -> list[str]:
        """Sample ``num_samples`` sequences (``steps`` as in :meth:`sample_tokens`) and decode them to text."""
        return self.decode(self.sample_tokens(num_samples, steps, seed=seed, **kwargs))


def load(path: str | os.PathLike, device: str | torch.device = "cpu", revision: str | None = None) -> FlowLM:
    """Load a model folder written by ``flowlm train`` (or the run folder holding it), a Hugging Face Hub
    repository ``owner/name`` holding one (downloaded once into the Hub cache; ``revision`` picks a branch,
    tag or commit), or a shipped demo model ``"demo:fmlm"`` / ``"demo:flm"`` (:mod:`flowlm.demo`). Strict."""
    from flowlm.hub import download, is_hub_id

    check_device(device, "device")
    if str(path).startswith(PREFIX):
        path = demo_path(str(path))
    directory = download(str(path), revision=revision) if is_hub_id(str(path)) else resolve_model_dir(path)
    meta = read_meta(directory)
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
    if meta.get("method") not in METHODS:
        raise CheckpointError(f"{directory} holds a {meta.get('method')!r} model, which this flowlm cannot sample")
    net = DiT(config)
    load_state_strict(net, read_weights(directory, meta), str(directory))
    teacher = None
    if meta["method"] == "fmlm-v1-stage1":
        # The stage-1 map adds g to the teacher's velocity: it samples with its (verified) teacher.
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
