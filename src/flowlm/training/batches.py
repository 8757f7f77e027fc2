"""Step-indexed batches: micro-batch k of a run is a pure function of (seed, k).

That makes resumption exact (restart at micro-batch ``global_step × accumulation``) and makes the
global batch independent of the number of processes: item k is the k-th *global* micro-batch, and
each rank takes its slice of it.

The training loader reads its starting position from the restored optimizer step when iteration begins
(:class:`StepSampler`) and is endless, so nothing depends on Lightning's in-epoch batch counter; each batch
carries its index k, which the training step checks against the optimizer step. (An earlier loader held
only the micro-batches still to train on and let Lightning's restored in-epoch counter end the "epoch":
resumed at step s < T/2 it replayed micro-batches s … 2s − 1 and never reached T − s … T − 1.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class StepBatches(Dataset):
    """``dataset[k] -> (k, LongTensor [micro_batch, L])``: this rank's slice of global micro-batch k, with k.

    Global micro-batch k holds positions ``[k·G, (k+1)·G)`` (G = micro_batch × world_size) of an
    endless stream of epochs, each epoch a fresh permutation of the blocks seeded by (seed, epoch).
    """

    def __init__(self, blocks, micro_batch: int, seed: int, rank: int = 0, world_size: int = 1, length: int = 0):
        if len(blocks) == 0:
            raise ValueError("the training set has no blocks")
        self.blocks = blocks
        self.micro_batch = micro_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.length = length
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.length

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.blocks), generator=g)
            self._perm_epoch = epoch
        return self._perm

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor]:
        n = len(self.blocks)
        global_batch = self.micro_batch * self.world_size
        start = k * global_batch + self.rank * self.micro_batch
        rows = []
        for pos in range(start, start + self.micro_batch):
            epoch, offset = divmod(pos, n)
            rows.append(self.blocks[int(self.permutation(epoch)[offset])])
        return k, torch.stack(rows)


class StepSampler(Sampler[int]):
    """Yields ``position(), position() + 1, ...`` without end; ``position`` is called when iteration starts.

    For training: ``position`` gives ``global_step × accumulation`` of the (restored) trainer, and the number of
    optimizer steps (``max_steps``), not the loader, ends the run. It has no length, so Lightning treats the loader
    as endless and never starts a new "epoch" from a counter of its own.
    """

    def __init__(self, position: Callable[[], int]):
        self.position = position

    def __iter__(self):
        return itertools.count(self.position())


class RangeSampler(Sampler[int]):
    """Yields ``start, start+1, ..., stop-1`` (the micro-batches still to train on)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class StepDataLoader(DataLoader):
    """A DataLoader that tells Lightning it resumes itself: its position is derived from the
    restored ``global_step`` (see :class:`StepSampler`), so there is no iterator state to save."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
