"""Gen PPL–entropy frontiers (flowlm eval --temperatures, flowlm compare --entropy) on the tiny random models and the
tiny GPT-2 judge of test_eval_run / test_judges: files, the interpolation by hand, and the refusals."""

from __future__ import annotations

import json
import math

import pytest
from test_eval_run import PNG_MAGIC, make_model
from test_judges import judge_dir  # noqa: F401  (a module fixture: the saved tiny GPT-2 judge)

from flowlm.cli import main
from flowlm.errors import ConfigError
from flowlm.eval.frontier import at_entropy, parse_temperatures


@pytest.fixture(scope="module")
def frontiers(tmp_path_factory, judge_dir):  # noqa: F811
    """An FLM and an FMLM evaluated at temperatures 0.5, 1 and 2 (2 step counts, 6 samples each)."""
    root = tmp_path_factory.mktemp("frontier")
    outs = {}
    for method in ("flm", "fmlm"):
        model = make_model(root / f"{method}_model", method)
        outs[method] = root / method
        argv = ["eval", str(model), "--steps", "1,2", "-n", "6", "--batch-size", "3", "--temperatures", "2,0.5,1",
                "--judge", str(judge_dir), "--judge-batch-size", "3", "--out", str(outs[method]),
                "--quiet"]  # fmt: skip
        assert main(argv) == 0
    return outs


def test_eval_writes_one_evaluation_per_temperature_and_the_frontier(frontiers):
    out = frontiers["flm"]
    frontier = json.loads((out / "frontier.json").read_text())
    assert frontier["format"] == "flowlm-eval-frontier/1"
    assert (out / "frontier.png").read_bytes()[:8] == PNG_MAGIC and "frontier" in (out / "frontier.md").read_text()
    assert sorted({p["temperature"] for p in frontier["points"]}) == [0.5, 1.0, 2.0]
    assert sorted({p["steps"] for p in frontier["points"]}) == [1, 2] and len(frontier["points"]) == 6
    for point in frontier["points"]:
        results = json.loads((out / point["results"]).read_text())
        assert results["provenance"]["sampling"]["temperature"] == point["temperature"]
        row = next(r for r in results["results"] if r["steps"] == point["steps"])
        assert row["entropy"] == point["entropy"] and row["gen_ppl"] == point["gen_ppl"]
    # hotter samples are more varied: on the random model, entropy rises from T = 0.5 to T = 2 at every step count
    for steps in (1, 2):
        by_t = {p["temperature"]: p["entropy"] for p in frontier["points"] if p["steps"] == steps}
        assert by_t[2.0] > by_t[0.5]


def test_interpolation_at_an_entropy_by_hand():
    points = [
        {"steps": 1, "temperature": 0.5, "entropy": 2.0, "gen_ppl": 100.0, "gen_ppl_ci95": [80.0, 120.0]},
        {"steps": 1, "temperature": 1.0, "entropy": 3.0, "gen_ppl": 400.0, "gen_ppl_ci95": [300.0, 500.0]},
    ]
    frontier = {"points": points}
    hit = at_entropy(frontier, 1, 2.5)  # halfway: the geometric mean of the two Gen PPLs and of their interval ends
    assert hit["gen_ppl"] == pytest.approx(200.0) and hit["between_temperatures"] == [0.5, 1.0]
    assert hit["gen_ppl_ci95"] == pytest.approx([math.sqrt(80 * 300), math.sqrt(120 * 500)])
    assert at_entropy(frontier, 1, 2.0)["gen_ppl"] == pytest.approx(100.0)
    assert at_entropy(frontier, 1, 3.5) is None and at_entropy(frontier, 2, 2.5) is None  # no extrapolation


def test_compare_reads_gen_ppl_off_each_frontier(frontiers, tmp_path):
    files = [str(frontiers[m] / "frontier.json") for m in ("flm", "fmlm")]
    entropies = [p["entropy"] for f in files for p in json.loads(open(f).read())["points"]]
    middle = (max(e for e in entropies) + min(e for e in entropies)) / 2
    out = tmp_path / "cmp"
    assert main(["compare", *files, "--entropy", str(middle), "--out", str(out)]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    labels = [m["label"] for m in comparison["models"]]
    names = [json.loads(open(f).read())["label"] for f in files]
    assert labels == [f"{name} T={t}" for name in names for t in ("0.5", "1", "2")], labels
    rows = comparison["matched_entropy"]["rows"]
    assert len(rows) == 4 and comparison["matched_entropy"]["entropy"] == middle
    for row in rows:  # each either interpolated within its interval or marked outside the frontier
        if row["gen_ppl"] is not None:
            lo, hi = row["gen_ppl_ci95"]
            assert lo <= row["gen_ppl"] <= hi
    assert "Gen PPL at entropy" in (out / "comparison.md").read_text()
    assert (out / "frontier.png").read_bytes()[:8] == PNG_MAGIC


def test_refusals(frontiers, tmp_path, judge_dir, capsys):  # noqa: F811
    for bad in ("0.7", "0.7,0.7", "0.7,x", "0,1"):
        with pytest.raises(ConfigError, match="--temperatures|temperature="):
            parse_temperatures(bad)
    model = frontiers["flm"] / "temperature-1" / "results.json"
    argv = ["compare", str(model), "--entropy", "2.0", "--out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "needs frontier.json files" in capsys.readouterr().err
    argv = ["eval", str(frontiers["flm"]), "--temperatures", "0.5,1", "--temperature", "0.8", "--judge",
            str(judge_dir), "--out", str(tmp_path / "e"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert "--temperature with --temperatures" in capsys.readouterr().err
