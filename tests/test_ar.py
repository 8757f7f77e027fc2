"""AR baseline: causal attention in every CPU backend, KV-cached decoding against uncached decoding, the exact NLL
by hand, the CLI round trip, and the in-domain AR judge."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from known_warnings import UNCOMPILED_FLEX
from test_e2e import TINY, cli
from tolerances import assert_close_up_to_rounding, rounding_atol

import flowlm
from flowlm.errors import ConfigError
from flowlm.eval.ar_judge import ARJudge
from flowlm.eval.judges import CausalLMJudge, load_judge
from flowlm.methods import registry
from flowlm.methods.ar import ar_loss, ar_sample
from flowlm.nn.dit import DiT, DiTConfig, attention, count_parameters
from flowlm.training.checkpoint import save_model

CPU_BACKENDS = ["math", "sdpa", "flex"]  # flash needs CUDA: tests/test_dit.py covers it on a GPU
# A logit of causal_dit accumulates products over its positions and width (12 x 32) through each block: the
# rounding tolerance of two evaluations in different orders is rounding_atol(float32, 12·32, max |logit|)
# = 4·sqrt(384)·eps·S ≈ 9e-6·S (tests/tolerances.py); observed up to 5 eps·S (cache pieces against a full pass).
LOGIT_PRODUCTS = 12 * 32


def causal_dit(backend: str = "math", pos_embed: bool = True, causal: bool = True, seed: int = 0) -> DiT:
    """A small DiT with every weight redrawn (adaLN-zero would otherwise make its output constant)."""
    torch.manual_seed(seed)
    cfg = DiTConfig(vocab_size=11, seq_len=12, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16, dropout=0.0,
                    pos_embed=pos_embed, causal=causal, attn_backend=backend,
                    attn_softcap=None if backend == "sdpa" else 50.0)  # fmt: skip
    net = DiT(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


@pytest.mark.float_sensitive
@UNCOMPILED_FLEX
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_future_token_never_changes_earlier_logits(backend):
    net = causal_dit(backend)
    x = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = x.clone()
    changed[:, 6] = (x[:, 6] + 1) % 11
    tau = torch.zeros(2)
    with torch.no_grad():
        a, b = net(x, tau), net(changed, tau)
    # Masked scores give exact zeros, so the earlier logits are the same numbers up to the kernels' rounding
    # (bit-equal on our CPUs; a kernel may pick another blocking for other data alignment). A look-ahead moves them
    # by O(0.1), far above the tolerance (~3e-4 at |logit| <= 30).
    assert_close_up_to_rounding(a[:, :6], b[:, :6], LOGIT_PRODUCTS, scale=a.abs().max().item())
    assert (a[:, 6:] - b[:, 6:]).abs().amax() > 1e-3
    bidirectional = causal_dit(backend, causal=False)  # the same weights without the flag do look ahead
    with torch.no_grad():
        assert (bidirectional(x, tau)[:, :6] - bidirectional(changed, tau)[:, :6]).abs().amax() > 1e-3


@pytest.mark.float_sensitive
@UNCOMPILED_FLEX
@pytest.mark.parametrize("q_len", [7, 3, 1])
def test_causal_attention_backends_match_a_per_query_softmax(q_len):
    """Queries are the last q_len of 7 positions; query i may see keys 0 .. i + 7 − q_len (hand loop)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, q_len, 2, 8, generator=g)
    k, v = torch.randn(2, 7, 2, 8, generator=g), torch.randn(2, 7, 2, 8, generator=g)
    ref = torch.empty(2, q_len, 2, 8)
    for i in range(q_len):
        visible = i + 7 - q_len + 1
        scores = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, :visible]) / math.sqrt(8)
        ref[:, i] = torch.einsum("bhj,bjhd->bhd", torch.softmax(scores, -1), v[:, :visible])
    # An output is a softmax-weighted mean of <= 7 values, the weights from 8-term dot products: a score's rounding
    # (<= eps·sqrt(8)·|s|) moves the output by that times |v|, the mean's own by eps·sqrt(7)·|v|. So n = 8·7 and
    # S = max|v|·(1 + max|score|); a wrong mask (one key more or less) moves outputs by ~0.1·|v|.
    score = torch.einsum("bihd,bjhd->bhij", q, k).abs().max().item() / math.sqrt(8)
    for backend in CPU_BACKENDS:
        out = attention(q, k, v, None, backend, causal=True)
        assert_close_up_to_rounding(out, ref, 8 * 7, scale=v.abs().max().item() * (1 + score))


@pytest.mark.float_sensitive
@UNCOMPILED_FLEX
@pytest.mark.parametrize("pos_embed", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cached_forward_in_pieces_equals_one_full_forward(backend, pos_embed):
    """The rotary and position-embedding offsets of a cache: pieces of 5, 1 and 6 positions give the logits of
    the full 12-position pass."""
    net = causal_dit(backend, pos_embed)
    x = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(2))
    tau = torch.zeros(3)
    with torch.no_grad():
        full = net(x, tau)
        cache = net.new_cache()
        pieces = [net(x[:, :5], tau, cache=cache), net(x[:, 5:6], tau, cache=cache), net(x[:, 6:], tau, cache=cache)]
    assert cache.length == 12
    assert_close_up_to_rounding(torch.cat(pieces, 1), full, LOGIT_PRODUCTS)  # an offset error moves logits by O(1)
    with pytest.raises(ConfigError, match="seq_len"):
        net(x[:, :1], tau, cache=cache)


@UNCOMPILED_FLEX
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cached_decoding_equals_uncached_decoding(backend):
    net = causal_dit(backend, seed=3)
    cached = ar_sample(net, 16, 12, bos_id=1, generator=torch.Generator().manual_seed(5))
    uncached = ar_sample(net, 16, 12, bos_id=1, generator=torch.Generator().manual_seed(5), use_cache=False)
    # Tokens are integers: the two paths' probabilities differ by float32 rounding (~1e-6, see LOGIT_PRODUCTS), so a
    # draw could only flip if its uniform landed within that of a category boundary: chance ~ 16·11·1e-6 ≈ 2e-4.
    assert torch.equal(cached, uncached)
    assert torch.all(cached[:, 0] == 1) and cached.shape == (16, 12)
    assert not torch.equal(cached, ar_sample(net, 16, 12, bos_id=1, generator=torch.Generator().manual_seed(6)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["flex", "flash"])
@pytest.mark.parametrize("q_len", [64, 5, 1])
def test_causal_fused_backends_match_math_on_gpu(backend, q_len):
    """Training (q_len = kv_len) and cached steps (the queries are the last q_len of 64 positions)."""
    if backend == "flash":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, q_len, 4, 32, generator=g, device="cuda") * 4
    k, v = (torch.randn(2, 64, 4, 32, generator=g, device="cuda") * 4 for _ in range(2))
    qh, kh, vh = q.bfloat16(), k.bfloat16(), v.bfloat16()
    reference = attention(qh.float(), kh.float(), vh.float(), 50.0, "math", causal=True)
    # bf16 kernels against float32 math on the same rounded inputs: the bound of tests/test_dit.py (< 0.1)
    assert (attention(qh, kh, vh, 50.0, backend, causal=True).float() - reference).abs().max().item() < 0.1


def test_a_cache_needs_a_causal_model():
    with pytest.raises(ConfigError, match="causal"):
        causal_dit(causal=False).new_cache()


class Bigram:
    """``logits[b, i] = W[x[b, i]]``: the next token depends on the current one only (no cache)."""

    def __init__(self, vocab: int = 3, seed: int = 0):
        self.table = 1.5 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))

    def __call__(self, x, tau):
        assert torch.all(tau == 0)  # the AR model has no time input: a constant τ = 0
        return self.table[x]


@pytest.mark.float_sensitive
def test_nll_equals_hand_computation():
    model = Bigram()
    tokens = torch.tensor([[0, 2, 1, 1], [0, 1, 2, 0]])
    total = 0.0
    for row in tokens.tolist():
        for prev, nxt in zip(row[:-1], row[1:], strict=True):
            w = model.table[prev].tolist()
            total -= w[nxt] - math.log(sum(math.exp(v) for v in w))
    out = ar_loss(model, tokens)
    # 2 blocks x 3 predicted tokens; float32 log-softmax over 3 logits of size <= max|W|, then a mean of 6 terms
    tol = rounding_atol(torch.float32, 6 * 3, model.table.abs().max().item() + math.log(3))
    assert abs(float(out["nll"]) - total / 6) <= tol


def test_ancestral_decoding_draws_from_the_model_at_temperature_one():
    model = Bigram()
    n = 30_000
    x = ar_sample(model, n, 3, bos_id=0, generator=torch.Generator().manual_seed(0), use_cache=False)
    p = torch.softmax(model.table, -1)
    expected = p[0][:, None] * p  # P(x1 = a, x2 = b) = p(a | BOS) p(b | a)
    joint = torch.zeros(3, 3).index_put_((x[:, 1], x[:, 2]), torch.ones(n), accumulate=True) / n
    # each cell is a binomial proportion: within 5 standard errors
    assert torch.all((joint - expected).abs() < 5 * torch.sqrt(expected * (1 - expected) / n))


def test_same_size_as_flm_and_flow_losses_never_called_perplexity():
    cfg = dict(vocab_size=50, seq_len=16, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16)
    assert count_parameters(DiT(DiTConfig(**cfg, causal=True))) == count_parameters(DiT(DiTConfig(**cfg)))
    assert registry.get("flm").metric_name == "denoising_ce"
    assert {m.name for m in registry.methods() if m.perplexity_name} == {"mdlm", "duo", "ar"}  # their NELBO / NLL


# -------------------------------------------------------------------------------------- CLI, judge


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar")
    cli("train", *TINY, f"data.cache_dir={root / 'cache'}", "--method", "ar", "--steps", "3", "--out", str(root))
    return root


def test_cli_trains_and_samples_ar(ar_run, tmp_path):
    meta = json.loads((ar_run / "model" / "flowlm.json").read_text())
    assert meta["method"] == "ar" and meta["model"]["causal"] and not meta["model"]["mask_input"]
    with (ar_run / "logs" / "session-0" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    nll = [float(r["val/nll"]) for r in rows if r.get("val/nll")]
    ppl = [float(r["val/ppl"]) for r in rows if r.get("val/ppl")]
    assert nll and ppl and math.isclose(ppl[0], math.exp(nll[0]), rel_tol=1e-5)

    out = tmp_path / "s.jsonl"
    cli("sample", str(ar_run), "-n", "2", "--seed", "3", "--out", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    provenance = lines[0]["provenance"]
    assert provenance["sampler"] == "ancestral-kv-cache" and provenance["steps"] is None
    model = flowlm.load(ar_run)
    assert all(line["tokens"][0] == model.tokenizer.bos_id and len(line["tokens"]) == 32 for line in lines)
    assert model.sample_tokens(2, seed=3).tolist() == [line["tokens"] for line in lines]

    with pytest.raises(ConfigError, match="leave steps"):
        model.sample_tokens(1, 8)


def test_ar_judge_scores_by_the_causal_lm_rule(ar_run):
    judge = load_judge(str(ar_run))
    assert isinstance(judge, ARJudge) and isinstance(judge, CausalLMJudge)
    model = judge.flowlm_model
    tok = model.tokenizer
    assert judge.max_length == 31 and judge.prefix_id == tok.bos_id and judge.end_id == tok.eos_id
    assert len(judge.fingerprint) == 16 and judge.fingerprint == load_judge(str(ar_run)).fingerprint
    assert judge.description == f"{ar_run} [{judge.fingerprint}]" and "windows of 30" in judge.definition

    texts = ["To be, or not to be, that is the question: " * 3, "Exeunt", ""]
    ended = [True, False, True]
    result = judge.score_texts(texts, batch_size=2, ended=ended)
    # By hand: the AR model's ids (+ EOS if ended), windows of 30 after BOS, one unbatched pass per window.
    total, count = 0.0, 0
    for text, end in zip(texts, ended, strict=True):
        ids = tok.encode(text) + ([tok.eos_id] if end else [])
        for start in range(0, len(ids), 30):
            window = torch.tensor([[tok.bos_id, *ids[start : start + 30]]])
            with torch.no_grad():
                logp = torch.log_softmax(model.net(window, torch.zeros(1))[0, :-1], -1)
            total -= float(logp.gather(-1, window[0, 1:, None]).double().sum())
            count += window.shape[1] - 1
    assert len(tok.encode(texts[0])) > 30  # the first text spans two windows
    # Batched (padded) against unbatched float32 passes: each token's NLL is a 30-position, width-32 chain, off by at
    # most rounding_atol(float32, 30·32, its size), so the sum of these positive terms by that at S = the total.
    assert result.total_tokens == count
    assert abs(result.total_nll - total) <= rounding_atol(torch.float32, 30 * 32, total)

    samples = model.sample_tokens(2, seed=0)
    assert judge.score_samples(samples, tok).num_samples == 2
    # MAUVE features: the DiT's last hidden state (the output layer's input) at each text's last token
    feats = judge.features(["To be", "Exeunt"], contexts=["", "Enter "])
    assert feats.shape == (2, model.net.config.hidden_size) and feats.dtype == torch.float64


def test_judge_refuses_a_flowlm_model_that_is_not_ar(ar_run, tmp_path):
    net = DiT(DiTConfig(vocab_size=8, seq_len=8, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8))
    folder = save_model(tmp_path / "flm", net.state_dict(), {"method": "flm", "model": net.config.to_dict()},
                        flowlm.load(ar_run).tokenizer)  # fmt: skip
    with pytest.raises(ConfigError, match="only an AR model"):
        load_judge(str(folder))
