"""``train.max_minutes``: a run stops at its time budget (Lightning's Timer), saving and exporting where it stopped."""

from __future__ import annotations

import json

import pytest
from test_warm_start import TINY

from flowlm.config import apply_overrides, load_preset
from flowlm.errors import ConfigError
from flowlm.training.checkpoint import read_meta
from flowlm.training.run import train
from flowlm.training.state import LAST

MANY = 1_000_000  # far more steps than a tiny model takes in 1.2 seconds on any CPU


def test_a_run_stops_at_its_time_budget_and_exports_the_model_there(tmp_path):
    text = "\n\n".join(f"paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(200))
    (tmp_path / "corpus.txt").write_text(text)
    options = [*TINY, f"data.corpus={tmp_path / 'corpus.txt'}", f"data.cache_dir={tmp_path / 'cache'}",
               "train.ckpt_every=1000000", "train.max_minutes=0.02"]  # fmt: skip
    model = train("tiny", options, out=tmp_path / "run", steps=MANY, progress=False)
    step = read_meta(model)["step"]
    assert 0 < step < MANY  # stopped by the clock, not by max_steps
    saved = (tmp_path / "run" / "checkpoints" / LAST).is_file()
    assert saved  # the end-of-training save ran although no ckpt_every step was reached
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["run"]["train"]
    assert recorded["max_minutes"] == 0.02


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_a_time_budget_that_is_not_a_positive_number_is_refused(value):
    with pytest.raises(ConfigError, match="train.max_minutes"):
        apply_overrides(load_preset("tiny"), [f"train.max_minutes={value}"])
