"""Distributed options: the global batch is exactly micro-batch × devices × nodes × accumulation."""

from __future__ import annotations

import pytest

from flowlm.config import apply_overrides, load_preset
from flowlm.errors import ConfigError
from flowlm.training.run import batch_split, world_size


def config(*overrides):
    return apply_overrides(load_preset("tiny"), list(overrides))


@pytest.mark.parametrize(
    ("batch", "micro", "devices", "nodes", "expected"),
    [
        (512, None, 8, 1, (64, 1)),  # the paper's batch on one 8-GPU node
        (512, 32, 8, 1, (32, 2)),
        (512, 16, 8, 2, (16, 2)),  # two nodes
        (512, None, "0,1,2,3", 1, (128, 1)),  # GPU ids count as devices
        (32, 4, 1, 1, (4, 8)),
    ],
)
def test_batch_split_multiplies_back_to_the_global_batch(batch, micro, devices, nodes, expected):
    overrides = [f"train.batch_size={batch}", f"train.devices={devices!r}", f"train.num_nodes={nodes}"]
    cfg = config(*overrides, *([f"train.micro_batch_size={micro}"] if micro else []))
    world = world_size(cfg)
    got = batch_split(cfg, world)
    assert got == expected
    assert got[0] * world * got[1] == batch


@pytest.mark.parametrize(("batch", "micro", "devices", "nodes"), [(512, None, 3, 1), (512, 48, 8, 1), (8, None, 4, 4)])
def test_batch_that_does_not_divide_is_a_config_error(batch, micro, devices, nodes):
    overrides = [f"train.batch_size={batch}", f"train.devices={devices}", f"train.num_nodes={nodes}"]
    cfg = config(*overrides, *([f"train.micro_batch_size={micro}"] if micro else []))
    with pytest.raises(ConfigError, match="batch_size = micro_batch_size x devices x num_nodes x accumulation"):
        batch_split(cfg, world_size(cfg))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.strategy=fsdp", "fsdp is not supported"),
        ("train.strategy=deepspeed", "choose one of auto, ddp"),
        ("train.num_nodes=0", "num_nodes=0 must be >= 1"),
        ("train.devices=0", "use a device count"),
        ("train.devices=gpu0", "use a device count"),
    ],
)
def test_bad_distributed_options_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        config(override)


def test_auto_devices_on_a_cpu_machine_is_one_process_per_node():
    assert world_size(config("train.devices=auto", "train.num_nodes=2")) in (2, 2 * max(1, _gpus()))


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()
