"""Every bad input gets a one-line error before any work: config fields (table-driven: every numeric field
has a row), CLI options, devices, outputs that cannot be written, files of the wrong kind, Hugging Face
names without network (in seconds, not after the libraries' retries)."""

import os
import shutil
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
    ("train.val_bound_points=-1", "train.val_bound_points=-1"),
    ("duo.curriculum_temperature=0", "duo.curriculum_temperature="),
    ("duo.curriculum_frac=2", "duo.curriculum_frac=2"),
    ("distill.teacher_steps=1", "distill.teacher_steps=1"),
    ("distill.divergence=x", "distill.divergence='x'"),
    ("distill.recipe=x", "distill.recipe='x'"),
    ("train.max_minutes=.inf", "train.max_minutes=inf: use a finite number"),
    ("train.max_minutes=1e12", "train.max_minutes=1000000000000.0: give a positive number of minutes"),
    ("train.max_steps=99999999999999999999", "train.max_steps=99999999999999999999: use a whole number of at most"),
    ("train.batch_size=1.0e+30", "train.batch_size=1000000000000000019884624838656: use a whole number of at most"),
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
    one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), "--steps", "99999999999999999999"],
                   "train.max_steps=99999999999999999999: use a whole number of at most 2147483647")  # fmt: skip
    one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), "train.max_minutes=inf"], "train.max_minutes=inf")
    assert not (tmp_path / "run").exists()


def _options(kind: str) -> list[str]:
    """Every run-config option whose type holds a ``kind`` (float or int), as section.key."""
    from dataclasses import fields

    from flowlm.config import RunConfig

    cfg = RunConfig()
    return [f"{section.name}.{spec.name}" for section in fields(cfg) for spec in fields(getattr(cfg, section.name))
            if kind in str(spec.type) and "tuple" not in str(spec.type)]  # fmt: skip


@pytest.mark.parametrize("option", _options("float"))
def test_every_float_option_refuses_nan_and_infinity(option):
    for value in (".nan", ".inf", "-.inf"):
        with pytest.raises(ConfigError, match=f"^{option}=") as err:
            apply_overrides(load_preset("tiny"), [f"{option}={value}"])
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("option", _options("int"))
def test_every_whole_number_option_is_bounded(option):
    with pytest.raises(ConfigError, match=f"^{option}=") as err:
        apply_overrides(load_preset("tiny"), [f"{option}={2**32}"])
    assert "at most" in str(err.value) or "[0, 4294967295]" in str(err.value)


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
        (["sample", "demo:flm", "-n", "99999999999999999999"], "--num-samples 99999999999999999999: use a whole"),
        (["eval", "demo:flm", "--out", "x", "--infill-frac", "nan"], "--infill-frac nan: give the share"),
    ],
)
def test_bad_cli_options(capsys, argv, message):
    one_line_error(capsys, argv, message)


@pytest.fixture
def no_loading(monkeypatch):
    """flowlm.load and the judge loader fail the test: a bad option must be refused before either runs."""
    monkeypatch.setattr(flowlm, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr("flowlm.eval.load_judge", lambda *a, **k: pytest.fail("the judge was loaded"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--infill-frac", "nan"], "--infill-frac nan: give the share of each block's 128 positions to keep"),
        (["--infill-middle", "1.5"], "--infill-middle 1.5"),
        (["--prompt-tokens", "0"], "--prompt-tokens 0: give a whole number from 1 to 127"),
        (["--prompt-tokens", "128"], "--prompt-tokens 128"),
        (["--prompt-tokens", "4", "--infill-frac", "0.5"], "give one of them"),
        (["--prompt-tokens", "4", "--split", "nonsense"], "unknown split 'nonsense'"),
        (["--prompt-tokens", "4", "--data", "/no/such/corpus.txt"], "unknown corpus '/no/such/corpus.txt'"),
        (["--prompt-tokens", "4", "--data", "shakespeare", "--split", "test"], "has no test split"),
        (["--prompt-tokens", "4", "--data", "shakespeare", "--seq-len", "64"], "whole blocks of 128"),
        (["--seq-len", "500"], "--seq-len 500 exceeds the model's 128"),
        (["--gamma", "0.5"], "gamma"),
    ],
)
def test_eval_checks_its_options_before_loading_the_model_or_judge(capsys, tmp_path, no_loading, flags, message):
    start = time.perf_counter()
    one_line_error(capsys, ["eval", "demo:flm", "--out", str(tmp_path / "e"), "--quiet", *flags], message)
    assert time.perf_counter() - start < 5 and not (tmp_path / "e").exists()


def test_a_template_does_not_drop_a_prompt_or_suffix(capsys, no_loading):
    template = "The [BLANK:3] sat."
    one_line_error(capsys, ["sample", "demo:flm", "--template", template, "--prompt", "Once"],
                   "--template places all the given text itself, so --prompt would be dropped")  # fmt: skip
    one_line_error(capsys, ["sample", "demo:flm", "--template", template, "--suffix", "End."], "--suffix")


def test_nll_refuses_a_folder_as_its_out_file_before_any_work(capsys, tmp_path, no_loading):
    message = f"--out '{tmp_path}' is a folder: name a file, e.g. '{tmp_path / 'nll.json'}'"
    one_line_error(capsys, ["nll", "demo:flm", "--out", str(tmp_path)], message)


def test_compare_refuses_a_binary_file(capsys, tmp_path):
    binary = tmp_path / "results.json"
    binary.write_bytes(bytes(range(256)) * 8)
    one_line_error(capsys, ["compare", str(binary), "--out", str(tmp_path / "c")], "is not a text file")


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


# --- training: what a distillation takes from its teacher, outputs apart from it, memory ------------------------


@pytest.fixture
def teacher_run(tmp_path):
    """A run folder (config.json, model/) holding a copy of the shipped demo FLM as its model."""
    from flowlm.demo_models import demo_path

    run = tmp_path / "teacher"
    shutil.copytree(demo_path("flm"), run / "model")
    (run / "config.json").write_text("{}")
    return run


def folder_state(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("teacher", "out", "message"),
    [
        ("teacher", "teacher", "is the teacher's folder"),
        ("teacher/model", "teacher", "is the teacher's folder"),
        ("teacher", "teacher/model", "lies inside the teacher's folder"),
        ("teacher/model", "teacher/fmlm", "lies inside the teacher's folder"),
        ("teacher", ".", "holds the teacher"),
    ],
)
def test_distill_never_writes_over_its_teacher(capsys, tmp_path, teacher_run, teacher, out, message):
    before = folder_state(teacher_run)
    argv = ["distill", "--teacher", str(tmp_path / teacher), "--out", str(tmp_path / out), "--no-resume", "--quiet"]
    one_line_error(capsys, argv, message, "choose an --out")
    assert folder_state(teacher_run) == before


def test_a_model_folder_outside_a_run_is_guarded_itself(teacher_run, tmp_path):
    from flowlm.training.preflight import check_out_apart
    from flowlm.training.run import distill_config

    standalone = tmp_path / "models" / "flm"
    shutil.copytree(teacher_run / "model", standalone)
    cfg = distill_config(str(standalone))
    for out, message in ((standalone, "is the teacher's folder"), (standalone.parent, "holds the teacher")):
        with pytest.raises(ConfigError, match=message):
            check_out_apart(out, cfg)
    check_out_apart(tmp_path / "models" / "fmlm", cfg)  # a sibling is fine
    check_out_apart(tmp_path / "fmlm", distill_config(str(teacher_run)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.hidden_size=64", "a distilled student is a copy of the teacher's network"),
        ("model.dropout=0.2", "so model.dropout cannot be changed: drop it"),
        ("data.seq_len=32", "so data.seq_len cannot be changed"),
        ("data.tokenizer=char", "data.tokenizer"),
        ("train.method=ar", "flowlm distill trains a flow map (FMLM) from its teacher: drop train.method"),
        ("distill.recipe=lsd", "give it as flowlm distill --recipe"),
        ("distill.teacher=elsewhere", "--teacher"),
        ("distill.stage1=elsewhere", "--stage1"),
    ],
)
def test_distill_refuses_options_its_teacher_fixes(capsys, tmp_path, teacher_run, override, message):
    argv = ["distill", "--teacher", str(teacher_run), "--out", str(tmp_path / "fmlm"), "--quiet", override]
    one_line_error(capsys, argv, override, message)
    assert not (tmp_path / "fmlm").exists()


def test_train_refuses_a_distillation_built_from_overrides(capsys, tmp_path, teacher_run):
    argv = ["train", "--out", str(tmp_path / "x"), "train.method=fmlm", f"distill.teacher={teacher_run / 'model'}"]
    one_line_error(capsys, argv, "use flowlm distill --teacher")
    assert not (tmp_path / "x").exists()


def test_a_sequence_length_that_cannot_fit_in_memory_is_refused(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), "data.seq_len=1000000"],
                         "data.seq_len=1000000 tokens needs at least", "GiB", "lower data.seq_len")  # fmt: skip
    assert "attention scores" in err or "the GPU has" in err
    assert not (tmp_path / "run").exists()


GB24 = 24 * 10**9


@pytest.mark.parametrize(
    ("preset", "overrides", "on_gpu"),
    [
        ("tiny", [], False),
        ("demo", [], False),
        ("lm1b-small", [], True),  # one GPU: micro-batches of 512 x 128 tokens
        ("lm1b-small", ["train.devices=8"], True),  # docs/scaling.md: 64 per GPU
        ("owt-small", ["train.devices=8", "train.micro_batch_size=16"], True),  # docs/scaling.md
    ],
)
def test_the_memory_bound_passes_the_presets_on_24_gb(preset, overrides, on_gpu):
    from flowlm.training.preflight import training_bytes
    from flowlm.training.run import batch_split

    cfg = apply_overrides(load_preset(preset), overrides)
    micro, _ = batch_split(cfg, 8 if "train.devices=8" in overrides else 1)
    assert sum(training_bytes(cfg, micro, on_gpu).values()) < GB24


def test_owt_small_needs_its_micro_batch_size_on_one_gpu():
    """Its shipped batch of 512 x 1024 tokens in one pass needs more than a 24 GB GPU even by the lower bound;
    docs/scaling.md launches it with train.micro_batch_size=16."""
    from flowlm.training.preflight import training_bytes

    assert sum(training_bytes(load_preset("owt-small"), 512, on_gpu=True).values()) > GB24


def test_a_gpu_run_is_judged_against_the_gpu_memory(monkeypatch):
    from types import SimpleNamespace

    from flowlm.training import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=GB24))
    monkeypatch.setattr(preflight, "memory_bytes", lambda on_gpu: GB24 if on_gpu else pytest.fail("judged on RAM"))
    preflight.check_memory(load_preset("lm1b-small"), 512, 1)
    with pytest.raises(ConfigError, match=r"needs at least 24.4 GiB \(parameters .* GiB, activations 24.4 GiB\) but "
                                          r"the GPU has 22.4 GiB: lower data.seq_len"):  # fmt: skip
        preflight.check_memory(apply_overrides(load_preset("tiny"), ["data.seq_len=100000"]), 32, 1)
    monkeypatch.setattr(preflight, "memory_bytes", lambda on_gpu: 2**30 if not on_gpu else pytest.fail("on GPU"))
    cpu = apply_overrides(load_preset("tiny"), ["train.accelerator=cpu", "data.seq_len=1024"])
    with pytest.raises(ConfigError, match=r"5.03 GiB \(.*attention scores 2 GiB; for each of 2 processes on this "
                                          r"machine\) but 1 GiB of memory is available"):  # fmt: skip
        preflight.check_memory(cpu, 32, 2)


# --- a failing HTTPS proxy: one line naming the repository and the fix ----------------------------------------

PROXY_RUN = """
import contextlib, io, json, sys
from flowlm.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


@pytest.mark.parametrize("reply", [b"", b"\x00\xffgarbage\r\n\r\n"], ids=["closes", "garbage"])
def test_a_failing_proxy_gives_one_line_for_hub_ids(tmp_path, reply):
    import json
    import subprocess
    import sys
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def answer():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if reply:
                    conn.recv(4096)
                    conn.sendall(reply)

    threading.Thread(target=answer, daemon=True).start()
    proxy = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                                   "HF_DATASETS_OFFLINE", "NO_PROXY")}  # fmt: skip
    env.update(HTTPS_PROXY=proxy, https_proxy=proxy, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    repo = "flowlm-test/no-such-model"
    commands = [["sample", repo], ["nll", repo], ["import-reference", repo, "--out", str(tmp_path / "m")]]
    try:
        proc = subprocess.run([sys.executable, "-c", PROXY_RUN, json.dumps(commands)], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    for code, err in json.loads(proc.stdout.splitlines()[-1]):
        err = err.strip()
        assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
        assert f"'{repo}' from the Hugging Face Hub failed (" in err and "HF_HUB_OFFLINE=1" in err, err
