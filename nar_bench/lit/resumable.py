"""Training that resumes exactly: what step s of a run sees is a function of (seed, s) alone.

Lightning's checkpoint restores weights, optimizer, scheduler and loop counters, but not the data
order (a shuffled DataLoader draws its permutation from the global RNG and restarts the epoch) nor
the RNG stream (dropout, class dropout, masking). So a run resumed from step k used to see other
batches and other dropout masks than the uninterrupted run from step k on. Here:

- ``StepSampler``: epoch e's order is a permutation seeded by (seed, e), split over ranks, and a
  loader made at global step s (a resumed run) starts inside epoch s // batches_per_epoch at batch
  s % batches_per_epoch;
- ``StepSeeds``: the global RNG is reseeded from (seed, step, rank) before every training step, so
  no draw depends on what ran before (validation, sample grids, a kill and restart).
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DistributedSampler

from nar_bench.nn.noise import mix64_int

SEED_BITS = (1 << 63) - 1  # torch.manual_seed takes a non-negative int64


def counter_seed(*parts: int) -> int:
    """A seed that is a hash of ``parts`` (e.g. seed, epoch or step, rank): nearby tuples give
    unrelated streams."""
    key = 0
    for part in parts:
        key = mix64_int(key ^ mix64_int(part))
    return key & SEED_BITS


class StepSampler(DistributedSampler):
    """Training indices of ``size`` items in batches of ``batch_size`` per rank (whole batches only,
    as ``drop_last``), reshuffled every epoch from (seed, epoch) alone. The first iteration starts
    at global step ``start_step``; each later one is the next epoch.

    A ``DistributedSampler`` subclass, so Lightning keeps it under DDP instead of wrapping it."""

    def __init__(self, size: int, batch_size: int, seed: int, start_step: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size, self.batch_size = size, batch_size
        self.batches_per_epoch = size // (batch_size * num_replicas)
        if self.batches_per_epoch < 1:
            raise ValueError(f"{size} training items make no batch of {batch_size} on {num_replicas} device(s)")
        self.epoch, self._skip = divmod(start_step, self.batches_per_epoch)
        self._started = False

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the epoch follows from the step this loader started at (Lightning's first call
        comes after its first batch was already fetched)."""

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        if self._started:
            self.epoch += 1
            self._skip = 0
        self._started = True
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(counter_seed(self.seed, self.epoch)))
        per_rank = order[: self.batches_per_epoch * self.batch_size * self.num_replicas][self.rank::self.num_replicas]
        return iter(per_rank[self._skip * self.batch_size:].tolist())


class StepSeeds(L.Callback):
    """Reseeds torch's global RNG (CPU and CUDA) from (seed, global step, rank) before each training
    step."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed(counter_seed(self.seed, trainer.global_step, trainer.global_rank))
