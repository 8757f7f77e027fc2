"""flowlm reference: held-out real text scored exactly as samples are, as a row without steps (seconds,
offline; the tiny random model of test_eval_run and the tiny GPT-2 judge of test_judges)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from test_eval_run import PNG_MAGIC, make_model
from test_judges import assert_nll_close, judge_dir  # noqa: F401  (a module fixture: the saved tiny GPT-2 judge)

import flowlm
from flowlm.cli import main
from flowlm.data import prepare_blocks
from flowlm.eval import load_judge
from flowlm.eval.metrics import decode_for_judge, mean_unigram_entropy
from flowlm.eval.samples import read_samples

WORDS = "the cat sat on mat and dog log a quick brown fox jumps over lazy".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A text file of 400 paragraphs (documents) drawn from the tiny model's character set; every 20th is the
    validation split, about 40 blocks of 24 characters."""
    rng = random.Random(0)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))) for _ in range(400)]
    path = tmp_path_factory.mktemp("reference_corpus") / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus):
    """The tiny model, with its training corpus recorded in flowlm.json as flowlm train records it."""
    folder = make_model(tmp_path_factory.mktemp("reference_model") / "model")
    meta = json.loads((folder / "flowlm.json").read_text())
    meta["run"] = {"data": {"corpus": str(corpus)}}
    (folder / "flowlm.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def referenced(model_dir, judge_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("reference_out")
    argv = ["reference", str(model_dir), "-n", "10", "--batch-size", "4", "--seed", "3", "--judge", str(judge_dir),
            "--cache-dir", str(out / "cache"), "--out", str(out / "report"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "report" / "results.json").read_text())


def test_blocks_are_distinct_held_out_blocks_decoded_like_samples(referenced, model_dir, corpus):
    out, results = referenced
    model = flowlm.load(model_dir)
    blocks = prepare_blocks(str(corpus), model.tokenizer, model.seq_len, "validation", out / "cache", progress=False)
    train = prepare_blocks(str(corpus), model.tokenizer, model.seq_len, "train", out / "cache", progress=False)
    held_out = [blocks[i].tolist() for i in range(len(blocks))]
    s = read_samples(out / "report" / "samples_data.jsonl")
    assert len(s.tokens) == 10 and [len(c.tokens) for c in s.chunks] == [4, 4, 2]
    picks = [held_out.index(t) for t in s.tokens]  # raises if a row is not a validation block
    assert len(set(picks)) == 10
    assert not set(map(tuple, s.tokens)) & {tuple(train[i].tolist()) for i in range(len(train))}
    texts, ended = decode_for_judge(torch.tensor(s.tokens), model.tokenizer)
    assert [t for c in s.chunks for t in c.texts] == texts
    assert [e for c in s.chunks for e in c.ended] == ended
    assert any(ended)  # paragraphs are short: the EOS rule is exercised


def test_numbers_and_row_shape(referenced, judge_dir):  # noqa: F811
    out, results = referenced
    (row,) = results["results"]
    assert row["steps"] is None and row["seconds_per_sample"] is None and row["num_samples"] == 10
    s = read_samples(out / "report" / "samples_data.jsonl")
    whole = load_judge(str(judge_dir)).score_texts([t for c in s.chunks for t in c.texts], ended=[
        e for c in s.chunks for e in c.ended])  # fmt: skip
    assert row["total_tokens"] == whole.total_tokens
    # float32 forward, other batching: compared as total NLL = log(gen PPL)·tokens, a rounding tolerance
    assert_nll_close(math.log(row["gen_ppl"]) * row["total_tokens"], math.log(whole.gen_ppl) * whole.total_tokens)
    assert row["entropy"] == pytest.approx(mean_unigram_entropy(s.tokens), abs=1e-12)
    sampling = results["provenance"]["sampling"]
    assert (sampling["method"], sampling["split"], sampling["seed"], sampling["label"]) == (
        "data", "validation", 3, "data (validation)")  # fmt: skip


def test_seed_changes_the_draw_and_compare_draws_a_line(referenced, model_dir, judge_dir, tmp_path):  # noqa: F811
    out, results = referenced
    argv = ["reference", str(model_dir), "-n", "10", "--batch-size", "4", "--seed", "4", "--judge", str(judge_dir),
            "--cache-dir", str(out / "cache"), "--out", str(tmp_path / "other"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert read_samples(tmp_path / "other" / "samples_data.jsonl").tokens != read_samples(
        out / "report" / "samples_data.jsonl").tokens  # fmt: skip
    argv = ["eval", str(model_dir), "--steps", "1", "-n", "4", "--judge", str(judge_dir),
            "--out", str(tmp_path / "model"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    files = [str(tmp_path / "model" / "results.json"), str(out / "report" / "results.json")]
    assert main(["compare", *files, "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| data (validation) | - (no steps) |" in md
    assert (tmp_path / "cmp" / "genppl_vs_steps.png").read_bytes()[:8] == PNG_MAGIC


def test_errors_name_the_fix(referenced, model_dir, judge_dir, corpus, tmp_path, capsys):  # noqa: F811
    out, _ = referenced
    common = ["--judge", str(judge_dir), "--cache-dir", str(out / "cache"), "--out", str(tmp_path), "--quiet"]
    assert main(["reference", str(model_dir), "-n", "100000", *common]) == 2
    assert "fewer than --num-samples 100000: ask for at most" in capsys.readouterr().err
    bare = make_model(tmp_path / "bare")
    assert main(["reference", str(bare), "-n", "4", *common]) == 2
    assert "does not record its training corpus: pass --data" in capsys.readouterr().err
    assert main(["reference", str(bare), "-n", "4", "--data", str(corpus), *common]) == 0
    assert main(["reference", str(model_dir), "-n", "0", *common]) == 2
    assert "--num-samples 0" in capsys.readouterr().err
