"""Sharded evaluation: two gloo processes on the CPU give exactly the single-process samples and scores.

Rank r samples and scores the batches j with j % 2 == r; batch j is seeded from (seed, j) and scored on
its own, so the numbers must match bit for bit (one torch thread everywhere, same kernels, same shapes).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_eval_run import make_model
from test_judges import judge_dir  # noqa: F401  (a module fixture: the saved tiny GPT-2 judge)

import flowlm
from flowlm.eval import load_judge
from flowlm.eval.run import evaluate, score_files
from flowlm.eval.samples import read_samples

NUM_SAMPLES, BATCH, STEPS, SEED = 7, 2, [1, 3], 11  # 4 batches, the last one short: ranks get [0, 2] and [1, 3]
COMPARED = ("steps", "num_samples", "gen_ppl", "total_nll", "total_tokens", "entropy", "distinct_4", "self_bleu_4")


def _run(model_dir, judge_folder, out) -> None:
    """One intra-op thread, as in each spawned rank; the caller's thread count is restored (it ran in the test's
    own process once and left every later test of the suite on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = flowlm.load(model_dir)
        judge = load_judge(str(judge_folder))
        evaluate(model, judge, STEPS, out / "eval", num_samples=NUM_SAMPLES, seed=SEED, batch_size=BATCH,
                 judge_batch_size=3, progress=False)  # fmt: skip
        files = [out / "eval" / f"samples_steps{s}.jsonl" for s in STEPS]
        score_files(files, judge, out / "score", judge_batch_size=3, progress=False)
    finally:
        torch.set_num_threads(threads)


def _worker(rank: int, world: int, init_file: str, model_dir, judge_folder, out) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _run(model_dir, judge_folder, out)
    finally:
        dist.destroy_process_group()


def _rows(folder):
    results = json.loads((folder / "results.json").read_text())
    return results, [{k: row[k] for k in COMPARED} for row in results["results"]]


@pytest.mark.slow  # two spawned processes import torch + transformers: ~35 s on a loaded 2-core machine
def test_two_gloo_ranks_equal_one_process(judge_dir, tmp_path):  # noqa: F811
    model_dir = make_model(tmp_path / "model")
    _run(model_dir, judge_dir, tmp_path / "single")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), model_dir, judge_dir, tmp_path / "sharded"), nprocs=2)

    for stage in ("eval", "score"):
        single, single_rows = _rows(tmp_path / "single" / stage)
        sharded, sharded_rows = _rows(tmp_path / "sharded" / stage)
        assert sharded_rows == single_rows, stage
        assert sharded["provenance"]["sampling"]["hardware"]["world_size"] == 2
        assert single["provenance"]["sampling"]["hardware"]["world_size"] == 1
        assert len(sharded["results"][0]["samples_file"]) > 0
    for s in STEPS:
        a = read_samples(tmp_path / "single" / "eval" / f"samples_steps{s}.jsonl")
        b = read_samples(tmp_path / "sharded" / "eval" / f"samples_steps{s}.jsonl")
        assert b.tokens == a.tokens and len(b.tokens) == NUM_SAMPLES
        assert [c.texts for c in b.chunks] == [c.texts for c in a.chunks]
        assert len(b.header["timing"]["rank_seconds"]) == 2 and all(t > 0 for t in b.header["timing"]["rank_seconds"])
