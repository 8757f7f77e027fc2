"""The restart logic of experiments/wikitext2.py (hours-long, run across sessions): a finished stage is skipped,
a failed one is retried with its seconds summed over attempts, and two processes running different stages
(``--only``) do not overwrite each other's records in stages.json."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "wikitext2.py"


@pytest.fixture(scope="module")
def stages_class():
    spec = importlib.util.spec_from_file_location("wikitext2_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Stages


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_finished_stages_are_skipped_and_failures_retried(stages_class, tmp_path, capsys):
    marker = tmp_path / "runs.txt"
    append = python(f"open({str(marker)!r}, 'a').write('x')")
    stages_class(tmp_path).run("a", append)
    stages_class(tmp_path).run("a", append)  # a new process: reads stages.json, skips
    assert marker.read_text() == "x"
    assert "done before" in capsys.readouterr().out

    flag = str(tmp_path / "flag")  # fails the first time, succeeds once the flag exists
    flaky = python(f"import os, sys; ok = os.path.exists({flag!r}); open({flag!r}, 'w'); sys.exit(0 if ok else 3)")
    with pytest.raises(SystemExit, match="failed with exit code 3; rerun this script to resume"):
        stages_class(tmp_path).run("b", flaky)
    state = json.loads((tmp_path / "stages.json").read_text())
    assert state["b"]["attempts"] == 1 and state["b"]["done"] is False
    stages_class(tmp_path).run("b", flaky)
    state = json.loads((tmp_path / "stages.json").read_text())
    assert state["b"]["attempts"] == 2 and state["b"]["done"] is True and state["b"]["seconds"] > 0
    assert state["a"]["done"] is True  # the earlier stage's record survived


def test_two_processes_keep_each_others_records(stages_class, tmp_path):
    first, second = stages_class(tmp_path), stages_class(tmp_path)  # both loaded before either ran anything
    first.run("eval-flm", python("pass"))
    second.run("eval-fmlm", python("pass"))
    state = json.loads((tmp_path / "stages.json").read_text())
    assert set(state) == {"eval-flm", "eval-fmlm"} and all(v["done"] for v in state.values())


def test_before_runs_only_when_the_stage_runs(stages_class, tmp_path):
    calls = []
    stages_class(tmp_path).run("copy", python("pass"), before=lambda: calls.append(1))
    stages_class(tmp_path).run("copy", python("pass"), before=lambda: calls.append(1))
    assert calls == [1]
