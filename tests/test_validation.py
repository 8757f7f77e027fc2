"""Every bad input gets a one-line error before any work: config fields (table-driven: every numeric field
has a row), CLI options, devices, outputs that cannot be written, files of the wrong kind, Hugging Face
names without network (in seconds, not after the libraries' retries)."""

import os
import socket
import time

import pytest
import torch
from test_errors import one_line_error

import flowlm
from flowlm import network
from flowlm.cli import main
from flowlm.config import BELOW_ONE, NON_NEGATIVE, POSITIVE, WHOLE_AT_LEAST, apply_overrides, load_preset
from flowlm.data import load_corpus, load_tokenizer, prepare_blocks, prepare_tokenizer
from flowlm.errors import CheckpointError, ConfigError, DataError
from flowlm.eval import load_judge

BAD_CONFIG = [
    ("model.hidden_size=-8", "model.hidden_size=-8: use a whole number >= 2"),
    ("model.hidden_size=0", "model.hidden_size=0"),
    ("model.n_heads=0", "model.n_heads=0: use a whole number >= 1"),
    ("model.n_blocks=0", "model.n_blocks=0"),
    ("model.cond_dim=0", "model.cond_dim=0"),
    ("model.mlp_ratio=0", "model.mlp_ratio=0"),
    ("model.dropout=1", "model.dropout=1.0: use a number in [0, 1)"),
    ("model.dropout=-0.1", "model.dropout=-0.1"),
    ("model.input_std=0", "model.input_std=0.0: use a finite number > 0"),
    ("model.attn_softcap=-1", "model.attn_softcap=-1.0"),
    ("model.logit_cap=.nan", "model.logit_cap=nan"),
    ("model.hidden_size=30", "not divisible by model.n_heads"),
    ("model.hidden_size=32.5", "model.hidden_size=32.5: expected a whole number"),
    ("data.seq_len=32.5", "data.seq_len=32.5: expected a whole number"),
    ("data.seq_len=2", "data.seq_len=2: use a whole number >= 3"),
    ("data.seq_len=-1", "data.seq_len=-1"),
    ("data.seq_len=true", "expected a number, not true/false"),
    ("data.corpus=''", "data.corpus is empty"),
    ("train.lr=-1", "train.lr=-1.0: use a finite number > 0"),
    ("train.lr=0", "train.lr=0.0"),
    ("train.lr=.inf", "train.lr=inf"),
    ("train.lr=fast", "train.lr='fast': expected a number"),
    ("train.eps=0", "train.eps=0.0"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1: use a whole number >= 0"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1: use a finite number >= 0"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0"),
    ("train.ema_decay=1", "train.ema_decay=1.0: use a number in [0, 1)"),
    ("train.betas=[0.9,1.5]", "train.betas=[0.9, 1.5]"),
    ("train.betas=[0.9]", "expected a list like [0.9, 0.999]"),
    ("train.max_steps=0", "train.max_steps=0"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0"),
    ("train.seed=-1", "train.seed=-1"),
    ("train.seed=4294967296", "train.seed=4294967296"),
    ("train.log_every=0", "train.log_every=0"),
    ("train.ckpt_every=0", "train.ckpt_every=0"),
    ("train.val_every=0", "train.val_every=0"),
    ("train.val_batches=0", "train.val_batches=0"),
    ("train.num_workers=-1", "train.num_workers=-1"),
    ("train.num_nodes=0", "train.num_nodes=0"),
    ("train.devices=0", "train.devices=0"),
    ("train.accelerator=nonsense", "train.accelerator='nonsense'"),
    ("train.precision=8", "train.precision='8'"),
    ("train.method=gan", "unknown method 'gan'"),
    ("train.input_noise=x", "train.input_noise='x'"),
    ("train.strategy=fsdp", "train.strategy=fsdp is not supported"),
    ("distill.diag_frac=2", "distill.diag_frac"),
    ("distill.recipe=x", "distill.recipe='x'"),
]


@pytest.mark.parametrize(("override", "message"), BAD_CONFIG)
def test_every_bad_config_value_is_refused_with_its_name(override, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(load_preset("tiny"), [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_table_covers_every_ranged_field():
    covered = {row[0].split("=")[0] for row in BAD_CONFIG}
    ranged = set(WHOLE_AT_LEAST) | set(POSITIVE) | set(NON_NEGATIVE) | set(BELOW_ONE)
    assert ranged <= covered, sorted(ranged - covered)


def test_a_bad_config_fails_before_the_run_folder_exists(capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path / "run"), "train.lr=-1"]) == 2
    assert "train.lr=-1.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "demo:flm", "--seq-len", "0"], "--seq-len 0: use a whole number >= 2"),
        (["sample", "demo:flm", "--seq-len", "-5"], "--seq-len -5"),
        (["sample", "demo:flm", "-n", "0"], "--num-samples 0"),
        (["sample", "demo:flm", "--batch-size", "0"], "--batch-size 0"),
        (["sample", "demo:flm", "--device", "nonsense"], "--device 'nonsense' is not a device"),
        (["sample", "demo:flm", "--device", "xpu"], "--device 'xpu'"),
        (["demo", "--device", "nonsense"], "--device 'nonsense'"),
        (["eval", "demo:flm", "--out", "x", "--judge-batch-size", "0"], "--judge-batch-size 0"),
        (["eval", "demo:flm", "--out", "x", "--device", "nonsense"], "--device 'nonsense'"),
    ],
)
def test_bad_cli_options(capsys, argv, message):
    one_line_error(capsys, argv, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_machine(capsys, tmp_path):
    one_line_error(capsys, ["sample", "demo:flm", "--device", "cuda"], "--device 'cuda'", "use cpu")
    one_line_error(capsys, ["train", "--out", str(tmp_path), "train.accelerator=gpu"], "no CUDA GPU")
    assert not list(tmp_path.iterdir())


def test_sampling_counts_must_be_whole_numbers():
    model = flowlm.load("demo:flm")
    for bad in (1.5, 0, -2, True, float("nan")):
        with pytest.raises(ConfigError, match="num_samples"):
            model.generate(num_samples=bad, steps=1)
    for bad in (0, -5, 1, 2.5):
        with pytest.raises(ConfigError, match="seq_len"):
            model.sample_tokens(1, 1, seq_len=bad)
    assert model.sample_tokens(1, 1, seq_len=5).shape == (1, 5)
    with pytest.raises(ConfigError, match="device 'nonsense'"):
        flowlm.load("demo:flm", device="nonsense")


# --- outputs that cannot be written: a file stands where a folder must be (fails for root too) ----------


def test_unwritable_outputs_fail_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(capsys, ["train", "--out", str(blocker / "run")], "--out", "is not writable")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), f"data.cache_dir={blocker}/c"], "data.cache_dir")
    one_line_error(capsys, ["sample", "demo:flm", "--out", str(blocker / "s.jsonl")], "--out", "is not writable")
    one_line_error(capsys, ["sample", "demo:flm", "--out", str(tmp_path)], "is a folder")
    start = time.perf_counter()
    one_line_error(capsys, ["eval", "demo:flm", "--out", str(blocker / "e")], "--out", "is not writable")
    one_line_error(capsys, ["score", str(blocker), "--out", str(blocker / "e")], "--out", "is not writable")
    assert time.perf_counter() - start < 10  # no model or judge was loaded


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_out_folder(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        one_line_error(capsys, ["train", "--out", str(folder / "run")], "is not writable")
    finally:
        folder.chmod(0o755)


def test_score_refuses_a_binary_file(capsys, tmp_path):
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(bytes(range(256)) * 8)
    one_line_error(capsys, ["score", str(binary), "--out", str(tmp_path / "o")], "is not a text file")
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("1\n2\n")
    one_line_error(capsys, ["score", str(numbers), "--out", str(tmp_path / "o")], "not a flowlm eval sample file")


# --- data: messages name data.seq_len; one big file has a validation split ------------------------------


def test_one_long_line_file_has_a_validation_split_and_a_short_one_says_why_not(tmp_path):
    words = " ".join(f"word{i % 50}" for i in range(40_000))  # one line, ~300k characters
    (tmp_path / "big.txt").write_text(words + "\n")
    valid = list(load_corpus(str(tmp_path / "big.txt"), "validation"))
    train = list(load_corpus(str(tmp_path / "big.txt"), "train"))
    assert len(valid) >= 1 and len(train) >= 19 * len(valid)
    assert sorted(" ".join(train + valid).split()) == sorted(words.split())  # cut, nothing lost
    (tmp_path / "short.txt").write_text("just one short line of text\n")
    tok = prepare_tokenizer("char", str(tmp_path / "short.txt"), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"\[validation\] is empty \(every 20th document .* held out") as err:
        prepare_blocks(str(tmp_path / "short.txt"), tok, 8, "validation", cache_dir=tmp_path / "cache", progress=False)
    assert "block_len" not in str(err.value)
    with pytest.raises(DataError, match=r"fewer than one block of data.seq_len=64: use a smaller data.seq_len"):
        prepare_blocks(str(tmp_path / "short.txt"), tok, 64, "train", cache_dir=tmp_path / "cache", progress=False)


# --- Hugging Face names without network ---------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every TCP connection fails, as on a machine without network; the offline variables are unset."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def refuse(address, *args, **kwargs):
        calls.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    network._probe.cache_clear()
    yield calls
    network._probe.cache_clear()


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (lambda: load_tokenizer("flowlm-test/no-such-tokenizer"), "tokenizer"),
        (lambda: list(load_corpus("hf:flowlm-test/no-such-dataset")), "dataset"),
        (lambda: load_judge("flowlm-test/no-such-judge"), "judge"),
        (lambda: flowlm.load("flowlm-test/no-such-model"), "Hugging Face Hub"),
    ],
)
def test_hub_names_fail_in_seconds_without_network(no_network, load, message):
    start = time.perf_counter()
    with pytest.raises((DataError, CheckpointError)) as err:
        load()
    seconds = time.perf_counter() - start
    assert message in str(err.value) and "Network is unreachable" in str(err.value), err.value
    assert seconds < 15, seconds  # the libraries' own retries take 30-50 s
    assert len(no_network) == 1  # one probe


def test_hf_hub_offline_needs_no_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed although offline is set"))
    assert network.offline_reason() == "HF_HUB_OFFLINE is set"


def test_eval_writes_the_samples_before_the_judge_runs(tmp_path):
    from flowlm.eval.run import evaluate

    class BrokenJudge:
        def text_nll(self, *args, **kwargs):
            raise RuntimeError("judge crashed")

    with pytest.raises(RuntimeError, match="judge crashed"):
        evaluate(flowlm.load("demo:flm"), BrokenJudge(), [1], tmp_path, num_samples=3, batch_size=2, progress=False)
    assert len((tmp_path / "samples_steps1.jsonl").read_text().splitlines()) == 1 + 3  # header + every sample
