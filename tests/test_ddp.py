"""Data parallelism: N processes with the same global batch train exactly like one process.

Every rank takes rows [r·B, (r + 1)·B) of each global micro-batch and keeps the same rows of the times and
noise drawn for the whole micro-batch, so its loss is a slice of the one-process loss and DDP's gradient mean
is the one-process gradient. The fast tests check that slicing on the loss functions; the slow ones launch
2 processes over gloo with torchrun and compare weights, EMA and logged losses with a 1-process run.
"""

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tolerances import assert_close_up_to_rounding, rounding_atol

from flowlm.methods.flm import flm_loss
from flowlm.methods.fmlm import init_student, psd_loss
from flowlm.methods.mdlm import mdlm_loss
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.module import rank_draws

VOCAB, SEQ, ROWS, HIDDEN = 12, 6, 4, 16  # ROWS per rank; the global micro-batch has ROWS x world rows


def tiny_net(time_inputs=1) -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(VOCAB, SEQ, hidden_size=HIDDEN, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0,
                    time_inputs=time_inputs)  # fmt: skip
    net = DiT(cfg)
    with torch.no_grad():  # leave the zero initialisation, so that the output depends on τ and on the noise
        for param in net.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return net


def loss_and_grad(net, loss_fn, tokens, world, rank, index=3):
    shared = torch.Generator().manual_seed(7)
    draws = rank_draws(shared, len(tokens), index, rank, world)
    net.zero_grad()
    out = loss_fn(tokens, **draws)
    out["loss"].backward()
    return out, [p.grad.clone() for p in net.parameters() if p.grad is not None]


def check_ranks_reproduce_one_process(net, loss_fn, world=2):
    tokens = torch.randint(0, VOCAB, (ROWS * world, SEQ), generator=torch.Generator().manual_seed(1))
    whole, grad = loss_and_grad(net, loss_fn, tokens, 1, 0)
    parts = [loss_and_grad(net, loss_fn, tokens[r * ROWS : (r + 1) * ROWS], world, r) for r in range(world)]
    # Each rank draws exactly its rows of the one-process times ...
    for key in [k for k in whole if k.startswith("tau") or k == "t"]:
        assert torch.equal(torch.cat([p[0][key] for p in parts]), whole[key]), key
    # ... so its per-sequence losses are its rows of the one-process ones ...
    # Equal up to float32 rounding only: a rank runs the network on B rows, the one process on B·world, and the
    # kernels may block the products differently (an Intel CPU's AVX-512 path moved FLM's gradients by 3.7e-7;
    # MKL_CBWR=COMPATIBLE on AMD by up to 8e-7, 11 eps·S for PSD). A value accumulates at most B·L·d products
    # (tokens x width) along its longest chain: the tolerance is rounding_atol(float32, B·L·d, S)
    # (tests/tolerances.py), 4·sqrt(768)·eps·S = 1.3e-5·S for FLM's 8 rows, where S bounds the parts being added:
    # the per-rank gradients are partial sums of the global one (with PSD they cancel to a result 3x smaller than
    # the parts). A wrong draw (other noise, rows or pair layout) moves the loss and gradients by ~10% of S or more.
    # Not float64: the DiT computes LayerNorm, time features and attention scores in float32 by design, so a
    # float64 copy of these tests still differed by 2.4e-7.
    n = len(tokens) * SEQ * HIDDEN
    if "per_sequence" in whole:
        assert_close_up_to_rounding(torch.cat([p[0]["per_sequence"] for p in parts]), whole["per_sequence"], n)
    # ... so the mean over ranks of the per-rank losses and gradients (what DDP averages) is the global one.
    assert_close_up_to_rounding(sum(p[0]["loss"] for p in parts) / world, whole["loss"], n)
    scale = max(g.abs().max().item() for p in parts for g in p[1])
    for k, g in enumerate(grad):
        assert_close_up_to_rounding(sum(p[1][k] for p in parts) / world, g, n, scale)


@pytest.mark.float_sensitive
def test_flm_rank_losses_are_slices_of_the_one_process_loss():
    net = tiny_net()

    def loss(tokens, sample_offset, **kw):  # FLM's draws do not depend on the position in the run
        return flm_loss(net, tokens, VOCAB, **kw)

    check_ranks_reproduce_one_process(net, loss, world=2)


@pytest.mark.float_sensitive
def test_psd_rank_losses_are_slices_of_the_one_process_loss():
    teacher = tiny_net().eval().requires_grad_(False)
    student = init_student(teacher)

    def loss(tokens, **kw):
        # boundary 0.1: samples [48, 64) of the run hold floor(6.4) - floor(4.8) = 2 boundary pairs; a rank
        # that started its own count at 48 + 4r would get another number (1 for r = 1).
        return psd_loss(student, teacher, tokens, VOCAB, boundary_frac=0.1, **kw)

    check_ranks_reproduce_one_process(student, loss, world=4)


@pytest.mark.float_sensitive
def test_mdlm_rank_losses_are_slices_of_the_one_process_loss():
    torch.manual_seed(0)
    cfg = DiTConfig(VOCAB, SEQ, hidden_size=HIDDEN, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0, mask_input=True)
    net = DiT(cfg)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.3 * torch.randn_like(param))

    def loss(tokens, sample_offset, **kw):  # MDLM's draws do not depend on the position in the run
        return mdlm_loss(net, tokens, VOCAB, **kw)

    check_ranks_reproduce_one_process(net, loss, world=2)


def test_rank_draws_start_at_the_global_micro_batch():
    shared = torch.Generator()
    draws = rank_draws(shared, rows_per_rank=4, index=5, rank=1, world=2)
    assert draws == {"generator": shared, "rows": (4, 8), "sample_offset": 40}


# --- two processes over gloo against one ---------------------------------------------------------------------

TINY = ["--tokenizer", "bpe:300", "--quiet", "data.seq_len=32", "model.hidden_size=32", "model.n_blocks=1",
        "model.n_heads=2", "model.cond_dim=16", "model.dropout=0.0"]  # fmt: skip
SCHEDULE = ["train.batch_size=8", "train.warmup_steps=2", "train.log_every=1", "train.ckpt_every=2",
            "train.val_every=2", "train.val_batches=1", "train.accelerator=cpu"]  # fmt: skip
TWO = ["train.devices=2", "train.strategy=ddp"]

# A large step size and a short EMA, so that the exported EMA model, the teacher of the PSD test, is no longer
# the zero-initialised output layer. Adam's ε = 1e-4 (distillation inherits it): with the default 1e-8 a
# gradient entry made only of rounding noise (the student starts as the teacher, so its diagonal-pair
# gradients are zero up to rounding) is normalised into an lr-sized step of arbitrary sign; with ε = 1e-4 the
# update lr·m/(√v + ε) moves by at most (lr/ε)·|δg| for a gradient change δg.
ADAM = ["train.eps=1e-4"]

# Weights after a few AdamW steps. The processes differ only in the order of float32 sums (each rank reduces
# half the batch, then gloo averages the halves): gradient changes |δg| ~ 1e-7·|g|, so weights move apart by
# at most (lr/ε)·|δg| per step, observed 1.3e-7 (FLM, lr 1e-2) and 3e-8 (PSD, lr 3e-4). A wrong draw (other
# noise, rows or pair layout) changes the update by O(lr) per step; a different micro-batch split changed the
# first PSD loss by 2e-4 relative.
WEIGHT_ATOL = 2e-6
# Logged losses: means of 8 x 32 token losses that the ranks sum in another order, relative to their size
# rounding_atol(float32, 8·32, 1) = 7.6e-6 (tests/tolerances.py); observed <= 1e-7, a wrong split moved one by 2e-4.
LOSS_RTOL = rounding_atol(torch.float32, 8 * 32, 1.0)


def flowlm(command, args, processes, check=True):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    prefix = launcher if processes > 1 else [sys.executable]
    proc = subprocess.run([*prefix, "-m", "flowlm.cli", command, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"flowlm {command} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc


def metrics(run):
    """{(step, name): value} of every launch of a run (tokens_per_s left out: it is a timing)."""
    values = {}
    for path in sorted((run / "logs").glob("session-*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                for name, value in row.items():
                    if value and name.startswith(("train/", "val/")) and name != "train/tokens_per_s":
                        values[(int(row["step"]), name)] = float(value)
    return values


def assert_same_training(one, two):
    a = torch.load(one / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(two / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=0, atol=WEIGHT_ATOL)
    ema_a, ema_b = (load_file(str(run / "model" / "model.safetensors")) for run in (one, two))
    for key in ema_a:
        torch.testing.assert_close(ema_b[key], ema_a[key], rtol=0, atol=WEIGHT_ATOL)
    logged_a, logged_b = metrics(one), metrics(two)
    assert logged_a.keys() == logged_b.keys()
    assert {name for _, name in logged_a} >= {"train/loss", "val/denoising_ce", "val/nll_bound"}
    for key, value in logged_a.items():
        assert logged_b[key] == pytest.approx(value, rel=LOSS_RTOL), key


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    cache = f"data.cache_dir={root / 'cache'}"
    one, two = root / "flm-1", root / "flm-2"
    fast = ADAM + ["train.lr=1e-2", "train.ema_decay=0.5"]
    # Accumulation 2 in both: 1 process x micro 4 x 2 = 2 processes x micro 2 x 2 = the global batch of 8.
    args = [*TINY, *SCHEDULE, *fast, cache, "train.micro_batch_size=4"]
    flowlm("train", [*args, "--steps", "4", "--out", str(one)], 1)
    # The 2-process run stops at step 1 (before half-way, after an end-of-training save) and is resumed to step 4.
    for steps in (1, 4):
        args = [*TINY, *SCHEDULE, *fast, *TWO, cache, "train.micro_batch_size=2"]
        flowlm("train", [*args, "--steps", str(steps), "--out", str(two)], 2)
    return root


@pytest.mark.slow
def test_two_processes_with_accumulation_and_a_resume_equal_one_process(runs):
    one, two = runs / "flm-1", runs / "flm-2"
    assert_same_training(one, two)
    # Only rank 0 logged (one folder per launch) and no partial config copies were left behind.
    assert sorted(p.name for p in (two / "logs").glob("session-*")) == ["session-0", "session-1"]
    assert not list(two.glob("config.json.*"))


@pytest.mark.slow
def test_psd_distillation_on_two_processes_equals_one_process(runs):
    teacher = runs / "flm-1" / "model"
    # No accumulation in either (the draws are per global micro-batch, so the split into micro-batches must match).
    common = ["--teacher", str(teacher), "--quiet", *SCHEDULE, "train.micro_batch_size=null"]
    flowlm("distill", [*common, "--steps", "3", "--out", str(runs / "psd-1")], 1)
    flowlm("distill", [*common, *TWO, "--steps", "3", "--out", str(runs / "psd-2")], 2)
    assert_same_training(runs / "psd-1", runs / "psd-2")


@pytest.mark.slow
def test_multi_process_checkpoint_with_per_rank_noise_is_refused(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs / "flm-2", old)
    ckpt = torch.load(old / "checkpoints" / "last.ckpt", weights_only=False)
    del ckpt["draws"]  # what a checkpoint written before the global draws looks like
    torch.save(ckpt, old / "checkpoints" / "last.ckpt")
    cache = f"data.cache_dir={runs / 'cache'}"
    args = [*TINY, *SCHEDULE, *ADAM, "train.lr=1e-2", "train.ema_decay=0.5", *TWO, cache, "train.micro_batch_size=2"]
    args += ["--steps", "6", "--out", str(old)]
    proc = flowlm("train", args, 2, check=False)
    assert proc.returncode != 0
    assert "drew the training noise per rank" in proc.stderr


def workers_of(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the processes a torchrun launcher started (their parent is the launcher)."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != launcher_pid:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0])] = int(stat.parent.name)
    return ranks


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker ranks through /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(runs, tmp_path, signum):
    """SIGINT or SIGTERM reaches rank 1 only: the ranks agree (an all-reduce per optimizer step) to stop after the
    same step, which is saved; without the agreement rank 0 would wait for rank 1's gradients until gloo's
    timeout."""
    out = tmp_path / "run"
    cache = f"data.cache_dir={runs / 'cache'}"
    args = [*TINY, *SCHEDULE, *TWO, cache, "train.micro_batch_size=2", "--steps", "100000", "--out", str(out)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.Popen([*launcher, "-m", "flowlm.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        ranks = workers_of(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signum)
        proc.wait(timeout=180)
    finally:
        proc.kill()
    err = proc.stderr.read()
    how = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    steps = [int(m) for m in re.findall(rf"flowlm: {how} at step (\d+);", err)]
    assert len(steps) == 2 and steps[0] == steps[1], err[-3000:]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == steps[0]
    assert f"resume from the checkpoint of step {steps[0]}" in err
