"""Harness pieces without a full run: batch layout, batch split, module state."""

import pytest
import torch
from known_warnings import TORCH_INDUCTOR_JIT

from flowlm.config import apply_overrides, load_preset
from flowlm.errors import ConfigError
from flowlm.training.batches import StepBatches, StepSampler
from flowlm.training.module import FlowLMModule, step_seed
from flowlm.training.run import batch_split


def test_rank_slices_of_a_global_micro_batch_equal_the_single_process_batch():
    blocks = torch.arange(50).view(25, 2)
    single = StepBatches(blocks, micro_batch=8, seed=3, length=100)
    ranks = [StepBatches(blocks, micro_batch=4, seed=3, rank=r, world_size=2, length=100) for r in (0, 1)]
    for k in range(7):  # crosses several epochs of 25 blocks
        assert ranks[0][k][0] == ranks[1][k][0] == single[k][0] == k  # each batch carries its global index
        torch.testing.assert_close(torch.cat([ranks[0][k][1], ranks[1][k][1]]), single[k][1])


def test_every_block_is_seen_once_per_epoch():
    blocks = torch.arange(24).view(12, 2)
    data = StepBatches(blocks, micro_batch=4, seed=0, length=6)
    rows = lambda ks: torch.cat([data[k][1] for k in ks])  # noqa: E731
    assert sorted((rows(range(3))[:, 0] // 2).tolist()) == list(range(12))
    assert not torch.equal(rows(range(3, 6)), rows(range(3)))


def test_the_step_sampler_starts_where_it_is_told_when_iteration_starts():
    position = [3]
    sampler = StepSampler(lambda: position[0])
    position[0] = 7  # read at iter(), not at construction: the restored step is known only then
    it = iter(sampler)
    assert [next(it) for _ in range(4)] == [7, 8, 9, 10]
    with pytest.raises(TypeError):  # no length: Lightning treats the loader as endless, max_steps ends the run
        len(sampler)


def test_batch_split_and_its_errors():
    cfg = apply_overrides(load_preset("tiny"), ["train.batch_size=32", "train.micro_batch_size=8"])
    assert batch_split(cfg, world=2) == (8, 2)
    assert batch_split(apply_overrides(cfg, ["train.micro_batch_size=null"]), world=4) == (8, 1)
    with pytest.raises(ConfigError, match="batch_size = micro_batch_size x devices x num_nodes x accumulation"):
        batch_split(apply_overrides(cfg, ["train.micro_batch_size=5"]), world=1)


def test_step_seeds_are_distinct():
    seeds = {step_seed(0, s, m, r) for s in range(50) for m in range(4) for r in range(3)}
    assert len(seeds) == 50 * 4 * 3


@TORCH_INDUCTOR_JIT
def test_compiled_network_is_not_stored_twice():
    cfg = apply_overrides(load_preset("tiny"), ["train.compile=true", "model.n_blocks=1"])
    module = FlowLMModule(cfg, vocab_size=300)
    assert module._compiled is not None
    assert set(module.state_dict()) == {f"net.{k}" for k in module.net.state_dict()}
