"""The chunked output head (flowlm.nn.head, DiT(..., targets=...)) against the plain logits + cross-entropy.

The two compute the same float32 quantities in a different order (row chunks, a max-free log-sum-exp under the
cap), so they agree to float32 rounding: within rounding_atol(float32, n, S) of tests/tolerances.py, n the
products accumulated into one value or gradient entry (D-term logits, V-term log-sum-exps, N-row weight
gradients: n = N·V·D), S the largest |value| compared. A wrong cap, chunk edge or target moves them by O(1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close_up_to_rounding

from flowlm.errors import ConfigError
from flowlm.methods.common import model_cross_entropy, token_cross_entropy
from flowlm.methods.flm import flm_loss
from flowlm.nn.dit import DiT, DiTConfig, cap_logits
from flowlm.nn.head import head_cross_entropy

N, D, V = 10, 6, 50


pytestmark = pytest.mark.usefixtures("one_thread")


def head_inputs(scale: float, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(N, D, generator=g).requires_grad_()
    weight = (torch.randn(V, D, generator=g) * scale).requires_grad_()
    b = (torch.randn(V, generator=g) * scale).requires_grad_() if bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    upstream = torch.rand(N, generator=g) + 0.5  # per-row weights, as masks and loss weightings give
    return features, weight, b, targets, upstream


def values_and_grads(ce: torch.Tensor, upstream: torch.Tensor, params) -> list[torch.Tensor]:
    grads = torch.autograd.grad((ce * upstream).sum(), [p for p in params if p is not None])
    return [ce.detach(), *grads]


@pytest.mark.float_sensitive
@pytest.mark.parametrize("chunk", [1, 3, 5, 10, 64])  # divides N = 10 or not, one row, all rows in one chunk
@pytest.mark.parametrize("cap", [None, 4.0])
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_head_equals_logits_and_cross_entropy(chunk, cap, bias):
    # scale 3: logits of size ~7, well into the cap's nonlinear range (tanh(7/4) = 0.94)
    features, weight, b, targets, upstream = head_inputs(scale=3.0, bias=bias)
    params = (features, weight, b)
    want = values_and_grads(
        token_cross_entropy(cap_logits(F.linear(features, weight, b), cap), targets), upstream, params
    )
    got = values_and_grads(head_cross_entropy(features, weight, b, targets, cap, chunk), upstream, params)
    assert len(got) == len(want) == (4 if bias else 3)
    for g, w in zip(got, want, strict=True):
        assert_close_up_to_rounding(g, w, N * V * D)
    assert want[2].abs().max() > 0.1  # the weight gradient is not trivially zero


@pytest.mark.float_sensitive
def test_chunked_head_matches_under_cpu_autocast():
    features, weight, b, targets, upstream = head_inputs(scale=1.0)
    params = (features, weight, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = values_and_grads(
            token_cross_entropy(cap_logits(F.linear(features, weight, b).float(), 4.0), targets), upstream, params
        )
        got = values_and_grads(head_cross_entropy(features, weight, b, targets, 4.0, 3), upstream, params)
    # Same bf16 logits, so the values agree to float32 summation order. The reference's backward matmuls run in
    # bf16 (8 significant bits, relative rounding 2^-8 ≈ 0.4% per product, accumulated over V = 50 terms) where
    # the chunked head's run in float32, so gradients agree to ~2% of their largest entry.
    assert_close_up_to_rounding(got[0], want[0], V * D)
    for g, w in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=2e-2 * w.abs().max().item())


def test_bad_chunk_or_targets_raise_config_errors():
    features, weight, b, targets, _ = head_inputs(scale=1.0)
    with pytest.raises(ConfigError, match="chunk_rows=0"):
        head_cross_entropy(features, weight, b, targets, None, 0)
    with pytest.raises(ConfigError, match="token ids of shape"):
        head_cross_entropy(features, weight, b, targets.float(), None)


def small_dit(time_inputs: int = 1, vocab: int = 40) -> DiT:
    cfg = DiTConfig(
        vocab_size=vocab, seq_len=6, hidden_size=8, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0,
        time_inputs=time_inputs, logit_cap=3.0,
    )  # fmt: skip
    torch.manual_seed(0)
    net = DiT(cfg)
    with torch.no_grad():  # random head and adaLN (zero at init), so every gradient is exercised
        for p in net.parameters():
            p.add_(torch.randn(p.shape) * 0.5)
    return net


@pytest.mark.float_sensitive
@pytest.mark.parametrize("kind", ["tokens", "state", "embedded", "two_times"])
def test_dit_targets_give_the_cross_entropy_of_its_logits(kind):
    net = small_dit(time_inputs=2 if kind == "two_times" else 1)
    vocab, b, seq = net.config.vocab_size, 3, 5
    targets = torch.randint(0, vocab, (b, seq))
    tau = torch.rand(b)
    tau_end = torch.rand(b) if kind == "two_times" else None
    if kind == "tokens":
        x = torch.randint(0, vocab, (b, seq))
    elif kind == "embedded":
        x = torch.randn(b, seq, net.config.hidden_size)
    else:
        x = torch.randn(b, seq, vocab)
    embedded = kind == "embedded"
    upstream = torch.rand(b, seq) + 0.5
    params = list(net.parameters())
    want = token_cross_entropy(net(x, tau, tau_end, embedded=embedded), targets)
    want_grads = torch.autograd.grad((want * upstream).sum(), params, allow_unused=True)
    got = model_cross_entropy(net, x, tau, targets, tau_end, embedded=embedded)
    got_grads = torch.autograd.grad((got * upstream).sum(), params, allow_unused=True)
    assert got.shape == (b, seq)
    n = b * seq * vocab * net.config.hidden_size  # tokens x vocabulary x width, the head's reductions
    assert_close_up_to_rounding(got, want, n)
    for (name, _), g, w in zip(net.named_parameters(), got_grads, want_grads, strict=True):
        assert (g is None) == (w is None), name
        if w is not None:
            assert_close_up_to_rounding(g, w, n, msg=name)


def test_flm_loss_keeps_no_vocabulary_sized_tensor_for_backward():
    net = small_dit(vocab=512)
    tokens = torch.randint(0, 512, (4, 6))
    rows, largest = tokens.numel(), []

    def pack(t):
        largest.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = flm_loss(net, tokens, 512, input_noise="lowrank")["loss"]
    loss.backward()
    # the largest saved tensor is a weight (V·d = 512·8, or the low-rank matrix M); the [N, V] logits are 3× that
    assert largest and max(largest) <= 512 * net.config.hidden_size < rows * 512
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # the hook sees the plain path's logits
        token_cross_entropy(net(tokens, torch.rand(4)), tokens).sum()
    assert max(largest) >= rows * 512


def test_chunks_are_small_on_a_cpu_and_sized_by_memory_on_an_accelerator():
    from flowlm.nn.head import CHUNK_ROWS, GPU_CHUNK_BYTES, chunk_rows_for

    assert chunk_rows_for(torch.device("cpu"), 8192) == CHUNK_ROWS
    rows = chunk_rows_for(torch.device("cuda"), 8192)  # a device object only: no GPU needed
    assert rows == 8192 and rows * 8192 * 4 <= GPU_CHUNK_BYTES  # 4 chunks for a 256 x 128 batch instead of 256
    assert chunk_rows_for(torch.device("cuda"), 30522) == 2176  # 256 MiB / (4 B x 30,522) = 2,198 -> 17 x 128
    assert chunk_rows_for(torch.device("cuda"), 10**7) == CHUNK_ROWS  # never below the CPU's chunk
