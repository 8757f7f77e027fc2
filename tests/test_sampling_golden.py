"""Sampling is bit-identical across refactors: the ids of ``tests/data/golden_sampling.json`` (recorded
before the method registry, issue 12) come back from freshly trained models (see tests/golden_sampling.py)."""

import json

import pytest
from golden_sampling import CASES, GOLDEN, golden_ids

pytestmark = pytest.mark.slow


def test_flowlm_sample_ids_equal_the_recorded_ones(tmp_path):
    recorded = json.loads(GOLDEN.read_text())
    assert sorted(recorded) == sorted(name for name, _, _ in CASES)
    now = golden_ids(tmp_path)
    changed = [name for name in recorded if now[name] != recorded[name]]
    assert not changed, f"sampled ids changed for {changed}"
