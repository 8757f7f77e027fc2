"""Autoregressive baseline: next-token prediction with the DiT made causal (``causal=True``). Loss, exact
NLL and ancestral decoding with a KV cache; no I/O, no training harness.

The network is a causal DiT called as ``model(x [B, n], tau [B]) -> logits [B, n, V]``, where the logits at
position ``i`` predict token ``i + 1`` from tokens ``0..i``. It has no time input: it is always called with
the constant ``τ = 0``, so its adaLN holds constant, learned shifts and scales (same parameter count as the
FLM of the same preset). Training blocks are ``[BOS] chunk [EOS]`` (:mod:`flowlm.data.packing`), so
decoding starts from BOS.
"""

from __future__ import annotations

import torch

from flowlm.errors import ConfigError
from flowlm.methods.common import model_cross_entropy, sample_categorical
from flowlm.methods.condition import Condition
from flowlm.methods.tempering import OFF, Tempering


def ar_loss(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact NLL of a batch of blocks ``tokens`` [B, L] in nats per predicted token.

    ``−log p(x_{i+1} | x_0..x_i)`` for ``i = 0..L−2`` (the first token, BOS, is given and not scored), averaged
    over the ``B·(L − 1)`` predicted positions. Returns ``loss`` and ``nll`` (the same, detached).
    """
    batch = tokens.shape[0]
    loss = model_cross_entropy(model, tokens[:, :-1], torch.zeros(batch, device=tokens.device), tokens[:, 1:]).mean()
    return {"loss": loss, "nll": loss.detach()}


@torch.no_grad()
def ar_sample(
    model,
    num_samples: int,
    seq_len: int,
    bos_id: int,
    generator: torch.Generator | None = None,
    device=None,
    use_cache: bool = True,
    condition: Condition | None = None,
    tempering: Tempering = OFF,
) -> torch.Tensor:
    """Ancestral decoding; returns tokens [num_samples, seq_len] starting with ``bos_id``.

    Each of the ``seq_len − 1`` steps draws the next token from ``softmax(logits)`` of the last position, in
    float64 (:func:`~flowlm.methods.common.sample_categorical` with ``generator``). With ``use_cache`` (a
    :class:`~flowlm.nn.dit.DiT` with ``causal=True``) each step feeds only the new token and reuses the
    keys/values of the earlier ones; without
    it every step reruns the whole prefix (the reference the cache is tested against). Both draw the same
    random numbers, so they give the same tokens up to float rounding of the logits.
    ``condition`` (known positions forming a prefix of each row, :meth:`Condition.is_prefix`): the prompt is fed
    through the cache instead of drawn; the draws for its positions are made and discarded, so a row's
    random stream does not depend on its prompt's length. ``tempering``: temperature and top-p of the next-token law
    (:mod:`flowlm.methods.tempering`; off by default, i.e. temperature 1).
    """
    if condition is not None and not condition.is_prefix():
        raise ConfigError(
            "an autoregressive model can only continue a prompt (known positions must be a prefix of each row): "
            "use an FLM, FMLM or MDLM model to infill or to end with a suffix"
        )
    if seq_len < 1:
        raise ConfigError(f"seq_len={seq_len}: decode at least one position (the BOS)")
    tau = torch.zeros(num_samples, device=device)
    x = torch.full((num_samples, 1), bos_id, dtype=torch.long, device=device)
    if condition is not None:
        x = torch.where(condition.mask[:, :1], condition.ids[:, :1], x)
    cache = model.new_cache() if use_cache else None
    logits = model(x, tau, cache=cache) if use_cache else model(x, tau)
    for i in range(1, seq_len):
        probs = tempering.probs(logits[:, -1].double())
        token = sample_categorical(probs, generator).unsqueeze(-1)
        if condition is not None:
            token = torch.where(condition.mask[:, i : i + 1], condition.ids[:, i : i + 1], token)
        x = torch.cat([x, token], dim=1)
        if i < seq_len - 1:
            logits = model(token, tau, cache=cache) if use_cache else model(x, tau)
    return x
