import pytest
import torch
from known_warnings import UNCOMPILED_FLEX
from tolerances import assert_close_up_to_rounding

from flowlm.errors import ConfigError
from flowlm.nn.dit import DiT, DiTConfig, Rotary, attention, soft_cap


def tiny_config(**kw):
    base = dict(vocab_size=37, seq_len=16, hidden_size=32, n_blocks=2, n_heads=4, cond_dim=16, dropout=0.0)
    base.update(kw)
    return DiTConfig(**base)


def attention_scale(q, k, v) -> float:
    """Magnitude S (tests/tolerances.py) of an attention output's rounding: a score's error (eps·sqrt(d)·|s|)
    moves the softmax-weighted mean of the values by that times |v|, the mean's own by eps·sqrt(keys)·|v|."""
    score = torch.einsum("bihd,bjhd->bhij", q, k).abs().max().item() / q.shape[-1] ** 0.5
    return v.abs().max().item() * (1 + score)


def randomized(model: DiT, seed: int = 0) -> DiT:
    """Give the zero-initialized layers random values so outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_output_shape_dtype_and_zero_init():
    cfg = tiny_config()
    model = DiT(cfg)
    x = torch.randn(3, 16, 37)
    logits = model(x, torch.rand(3))
    assert logits.shape == (3, 16, 37) and logits.dtype == torch.float32
    # adaLN-zero and the zero-initialized head: the untrained denoiser is uniform.
    assert torch.count_nonzero(logits) == 0


@pytest.mark.float_sensitive
def test_token_input_equals_one_hot_state():
    model = randomized(DiT(tiny_config()))
    tokens = torch.randint(0, 37, (2, 16))
    tau = torch.tensor([0.3, 0.8])
    by_lookup = model(tokens, tau)
    by_state = model(torch.nn.functional.one_hot(tokens, 37).float(), tau)
    # one-hot @ W adds exact zeros to W's row, so the two agree to the rounding of a 16-position, width-32 pass
    assert_close_up_to_rounding(by_lookup, by_state, 16 * 32)


def test_logit_cap_bounds_output_and_can_be_disabled():
    model = randomized(DiT(tiny_config(logit_cap=30.0)))
    with torch.no_grad():
        model.output_layer.linear.weight.mul_(1000)
    x, tau = torch.randn(2, 16, 37), torch.rand(2)
    capped = model(x, tau)
    assert capped.abs().max() <= 30.0
    model.config.logit_cap = None
    assert model(x, tau).abs().max() > 30.0


def test_time_conditioning_matters():
    model = randomized(DiT(tiny_config()))
    x = torch.randn(1, 16, 37)
    assert not torch.allclose(model(x, torch.tensor([0.1])), model(x, torch.tensor([0.9])))


def test_second_time_input_is_zero_at_init_and_used_after():
    cfg = tiny_config(time_inputs=2)
    model = randomized(DiT(cfg))
    torch.nn.init.zeros_(model.sigma_map_prime.mlp[2].weight)
    torch.nn.init.zeros_(model.sigma_map_prime.mlp[2].bias)
    x, tau = torch.randn(2, 16, 37), torch.tensor([0.2, 0.6])
    torch.testing.assert_close(model(x, tau, torch.tensor([0.9, 1.0])), model(x, tau))
    fresh = DiT(cfg)
    assert torch.count_nonzero(fresh.sigma_map_prime.mlp[2].weight) == 0
    with torch.no_grad():
        model.sigma_map_prime.mlp[2].bias.normal_()
    assert not torch.allclose(model(x, tau, torch.tensor([0.9, 1.0])), model(x, tau))


def test_one_time_model_rejects_second_time():
    with pytest.raises(ConfigError, match="flow-map"):
        DiT(tiny_config())(torch.randn(1, 16, 37), torch.rand(1), torch.rand(1))


def test_sequence_longer_than_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="exceeds the model's seq_len=16"):
        DiT(tiny_config())(torch.randint(0, 37, (1, 17)), torch.rand(1))


def test_wrong_vocabulary_state_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"\[B, L, 37\]"):
        DiT(tiny_config())(torch.randn(1, 16, 36), torch.rand(1))


def test_bidirectional_attention_sees_the_future():
    model = randomized(DiT(tiny_config()))
    x = torch.randn(1, 16, 37)
    y = x.clone()
    y[0, -1] += 5.0
    a, b = model(x, torch.tensor([0.5])), model(y, torch.tensor([0.5]))
    assert not torch.allclose(a[0, 0], b[0, 0])


@pytest.mark.parametrize(
    "bad",
    [
        dict(hidden_size=30, n_heads=4),
        dict(time_inputs=3),
        dict(attn_backend="x"),
        dict(attn_softcap=-1.0),
        dict(vocab_size=1),
    ],
)
def test_bad_configs_raise_config_error(bad):
    with pytest.raises(ConfigError):
        tiny_config(**bad)


@pytest.mark.float_sensitive
def test_math_and_sdpa_backends_agree_without_softcap():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 10, 4, 8, generator=g) for _ in range(3))
    out = attention(q, k, v, None, "math")
    assert_close_up_to_rounding(out, attention(q, k, v, None, "sdpa"), 10 * 8, attention_scale(q, k, v))


@pytest.mark.float_sensitive
def test_attention_softcap_matches_explicit_formula():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 6, 2, 4, generator=g) * 6 for _ in range(3))
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / 2.0
    expected = torch.einsum("bhij,bjhd->bihd", torch.softmax(5.0 * torch.tanh(scores / 5.0), -1), v)
    assert_close_up_to_rounding(attention(q, k, v, 5.0, "math"), expected, 6 * 4, attention_scale(q, k, v))
    assert not torch.allclose(attention(q, k, v, 5.0, "math"), attention(q, k, v, None, "math"))


@UNCOMPILED_FLEX
@pytest.mark.float_sensitive
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_flex_backend_matches_math(softcap):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 8, 2, 8, generator=g) * 3 for _ in range(3))
    out = attention(q, k, v, softcap, "flex")
    assert_close_up_to_rounding(out, attention(q, k, v, softcap, "math"), 8 * 8, attention_scale(q, k, v))


def test_sdpa_refuses_softcap():
    q = torch.randn(1, 4, 2, 4)
    with pytest.raises(ConfigError, match="soft"):
        attention(q, q, q, 50.0, "sdpa")


def test_soft_cap_formula():
    x = torch.tensor([-100.0, -1.0, 0.0, 2.0, 100.0])
    torch.testing.assert_close(soft_cap(x, 30.0), 30.0 * torch.tanh(x / 30.0))


@pytest.mark.float_sensitive
def test_rotary_scores_depend_only_on_relative_position():
    rot = Rotary(8)
    cos, sin = rot.cos_sin(12, torch.device("cpu"))
    q, k = torch.randn(8), torch.randn(8)
    qs = Rotary.apply(q.expand(12, 1, 8), cos, sin)[:, 0]
    ks = Rotary.apply(k.expand(12, 1, 8), cos, sin)[:, 0]
    # 8-term dot products of rotated vectors (rotation: 2 products per entry): n = 16, S = |q|·|k| and |q|²
    assert_close_up_to_rounding(qs[3] @ ks[1], qs[9] @ ks[7], 16, (q.norm() * k.norm()).item())
    assert_close_up_to_rounding(qs.norm(dim=-1), q.norm().expand(12), 16, q.norm().item())


def test_small_preset_parameter_count_matches_spec():
    # SPEC §5: about 1537·V + 92.4M parameters for the 12 x 768 model (139M at V = 30,522).
    cfg = DiTConfig(vocab_size=30522, seq_len=128)
    with torch.device("meta"):
        n = sum(p.numel() for p in DiT(cfg).parameters())
    assert abs(n - (1537 * 30522 + 92.4e6)) / n < 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["flex", "flash"])
def test_fused_and_math_backends_agree_on_gpu(backend):
    if backend == "flash":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 64, 4, 32, generator=g, device="cuda") * 4 for _ in range(3))
    if backend == "flex":  # flex also runs in float32: it must agree to float32 rounding
        torch.testing.assert_close(attention(q, k, v, 50.0, "flex"), attention(q, k, v, 50.0, "math"),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    qh, kh, vh = q.bfloat16(), k.bfloat16(), v.bfloat16()
    # Reference: float32 math on the same bf16-rounded inputs, so only the kernel's own rounding remains:
    # bf16 probabilities and outputs (unit roundoff 2^-9) times |v| <= ~16 give at most ~0.06.
    reference = attention(qh.float(), kh.float(), vh.float(), 50.0, "math")
    err = (attention(qh, kh, vh, 50.0, backend).float() - reference).abs().max().item()
    print(f"{backend} bfloat16 vs math float32 on the same inputs: max abs error {err:.2e}")
    assert err < 0.1
