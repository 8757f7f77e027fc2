"""Exact resumption from any step (issue 23): a run stopped at step s and rerun to T ends with the weights, EMA and
optimizer state of a run that was never stopped, bit for bit, for s below, at and above T/2, with gradient
accumulation, and after a run that ended with its end-of-training save and is continued with a larger ``--steps``.

Before the fix, a run stopped at s < T/2 replayed micro-batches s … 2s − 1 and never reached T − s … T − 1: the
resumed loader held only the T − s micro-batches still to train on, and Lightning's restored in-epoch counter ended
its "epoch" after T − 2s of them. The old end-to-end test stopped at exactly T/2, the one case where that is harmless.

A kill right after the checkpoint of step s leaves that checkpoint as ``last.ckpt``: the fixture trains once with a
checkpoint at every step and keeps a copy of each, and each test resumes a folder holding one of them.
"""

import shutil
from pathlib import Path

import pytest
import torch

import flowlm
from flowlm.training import state as state_module
from flowlm.training.state import LAST, load_state

TEXT = "\n\n".join(f"the cat {i % 7} sat on the mat {i % 5} and looked at the dog {i % 3}." for i in range(400))
STEPS = 8
OVERRIDES = [
    "data.seq_len=16", "model.hidden_size=16", "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=8",
    "train.batch_size=4", "train.log_every=1", "train.ckpt_every=1", "train.val_every=3", "train.val_batches=1",
    "train.warmup_steps=2", "train.lr=1e-2", "train.ema_decay=0.5",
]  # fmt: skip


def train(root: Path, out: Path, steps: int, micro: int):
    overrides = [*OVERRIDES, f"data.cache_dir={root / 'cache'}", f"train.micro_batch_size={micro}"]
    return flowlm.train(overrides=overrides, data=str(root / "corpus.txt"), tokenizer="char", steps=steps, out=out,
                        progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """``straight(micro) -> root``: ``root/straight`` trained STEPS steps without a stop with that micro-batch size
    (4: no accumulation, 2: accumulation 2), and ``root/step-k.ckpt`` the checkpoint it wrote at step k."""
    roots = {}

    def make(micro: int) -> Path:
        if micro in roots:
            return roots[micro]
        root = roots[micro] = tmp_path_factory.mktemp(f"resume-micro{micro}")
        (root / "corpus.txt").write_text(TEXT)
        real = state_module.save_state

        def keep(state, folder):
            path = real(state, folder)
            shutil.copy(path, root / f"step-{state['global_step']}.ckpt")
            return path

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(state_module, "save_state", keep)
            train(root, root / "straight", STEPS, micro)
        return root

    return make


def assert_same_state(run: Path, reference: Path):
    """Weights, EMA, optimizer moments and step of the two runs' final checkpoints and exported models: bit-equal
    (both run on one machine with the same kernels, shapes and batches, so every float operation repeats)."""
    a, b = load_state(reference / "checkpoints" / LAST), load_state(run / "checkpoints" / LAST)
    assert a["global_step"] == b["global_step"] == STEPS
    for part in ("state_dict", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            if isinstance(a[part][key], torch.Tensor):
                assert torch.equal(a[part][key], b[part][key]), (part, key)
    moments_a, moments_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert moments_a.keys() == moments_b.keys()
    for index in moments_a:
        for name, value in moments_a[index].items():
            assert torch.equal(value, moments_b[index][name]), (index, name)
    ma, mb = flowlm.load(reference).net.state_dict(), flowlm.load(run).net.state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


# below T/2 (1, 2, 3), at T/2 (4), above (6); with accumulation one stop below T/2 and one at an odd step
@pytest.mark.parametrize("micro, stop", [(4, 1), (4, 2), (4, 3), (4, 4), (4, 6), (2, 1), (2, 3)])
def test_resume_after_a_kill_at_step_s_equals_the_uninterrupted_run(straight, tmp_path, micro, stop):
    root = straight(micro)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "straight" / "config.json", out / "config.json")
    shutil.copy(root / f"step-{stop}.ckpt", out / "checkpoints" / LAST)
    before = load_state(out / "checkpoints" / LAST)["state_dict"]
    train(root, out, STEPS, micro)
    after = load_state(out / "checkpoints" / LAST)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the second leg trained
    assert_same_state(out, root / "straight")


@pytest.mark.parametrize("micro, stop", [(4, 3), (4, 5), (2, 3)])
def test_a_finished_run_continued_with_more_steps_equals_the_uninterrupted_run(straight, tmp_path, micro, stop):
    """The end-of-training save of a run with ``--steps s``, rerun with ``--steps T``: the old code used one
    micro-batch twice there and shifted every later step by one."""
    root = straight(micro)
    out = tmp_path / "run"
    train(root, out, stop, micro)
    train(root, out, STEPS, micro)
    assert_same_state(out, root / "straight")
