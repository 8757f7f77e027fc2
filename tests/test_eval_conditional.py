"""flowlm eval --prompt-tokens / --infill-frac: held-out blocks as conditions, the continuation scored given the
prompt, entropy of the generated positions, MAUVE against the real texts, and the real ones as the data line
(seconds, offline: the tiny random model and corpus of test_eval_reference, the tiny GPT-2 judge of test_judges)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_eval_reference import corpus, model_dir  # noqa: F401  (module fixtures: the corpus and the tiny model)
from test_judges import assert_nll_close, judge_dir  # noqa: F401  (a module fixture: the saved tiny GPT-2 judge)

import flowlm
from flowlm.cli import main
from flowlm.errors import ConfigError
from flowlm.eval import load_judge
from flowlm.eval.metrics import mean_unigram_entropy
from flowlm.eval.run import conditioning
from flowlm.eval.samples import read_samples

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = 8


@pytest.fixture(scope="module")
def judge(judge_dir):  # noqa: F811
    return load_judge(str(judge_dir))


def test_a_text_is_scored_given_its_context(judge):
    texts, contexts = ["sat on the mat", " the dog", ""], ["the cat ", "a quick brown fox jumps over the lazy", "x"]
    nll, counts = judge.text_nll(texts, contexts=contexts, ended=[False, True, False])
    for i, (text, context) in enumerate(zip(texts, contexts, strict=True)):
        before, ids = judge.tokenize([context])[0], judge.tokenize([text])[0] + ([judge.end_id] if i == 1 else [])
        assert counts[i] == len(ids)
        # NLL(context + text) = NLL(context) + NLL(text | context), every id scored once in windows of C − 1 = 15
        # (the second context is longer than a window: its last ids still precede the text in the same window)
        whole, _ = judge.score_ids([before + ids])
        alone, _ = judge.score_ids([before])
        if len(before) % (judge.max_length - 1) == 0 or len(before) + len(ids) <= judge.max_length - 1:
            assert_nll_close(nll[i], whole[0] - alone[0])
    assert nll[2] == 0.0 and counts[2] == 0
    assert judge.text_nll(texts, contexts=None)[0] != nll  # the context changes the numbers
    with pytest.raises(Exception, match="contexts"):
        judge.text_nll(texts, contexts=contexts[:2])


def test_features_are_the_last_hidden_state_of_each_text(judge):
    texts, contexts = ["the cat sat", "a dog", "on the log and the mat"], ["a ", "the ", ""]
    feats = judge.features(texts, contexts, batch_size=2)
    assert feats.shape == (3, judge.model.config.n_embd) and feats.dtype == torch.float64
    for i in range(3):
        ids = [judge.prefix_id, *(judge.tokenize([contexts[i]])[0] + judge.tokenize([texts[i]])[0])]
        hidden = judge.hidden(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1].double()
        # one text alone vs padded in a batch of two: float32 forward of a 1-layer GPT-2, a few ulps of O(1) states
        torch.testing.assert_close(feats[i], hidden, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(judge.features(texts[:1])[0], feats[0])  # without its context: another state


def test_condition_masks():
    blocks = torch.arange(5 * 10).view(5, 10)
    prompt = conditioning(blocks, 2, prompt_tokens=3)
    assert prompt.mask[:, :3].all() and not prompt.mask[:, 3:].any()
    infill = conditioning(blocks, 2, infill_frac=0.3, seed=1)
    assert (infill.mask.sum(1) == 3).all() and not torch.equal(infill.mask[0], infill.mask[1])
    assert torch.equal(conditioning(blocks, 2, infill_frac=0.3, seed=1).mask, infill.mask)
    assert conditioning(blocks, 2) is None
    middle = conditioning(blocks, 2, infill_middle=0.5)  # L = 10: positions 2..6 generated, 0..1 and 7..9 given
    assert torch.equal(middle.mask[0], torch.tensor([1, 1, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool))
    assert (middle.mask == middle.mask[0]).all() and middle.description["generated_span"] == [2, 7]
    assert "positions 2 to 6 of the 10" in middle.definition
    for kwargs, message in (
        (dict(prompt_tokens=10), "from 1 to 9"),
        (dict(prompt_tokens=0), "from 1 to 9"),
        (dict(infill_frac=1.0), "in \\(0, 1\\)"),
        (dict(infill_frac=0.01), "at least one"),
        (dict(prompt_tokens=2, infill_frac=0.5), "give one of them"),
        (dict(infill_middle=0.99), "--infill-middle 0.99: .* at least one"),
        (dict(infill_middle=True), "--infill-middle True"),
        (dict(infill_frac=0.5, infill_middle=0.5), "--infill-frac and --infill-middle are different conditions"),
    ):
        with pytest.raises(ConfigError, match=message):
            conditioning(blocks, 2, **kwargs)


def run_eval(model_dir, judge_dir, out, *flags):  # noqa: F811
    argv = ["eval", str(model_dir), "--steps", "1,2", "-n", "10", "--batch-size", "4", "--seed", "3", *flags,
            "--judge", str(judge_dir), "--judge-batch-size", "3", "--cache-dir", str(out / "cache"),
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text()), json.loads((out / "data" / "results.json").read_text())


@pytest.fixture(scope="module")
def prompted(model_dir, judge_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("prompted")
    return out, *run_eval(model_dir, judge_dir, out, "--prompt-tokens", str(PROMPT))


def test_prompted_eval_scores_continuations_given_the_prompt(prompted, model_dir, judge):  # noqa: F811
    out, results, data = prompted
    model = flowlm.load(model_dir)
    real = read_samples(out / "data" / "samples_data.jsonl")
    assert [len(c.tokens) for c in real.chunks] == [4, 4, 2]
    for steps in (1, 2):
        s = read_samples(out / f"samples_steps{steps}.jsonl")
        for c, r in zip(s.chunks, real.chunks, strict=True):
            assert [row[:PROMPT] for row in c.tokens] == [row[:PROMPT] for row in r.tokens]  # the prompt is kept
            assert c.known == [list(range(PROMPT))] * len(c.tokens) and c.contexts == r.contexts
            assert c.contexts == [model.tokenizer.decode(row[:PROMPT], skip_special=True) for row in c.tokens]
        assert any(a != b for a, b in zip(s.tokens, real.tokens, strict=True))  # and the rest is generated
    rows = {row["steps"]: row for row in results["results"]}
    for rows_of, path in ((rows[1], out / "samples_steps1.jsonl"), (data["results"][0], out / "data" /
                                                                   "samples_data.jsonl")):  # fmt: skip
        s = read_samples(path)
        texts = [t for c in s.chunks for t in c.texts]
        contexts = [t for c in s.chunks for t in c.contexts]
        ended = [e for c in s.chunks for e in c.ended]
        by_hand = judge.score_texts(texts, ended=ended, contexts=contexts)
        assert rows_of["total_tokens"] == by_hand.total_tokens
        # float32 forward, other batching: compared as total NLL, a rounding tolerance (tests/test_judges.py)
        assert_nll_close(math.log(rows_of["gen_ppl"]) * rows_of["total_tokens"], by_hand.total_nll)
        generated = [row[PROMPT:] for row in s.tokens]
        assert rows_of["entropy"] == pytest.approx(mean_unigram_entropy(generated), abs=1e-12)
    for row in results["results"]:
        assert 0.0 < row["mauve"] <= 1.0
    assert data["results"][0]["mauve"] is None and data["results"][0]["steps"] is None
    condition = results["provenance"]["sampling"]["condition"]
    assert (condition["kind"], condition["prompt_tokens"], condition["split"]) == ("prompt", PROMPT, "validation")
    assert "MAUVE (Pillutla" in results["definitions"]["mauve"] and "first 8 ids" in results["definitions"]["gen_ppl"]
    assert data["definitions"] == results["definitions"]


def test_compare_shows_mauve_and_the_data_line(prompted, tmp_path):
    out, _, _ = prompted
    assert main(["compare", str(out / "results.json"), str(out / "data" / "results.json"), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "comparison.md").read_text()
    assert "| MAUVE |" in md and "| data (validation) | - (no steps) |" in md and "- MAUVE: MAUVE (Pillutla" in md
    plain = json.loads((out / "results.json").read_text())
    for row in plain["results"]:
        row["mauve"] = None
    from flowlm.eval.report import results_markdown

    assert "MAUVE |" not in results_markdown(plain)  # unconditional tables keep their columns


def test_infill_eval_keeps_the_given_positions(model_dir, judge_dir, tmp_path):  # noqa: F811
    results, data = run_eval(model_dir, judge_dir, tmp_path, "--infill-frac", "0.5")
    real = read_samples(tmp_path / "data" / "samples_data.jsonl")
    s = read_samples(tmp_path / "samples_steps2.jsonl")
    for c, r in zip(s.chunks, real.chunks, strict=True):
        assert c.contexts is None and c.known == r.known
        for row, real_row, known in zip(c.tokens, r.tokens, c.known, strict=True):
            assert len(known) == 12 and [row[i] for i in known] == [real_row[i] for i in known]
    assert len({tuple(k) for c in s.chunks for k in c.known}) > 1  # a random subset per block
    assert all(0.0 < row["mauve"] <= 1.0 for row in results["results"])
    assert "12 of the 24 positions" in results["definitions"]["gen_ppl"]


def test_conditional_eval_errors(model_dir, judge_dir, tmp_path, capsys):  # noqa: F811
    common = ["-n", "4", "--judge", str(judge_dir), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path)]
    assert main(["eval", str(model_dir), "--prompt-tokens", "24", *common]) == 2
    assert "--prompt-tokens 24: give a whole number from 1 to 23" in capsys.readouterr().err
    assert main(["eval", str(model_dir), "--prompt-tokens", "2", "--infill-frac", "0.5", *common]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_score_rescores_conditional_samples_given_their_prompts(prompted, judge_dir, tmp_path):  # noqa: F811
    out, results, _ = prompted
    argv = ["score", str(out / "samples_steps1.jsonl"), str(out / "samples_steps2.jsonl"), "--judge", str(judge_dir),
            "--judge-batch-size", "3", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["definitions"]["gen_ppl"] == results["definitions"]["gen_ppl"]
    for a, b in zip(again["results"], results["results"], strict=True):
        assert (a["total_tokens"], a["entropy"]) == (b["total_tokens"], b["entropy"])
        assert_nll_close(a["total_nll"], b["total_nll"])  # other thread count than the module fixture: rounding
        assert a["mauve"] is None  # MAUVE needs the real texts' features: only flowlm eval computes it


def test_middle_infill_eval_and_mauve_when_rescoring(model_dir, judge_dir, judge, tmp_path, capsys):  # noqa: F811
    """--infill-middle generates the middle of each block; flowlm score --real rescores the samples and the data
    line and gives each row the MAUVE that flowlm eval gave it (same judge, same texts, same features)."""
    results, data = run_eval(model_dir, judge_dir, tmp_path / "eval", "--infill-middle", "0.5")
    real = read_samples(tmp_path / "eval" / "data" / "samples_data.jsonl")
    s = read_samples(tmp_path / "eval" / "samples_steps1.jsonl")
    for c, r in zip(s.chunks, real.chunks, strict=True):  # L = 24: positions 6..17 generated
        for row, real_row, known in zip(c.tokens, r.tokens, c.known, strict=True):
            assert known == [*range(6), *range(18, 24)] and row[:6] == real_row[:6] and row[18:] == real_row[18:]
    assert any(a[6:18] != b[6:18] for a, b in zip(s.tokens, real.tokens, strict=True))
    assert "positions 6 to 17 of the 24 (the middle 0.5)" in results["definitions"]["gen_ppl"]
    samples = [str(tmp_path / "eval" / f"samples_steps{k}.jsonl") for k in (1, 2)]
    data_file = str(tmp_path / "eval" / "data" / "samples_data.jsonl")
    argv = ["score", *samples, "--judge", str(judge_dir), "--judge-batch-size", "3", "--quiet"]
    assert main([*argv, "--real", data_file, "--out", str(tmp_path / "score")]) == 0
    rescored = json.loads((tmp_path / "score" / "results.json").read_text())
    for before, after in zip(results["results"], rescored["results"], strict=True):
        assert after["mauve"] == pytest.approx(before["mauve"], abs=1e-9)  # same judge: the same features and score
        assert_nll_close(after["total_nll"], before["total_nll"])
    real_rescored = json.loads((tmp_path / "score" / "data" / "results.json").read_text())["results"][0]
    assert_nll_close(real_rescored["total_nll"], data["results"][0]["total_nll"])
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0  # without --real: no MAUVE column
    assert all(row["mauve"] is None for row in json.loads((tmp_path / "plain" / "results.json").read_text())["results"])
    other = tmp_path / "other"
    run_eval(model_dir, judge_dir, other, "--infill-frac", "0.5")
    assert main([*argv, "--real", str(other / "data" / "samples_data.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "not the data line of the evaluation that wrote these samples" in capsys.readouterr().err
