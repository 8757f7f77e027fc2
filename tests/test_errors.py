"""Bad input gets a one-line error naming the problem and the fix (exit status 2, no traceback)."""

import json
import shutil

import pytest
import torch

import flowlm
from flowlm.cli import main
from flowlm.errors import CheckpointError, TrainingDivergedError

TEXT = "\n\n".join(f"the cat {i % 7} sat on the mat {i % 5} and looked at the dog {i % 3}." for i in range(400))
SMALL = [
    "--tokenizer", "char", "--quiet", "data.seq_len=24", "model.hidden_size=16", "model.n_blocks=1",
    "model.n_heads=2", "model.cond_dim=8", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=2",
    "train.val_every=100",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    (root / "corpus.txt").write_text(TEXT)
    return root


@pytest.fixture(scope="module")
def trained(corpus):
    out = corpus / "run"
    args = ["train", "--data", str(corpus / "corpus.txt"), *SMALL, f"data.cache_dir={corpus / 'cache'}"]
    assert main([*args, "--steps", "2", "--out", str(out)]) == 0
    return out, args


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowlm: error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_unknown_preset(capsys):
    one_line_error(capsys, ["train", "--preset", "huge"], "unknown preset 'huge'", "tiny")


def test_unknown_option_and_bad_value(capsys, tmp_path):
    one_line_error(capsys, ["train", "--out", str(tmp_path), "train.lrr=1"], "unknown option 'train.lrr'")
    one_line_error(capsys, ["train", "--out", str(tmp_path), "train.lr=fast"], "expected a number")
    one_line_error(capsys, ["train", "--out", str(tmp_path), "oops"], "key=value")


def test_steps_below_one(capsys, tmp_path, trained):
    one_line_error(capsys, ["train", "--steps", "0", "--out", str(tmp_path)], "train.max_steps=0")
    one_line_error(capsys, ["sample", str(trained[0]), "--steps", "0"], "steps=0", ">= 1")


def test_unknown_dataset_and_tokenizer(capsys, tmp_path, corpus):
    cache = f"data.cache_dir={corpus / 'cache'}"
    one_line_error(capsys, ["train", "--data", "no-such-corpus", "--out", str(tmp_path / "a"), cache], "no-such-corpus")
    one_line_error(
        capsys,
        [
            "train",
            "--data",
            str(corpus / "corpus.txt"),
            "--tokenizer",
            "nosuch:tok",
            "--out",
            str(tmp_path / "b"),
            cache,
        ],
        "nosuch:tok",
    )


def test_missing_checkpoint(capsys, tmp_path):
    one_line_error(capsys, ["sample", str(tmp_path / "nothing")], "does not exist")
    one_line_error(capsys, ["sample", str(tmp_path)], "not a flowlm checkpoint")


def test_corrupt_checkpoint(capsys, trained, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained[0] / "model", bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    one_line_error(capsys, ["sample", str(bad)], "corrupt")
    (bad / "flowlm.json").write_text("{not json")
    one_line_error(capsys, ["sample", str(bad)], "corrupt")


def test_vocabulary_mismatch_and_strict_loading(trained, tmp_path):
    src = trained[0] / "model"
    mismatched = tmp_path / "mismatch"
    shutil.copytree(src, mismatched)
    meta = json.loads((mismatched / "flowlm.json").read_text())
    meta["model"]["vocab_size"] += 1
    (mismatched / "flowlm.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tokenizer .* has .* tokens but the model expects"):
        flowlm.load(mismatched)
    bigger = tmp_path / "bigger"
    shutil.copytree(src, bigger)
    meta = json.loads((bigger / "flowlm.json").read_text())
    meta["model"]["hidden_size"] = 32
    (bigger / "flowlm.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        flowlm.load(bigger)


@pytest.mark.parametrize(
    ("source", "method", "detail"),
    [("flm", "fmlm", "time_inputs=1"), ("flm", "mdlm", "mask_input=False"), ("flm", "ar", "causal=False"),
     ("fmlm", "flm", "time_inputs=2")],
)  # fmt: skip
def test_a_flowlm_json_naming_another_method_is_refused_at_load(capsys, tmp_path, source, method, detail):
    from flowlm.demo_models import demo_path

    folder = tmp_path / "relabelled"
    shutil.copytree(demo_path(source), folder)
    meta = json.loads((folder / "flowlm.json").read_text())
    (folder / "flowlm.json").write_text(json.dumps({**meta, "method": method}))
    one_line_error(capsys, ["sample", str(folder), "-n", "1"], "its flowlm.json does not match its weights", detail)
    with pytest.raises(CheckpointError, match=f"names method '{method}'"):
        flowlm.load(folder)


def test_sequence_longer_than_model(capsys, trained):
    one_line_error(capsys, ["sample", str(trained[0]), "--seq-len", "25", "--steps", "1"], "exceeds the model's 24")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(trained, monkeypatch):
    out, args = trained
    good = (out / "model" / "model.safetensors").read_bytes()
    step_before = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]

    def nan_loss(*a, **k):
        value = torch.tensor(float("nan"), requires_grad=True)
        return {"loss": value * 1.0, "ce": value.detach(), "tau": torch.zeros(1)}

    monkeypatch.setattr("flowlm.methods.builtin.flm.flm_loss", nan_loss)  # where the FLM method calls it
    overrides = [a for a in args if "=" in a]
    with pytest.raises(TrainingDivergedError, match="NaN or infinite"):
        flowlm.train(overrides=overrides, data=args[2], tokenizer="char", steps=6, out=out, progress=False)
    assert (out / "model" / "model.safetensors").read_bytes() == good
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step_before


@pytest.mark.parametrize("command", [[], ["train"], ["sample"]])
def test_help_on_every_command(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: flowlm" in capsys.readouterr().out
