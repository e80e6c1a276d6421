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

Random draws while loading (augmentations in ``__getitem__``): each batch is
loaded under a torch seed derived from (seed, epoch, rank, batch position),
so it is the same batch whether it is loaded in this process or in a worker,
by whichever worker, in a full pass or after a resume.  In this process the
global torch generator is put back afterwards, so that loading does not
shift the draws of the training step (dropout); ``random`` and numpy are
left to their global streams there, which checkpoints save, because saving
and restoring numpy's state per batch would cost more than a small batch
takes to load.  In worker processes, whose streams serve nobody else,
``random`` and numpy are seeded per batch too, and the workers' own base
seed comes from a generator of (seed, epoch, rank, start position) rather
than from the global one, which torch would otherwise consume.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.utils.data as torch_data

from drytorch.distributed import ranks

__all__ = ['DataLoader', 'Plan']


_MASK64 = (1 << 64) - 1
# Tags that keep the seed streams of batches and of workers apart.
_BATCH_STREAM = 1
_WORKER_STREAM = 2


class Plan:
    """The batches of one rank for one pass over the data.

    Attributes:
        batches: index lists, one per step; some may be empty (evaluation).
        num_samples: samples of the whole data set that this pass covers.
        epoch: the epoch of the pass; with ``rank`` and ``training`` it
            seeds the random draws made while loading.
        rank: the rank whose batches these are.
        training: whether this is a training pass.

    """

    def __init__(
        self,
        batches: list[torch.Tensor],
        num_samples: int,
        *,
        epoch: int = 0,
        rank: int = 0,
        training: bool = False,
    ) -> None:
        self.batches = batches
        self.num_samples = num_samples
        self.epoch = epoch
        self.rank = rank
        self.training = training

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
        """This rank's batches for one pass (see the module docstring).

        Raises:
            ValueError: in training, the data set has fewer samples than
                ranks, or ``drop_last`` would drop each rank's only batch.

        """
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
            if self.drop_last and self.batch_size > per_rank:
                # Caught here, before the first step: else every epoch
                # would run zero steps and report nothing, silently.
                raise ValueError(
                    f'batch_size={self.batch_size} is larger than the '
                    f'{per_rank} training samples of each rank ({size} '
                    f'samples over a world size of {world}), so drop_last '
                    'would drop every batch and train nothing. Use a '
                    f'batch_size of at most {per_rank}, or drop_last=False '
                    'to train on the smaller batch.'
                )
            mine = order[rank::world][:per_rank]
            if self.drop_last:
                mine = mine[: per_rank - per_rank % self.batch_size]
            batches = list(torch.split(mine, self.batch_size))
            return Plan(
                batches,
                per_rank * world,
                epoch=epoch,
                rank=rank,
                training=True,
            )
        # min(): a rank past the last sample (fewer samples than ranks)
        # gets none, rather than an arange that runs backwards and fails
        mine = torch.arange(min(rank, size), size, world)
        steps = math.ceil(math.ceil(size / world) / self.batch_size)
        batches = list(torch.split(mine, self.batch_size))
        empty = torch.empty(0, dtype=torch.long)
        batches += [empty] * (steps - len(batches))
        return Plan(batches, size, epoch=epoch, rank=rank, training=False)

    def iterate(
        self, plan: Plan, start_batch: int = 0
    ) -> Iterator[tuple[Any, int]]:
        """Yield ``(batch, n_samples)`` for the plan's batches from one on.

        Empty batches yield ``(None, 0)``: the step still happens, so that
        every rank runs the same number of steps.  The random draws of a
        batch depend on its position in the plan, not on ``start_batch``
        (see the module docstring).
        """
        if self.num_workers > 0:
            yield from self._iterate_workers(plan, start_batch)
            return
        dataset, collate_fn = self.dataset, self.collate_fn
        # Indexing tensors draws nothing: no seeding on the fast path.
        seeded = not isinstance(dataset, torch_data.TensorDataset)
        generator = torch.default_generator
        for position in range(start_batch, len(plan.batches)):
            indices = plan.batches[position]
            # shape[0], not len(): Tensor.__len__ runs Python code per call
            n = indices.shape[0]
            if n == 0:
                yield None, 0
            elif not seeded:
                yield _load(dataset, collate_fn, indices), n
            else:
                state = generator.get_state()
                generator.manual_seed(self._batch_seed(plan, position))
                try:
                    batch = _load(dataset, collate_fn, indices)
                finally:
                    generator.set_state(state)
                yield batch, n

    def stand_in(self) -> Any:
        """A batch of the data set's first sample, drawing no random number.

        For a forward pass that only keeps the ranks in step (a sharded
        module's evaluation step without samples).  Loaded under a seed of
        its own; the global generator is left as it was.
        """
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(_mix(_BATCH_STREAM, self.seed, -1))
        try:
            return _load(
                self.dataset, self.collate_fn, torch.zeros(1, dtype=torch.long)
            )
        finally:
            generator.set_state(state)

    def _batch_seed(self, plan: Plan, position: int) -> int:
        return _mix(
            _BATCH_STREAM,
            self.seed,
            plan.epoch,
            plan.rank,
            plan.training,
            position,
        )

    def _iterate_workers(
        self, plan: Plan, start_batch: int
    ) -> Iterator[tuple[Any, int]]:
        positions = range(start_batch, len(plan.batches))
        sizes = [plan.batches[p].shape[0] for p in positions]
        loaded = [p for p, n in zip(positions, sizes, strict=True) if n]
        if not loaded:  # no worker to start for steps without samples
            yield from ((None, 0) for _ in sizes)
            return
        batches = _SeededBatches(
            self.dataset,
            self.collate_fn,
            [plan.batches[p] for p in loaded],
            [self._batch_seed(plan, p) for p in loaded],
        )
        # An explicit generator: torch would otherwise draw the workers'
        # base seed from the global one, at a moment that differs between
        # a full pass and a resume, and shift every draw after it.
        generator = torch.Generator()
        generator.manual_seed(
            _mix(
                _WORKER_STREAM,
                self.seed,
                plan.epoch,
                plan.rank,
                plan.training,
                start_batch,
            )
        )
        loader = torch_data.DataLoader(
            batches,
            batch_size=None,  # each item is a whole batch already
            sampler=range(len(loaded)),
            collate_fn=_as_is,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
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


class _SeededBatches(torch_data.Dataset[Any]):
    """Item k is the k-th batch, loaded under the k-th seed (in a worker).

    A worker's streams serve nobody else, so torch, ``random`` and numpy are
    all seeded before each batch and none is put back.
    """

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable[[list[Any]], Any],
        batches: list[torch.Tensor],
        seeds: list[int],
    ) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batches = batches
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, key: int) -> Any:
        seed = self.seeds[key]
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)  # numpy takes 32 bits
        return _load(self.dataset, self.collate_fn, self.batches[key])


def _load(
    dataset: Any,
    collate_fn: Callable[[list[Any]], Any],
    indices: torch.Tensor,
) -> Any:
    """One batch: sliced from a TensorDataset's tensors, or collated."""
    if isinstance(dataset, torch_data.TensorDataset):
        batch = tuple(t[indices] for t in dataset.tensors)
        return batch[0] if len(batch) == 1 else batch
    getitems = getattr(dataset, '__getitems__', None)
    index_list = indices.tolist()
    if getitems is not None:
        items = getitems(index_list)
    else:
        items = [dataset[i] for i in index_list]
    return collate_fn(items)


def _as_is(batch: Any) -> Any:
    """Workers return collated batches (a function: lambdas do not pickle)."""
    return batch


def _mix(*values: int) -> int:
    """A seed below 2**63 from whole numbers, each of which changes it.

    SplitMix64's finaliser over the values in turn: nearby inputs (epoch 1
    and 2, batch 5 and 6) give unrelated seeds, with no hashing of strings
    (whose hash changes between processes).
    """
    state = 0
    for value in values:
        state = (state ^ (int(value) & _MASK64)) + 0x9E3779B97F4A7C15
        state &= _MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
        state ^= state >> 31
    return state >> 1


# DRYTorch has this helper here; it lives in its own module.
from drytorch.lib.sampling import take_from_dataset  # noqa: E402

__all__ += ['take_from_dataset']
