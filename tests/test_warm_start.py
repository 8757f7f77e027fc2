"""``train.init_from``: a new run starts from a model folder's weights (network and EMA), fresh optimizer."""

from __future__ import annotations

import json

import pytest
import torch

from flowlm.config import apply_overrides, load_preset
from flowlm.data.tokenizer import Tokenizer
from flowlm.errors import ConfigError
from flowlm.nn.dit import DiT
from flowlm.training.checkpoint import TOKENIZER, read_meta, read_weights, save_model
from flowlm.training.ema import EMA
from flowlm.training.run import distill_config, train
from flowlm.training.warm_start import warm_start

TINY = [
    "model.hidden_size=32",
    "model.n_blocks=1",
    "model.n_heads=2",
    "model.cond_dim=16",
    "data.seq_len=16",
    "data.tokenizer=char",
    "train.lr=1e-3",
    "train.batch_size=4",
    "train.val_every=100",
    "train.val_batches=1",
    "train.log_every=1",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 2-step FLM run on a small text file: the model folder to warm-start from."""
    root = tmp_path_factory.mktemp("warm")
    text = "\n\n".join(f"paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(200))
    (root / "corpus.txt").write_text(text)
    options = [*TINY, f"data.corpus={root / 'corpus.txt'}", f"data.cache_dir={root / 'cache'}"]
    return train("tiny", options, out=root / "source", steps=2, progress=False), options


def test_a_warm_started_run_begins_at_the_source_weights(source, tmp_path):
    source, options = source
    # lr = 1e-30 (0 is refused by validation): the first Adam step moves each weight by at most a few lr (its
    # bias-corrected m / sqrt(v) is about ±1), so every weight stays within 1e-20 of the source's (zeros of the
    # adaLN-zero layers become ~1e-37); a network warm-started from anything else, or from random initial weights,
    # differs by ~1e-3 or more.
    model = train("tiny", [*options, f"train.init_from={source}", "train.lr=1e-30"], out=tmp_path / "warm", steps=1,
                  progress=False)  # fmt: skip
    before, after = read_weights(source, read_meta(source)), read_weights(model, read_meta(model))
    assert set(before) == set(after)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-20, msg=name)
    meta = read_meta(model)
    assert meta["init_from"] == {"path": str(source), "step": 2, "weights_sha256": read_meta(source)["weights_sha256"]}
    assert meta["step"] == 1  # the step counter starts afresh


def test_half_precision_weights_are_cast_and_the_ema_restarts_from_them(source, tmp_path):
    source, options = source
    meta = read_meta(source)
    half = {k: v.half() for k, v in read_weights(source, meta).items()}
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "weights_sha256")}
    save_model(tmp_path / "half", half, keep, Tokenizer.load(source / TOKENIZER))
    cfg = apply_overrides(load_preset("tiny"), options)
    net = DiT(cfg.model.dit(meta["vocab_size"], cfg.data.seq_len))
    ema = EMA(net, 0.9)
    warm_start(net, ema, str(tmp_path / "half"))
    for name, param in net.named_parameters():
        assert param.dtype == torch.float32 and torch.equal(param.detach(), half[name].float()), name
        assert torch.equal(ema.shadow[name], half[name].float()), name


def test_a_model_of_another_kind_or_size_is_refused(source, tmp_path):
    source, options = source
    with pytest.raises(ConfigError, match=r"its network differs from this run's \(causal: False vs True"):
        train(
            "tiny", [*options, f"train.init_from={source}"], method="ar", out=tmp_path / "ar", steps=1, progress=False
        )
    with pytest.raises(ConfigError, match="hidden_size: 32 vs 64"):
        train("tiny", [*options, f"train.init_from={source}", "model.hidden_size=64"], out=tmp_path / "w", steps=1,
              progress=False)  # fmt: skip


def test_distilling_a_warm_started_teacher_starts_the_student_from_the_teacher(source, tmp_path):
    source, options = source
    model = train("tiny", [*options, f"train.init_from={source}"], out=tmp_path / "warm", steps=1, progress=False)
    assert json.loads((model / "flowlm.json").read_text())["run"]["train"]["init_from"] == str(source)
    assert distill_config(str(model)).train.init_from is None
    # the distillation keeps the teacher's learning rate (the options above train it at 1e-3), with PSD's β₂
    assert distill_config(str(model)).train.lr == 1e-3
    assert distill_config(str(model)).train.betas == (0.9, 0.95)
