"""Memory-lean output head for training losses: linear layer to V, logit soft-cap and cross-entropy against
token ids, computed in row chunks so that no [N, V] tensor is kept (SPEC §5 for the head and the cap).

:func:`head_cross_entropy` equals ``token_cross_entropy(cap·tanh(linear(features)/cap), targets)``. The forward
pass keeps only its inputs and the per-row log-sum-exp; the backward pass recomputes each chunk's logits (one
extra head matmul) and accumulates the gradients of the features, the weight and the bias chunk by chunk. Peak
extra memory: two [chunk, V] float32 buffers instead of several [N, V] ones, and the elementwise passes over
a chunk run on cache-resident data, which pays for the recomputation on a CPU.
"""

from __future__ import annotations

import torch

from flowlm.errors import ConfigError

# Rows per chunk on a CPU: one or two [V, rows] float32 buffers (~16 MB each at V = 30,522): a GEMM large enough to run
# near the machine's rate, and far below the [N, V] logits of a training batch (N = B·L, thousands of rows).
CHUNK_ROWS = 128
# On a GPU the chunks are sized by memory instead: each chunk costs ~40 kernel launches and their Python, so 128-row
# chunks of a 256 x 128 batch (256 chunks, ~10k launches) made the head most of a 9.6M-parameter model's step on an
# H200 (184 ms per step; docs/gpu.md). A [V, rows] float32 buffer of at most 256 MiB: 8,192 rows at V = 8,192.
GPU_CHUNK_BYTES = 256 * 2**20


def chunk_rows_for(device: torch.device, vocab_size: int) -> int:
    """Rows per head chunk on ``device``: :data:`CHUNK_ROWS` on a CPU; on an accelerator, as many rows (a multiple
    of :data:`CHUNK_ROWS`) as fit one [V, rows] float32 buffer of :data:`GPU_CHUNK_BYTES`."""
    if device.type == "cpu":
        return CHUNK_ROWS
    rows = GPU_CHUNK_BYTES // (4 * vocab_size)
    return max(CHUNK_ROWS, rows // CHUNK_ROWS * CHUNK_ROWS)


def _chunk_scores(features, weight, bias, cap):
    """Scores [V, n] float32 of one chunk of features [n, d]: the logits without a cap, with one
    ``z = sigmoid(2·logits/cap)``, since ``cap·tanh(u/cap) = 2·cap·z − cap`` (a sigmoid costs a sixth of a tanh
    on a CPU) and ``∂(cap·tanh(u/cap))/∂u = 4·z·(1 − z)``. Transposed, because ``weight @ featuresᵀ`` runs
    ~1.5x faster on a CPU than ``features @ weightᵀ`` for n << V. The matmul runs as in the model (autocast
    applies)."""
    logits = (weight @ features.T if bias is None else torch.addmm(bias[:, None], weight, features.T)).float()
    return logits if cap is None else logits.mul_(2.0 / cap).sigmoid_()


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, targets, cap, chunk):
        n = features.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=features.device)
        picked = torch.empty_like(lse)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            z = _chunk_scores(features[rows], weight, bias, cap)
            at_target = z.gather(0, targets[None, rows]).squeeze(0)
            if cap is None:
                lse[rows], picked[rows] = torch.logsumexp(z, dim=0), at_target
            else:  # |y| <= cap: exp(y − cap) = exp(2·cap·(z − 1)) can neither overflow nor underflow to 0
                lse[rows] = torch.sub(z, 1.0).mul_(2.0 * cap).exp_().sum(0).log_().add_(cap)
                picked[rows] = at_target * (2.0 * cap) - cap
        ctx.save_for_backward(features, weight, bias, targets, lse)
        device = features.device.type
        ctx.amp = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.cap, ctx.chunk = cap, chunk
        return lse - picked

    @staticmethod
    def backward(ctx, grad):
        features, weight, bias, targets, lse = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        device, amp, amp_dtype = ctx.amp
        grad_x = torch.empty_like(features) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        w32 = weight.float()
        for start in range(0, features.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            with torch.autocast(device, dtype=amp_dtype, enabled=amp):  # the forward's scores, bit for bit
                z = _chunk_scores(features[rows], weight, bias, ctx.cap)
            g = grad[None, rows].float()
            y = z if ctx.cap is None else torch.mul(z, 2.0 * ctx.cap).sub_(ctx.cap)
            dy = y.sub_(lse[None, rows]).exp_().mul_(g)  # g·softmax(y) ...
            dy.scatter_add_(0, targets[None, rows], -g)  # ... − g·onehot(target) = g·∂ce/∂y, [V, n]
            if ctx.cap is not None:  # ∂y/∂logits = 4·z·(1 − z)
                dy.mul_(z)
                dy.mul_(z.neg_().add_(1.0)).mul_(4.0)
            if need_x:
                grad_x[rows] = dy.T @ w32
            if need_w:
                grad_w.addmm_(dy, features[rows].float())
            if need_b:
                grad_b.add_(dy.sum(1))
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_x, grad_w, grad_b, None, None, None


def head_cross_entropy(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    cap: float | None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Per-row cross-entropy [N] (float32) of the logits ``cap·tanh((features @ weightᵀ + bias)/cap)`` against
    token ids ``targets`` [N], without an [N, V] tensor (module docstring). No gradient reaches ``targets``.

    ``features`` [N, d], ``weight`` [V, d], ``bias`` [V] or None, ``cap`` a positive float or None (no cap),
    ``chunk_rows`` the rows per chunk (the last chunk may be shorter; None: :func:`chunk_rows_for` the features'
    device).
    """
    if chunk_rows is None:
        chunk_rows = chunk_rows_for(features.device, weight.shape[0])
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows!r}: the rows per head chunk must be an integer >= 1")
    if targets.dtype not in (torch.int32, torch.int64) or targets.shape != features.shape[:1]:
        raise ConfigError(
            f"head_cross_entropy needs token ids of shape [{features.shape[0]}], got {targets.dtype} "
            f"{tuple(targets.shape)}: pass one integer target per row"
        )
    return _HeadCrossEntropy.apply(features, weight, bias, targets.long(), cap, chunk_rows)
