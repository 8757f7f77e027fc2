"""An in-domain judge: a flowlm autoregressive model (``flowlm train --method ar``) scoring texts.

:class:`ARJudge` is a :class:`~flowlm.eval.judges.CausalLMJudge` (same ``description``, ``definition``,
``fingerprint``, ``score_texts``, ``score_samples``, same EOS rule and windowing), with these choices:

* texts are re-tokenized by the AR model's own flowlm tokenizer (no special tokens added);
* the prefix of every window is the model's BOS and the end token its EOS, as in its training blocks
  ``[BOS] chunk [EOS]`` (:mod:`flowlm.data.packing`);
* the window is ``C = L − 1`` tokens (``L`` = the model's ``seq_len``), i.e. BOS + up to ``L − 2`` scored
  tokens: exactly the chunk positions of a training block. The last position (index ``L − 1``) is left out
  because in training it always held the block-closing EOS, so the model scores any other token there as
  nearly impossible.

``load_judge("<flowlm AR model folder>")`` returns one (see :func:`load_ar_judge`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from flowlm.errors import ConfigError
from flowlm.eval.causal_judge import CausalLMJudge
from flowlm.methods import registry
from flowlm.training.checkpoint import META, read_meta, resolve_model_dir

__all__ = ["ARJudge", "is_flowlm_folder", "load_ar_judge"]


class _CausalDiTLM(nn.Module):
    """The calling surface :class:`CausalLMJudge` uses, over a causal DiT: ``model(input_ids=[B, T], ...)
    .logits`` [B, T, V] (float32) and ``get_output_embeddings()``. The attention mask is not needed: the
    judge pads on the right, and causal attention never lets a position see the padding after it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ):
        """``.logits`` [B, T, V]; with ``output_hidden_states``, ``.hidden_states`` = (the input of the output layer,
        the DiT's last hidden state [B, T, d]), as Hugging Face models give theirs."""
        tau = torch.zeros(input_ids.shape[0], device=input_ids.device)
        if not output_hidden_states:
            return SimpleNamespace(logits=self.net(input_ids, tau))
        seen = []
        hook = self.net.output_layer.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            logits = self.net(input_ids, tau)
        finally:
            hook.remove()
        return SimpleNamespace(logits=logits, hidden_states=(seen[0],))

    def get_output_embeddings(self) -> nn.Module:
        return self.net.output_layer.linear


class ARJudge(CausalLMJudge):
    """Scores texts with a trained flowlm AR model; build it with :func:`load_ar_judge` or ``load_judge(path)``.

    Args:
        model: a :class:`flowlm.FlowLM` of a next-token method (``next_token_model``: AR).
        name: how results name this judge (the folder it was loaded from).
        max_length: the window ``C`` (BOS included), from 2 to ``seq_len − 1`` (the default).
    """

    def __init__(self, model, *, name: str, max_length: int | None = None) -> None:
        if not registry.of_model(model).next_token_model:
            raise ConfigError(
                f"{name} is a {model.method} model: an in-domain judge must be autoregressive "
                "(train one with flowlm train --method ar on the same corpus)"
            )
        tokenizer = model.tokenizer
        context = model.seq_len - 1
        if max_length is None:
            max_length = context
        if isinstance(max_length, bool) or int(max_length) != max_length or not 2 <= max_length <= context:
            raise ConfigError(
                f"judge max_length={max_length!r}: use a whole number from 2 (BOS + 1 token) to {context} "
                f"(seq_len {model.seq_len} minus the block-closing EOS position)"
            )
        self.flowlm_model = model
        self.model = _CausalDiTLM(model.net.eval())
        self.tokenizer = tokenizer
        self.name = name
        self.prefix_id, self.end_id = int(tokenizer.bos_id), int(tokenizer.eos_id)
        self.prefix_token = tokenizer.id_to_token(self.prefix_id)
        self.end_token = tokenizer.id_to_token(self.end_id)
        self.max_length = int(max_length)
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the DiT config, the tokenizer's fingerprint, the BOS/EOS ids, the
        SHA-256 of the checkpoint's weights file (verified when it was loaded) and the weights' dtype."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.flowlm_model.net.config.to_dict(), sort_keys=True).encode())
            h.update(self.tokenizer.fingerprint.encode())
            h.update(f"prefix={self.prefix_id} end={self.end_id}".encode())
            h.update(f"weights={self.flowlm_model.meta.get('weights_sha256')} dtype={self.dtype}".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    @property
    def definition(self) -> str:
        return (
            super().definition
            + f"; flowlm AR judge: its blocks are [BOS] + {self.flowlm_model.seq_len - 2} text tokens + [EOS], "
            "so windows stop before the block-closing EOS position"
        )

    def encode(self, texts: list[str]) -> list[list[int]]:
        """The AR model's ids of each text, no special token added."""
        return self.tokenizer.encode_batch(texts)


def is_flowlm_folder(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` is a flowlm model folder or a run folder holding one."""
    path = Path(spec).expanduser()
    return (path / META).is_file() or (path / "model" / META).is_file()


def load_ar_judge(
    spec: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    max_length: int | None = None,
) -> ARJudge:
    """Load a flowlm AR model folder (or its run folder) as a judge; any other flowlm model is refused."""
    from flowlm.api import load

    directory = resolve_model_dir(Path(spec).expanduser())
    meta = read_meta(directory)
    if not registry.for_meta(meta, where=str(directory)).next_token_model:
        raise ConfigError(
            f"judge {str(spec)!r} is a flowlm {meta.get('method')} model: only an AR model can judge "
            "(train one with flowlm train --method ar), or give a Hugging Face causal LM"
        )
    model = load(directory, device=device)
    model.net.to(dtype)
    return ARJudge(model, name=str(spec), max_length=max_length)
