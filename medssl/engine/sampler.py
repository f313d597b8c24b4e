"""A resumable, rank-aware sampler: the data order is a function of (seed, epoch) alone."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffles ``size`` indices per epoch with ``seed + epoch`` and deals them out to the
    ranks in turn (as ``torch.utils.data.DistributedSampler`` does); the tail that does not
    divide evenly is dropped.

    ``start`` skips the first indices of this rank's share, so a run resumed mid-epoch sees
    exactly the samples an uninterrupted run would have seen next.
    """

    def __init__(
        self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        # Strided, not blocked: the k-th batch of every rank together is a slice of the
        # epoch's order, so each global batch holds the same images whatever the number of
        # ranks (and accumulation steps) — a 2-rank run sees the batches of a 1-rank run.
        usable = self.size // self.world_size * self.world_size
        return order[self.rank : usable : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(self.size // self.world_size - self.start, 0)
