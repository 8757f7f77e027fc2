"""flowlm eval / score / compare on a tiny random model and the tiny GPT-2 judge of test_judges (seconds,
offline): files written, provenance present, no sample dropped, numbers recomputable by hand, score
reproduces eval, per-batch seeding, a method without steps, and the error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_judges import assert_nll_close, judge_dir  # noqa: F401  (a module fixture: the saved tiny GPT-2 judge)

import flowlm
from flowlm.cli import main
from flowlm.data import load_tokenizer
from flowlm.errors import ConfigError, DataError
from flowlm.eval import load_judge, plots
from flowlm.eval.metrics import GenPPLResult, decode_for_judge, distinct_n, mean_unigram_entropy, self_bleu
from flowlm.eval.run import evaluate, parse_steps, score_files
from flowlm.eval.samples import read_samples
from flowlm.methods import registry
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.checkpoint import provenance, save_model

TEXT = ["the cat sat on the mat and the dog sat on the log", "a quick brown fox jumps over the lazy dog"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_model(folder: Path, method: str = "flm", seed: int = 0) -> Path:
    """A checkpoint folder holding a random DiT (weights drawn with std 0.3, so samples vary: the zero-initialised
    output layer of a fresh DiT would give one token everywhere) and a character tokenizer."""
    tok = load_tokenizer("char", train_texts=TEXT)
    cfg = DiTConfig(vocab_size=tok.vocab_size, seq_len=24, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8,
                    dropout=0.0, time_inputs=2 if method == "fmlm" else 1)  # fmt: skip
    torch.manual_seed(seed)
    net = DiT(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    meta = provenance(method=method, model=cfg.to_dict(), vocab_size=tok.vocab_size, step=0, weights="random",
                      tokenizer={"spec": tok.spec, "name": tok.name, "vocab_size": tok.vocab_size})  # fmt: skip
    return save_model(folder, net.state_dict(), meta, tok)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("eval_model") / "model")


@pytest.fixture(scope="module")
def evaluated(model_dir, judge_dir, tmp_path_factory):  # noqa: F811
    """`flowlm eval` with 2 step counts, 7 samples in batches of 3 (a short last batch)."""
    out = tmp_path_factory.mktemp("eval_out")
    argv = ["eval", str(model_dir), "--steps", "1,2", "-n", "7", "--batch-size", "3", "--seed", "5",
            "--judge", str(judge_dir), "--judge-batch-size", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_eval_writes_every_output(evaluated):
    out, results = evaluated
    for name in ("results.json", "results.md", "samples_steps1.jsonl", "samples_steps2.jsonl"):
        assert (out / name).stat().st_size > 0, name
    for name in ("genppl_vs_steps.png", "genppl_vs_seconds.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert [r["steps"] for r in results["results"]] == [1, 2]
    md = (out / "results.md").read_text()
    assert results["judge"]["description"] in md and results["provenance"]["sampling"]["weights_sha256"] in md
    assert "| 1 |" in md and "| 2 |" in md and "token-weighted" in md and "unigram entropy" in md


def test_provenance_and_definitions(evaluated, model_dir, judge_dir):  # noqa: F811
    out, results = evaluated
    meta = json.loads((model_dir / "flowlm.json").read_text())
    sampling = results["provenance"]["sampling"]
    assert sampling["weights_sha256"] == meta["weights_sha256"]
    assert (sampling["method"], sampling["sampler"], sampling["seed"], sampling["gamma"]) == ("flm", "euler", 5, None)
    assert sampling["precision"] == "float32" and sampling["batch_size"] == 3 and sampling["seq_len"] == 24
    assert sampling["code_version"].startswith(flowlm.__version__) and "created" in sampling
    assert sampling["hardware"]["torch_threads"] >= 1 and sampling["hardware"]["world_size"] == 1
    judge = load_judge(str(judge_dir))
    assert results["judge"]["fingerprint"] == judge.fingerprint
    assert results["judge"]["description"] == judge.description
    assert results["definitions"]["gen_ppl"] == judge.definition
    assert set(results["definitions"]) == {"gen_ppl", "gen_ppl_ci95", "entropy", "diversity", "seconds_per_sample"}
    for row in results["results"]:
        assert row["num_samples"] == 7 and row["judge"] == judge.description
        again = GenPPLResult.from_samples(row["sample_nll"], row["sample_tokens"], judge="", definition="")
        assert again.gen_ppl == pytest.approx(row["gen_ppl"], rel=1e-12)
        assert row["gen_ppl_ci95"] == list(again.bootstrap_interval())
        assert row["seconds_per_sample"] > 0 and row["wall_seconds"] >= row["seconds_per_sample"] * 7 * 0.999
    header = json.loads((out / "samples_steps2.jsonl").read_text().splitlines()[0])
    assert header["steps"] == 2 and header["provenance"] == sampling


def test_samples_are_the_api_samples_and_none_dropped(evaluated, model_dir):
    out, results = evaluated
    model = flowlm.load(model_dir)
    for steps in (1, 2):
        s = read_samples(out / f"samples_steps{steps}.jsonl")
        assert [len(c.tokens) for c in s.chunks] == [3, 3, 1]
        want = model.sample_tokens(7, steps, seed=5, batch_size=3)
        assert s.tokens == want.tolist()
        texts, ended = decode_for_judge(want, model.tokenizer)
        assert [t for c in s.chunks for t in c.texts] == texts
        assert [e for c in s.chunks for e in c.ended] == ended


def test_numbers_recomputed_by_hand(evaluated, model_dir, judge_dir):  # noqa: F811
    out, results = evaluated
    judge = load_judge(str(judge_dir))
    for row in results["results"]:
        s = read_samples(out / row["samples_file"])
        texts = [t for c in s.chunks for t in c.texts]
        ended = [e for c in s.chunks for e in c.ended]
        whole = judge.score_texts(texts, batch_size=16, ended=ended)  # one call, other batching
        assert row["total_tokens"] == whole.total_tokens
        # float32 forward, different padding: compared as total NLL = log(gen PPL)·tokens, a rounding tolerance
        assert_nll_close(math.log(row["gen_ppl"]) * row["total_tokens"], math.log(whole.gen_ppl) * whole.total_tokens)
        assert row["gen_ppl"] == pytest.approx(math.exp(row["total_nll"] / row["total_tokens"]), rel=1e-12)
        assert row["entropy"] == pytest.approx(mean_unigram_entropy(s.tokens), abs=1e-12)
        assert row["distinct_4"] == pytest.approx(distinct_n(s.tokens, 4), abs=1e-12)
        assert row["self_bleu_4"] == pytest.approx(self_bleu(s.tokens, max_n=4), abs=1e-12)


def test_score_reproduces_eval_and_swaps_judges(evaluated, judge_dir, tmp_path, capsys):  # noqa: F811
    out, results = evaluated
    files = [str(out / "samples_steps1.jsonl"), str(out / "samples_steps2.jsonl")]
    argv = ["score", *files, "--judge", str(judge_dir), "--judge-batch-size", "2", "--out", str(tmp_path / "same")]
    assert main([*argv, "--quiet"]) == 0
    again = json.loads((tmp_path / "same" / "results.json").read_text())
    keys = ("steps", "num_samples", "gen_ppl", "total_nll", "total_tokens", "entropy", "distinct_4", "self_bleu_4",
            "seconds_per_sample", "samples_sha256")  # fmt: skip
    for a, b in zip(results["results"], again["results"], strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert again["provenance"]["sampling"] == results["provenance"]["sampling"]
    assert (tmp_path / "same" / "genppl_vs_seconds.png").read_bytes()[:8] == PNG_MAGIC

    # another judge: same architecture, other weights -> other fingerprint, other numbers, same samples
    other = load_judge(str(judge_dir))
    with torch.no_grad():
        for p in other.model.parameters():
            p.mul_(1.5)
    other.model.save_pretrained(tmp_path / "judge2")
    other.tokenizer.save_pretrained(tmp_path / "judge2")
    argv = ["score", *files, "--judge", str(tmp_path / "judge2"), "--out", str(tmp_path / "other"), "--quiet"]
    assert main(argv) == 0
    swapped = json.loads((tmp_path / "other" / "results.json").read_text())
    assert swapped["judge"]["fingerprint"] != results["judge"]["fingerprint"]
    assert swapped["results"][0]["gen_ppl"] != pytest.approx(results["results"][0]["gen_ppl"], rel=1e-3)
    assert swapped["results"][0]["entropy"] == results["results"][0]["entropy"]

    # compare refuses to put numbers from two judges in one table
    capsys.readouterr()
    assert main(["compare", str(out / "results.json"), str(tmp_path / "other" / "results.json"), "--out", "x"]) == 2
    assert "different judges are not comparable" in capsys.readouterr().err


def test_compare_merges_models(evaluated, judge_dir, tmp_path, capsys):  # noqa: F811
    out, _ = evaluated
    fmlm_dir = make_model(tmp_path / "fmlm" / "model", method="fmlm", seed=1)
    argv = ["eval", str(fmlm_dir), "--steps", "1,4", "-n", "4", "--batch-size", "4", "--gamma", "0.5",
            "--judge", str(judge_dir), "--out", str(tmp_path / "fmlm_eval"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    fmlm_results = json.loads((tmp_path / "fmlm_eval" / "results.json").read_text())
    sampling = fmlm_results["provenance"]["sampling"]
    assert (sampling["method"], sampling["sampler"], sampling["gamma"]) == ("fmlm", "flow-map", 0.5)
    files = [str(out / "results.json"), str(tmp_path / "fmlm_eval" / "results.json")]
    assert main(["compare", *files, "--labels", "FLM,FMLM", "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| FLM |") or line.startswith("| FMLM |")]
    assert len(table) == 4  # 2 step counts per model
    assert "Provenance of FLM:" in md and "Provenance of FMLM:" in md and fmlm_results["judge"]["description"] in md
    merged = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [m["label"] for m in merged["models"]] == ["FLM", "FMLM"]
    for name in ("genppl_vs_steps.png", "genppl_vs_seconds.png"):
        assert (tmp_path / "cmp" / name).read_bytes()[:8] == PNG_MAGIC
    assert "FMLM" in capsys.readouterr().out
    assert main(["compare", *files, "--labels", "only-one", "--out", str(tmp_path / "cmp")]) == 2
    assert "one label per file" in capsys.readouterr().err


def test_per_batch_seeding(model_dir):
    model = flowlm.load(model_dir)
    full = model.sample_tokens(7, 2, seed=3, batch_size=3)
    parts = {j: model.sample_tokens(7, 2, seed=3, batch_size=3, batches=[j]) for j in (2, 0, 1)}
    # Bit-equal: each batch is the same computation (same seed, shape and kernels) whether drawn alone or not.
    assert torch.equal(torch.cat([parts[0], parts[1], parts[2]]), full)
    assert torch.equal(model.sample_tokens(7, 2, seed=3, batch_size=3, batches=[2, 0]), torch.cat([parts[2], parts[0]]))
    assert parts[2].shape == (1, 24)
    assert not torch.equal(parts[0], parts[1])
    assert not torch.equal(full, model.sample_tokens(7, 2, seed=4, batch_size=3))
    with pytest.raises(ConfigError, match="batches 0 ... 2"):
        model.sample_tokens(7, 2, batch_size=3, batches=[3])
    with pytest.raises(ConfigError, match="seed"):
        model.sample_tokens(2, 1, seed=-1)


class _StepLessModel:
    """Duck-typed stand-in for a model whose sampler has no step count (as AR will be): it checks that
    evaluation asks for ``steps=None`` and returns fixed ids."""

    method = "ar"
    sampler = "ancestral-kv-cache"
    seq_len = 12

    def __init__(self, path: Path):
        self.path = path
        self.meta = {"weights_sha256": "0" * 64, "step": 1}
        self.net = torch.nn.Linear(1, 1)
        self.device = torch.device("cpu")
        self.tokenizer = load_tokenizer("char", train_texts=TEXT)
        self.calls = []

    def sample_tokens(self, num_samples, steps, seed=0, seq_len=None, guidance=None, gamma=0.0, batch_size=64,
                      batches=None):  # fmt: skip
        self.calls.append(steps)
        ids = self.tokenizer.encode(TEXT[0])[: self.seq_len]
        rows = sum(min(batch_size, num_samples - j * batch_size) for j in batches)
        return torch.tensor([ids] * rows)


def test_method_without_steps_is_evaluated_once(judge_dir, tmp_path):  # noqa: F811
    assert not registry.get("ar").takes_steps
    model = _StepLessModel(tmp_path / "ar")
    results = evaluate(model, load_judge(str(judge_dir)), [1, 2, 4], tmp_path / "out", num_samples=3, batch_size=2,
                       progress=False)  # fmt: skip
    assert set(model.calls) == {None}
    assert [r["steps"] for r in results["results"]] == [None]
    assert results["results"][0]["samples_file"] == "samples_ar.jsonl"
    assert "| - (no steps) |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "genppl_vs_steps.png").read_bytes()[:8] == PNG_MAGIC


def test_bad_input_gives_one_line_errors(evaluated, model_dir, tmp_path, capsys, monkeypatch):
    out, _ = evaluated
    for steps in ("1,x", "0", ","):
        with pytest.raises(ConfigError, match="--steps"):
            parse_steps(steps)
    assert parse_steps("4, 1,4") == [4, 1]

    def one_line(argv, *fragments):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("flowlm: error: ") and "\n" not in err, err
        for f in fragments:
            assert f in err, err

    one_line(["eval", str(model_dir), "--steps", "1,two", "--out", str(tmp_path)], "--steps")
    sample_file = tmp_path / "plain.jsonl"
    assert main(["sample", str(model_dir), "-n", "2", "--steps", "1", "--out", str(sample_file)]) == 0
    one_line(["score", str(sample_file), "--out", str(tmp_path)], "not a flowlm eval sample file")
    one_line(["score", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)], "does not exist")
    one_line(["compare", str(sample_file), "--out", str(tmp_path)], "not JSON")
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("\n".join((out / "samples_steps1.jsonl").read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match="not indices 0 ... 6"):
        read_samples(truncated)

    # files of two different models are not scored as one run
    other = make_model(tmp_path / "other" / "model", seed=7)
    model = flowlm.load(other)
    judge = _FixedJudge()
    evaluate(model, judge, [1], tmp_path / "o", num_samples=2, batch_size=2, progress=False)
    with pytest.raises(ConfigError, match="different models"):
        score_files([out / "samples_steps1.jsonl", tmp_path / "o" / "samples_steps1.jsonl"], judge, tmp_path / "s")

    # matplotlib missing: a clear error before any sampling
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'flowlm\[eval\]'"):
        plots.require_matplotlib()


class _FixedJudge:
    """A judge that gives every text 2 tokens of NLL 1.5 each (enough to exercise the plumbing)."""

    name = description = "fixed [0]"
    fingerprint = "0"
    definition = "fixed"
    device = torch.device("cpu")

    def text_nll(self, texts, batch_size=8, ended=False):
        return [3.0] * len(texts), [2] * len(texts)


@pytest.mark.parametrize("command", ["eval", "score", "compare", "reference"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: flowlm {command}" in capsys.readouterr().out
