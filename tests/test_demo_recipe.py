"""The demo recipe (experiments/demo.py, run across sessions): its corpus and split, its chunk plan, and one tiny
run through the real stages - two FLM chunks, the second warm-started from the first's half-precision export,
a chunk stopped early and saved, and a rerun that skips everything done."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from flowlm.data import load_corpus
from flowlm.training.checkpoint import read_meta, read_weights

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load(name: str):
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_experiment", EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXPERIMENTS))


@pytest.fixture(scope="module")
def demo():
    return load("demo")


@pytest.fixture(scope="module")
def pd_english(tmp_path_factory):
    """A stand-in for ../shared/data/pd-english: 40 works (2 held out), one of them Latin-1 like the real one."""
    root = tmp_path_factory.mktemp("pd")
    (root / "gutenberg").mkdir()
    (root / "sotu").mkdir()
    lines = ("It was a bright cold day in April, and the clocks were striking", "thirteen; the hall smelt of cabbage")
    for i in range(10):
        wrapped = "\n".join(lines)  # one paragraph hard-wrapped at 63 characters
        verse = "Of Man's first disobedience,\nand the fruit"  # short lines: kept as verse
        (root / "gutenberg" / f"book{i:02d}.txt").write_text(f"[Book {i}]\n\n{wrapped} {i}.\n\n\n{verse}\n")
    (root / "gutenberg" / "shakespeare-hamlet.txt").write_text("[Hamlet]\n\nTo be, or not to be.\n")
    (root / "gutenberg" / "book10.txt").write_bytes("Bruneti\u00e8re and Copp\u00e9e.\n".encode("latin-1"))
    for year in range(1790, 1819):
        speech = f"Fellow-Citizens, in {year} the union is strong. (Applause.) We go on. (Laughter.)\nThank you."
        (root / "sotu" / f"{year}_president.txt").write_text(speech * 3)
    return root


def test_one_document_per_work_and_every_20th_work_held_out(demo, pd_english, tmp_path):
    corpus = load("demo_corpus")
    manifest = corpus.build(pd_english, tmp_path / "c.txt", shakespeare=False)
    names = [name for name, _ in corpus.works(pd_english, shakespeare=False)]
    assert manifest["documents"] == len(names) == 40 and "gutenberg/shakespeare-hamlet.txt" not in names
    assert manifest["held_out"] == [names[19], names[39]]
    docs = {name: doc for name, doc in corpus.works(pd_english, shakespeare=False)}
    # flowlm's own split of the file is the recorded one: the held-out works, whole, and nothing else
    assert list(load_corpus(str(tmp_path / "c.txt"), "validation")) == [docs[n] for n in manifest["held_out"]]
    train = list(load_corpus(str(tmp_path / "c.txt"), "train"))
    assert train == [docs[n] for n in names if n not in manifest["held_out"]]
    book = docs["gutenberg/book03.txt"].split("\n")
    assert (
        book[1]
        == "It was a bright cold day in April, and the clocks were striking thirteen; the hall smelt of cabbage 3."
    )
    assert book[2:] == ["Of Man's first disobedience,", "and the fruit"]
    assert docs["gutenberg/book10.txt"] == "Bruneti\u00e8re and Copp\u00e9e."
    speech = docs["sotu/1790_president.txt"]
    assert "Applause" not in speech and "Laughter" not in speech and "strong. We go on. Thank you." in speech


def test_chunk_plan_adds_up_the_recorded_steps(demo):
    assert demo.chunk_plan({}, "flm", 4500, 1500) == (1, 1500, 0)
    records = {"flm-1": {"done": True, "steps": 1500}, "flm-2": {"done": True, "steps": 900}}  # 2 stopped early
    assert demo.chunk_plan(records, "flm", 4500, 1500) == (3, 1500, 2400)
    assert demo.chunk_plan({**records, "flm-3": {"done": False, "steps": 0}}, "flm", 4500, 1500) == (3, 1500, 2400)
    assert demo.chunk_plan({**records, "flm-3": {"done": True, "steps": 1500}}, "flm", 4500, 1500) == (4, 600, 3900)
    assert demo.chunk_plan({**records, "flm-3": {"done": True, "steps": 2100}}, "flm", 4500, 1500) is None
    assert demo.chunk_plan(records, "ar", 100, 100) == (1, 100, 0)  # phases are counted apart


def test_a_chunk_out_of_time_is_stopped_and_saved(demo, tmp_path):
    from flowlm.errors import CheckpointError

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    stages = demo.ChunkStages(tmp_path)
    assert stages.run("flm-1", sleeper, after=lambda: {"steps": 7}, seconds=1.0) is False
    record = json.loads((tmp_path / "stages.json").read_text())["flm-1"]
    assert record["done"] and record["stopped_early"] and record["steps"] == 7 and 1 <= record["seconds"] < 50

    def nothing_yet():
        raise CheckpointError("no model yet")

    assert stages.run("flm-2", sleeper, after=nothing_yet, seconds=1.0) is False
    assert json.loads((tmp_path / "stages.json").read_text())["flm-2"]["done"] is False
    assert stages.run("flm-3", [sys.executable, "-c", "pass"], after=lambda: {"steps": 2}, seconds=60) is True


def tiny_recipe(pd_english, tmp_path) -> tuple[Path, Path, list[str], list[str]]:
    """(state, out, argv, training overrides) of a recipe with a 1-block, d = 32 network on the stand-in corpus."""
    state, out = tmp_path / "state", tmp_path / "runs"
    tiny = [
        "model.hidden_size=32", "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=16", "data.seq_len=16",
        "train.batch_size=4", "train.ckpt_every=1", "train.val_every=100", "train.val_batches=1",
        "train.log_every=1", f"data.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    argv = [
        "--pd-english", str(pd_english), "--state", str(state), "--out", str(out), "--without-shakespeare",
        "--bpe", "300", *(f"--set={item}" for item in tiny),
    ]  # fmt: skip
    return state, out, argv, tiny


@pytest.mark.slow  # ~40 s: four flowlm runs
def test_two_chunks_a_stopped_one_and_a_rerun(demo, pd_english, tmp_path, capsys):
    state, out, argv, tiny = tiny_recipe(pd_english, tmp_path)
    argv += ["--flm-steps", "3", "--flm-chunk", "2", "--stop-after", "flm"]
    demo.main(argv)
    records = json.loads((state / "stages.json").read_text())
    assert [records[k]["steps"] for k in ("flm-1", "flm-2")] == [2, 1]
    assert all(records[k]["done"] and records[k]["attempts"] == 1 for k in ("corpus", "flm-1", "flm-2"))
    # float16 rounding moves the validation loss by far less than training does (the loss of untrained weights
    # is ln V = 5.7 nats; relative rounding error 2^-11 per weight)
    assert abs(records["flm-2"]["val_fp16"] - records["flm-2"]["val_fp32"]) < 0.01
    assert json.loads((state / "split.json").read_text())["documents"] == 40
    meta = read_meta(state / "flm")
    assert meta["storage_dtype"] == "float16" and meta["step"] == 1
    assert meta["init_from"]["step"] == 2  # chunk 2 began from chunk 1's export, not from scratch
    assert "train.seed=1" in records["flm-2"]["command"] and "train.warmup_steps=100" in records["flm-2"]["command"]
    weights = read_weights(state / "flm", meta)
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    exported = read_weights(out / "flm-2" / "model", read_meta(out / "flm-2" / "model"))
    assert all(torch.equal(weights[k], exported[k].half()) for k in exported)

    capsys.readouterr()
    demo.main(argv)  # a rerun: nothing left to train
    assert "steps after" not in capsys.readouterr().out
    assert json.loads((state / "stages.json").read_text())["flm-1"]["attempts"] == 1

    # A longer plan: chunk 3 stopped after 1 of its 2 steps (as at a session's end) and saved with `save`.
    longer = [*argv, "--flm-steps", "6"]
    args = demo.argparse.Namespace(out=str(out), set=tiny, profile="cpu", minutes={})
    chunk = demo.training_command(args, state, "flm", 3, 1)
    assert demo.subprocess.run(chunk).returncode == 0
    demo.main(["save", *longer])
    records = json.loads((state / "stages.json").read_text())
    assert records["flm-3"]["steps"] == 1 and records["flm-3"]["stopped_early"]
    assert demo.chunk_plan(records, "flm", 6, 2) == (4, 2, 4)


@pytest.mark.slow  # ~50 s: four flowlm runs
def test_distillation_and_ar_chunks_warm_start_too(demo, pd_english, tmp_path):
    state, out, argv, _ = tiny_recipe(pd_english, tmp_path)
    demo.main([*argv, "--flm-steps", "1", "--fmlm-steps", "2", "--fmlm-chunk", "1", "--ar-steps", "1",
               "--stop-after", "ar"])  # fmt: skip
    records = json.loads((state / "stages.json").read_text())
    assert [records[k]["steps"] for k in ("flm-1", "fmlm-1", "fmlm-2", "ar-1")] == [1, 1, 1, 1]
    fmlm = read_meta(state / "fmlm")
    assert fmlm["method"] == "fmlm" and fmlm["storage_dtype"] == "float16"
    assert fmlm["teacher"]["weights_sha256"] == read_meta(state / "flm")["weights_sha256"]  # the fp16 teacher
    assert fmlm["init_from"]["path"] == str(state / "fmlm") and fmlm["init_from"]["step"] == 1  # chunk 1's
    assert "train.ema_decay=0.99" in records["fmlm-1"]["command"]
    assert read_meta(state / "ar")["method"] == "ar" and "init_from" not in read_meta(state / "ar")


@pytest.mark.slow  # ~60 s: three flowlm runs of about 10 s each
def test_the_gpu_profile_trains_each_phase_once_on_its_time_budget(demo, pd_english, tmp_path, capsys):
    """--profile gpu on the CPU (a rehearsal of experiments/demo_gpu.sh): one chunk per phase, stopped by its
    --minutes, recorded as final; the profile's batch size gives way to a --set, a PHASE: --set reaches one phase."""
    state, out, argv, _ = tiny_recipe(pd_english, tmp_path)
    argv += ["--profile", "gpu", "--stop-after", "ar", "--set", "ar:train.lr=0.002", "--set", "train.compile=false",
             *(f"--minutes={phase}=0.01" for phase in ("flm", "fmlm", "ar"))]  # fmt: skip
    demo.main(argv)
    records = json.loads((state / "stages.json").read_text())
    for phase in ("flm", "fmlm", "ar"):
        record = records[f"{phase}-1"]
        assert record["final"] and record["minutes"] == 0.01 and 0 < record["steps"] < 1_000_000
        assert "train.max_minutes=0.01" in record["command"] and "train.batch_size=4" in record["command"]
        assert record["command"].index("train.batch_size=256") < record["command"].index("train.batch_size=4")
    assert "train.lr=0.002" in records["ar-1"]["command"] and "train.lr=0.002" not in records["flm-1"]["command"]
    assert "model.dropout=0.1" in records["flm-1"]["command"] and "model.dropout" not in records["fmlm-1"]["command"]
    capsys.readouterr()
    demo.main(argv)  # a rerun: every phase is final, nothing left to train
    assert "steps after" not in capsys.readouterr().out


def test_minutes_must_name_a_phase_and_a_positive_number(demo):
    for bad in ("flm=0", "flm=soon", "eval=3"):
        with pytest.raises(SystemExit):
            demo.main(["--minutes", bad])
