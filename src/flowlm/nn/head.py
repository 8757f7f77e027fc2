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
import torch.nn.functional as F

from flowlm.errors import ConfigError

# Rows per chunk: two [rows, V] float32 buffers (~16 MB each at V = 30,522), a GEMM large enough to run near
# the machine's rate, and far below the [N, V] logits of a training batch (N = B·L, thousands of rows).
CHUNK_ROWS = 128


def _capped_logits(features, weight, bias, cap):
    """``(y, t)``: capped float32 logits y [n, V] of features [n, d] and, with a cap, ``t = tanh(logits/cap)``
    (for ``∂y/∂logits = 1 − t²``; None without a cap). The linear layer runs as in the model (autocast applies)."""
    logits = F.linear(features, weight, bias).float()
    if cap is None:
        return logits, None
    t = logits.mul_(1.0 / cap).tanh_()
    return t * cap, t


def _row_logsumexp(y: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Row log-sum-exp [n] of logits y [n, V]. With a cap ``|y| <= cap``, so ``exp(y − cap)`` cannot
    overflow and stays above ``exp(−2·cap)``: the max pass of a generic logsumexp is not needed."""
    if cap is None:
        return torch.logsumexp(y, dim=-1)
    return torch.sub(y, cap).exp_().sum(-1).log_().add_(cap)


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, targets, cap, chunk):
        n = features.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=features.device)
        picked = torch.empty_like(lse)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            y, _ = _capped_logits(features[rows], weight, bias, cap)
            lse[rows] = _row_logsumexp(y, cap)
            picked[rows] = y.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1)
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
            with torch.autocast(device, dtype=amp_dtype, enabled=amp):  # the forward's logits, bit for bit
                y, t = _capped_logits(features[rows], weight, bias, ctx.cap)
            g = grad[rows].float().unsqueeze(-1)
            dy = y.sub_(lse[rows].unsqueeze(-1)).exp_().mul_(g)  # g·softmax(y) ...
            dy.scatter_add_(-1, targets[rows].unsqueeze(-1), -g)  # ... − g·onehot(target) = g·∂ce/∂y
            if t is not None:
                dy.mul_(t.square_().neg_().add_(1.0))  # ∂y/∂logits = 1 − t²
            if need_x:
                grad_x[rows] = dy @ w32
            if need_w:
                grad_w.addmm_(dy.T, features[rows].float())
            if need_b:
                grad_b.add_(dy.sum(0))
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_x, grad_w, grad_b, None, None, None


def head_cross_entropy(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    cap: float | None,
    chunk_rows: int = CHUNK_ROWS,
) -> torch.Tensor:
    """Per-row cross-entropy [N] (float32) of the logits ``cap·tanh((features @ weightᵀ + bias)/cap)`` against
    token ids ``targets`` [N], without an [N, V] tensor (module docstring). No gradient reaches ``targets``.

    ``features`` [N, d], ``weight`` [V, d], ``bias`` [V] or None, ``cap`` a positive float or None (no cap),
    ``chunk_rows`` the rows per chunk (the last chunk may be shorter).
    """
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows!r}: the rows per head chunk must be an integer >= 1")
    if targets.dtype not in (torch.int32, torch.int64) or targets.shape != features.shape[:1]:
        raise ConfigError(
            f"head_cross_entropy needs token ids of shape [{features.shape[0]}], got {targets.dtype} "
            f"{tuple(targets.shape)}: pass one integer target per row"
        )
    return _HeadCrossEntropy.apply(features, weight, bias, targets.long(), cap, chunk_rows)
