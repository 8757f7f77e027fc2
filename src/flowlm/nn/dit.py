"""Diffusion transformer (DiT) backbone for flow language models (SPEC §5).

A bidirectional transformer conditioned on one or two diffusion times through adaLN-zero.
Parameter names follow the reference implementation (``vocab_embed.embedding``, ``sigma_map``,
``blocks.{i}.attn_qkv`` ...) so its checkpoints map onto this module by name.

Shapes: ``B`` batch, ``L`` sequence length, ``V`` vocabulary, ``d`` width, ``H`` heads.

The network is called as ``model(x, tau, tau_end=None) -> logits [B, L, V]`` where ``x`` is either
integer tokens ``[B, L]`` (an embedding lookup) or a soft state ``[B, L, V]`` (a matmul with the
same ``V x d`` matrix), or, with ``embedded=True``, the already projected state ``x @ W`` [B, L, d].
``tau`` is the network clock (SPEC §1), shape ``[B]``; ``tau_end`` is the
second time of a flow map, shape ``[B]``. Logits are float32 and soft-capped (``logit_cap``).

The baselines use two options that the flow models leave off: ``mask_input`` (MDLM) adds one input id,
``V``, the absorbing mask, so the input matrix has ``V + 1`` rows while the output stays ``V`` wide;
``causal`` (AR) makes every attention causal and allows decoding with a :class:`KVCache`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from flowlm.errors import ConfigError
from flowlm.nn.head import head_cross_entropy

ATTENTION_BACKENDS = ("auto", "math", "sdpa", "flex", "flash")
# What the time embedding reads: the time input itself (None), or "neg_log": −log of it, the DUO reference's
# σ = −log α_t for a network that is fed α_t (an imported DUO checkpoint; flowlm-trained models read the clock).
TIME_TRANSFORMS = (None, "neg_log")


@dataclass
class DiTConfig:
    """Sizes and options of the DiT. ``vocab_size`` and ``seq_len`` come from the data."""

    vocab_size: int
    seq_len: int = 128
    hidden_size: int = 768
    n_blocks: int = 12
    n_heads: int = 12
    cond_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    attn_softcap: float | None = 50.0
    logit_cap: float | None = 30.0
    time_inputs: int = 1
    pos_embed: bool = False
    input_std: float | None = None
    attn_backend: str = "auto"
    causal: bool = False
    mask_input: bool = False
    end_stretch: bool = False
    time_transform: str | None = None
    self_condition: bool = False
    guidance_input: bool = False

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ConfigError(f"model.vocab_size={self.vocab_size}: a vocabulary needs at least 2 tokens")
        if self.hidden_size % self.n_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.n_heads={self.n_heads}: "
                "pick sizes whose ratio is an integer"
            )
        if (self.hidden_size // self.n_heads) % 2:
            raise ConfigError("rotary embeddings need an even head size: change model.hidden_size or n_heads")
        if self.time_inputs not in (1, 2):
            raise ConfigError(f"model.time_inputs={self.time_inputs}: use 1 (FLM) or 2 (flow map)")
        if self.end_stretch and self.time_inputs != 2:
            raise ConfigError("model.end_stretch embeds a flow map's end time: it needs time_inputs=2")
        if self.time_transform not in TIME_TRANSFORMS:
            raise ConfigError(f"model.time_transform={self.time_transform!r}: use one of {TIME_TRANSFORMS}")
        if self.attn_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"model.attn_backend={self.attn_backend!r}: use one of {ATTENTION_BACKENDS}")
        for name in ("attn_softcap", "logit_cap"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"model.{name}={value}: use a positive cap, or null to disable it")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def input_vocab_size(self) -> int:
        """Rows of the input matrix: ``V``, plus the mask id ``V`` when ``mask_input``."""
        return self.vocab_size + int(self.mask_input)

    def resolved_input_std(self) -> float:
        """Std of the ``V x d`` input matrix.

        The reference draws it from U(±1/√d) (std 1/√(3d)), so the projected noise ``x₀ @ W``
        has per-coordinate variance V/(3d): ample at V = 30k but tiny for small vocabularies, where
        the state is then swamped by the network's own O(1) activations and nothing is learned
        (SPEC §5). The default keeps the reference scale and raises it where needed so that the
        projected noise has variance at least 4 per coordinate.
        """
        if self.input_std is not None:
            return self.input_std
        return max(1.0 / math.sqrt(3 * self.hidden_size), 2.0 / math.sqrt(self.vocab_size))

    def to_dict(self) -> dict:
        return asdict(self)


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(x / cap)``; identity when ``cap`` is None."""
    return x if cap is None else cap * torch.tanh(x / cap)


class _LogitCap(torch.autograd.Function):
    """``cap·tanh(x/cap)`` that keeps only its output y for backward (``dy/dx = 1 − (y/cap)²``), so the
    [.., V] logits are stored once (the cross-entropy keeps the same tensor) instead of twice. Evaluated as
    ``2·cap·sigmoid(2x/cap) − cap`` (the same function; a CPU sigmoid costs a sixth of a tanh)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cap: float) -> torch.Tensor:
        y = torch.mul(x, 2.0 / cap).sigmoid_().mul_(2.0 * cap).sub_(cap)  # in place: one [.., V] allocation
        ctx.save_for_backward(y)
        ctx.cap = cap
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        return (y / ctx.cap).square_().neg_().add_(1.0).mul_(grad), None


def cap_logits(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """:func:`soft_cap` of the output logits, with the memory-lean backward of :class:`_LogitCap`."""
    return x if cap is None else _LogitCap.apply(x, cap)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x (1 + scale) + shift`` with ``shift, scale`` of shape [B, 1, d]."""
    return x * (1 + scale) + shift


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in float32 (as the reference)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.layer_norm(x.float(), (x.shape[-1],))
        return (y * self.weight.float()).to(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of a scalar time (256) followed by an MLP to ``cond_dim``.

    ``forward(tau [B]) -> [B, cond_dim]``.
    """

    def __init__(self, cond_dim: int, frequency_dim: int = 256, max_period: float = 10_000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, device=tau.device, dtype=torch.float32) / half
        )
        args = tau.float()[:, None] * freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


END_STRETCH_FLOOR = 1e-4  # 1 − t at which the stretched end clock reaches 1


def end_stretch_clock(tau_end: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The end time on a clock that resolves t → 1: ``min(−log(1 − t), −log ε) / −log ε`` with ``t = T_V^{-1}(τ)``
    and ε = :data:`END_STRETCH_FLOOR`; ``[B] -> [B]`` in [0, 1].

    Why: on the τ clock the target of a long jump, δ_{s,t}, changes from broad to one-hot between t ≈ 0.89 and
    t = 1, which is τ ∈ (0.9999, 1] at V = 8,192 (SPEC §8), and the sinusoidal embedding's features move by at
    most ~1e-4 there. On this clock the same change spans 0.24 → 1 (V = 8,192).
    """
    from flowlm.schedule import get_schedule

    t = get_schedule(vocab_size, tau_end.device).t_from_tau(tau_end.float())
    top = -math.log(END_STRETCH_FLOOR)
    return torch.clamp(-torch.log1p(-torch.clamp(t, max=1.0)), max=top) / top


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half convention) for ``[B, L, H, hd]`` tensors."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq)

    def cos_sin(self, seq_len: int, device: torch.device, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions ``start, ..., start + L - 1``, shape [L, 1, hd] in float32."""
        pos = torch.arange(start, start + seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.to(device))
        emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]
        return emb.cos(), emb.sin()

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return (x.float() * cos + rotated * sin).to(x.dtype)


@cache
def _flex_attention(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


def _softcap_score_mod(cap: float):
    def score_mod(score, batch, head, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return score_mod


@cache
def _causal_block_mask(q_len: int, kv_len: int, device: str):
    """flex block mask letting query i (at absolute position ``kv_len - q_len + i``) see keys ``<=`` it."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = kv_len - q_len

    def mask_mod(batch, head, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=device)


def causal_mask(q_len: int, kv_len: int, device) -> torch.Tensor:
    """Bool [Lq, Lk], True where query i may attend key j: ``j <= i + (Lk - Lq)`` (queries are the last
    ``Lq`` positions of the ``Lk`` keys, as in cached decoding)."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=kv_len - q_len)


def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float | None, backend: str, causal: bool = False
) -> torch.Tensor:
    """Multi-head attention with an optional tanh soft-cap on the logits, bidirectional or causal.

    ``q`` [B, Lq, H, hd], ``k, v`` [B, Lk, H, hd] -> [B, Lq, H, hd]. Without ``causal``, Lq = Lk. With
    ``causal``, the queries are the last Lq of the Lk positions (Lq = Lk in training, Lq < Lk when decoding
    from a cache) and each attends to the keys at or before its own position. Backends:
    ``math`` (explicit float32 logits; works everywhere, supports the soft-cap),
    ``sdpa`` (``F.scaled_dot_product_attention``; only without a soft-cap),
    ``flex`` (PyTorch's ``flex_attention``, compiled on CUDA; supports the soft-cap, needs no extra package),
    ``flash`` (the ``flash-attn`` package on CUDA in fp16/bf16; supports the soft-cap),
    ``auto`` (on CUDA: flash when installed and in half precision, else flex; on CPU: sdpa without a
    cap, else math).
    """
    if backend == "auto":
        if q.is_cuda:
            half = q.dtype in (torch.float16, torch.bfloat16)
            backend = "flash" if half and _flash_attn_func() is not None else "flex"
        else:
            backend = "sdpa" if softcap is None else "math"
    if backend == "flash":
        flash = _flash_attn_func()
        if flash is None or not q.is_cuda:
            raise ConfigError(
                "model.attn_backend='flash' needs the flash-attn package and a CUDA device: "
                "pip install 'flowlm[flash]' or set model.attn_backend=auto"
            )
        # flash-attn aligns a causal mask to the bottom-right corner when Lq < Lk, as wanted here.
        return flash(q, k, v, dropout_p=0.0, causal=causal, softcap=0.0 if softcap is None else softcap)
    q_len, kv_len = q.shape[1], k.shape[1]
    causal = causal and q_len > 1  # one query, the last position, sees every key: no mask needed
    if backend == "flex":
        flex = _flex_attention(compiled=q.is_cuda)
        score_mod = None if softcap is None else _softcap_score_mod(softcap)
        block_mask = _causal_block_mask(q_len, kv_len, str(q.device)) if causal else None
        out = flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), score_mod=score_mod, block_mask=block_mask)
        return out.transpose(1, 2)
    if backend == "sdpa":
        if softcap is not None:
            raise ConfigError("model.attn_backend='sdpa' cannot apply model.attn_softcap: use 'math' or 'auto'")
        # sdpa's is_causal aligns to the top-left corner, so a cached step (Lq < Lk) passes the mask itself.
        mask = causal_mask(q_len, kv_len, q.device) if causal and q_len != kv_len else None
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=causal and mask is None
        )
        return out.transpose(1, 2)
    scores = soft_cap(torch.einsum("bihd,bjhd->bhij", q.float(), k.float()) / math.sqrt(q.shape[-1]), softcap)
    if causal:
        scores = scores.masked_fill(~causal_mask(q_len, kv_len, q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.einsum("bhij,bjhd->bihd", probs, v)


class KVCache:
    """Keys and values of the positions decoded so far, for a causal DiT.

    ``keys[i], values[i]``: [B, capacity, H, hd] buffers of block ``i`` (allocated at the first step, in the
    dtype and device of its keys); positions ``0 .. length - 1`` are filled. Build it with
    :meth:`DiT.new_cache`; each forward pass with it appends its positions and advances ``length``.
    """

    def __init__(self, n_blocks: int, capacity: int):
        self.keys: list[torch.Tensor | None] = [None] * n_blocks
        self.values: list[torch.Tensor | None] = [None] * n_blocks
        self.length = 0
        self.capacity = capacity

    def extend(self, block: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new ``k, v`` [B, n, H, hd] of ``block`` after the cached ones; return all of them
        [B, length + n, H, hd]."""
        if self.keys[block] is None:
            shape = (k.shape[0], self.capacity, *k.shape[2:])
            self.keys[block] = k.new_zeros(shape)
            self.values[block] = v.new_zeros(shape)
        end = self.length + k.shape[1]
        self.keys[block][:, self.length : end] = k
        self.values[block][:, self.length : end] = v
        return self.keys[block][:, :end], self.values[block][:, :end]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero: ``forward(x [B,L,d], cos, sin, c [B,cond]) -> [B,L,d]``.

    With a ``cache`` (causal models), the block's keys and values are appended to it and the queries attend to
    every cached position too.
    """

    def __init__(self, cfg: DiTConfig, index: int = 0):
        super().__init__()
        d = cfg.hidden_size
        self.index = index
        self.n_heads = cfg.n_heads
        self.softcap = cfg.attn_softcap
        self.backend = cfg.attn_backend
        self.causal = cfg.causal
        self.norm1 = LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_ratio * d, d)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        b, seq, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1)
        q, k, v = self.attn_qkv(h).view(b, seq, 3, self.n_heads, d // self.n_heads).unbind(dim=2)
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(self.index, k, v)
        attn = attention(q, k, v, self.softcap, self.backend, causal=self.causal).reshape(b, seq, d)
        x = x + gate1 * self.dropout(self.attn_out(attn))
        h = modulate(self.norm2(x), shift2, scale2)
        return x + gate2 * self.dropout(self.mlp(h))


class FinalLayer(nn.Module):
    """Final adaLN + zero-initialized linear head to V: ``[B,L,d] -> [B,L,V]``."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm_final = LayerNorm(cfg.hidden_size)
        self.linear = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.hidden_size)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The linear layer's input: ``modulate(norm(x), shift(c), scale(c))`` [B, L, d]."""
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return modulate(self.norm_final(x), shift, scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x, c))

    def cross_entropy(self, x: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, cap: float | None) -> torch.Tensor:
        """Per-token cross-entropy [B, L] of the soft-capped logits of ``x`` [B, L, d] against token ids
        ``targets`` [B, L], computed in row chunks (:func:`flowlm.nn.head.head_cross_entropy`): equal to
        ``token_cross_entropy(cap_logits(self(x, c).float(), cap), targets)`` without an [B·L, V] tensor."""
        feats = self.features(x, c)
        ce = head_cross_entropy(feats.flatten(0, 1), self.linear.weight, self.linear.bias, targets.flatten(), cap)
        return ce.view(targets.shape)


class VocabEmbedding(nn.Module):
    """The input matrix (``V x d``, or ``(V + 1) x d`` with the mask id): a lookup for tokens [B, L], a matmul
    of its first ``V`` rows for states [B, L, V]."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(cfg.input_vocab_size, cfg.hidden_size) * cfg.resolved_input_std())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.int32, torch.int64):
            return self.embedding[x]
        return x.to(self.embedding.dtype) @ self.embedding[: x.shape[-1]]


class DiT(nn.Module):
    """The backbone: ``forward(x, tau, tau_end=None, cache=None) -> float32 logits [B, L, V]`` (soft-capped).

    ``cache`` (causal models only): a :class:`KVCache`; ``x`` then holds the positions after the cached ones.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        self.vocab_embed = VocabEmbedding(cfg)
        self.pos_embed = (
            nn.Parameter(torch.randn(cfg.seq_len, cfg.hidden_size) * cfg.resolved_input_std())
            if cfg.pos_embed
            else None
        )
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.sigma_map_prime = TimestepEmbedder(cfg.cond_dim) if cfg.time_inputs == 2 else None
        if self.sigma_map_prime is not None:
            zero_last_time_layer(self.sigma_map_prime)
        # Flow maps with end_stretch: a third embedding, of the end time on the clock of end_stretch_clock.
        self.end_map = TimestepEmbedder(cfg.cond_dim) if cfg.end_stretch else None
        if self.end_map is not None:
            zero_last_time_layer(self.end_map)
        # Self-conditioning: the previous estimate enters projected by the input matrix, p @ W [B, L, d]
        # (project_estimate), through a d x d map that starts at zero, so training starts from the plain network.
        self.self_cond = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False) if cfg.self_condition else None
        if self.self_cond is not None:
            nn.init.zeros_(self.self_cond.weight)
        # Fixed-point denoisers and their flow maps (issue 26): the self-conditioning guidance scale w is an input,
        # embedded like a time and added to the conditioning; zero last layer, so a new one adds nothing. Between
        # calls that pass no w, the network reads ``bound_guidance`` (1: no guidance; set by ``guidance_bound``).
        self.guidance_map = TimestepEmbedder(cfg.cond_dim) if cfg.guidance_input else None
        if self.guidance_map is not None:
            zero_last_time_layer(self.guidance_map)
            self.register_buffer("bound_guidance", torch.ones(()), persistent=False)
        self.rotary_emb = Rotary(cfg.head_dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg, i) for i in range(cfg.n_blocks))
        self.output_layer = FinalLayer(cfg)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Project the input (tokens [B, L] or state [B, L, V]) to the residual stream [B, L, d]."""
        self.check_input(x)
        return self.vocab_embed(x)

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] != cfg.vocab_size):
            raise ConfigError(
                f"model input has shape {tuple(x.shape)}: pass tokens [B, L] or a state [B, L, {cfg.vocab_size}]"
            )
        if x.shape[1] > cfg.seq_len:
            raise ConfigError(
                f"sequence length {x.shape[1]} exceeds the model's seq_len={cfg.seq_len}: "
                f"use at most {cfg.seq_len} positions or train a model with a longer model.seq_len"
            )

    def conditioning(self, tau: torch.Tensor, tau_end: torch.Tensor | None, guidance=None) -> torch.Tensor:
        """``silu(emb(tau) [+ emb'(tau_end) [+ emb''(stretch(tau_end))]] [+ emb_w(w)])`` of shape [B, cond_dim]; with
        ``time_transform='neg_log'`` the first embedding reads ``−log tau`` instead. ``guidance`` (models with
        ``guidance_input``): w, [B] or a number; None reads ``bound_guidance``."""
        emb = self.sigma_map(-torch.log(tau.float()) if self.config.time_transform == "neg_log" else tau)
        if self.guidance_map is not None:
            w = self.bound_guidance if guidance is None else torch.as_tensor(guidance, device=tau.device)
            emb = emb + self.guidance_map(w.float().expand(tau.shape[0]))
        elif guidance is not None:
            raise ConfigError(
                "a guidance scale was passed to a model that does not read one: only fixed-point denoisers and the "
                "flow maps distilled from them (model.guidance_input) take w as an input"
            )
        if tau_end is not None:
            if self.sigma_map_prime is None:
                raise ConfigError("this model has one time input: tau_end needs a flow-map model (time_inputs=2)")
            emb = emb + self.sigma_map_prime(tau_end)
            if self.end_map is not None:
                emb = emb + self.end_map(end_stretch_clock(tau_end, self.config.vocab_size))
        return F.silu(emb)

    def project_estimate(self, probs: torch.Tensor) -> torch.Tensor:
        """A self-conditioning estimate, the denoiser's distribution [B, L, V], as the network reads it:
        ``p @ W`` [B, L, d] (W: the input matrix's first V rows), what ``forward(..., self_cond=)`` takes."""
        return probs.to(self.vocab_embed.embedding.dtype) @ self.vocab_embed.embedding[: self.config.vocab_size]

    def new_cache(self) -> KVCache:
        """An empty :class:`KVCache` of ``seq_len`` positions (causal models only)."""
        if not self.config.causal:
            raise ConfigError("a KV cache needs a causal model (one trained with --method ar)")
        return KVCache(self.config.n_blocks, self.config.seq_len)

    def forward_features(
        self,
        x: torch.Tensor,
        tau: torch.Tensor,
        tau_end: torch.Tensor | None = None,
        cache: KVCache | None = None,
        embedded: bool = False,
        self_cond: torch.Tensor | None = None,
        guidance=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The body without the output layer: ``(h [B, L, d], c [B, cond_dim])``, the last block's output and
        the conditioning, with the arguments of :meth:`forward`. ``self.output_layer(h, c)`` gives the logits
        before the cap; ``self.output_layer.cross_entropy(h, c, targets, cap)`` a memory-lean training loss."""
        if embedded:
            self.check_embedded(x)
            h = x.to(self.vocab_embed.embedding.dtype)
        else:
            h = self.embed(x)
        if self_cond is not None:
            if self.self_cond is None:
                raise ConfigError(
                    "a self-conditioning estimate was passed to a model trained without it: train with "
                    "model.self_condition=true, or call it without self_cond"
                )
            if self_cond.shape != h.shape:
                raise ConfigError(f"self_cond has shape {tuple(self_cond.shape)}: pass project_estimate(p), "
                                  f"{tuple(h.shape)}")  # fmt: skip
            h = h + self.self_cond(self_cond.to(h.dtype))
        seq = h.shape[1]
        start = 0
        if cache is not None:
            if not self.config.causal:
                raise ConfigError("a KV cache needs a causal model (one trained with --method ar)")
            start = cache.length
            if start + seq > cache.capacity:
                raise ConfigError(
                    f"decoding past the model's seq_len={self.config.seq_len}: at most {cache.capacity} positions"
                )
        if self.pos_embed is not None:
            h = h + self.pos_embed[start : start + seq]
        c = self.conditioning(tau, tau_end, guidance)
        cos, sin = self.rotary_emb.cos_sin(seq, h.device, start)
        for block in self.blocks:
            h = block(h, cos, sin, c, cache)
        if cache is not None:
            cache.length = start + seq
        return h, c

    def forward(
        self,
        x: torch.Tensor,
        tau: torch.Tensor,
        tau_end: torch.Tensor | None = None,
        cache: KVCache | None = None,
        embedded: bool = False,
        targets: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
        guidance=None,
    ) -> torch.Tensor:
        """Logits of tokens / a state ``x``; with ``embedded=True`` ``x`` is the projected input ``x @ W``
        [B, L, d] (the low-rank path of :mod:`flowlm.methods.lowrank`); ``cache``: AR decoding (``x`` then holds
        the positions after the cached ones, and the cache is advanced by L).

        With ``targets`` (token ids [B, L]) the result is instead the per-token cross-entropy [B, L] of those
        logits, computed by :meth:`FinalLayer.cross_entropy` in row chunks: no [B·L, V] tensor is kept for
        backward (the training losses' head).

        ``self_cond`` (models with ``self_condition``): the previous estimate of the clean sequence as
        :meth:`project_estimate` gives it, [B, L, d]; None is the zero estimate (no previous one). ``guidance``
        (models with ``guidance_input``): the self-conditioning guidance scale w, [B] or a number (None: the value
        bound by :func:`guidance_bound`, 1 outside it)."""
        h, c = self.forward_features(x, tau, tau_end, cache, embedded, self_cond, guidance)
        if targets is not None:
            return self.output_layer.cross_entropy(h, c, targets, self.config.logit_cap)
        return cap_logits(self.output_layer(h, c).float(), self.config.logit_cap)

    def check_embedded(self, h: torch.Tensor) -> None:
        cfg = self.config
        if h.ndim != 3 or h.shape[-1] != cfg.hidden_size or h.shape[1] > cfg.seq_len:
            raise ConfigError(
                f"embedded model input has shape {tuple(h.shape)}: pass [B, L <= {cfg.seq_len}, {cfg.hidden_size}]"
            )


def zero_last_time_layer(embedder: TimestepEmbedder) -> None:
    """Zero the last linear layer of a time embedder, so it adds nothing at initialization."""
    nn.init.zeros_(embedder.mlp[2].weight)
    nn.init.zeros_(embedder.mlp[2].bias)


def reads_guidance(model) -> bool:
    """Whether ``model`` (a DiT, also behind ``torch.compile``) takes the self-conditioning guidance scale w as an
    input (``model.guidance_input``)."""
    return getattr(getattr(model, "_orig_mod", model), "guidance_map", None) is not None


@contextmanager
def guidance_bound(models, w):
    """Within the block, the networks of ``models`` that read a guidance scale (:func:`reads_guidance`) read ``w``
    (a number or a 0-d tensor; no host synchronisation) in every call that passes none; restored afterwards. Others are
    left alone. Used where the calls sit deep inside shared code (the samplers, the PSD loss)."""
    nets = [net for net in (getattr(m, "_orig_mod", m) for m in models) if reads_guidance(net)]
    saved = [net.bound_guidance.clone() for net in nets]
    for net in nets:
        net.bound_guidance.fill_(w)
    try:
        yield
    finally:
        for net, value in zip(nets, saved, strict=True):
            net.bound_guidance.copy_(value)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
