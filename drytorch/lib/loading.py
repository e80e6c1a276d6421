"""Batches of a map-style data set, sharded over ranks, resumable mid-epoch.

The order of an epoch is a function of (seed, epoch) only, so every rank
computes the same permutation without talking to the others, and a resumed
job recomputes it and skips the batches already done.

Training shards: the permutation is dealt round-robin to the ranks and the
tail that does not divide by the world size is dropped, so every rank runs
the same number of steps and the k-th global batch is a contiguous slice of
the permutation.

Evaluation shards: every sample is kept exactly once (no padding, no dropped
tail).  Rank r takes samples r, r + W, r + 2W, ...; all ranks run the same
number of batches, the ranks with fewer samples running their last batches
with fewer (possibly zero) samples, weighted by their real size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.utils.data as torch_data

from drytorch.distributed import ranks

__all__ = ['DataLoader', 'Plan']


class Plan:
    """The batches of one rank for one pass over the data.

    Attributes:
        batches: index lists, one per step; some may be empty (evaluation).
        num_samples: samples of the whole data set that this pass covers.

    """

    def __init__(self, batches: list[torch.Tensor], num_samples: int) -> None:
        self.batches = batches
        self.num_samples = num_samples

    def __len__(self) -> int:
        return len(self.batches)


class DataLoader:
    """Loads batches of a map-style data set.

    Args:
        dataset: supports ``len`` and integer indexing; ``__getitems__``
            (or a :class:`torch.utils.data.TensorDataset`) is used to load
            a batch in one call.
        batch_size: samples per batch on each rank.
        seed: seeds the training order; saved in checkpoints.
        drop_last: drop a last incomplete training batch.
        collate_fn: turns a list of items into a batch.
        num_workers: worker processes of the underlying torch loader
            (0 loads in this process).
        pin_memory: pin host memory for faster copies to a GPU.

    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        seed: int = 0,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f'batch_size must be a positive integer, got {batch_size!r}.'
            )
        try:
            size = len(dataset)
        except TypeError:
            raise TypeError(
                f'{type(dataset).__name__} has no len(); DataLoader needs a '
                'map-style data set (with __len__ and __getitem__).'
            ) from None
        if size == 0:
            raise ValueError(
                'The data set is empty; there is nothing to load.'
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.collate_fn = collate_fn or torch_data.default_collate
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        """Samples in the data set."""
        return len(self.dataset)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The training order of ``epoch``: a function of (seed, epoch)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.dataset), generator=generator)

    def plan(
        self,
        *,
        training: bool,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Plan:
        """This rank's batches for one pass (see the module docstring)."""
        world = ranks.get_world_size() if world_size is None else world_size
        if rank is None:
            # alone, the rank is 0; asking would read the launcher's
            # variables again at every epoch
            rank = ranks.get_rank() if world > 1 else 0
        size = len(self.dataset)
        if training:
            order = self.permutation(epoch)
            per_rank = size // world
            if per_rank == 0:
                raise ValueError(
                    f'The data set has {size} samples, fewer than the '
                    f'{world} ranks; every rank needs at least one.'
                )
            mine = order[rank::world][:per_rank]
            if self.drop_last:
                mine = mine[: per_rank - per_rank % self.batch_size]
            batches = list(torch.split(mine, self.batch_size))
            return Plan(batches, per_rank * world)
        # min(): a rank past the last sample (fewer samples than ranks)
        # gets none, rather than an arange that runs backwards and fails
        mine = torch.arange(min(rank, size), size, world)
        steps = math.ceil(math.ceil(size / world) / self.batch_size)
        batches = list(torch.split(mine, self.batch_size))
        empty = torch.empty(0, dtype=torch.long)
        batches += [empty] * (steps - len(batches))
        return Plan(batches, size)

    def iterate(
        self, plan: Plan, start_batch: int = 0
    ) -> Iterator[tuple[Any, int]]:
        """Yield ``(batch, n_samples)`` for the plan's batches from one on.

        Empty batches yield ``(None, 0)``: the step still happens, so that
        every rank runs the same number of steps.
        """
        remaining = plan.batches[start_batch:]
        if self.num_workers > 0:
            yield from self._iterate_workers(remaining)
            return
        fetch = self._fetch
        for indices in remaining:
            # shape[0], not len(): Tensor.__len__ runs Python code per call
            n = indices.shape[0]
            if n == 0:
                yield None, 0
            else:
                yield fetch(indices), n

    def _fetch(self, indices: torch.Tensor) -> Any:
        dataset = self.dataset
        if isinstance(dataset, torch_data.TensorDataset):
            batch = tuple(t[indices] for t in dataset.tensors)
            return batch[0] if len(batch) == 1 else batch
        getitems = getattr(dataset, '__getitems__', None)
        index_list = indices.tolist()
        if getitems is not None:
            items = getitems(index_list)
        else:
            items = [dataset[i] for i in index_list]
        return self.collate_fn(items)

    def _iterate_workers(
        self, batches: Sequence[torch.Tensor]
    ) -> Iterator[tuple[Any, int]]:
        sizes = [len(b) for b in batches]
        non_empty = [b.tolist() for b in batches if len(b)]
        loader = torch_data.DataLoader(
            self.dataset,
            batch_sampler=non_empty,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
        iterator = iter(loader)
        for n in sizes:
            yield (next(iterator), n) if n else (None, 0)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to reproduce the order."""
        return {'seed': self.seed, 'batch_size': self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the seed of a checkpoint."""
        self.seed = int(state['seed'])

    def describe(self) -> dict[str, Any]:
        return {
            'dataset': type(self.dataset).__name__,
            'samples': len(self.dataset),
            'batch_size': self.batch_size,
            'seed': self.seed,
        }
