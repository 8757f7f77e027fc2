"""The Python face of flowlm: ``flowlm.load(path).generate(...)`` and ``flowlm.train(...)``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flowlm.data import Tokenizer
from flowlm.errors import CheckpointError, ConfigError
from flowlm.methods.flm import check_steps, flm_sample
from flowlm.methods.fmlm import check_gamma, fmlm_sample, v1_stage1_sample
from flowlm.methods.lowrank import check_input_noise
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.checkpoint import TOKENIZER, load_state_strict, read_meta, read_weights, resolve_model_dir


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
        steps: int,
        seed: int = 0,
        seq_len: int | None = None,
        guidance: float | None = None,
        gamma: float = 0.0,
        batch_size: int = 64,
        input_noise: str = "auto",
    ) -> torch.Tensor:
        """Token ids [num_samples, seq_len]; identical for identical arguments (seeded).

        FLM models use the Euler sampler (optionally with autoguidance ``guidance`` = η); FMLM models
        use the flow-map sampler with churn ``gamma`` ∈ [0, 1] (0: deterministic). ``steps`` is the
        number of network calls per sample. ``input_noise``: ``auto`` (exact low-rank states ``x @ W`` when
        V > d), ``lowrank`` or ``naive`` (full [n, L, V] states); equal in distribution, different draws.
        """
        check_input_noise(input_noise)
        check_steps(steps)
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
        generator = torch.Generator(device=self.device).manual_seed(seed)
        chunks = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, num_samples, batch_size):
                n = min(batch_size, num_samples - start)
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
                chunks.append(tokens)
        return torch.cat(chunks).cpu()

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row.tolist()) for row in tokens]

    def generate(self, num_samples: int = 1, steps: int = 64, seed: int = 0, **kwargs) -> list[str]:
        """Sample ``num_samples`` sequences with ``steps`` network calls each and decode them to text."""
        return self.decode(self.sample_tokens(num_samples, steps, seed=seed, **kwargs))


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> FlowLM:
    """Load a model folder written by ``flowlm train`` (or the run folder holding it). Strict."""
    directory = resolve_model_dir(path)
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
    if meta.get("method") not in ("flm", "fmlm", "fmlm-v1-stage1"):
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
