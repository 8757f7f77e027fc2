"""End to end through the CLI: train on the embedded corpus, stop, resume, sample.

The resumed run must equal an uninterrupted one bit for bit (same seed, same global batch).
"""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import flowlm
import flowlm.errors

TINY = [
    "--preset",
    "tiny",
    "--tokenizer",
    "bpe:300",
    "--quiet",
    "data.seq_len=32",
    "model.hidden_size=32",
    "model.n_blocks=1",
    "model.n_heads=2",
    "model.cond_dim=16",
    "model.dropout=0.1",
    "train.batch_size=8",
    "train.micro_batch_size=4",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.val_every=3",
    "train.val_batches=1",
]


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "flowlm.cli", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"flowlm {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cache = f"data.cache_dir={root / 'cache'}"
    straight = cli("train", *TINY, cache, "--steps", "6", "--out", str(root / "straight"))
    (root / "straight.stderr").write_text(straight.stderr)
    cli("train", *TINY, cache, "--steps", "3", "--out", str(root / "resumed"))
    first_leg = load_file(str(root / "resumed" / "model" / "model.safetensors"))
    cli("train", *TINY, cache, "--steps", "6", "--out", str(root / "resumed"))
    return root, first_leg


def test_resumed_run_equals_uninterrupted_run(runs):
    root, first_leg = runs
    straight = load_file(str(root / "straight" / "model" / "model.safetensors"))
    resumed = load_file(str(root / "resumed" / "model" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    # Bit-equality is the claim ("resume exact") and holds on any CPU: both runs execute on one machine in the same
    # environment (same kernels, thread count, shapes and batch order), so every float operation repeats exactly.
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # ... and the second leg really trained: weights moved after the stop at step 3.
    assert any(not torch.equal(first_leg[k], resumed[k]) for k in first_leg)
    a = torch.load(root / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(root / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_training_output_has_no_noise_users_cannot_act_on(runs):
    """Lightning's litlogger advert and its LeafSpec deprecation warning (torch >= 2.10) are filtered out."""
    root, _ = runs
    stderr = (root / "straight.stderr").read_text()
    assert "Trainer.fit" in stderr  # the filter keeps Lightning's own messages
    assert "litlogger" not in stderr and "LeafSpec" not in stderr, stderr


def test_checkpoint_provenance(runs):
    root, _ = runs
    meta = json.loads((root / "resumed" / "model" / "flowlm.json").read_text())
    assert meta["method"] == "flm" and meta["step"] == 6 and meta["weights"] == "ema"
    assert meta["tokenizer"]["spec"] == "bpe:300" and meta["vocab_size"] == meta["model"]["vocab_size"]
    assert meta["run"]["train"]["batch_size"] == 8 and "flowlm" in meta["command"]
    assert meta["code_version"].startswith(flowlm.__version__)
    assert len(meta["weights_sha256"]) == 64


def test_logs_are_written(runs):
    root, _ = runs
    metrics = (root / "straight" / "logs" / "session-0" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in metrics[0] and "val/denoising_ce" in metrics[0]
    # the FLM ELBO beside the denoising cross-entropy, and its perplexity as the exp of its mean
    with (root / "straight" / "logs" / "session-0" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    bound = [float(r["val/nll_bound"]) for r in rows if r.get("val/nll_bound")]
    ppl = [float(r["val/ppl_bound"]) for r in rows if r.get("val/ppl_bound")]
    assert bound and ppl and math.isclose(ppl[0], math.exp(bound[0]), rel_tol=1e-5)
    assert list((root / "straight" / "logs" / "session-0").glob("events.out.tfevents*"))
    # A resumed run keeps the first launch's metrics and logs the second launch beside them.
    first, second = (root / "resumed" / "logs" / f"session-{k}" / "metrics.csv" for k in (0, 1))
    steps = lambda f: {int(r.split(",")[1]) for r in f.read_text().splitlines()[1:]}  # noqa: E731
    assert max(steps(first)) < min(steps(second))


def test_sample_cli_text_and_jsonl(runs, tmp_path):
    root, _ = runs
    proc = cli("sample", str(root / "resumed"), "--steps", "3", "-n", "2", "--seed", "1")
    assert proc.stdout.count("--- sample") == 2
    out = tmp_path / "s.jsonl"
    cli("sample", str(root / "resumed" / "model"), "--steps", "3", "-n", "3", "--seed", "1", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and len(rows[0]["tokens"]) == 32
    assert rows[0]["provenance"]["steps"] == 3 and rows[0]["provenance"]["seed"] == 1
    assert (
        rows[0]["provenance"]["weights_sha256"]
        == json.loads((root / "resumed" / "model" / "flowlm.json").read_text())["weights_sha256"]
    )


def test_python_api_generate_is_seeded(runs):
    root, _ = runs
    model = flowlm.load(root / "resumed")
    a = model.generate(3, steps=4, seed=5)
    assert len(a) == 3 and all(isinstance(s, str) for s in a)
    assert a == model.generate(3, steps=4, seed=5)
    assert model.sample_tokens(3, 4, seed=5).tolist() != model.sample_tokens(3, 4, seed=6).tolist()


def test_changed_config_refuses_to_resume(runs):
    root, _ = runs
    cache = f"data.cache_dir={root / 'cache'}"
    proc = cli(
        "train", *TINY, cache, "model.hidden_size=64", "--steps", "8", "--out", str(root / "resumed"), check=False
    )
    assert proc.returncode == 2
    assert "different config (model.hidden_size)" in proc.stderr and "Traceback" not in proc.stderr


DISTILL = ["--quiet", "train.batch_size=8", "train.micro_batch_size=4", "train.log_every=1", "train.ckpt_every=2",
           "train.val_every=3", "train.val_batches=1"]  # fmt: skip


@pytest.fixture(scope="module")
def distilled(runs):
    root, _ = runs
    teacher = root / "resumed"
    cli("distill", "--teacher", str(teacher), *DISTILL, "--steps", "4", "--out", str(root / "fmlm-straight"))
    cli("distill", "--teacher", str(teacher), *DISTILL, "--steps", "2", "--out", str(root / "fmlm-resumed"))
    cli("distill", "--teacher", str(teacher), *DISTILL, "--steps", "4", "--out", str(root / "fmlm-resumed"))
    return root


def test_distill_resumes_exactly_and_records_its_teacher(distilled):
    root = distilled
    straight = load_file(str(root / "fmlm-straight" / "model" / "model.safetensors"))
    resumed = load_file(str(root / "fmlm-resumed" / "model" / "model.safetensors"))
    for key in straight:  # bit-equal: the same kernels on the same numbers (test_resumed_run_equals_uninterrupted_run)
        assert torch.equal(straight[key], resumed[key]), key
    teacher_meta = json.loads((root / "resumed" / "model" / "flowlm.json").read_text())
    meta = json.loads((root / "fmlm-resumed" / "model" / "flowlm.json").read_text())
    assert meta["method"] == "fmlm" and meta["recipe"] == "psd" and meta["model"]["time_inputs"] == 2
    assert meta["teacher"]["weights_sha256"] == teacher_meta["weights_sha256"]
    # The teacher is never stored with the student: only the student's own tensors are in the file.
    student_keys = set(flowlm.load(root / "fmlm-resumed").net.state_dict())
    assert set(resumed) == student_keys
    ckpt = torch.load(root / "fmlm-resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(k.startswith(("net.", "weighting.")) for k in ckpt["state_dict"])
    assert len(ckpt["state_dict"]) == len(student_keys)


def test_end_stretch_student_distills_records_and_reports_its_fit(distilled, tmp_path):
    """distill.end_stretch=true: the student gets the third time embedding (recorded as model.end_stretch, loaded
    back with it), samples in one step, and flowlm fit-report reads it with its recorded teacher."""
    root = distilled
    out = tmp_path / "stretch"
    cli("distill", "--teacher", str(root / "resumed"), *DISTILL, "distill.end_stretch=true", "--steps", "2",
        "--out", str(out))  # fmt: skip
    model = flowlm.load(out)
    assert model.meta["model"]["end_stretch"] is True and model.meta["run"]["distill"]["end_stretch"] is True
    assert any(k.startswith("end_map.") for k in model.net.state_dict())
    assert len(model.generate(2, steps=1, seed=0)) == 2
    report = tmp_path / "fit.json"
    proc = cli("fit-report", str(out), "--blocks", "4", "--pairs", "0:1,0.5:0.5", "--out", str(report), "--quiet")
    assert "KL at (0, 1)" in proc.stdout
    fit = json.loads(report.read_text())
    assert [(r["tau_s"], r["tau_t"]) for r in fit["pairs"]] == [(0.0, 1.0), (0.5, 0.5)]
    assert fit["provenance"]["teacher_is_recorded"] and fit["provenance"]["end_stretch"]
    assert all(r["kl"]["mean"] >= 0 for r in fit["pairs"])


def test_fmlm_samples_in_one_step_through_cli_and_api(distilled, tmp_path):
    root = distilled
    out = tmp_path / "one.jsonl"
    cli("sample", str(root / "fmlm-resumed"), "--steps", "1", "-n", "2", "--gamma", "0.5", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["provenance"]["sampler"] == "flow-map" and rows[0]["provenance"]["gamma"] == 0.5
    model = flowlm.load(root / "fmlm-resumed")
    assert model.generate(2, steps=2, seed=3, gamma=1.0) == model.generate(2, steps=2, seed=3, gamma=1.0)
    with pytest.raises(flowlm.errors.ConfigError, match="gamma"):
        model.generate(1, steps=1, gamma=1.5)


def test_v1_two_stage_recipe_through_the_cli(runs):
    root, _ = runs
    teacher = root / "resumed"
    stage1, stage2 = root / "v1-stage1", root / "v1-stage2"
    cli("distill", "--teacher", str(teacher), "--recipe", "v1-stage1", *DISTILL, "--steps", "2", "--out", str(stage1))
    meta1 = json.loads((stage1 / "model" / "flowlm.json").read_text())
    assert meta1["method"] == "fmlm-v1-stage1" and meta1["model"]["logit_cap"] is None
    assert "train/map_mse" in (stage1 / "logs" / "session-0" / "metrics.csv").read_text().splitlines()[0]
    first = flowlm.load(stage1)
    assert first.teacher is not None and len(first.generate(2, steps=2, seed=0)) == 2

    cli("distill", "--teacher", str(teacher), "--recipe", "v1-stage2", "--stage1", str(stage1), *DISTILL,
        "--steps", "2", "--out", str(stage2))  # fmt: skip
    meta2 = json.loads((stage2 / "model" / "flowlm.json").read_text())
    assert meta2["method"] == "fmlm" and meta2["recipe"] == "v1-stage2"
    assert meta2["stage1"]["weights_sha256"] == meta1["weights_sha256"]
    proc = cli("sample", str(stage2), "--steps", "1", "-n", "1")
    assert proc.stdout.count("--- sample") == 1

    refused = cli("distill", "--teacher", str(teacher), "--recipe", "v1-stage2", "--out", str(root / "x"), check=False)
    assert refused.returncode == 2 and "--stage1" in refused.stderr
