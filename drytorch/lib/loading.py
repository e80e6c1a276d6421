"""Batches of a map-style data set, sharded over ranks, resumable mid-epoch.

The order of an epoch is a function of (seed, epoch) only, so every rank
computes the same permutation without talking to the others, and a resumed
job recomputes it and skips the batches already done.

Training shards: the permutation is dealt round-robin to the ranks and the
tail that does not divide by the world size is dropped, so every rank runs
the same number of steps and the k-th global batch is a contiguous slice of
the permutation (``drytorch.lib.elastic``).  The batch is given per rank
(``batch_size``) or for all ranks together (``global_batch_size``, split
evenly): the second keeps the global batch, and with it the epoch's steps,
when a mid-epoch resume runs another number of ranks.

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

Workers (``num_workers > 0``) start for each pass, or once for every pass
with ``persistent_workers=True``: the plan of a pass travels to them with
each batch (see ``drytorch.lib.worker_pool``), so the same batches come
out either way.  ``pin_memory`` pins every batch, in this process too,
when there is a GPU to copy to.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data as torch_data

from drytorch.distributed import ranks
from drytorch.lib import elastic, streams
from drytorch.lib.worker_pool import WorkerPool, check_worker_options, pinned

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
            a batch in one call.  Or a
            :class:`torch.utils.data.IterableDataset` with ``len()`` (this
            rank's samples per pass), resumable inside an epoch when it
            implements ``state_dict()`` / ``load_state_dict()``; see
            ``drytorch.lib.streams``.
        batch_size: samples per batch on each rank.
        global_batch_size: samples per batch over all ranks together,
            instead of ``batch_size``: each of W ranks takes
            ``global_batch_size / W``, which must be whole.  It keeps the
            training the same under another number of ranks, which is what
            lets a mid-epoch checkpoint resume with it.
        seed: seeds the training order; saved in checkpoints.
        drop_last: drop a last incomplete training batch.
        collate_fn: turns a list of items into a batch.
        num_workers: worker processes of the underlying torch loader
            (0 loads in this process).
        pin_memory: pin the batches' host memory, for asynchronous copies
            to a GPU (in this process too); nothing without a GPU.
        persistent_workers: keep the worker processes from one pass to
            the next (epochs and evaluations), instead of starting them
            for each pass; :meth:`close` stops them.
        prefetch_factor: batches each worker loads ahead (None: torch's
            default, 2).

    Raises:
        ValueError: for a ``batch_size``, ``global_batch_size``,
            ``num_workers`` or ``prefetch_factor`` that is not a positive
            integer, neither or both batch sizes, a ``global_batch_size``
            that the ranks of the process group do not divide, an empty
            data set, or ``persistent_workers`` / ``prefetch_factor``
            without workers.
        TypeError: for a data set without ``len()``.

    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = None,
        *,
        global_batch_size: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        elastic.check_batch_sizes(batch_size, global_batch_size)
        if streams.is_stream(dataset):
            streams.check_stream(dataset, num_workers)
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
        self._batch_size = batch_size
        self.global_batch_size = global_batch_size
        # (epoch, world size it started with) of the last training plan,
        # and of the epoch a mid-epoch checkpoint resumes
        self._epoch_start: tuple[int, int] | None = None
        self._resumed: tuple[int, int] | None = None
        self.seed = seed
        self.drop_last = drop_last
        self.collate_fn = collate_fn or torch_data.default_collate
        check_worker_options(num_workers, persistent_workers, prefetch_factor)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        # pinning needs a device to pin for; without one it is skipped
        self._pin = pin_memory and torch.cuda.is_available()
        self._pool: WorkerPool | None = None
        self._stream = streams.StreamPosition()

    def __len__(self) -> int:
        """Samples in the data set."""
        return len(self.dataset)

    @property
    def is_stream(self) -> bool:
        """Whether the data set is iterable (positions kept per rank)."""
        return streams.is_stream(self.dataset)

    @property
    def batch_size(self) -> int:
        """Samples per batch on each rank of the current process group."""
        return self.per_rank_batch(ranks.get_world_size())

    def per_rank_batch(self, world: int) -> int:
        """Samples per batch on each of ``world`` ranks.

        Raises:
            ValueError: ``global_batch_size`` does not divide by ``world``.

        """
        return elastic.per_rank_batch(
            self._batch_size, self.global_batch_size, world
        )

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
        if streams.is_stream(self.dataset):
            return self._stream_plan(size, training, epoch, rank, world)
        batch_size = self.per_rank_batch(world)
        if training:
            order = self.permutation(epoch)
            started = world
            if self._resumed is not None and self._resumed[0] == epoch:
                started = self._resumed[1]  # the epoch's samples are its
            self._epoch_start = (epoch, started)
            per_rank = size // world
            if per_rank == 0:
                raise ValueError(
                    f'The data set has {size} samples, fewer than the '
                    f'{world} ranks; every rank needs at least one.'
                )
            if self.drop_last and batch_size > per_rank:
                # Caught here, before the first step: else every epoch
                # would run zero steps and report nothing, silently.
                raise ValueError(
                    f'batch_size={batch_size} is larger than the '
                    f'{per_rank} training samples of each rank ({size} '
                    f'samples over a world size of {world}), so drop_last '
                    'would drop every batch and train nothing. Use a '
                    f'batch_size of at most {per_rank}, or drop_last=False '
                    'to train on the smaller batch.'
                )
            epoch_samples = size // started * started
            batches = elastic.training_batches(
                order,
                epoch_samples,
                batch_size * world,
                rank,
                world,
                drop_last=self.drop_last,
            )
            return Plan(
                batches,
                epoch_samples,
                epoch=epoch,
                rank=rank,
                training=True,
            )
        # min(): a rank past the last sample (fewer samples than ranks)
        # gets none, rather than an arange that runs backwards and fails
        mine = torch.arange(min(rank, size), size, world)
        steps = math.ceil(math.ceil(size / world) / batch_size)
        batches = list(torch.split(mine, batch_size))
        empty = torch.empty(0, dtype=torch.long)
        batches += [empty] * (steps - len(batches))
        return Plan(batches, size, epoch=epoch, rank=rank, training=False)

    def _stream_plan(
        self, size: int, training: bool, epoch: int, rank: int, world: int
    ) -> Plan:
        """A pass over an iterable data set: ``size`` samples on this rank."""
        drop = self.drop_last and training
        batch_size = self.per_rank_batch(world)
        batches = streams.stream_plan_batches(size, batch_size, drop)
        if training and not batches:
            raise ValueError(
                f'batch_size={batch_size} is larger than the {size} '
                'samples the stream yields per rank, so drop_last would '
                'train nothing. Use a smaller batch or drop_last=False.'
            )
        return Plan(
            batches, size * world, epoch=epoch, rank=rank, training=training
        )

    def stream_state(self) -> Any:
        """This rank's position in an iterable data set (None: none kept).

        For a mid-epoch checkpoint: taken between two steps, it is the
        position after the batches that training consumed.
        """
        return self._stream.state(self.dataset)

    def load_stream_state(self, state: Any) -> None:
        """Resume the next pass that starts mid-epoch from ``state``."""
        self._stream.restore(state)

    def iterate(
        self, plan: Plan, start_batch: int = 0
    ) -> Iterator[tuple[Any, int]]:
        """Yield ``(batch, n_samples)`` for the plan's batches from one on.

        Empty batches yield ``(None, 0)``: the step still happens, so that
        every rank runs the same number of steps.  The random draws of a
        batch depend on its position in the plan, not on ``start_batch``
        (see the module docstring).
        """
        if streams.is_stream(self.dataset):
            batches = streams.stream_batches(
                self.dataset,
                self.collate_fn,
                [b.shape[0] for b in plan.batches],
                start_batch,
                self._stream,
                plan.epoch if plan.training else None,
            )
            for batch, n in batches:
                yield (pinned(batch) if self._pin else batch), n
            return
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
                continue
            if not seeded:
                batch = _load(dataset, collate_fn, indices)
            else:
                state = generator.get_state()
                generator.manual_seed(self._batch_seed(plan, position))
                try:
                    batch = _load(dataset, collate_fn, indices)
                finally:
                    generator.set_state(state)
            yield (pinned(batch) if self._pin else batch), n

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
        keys = [
            (self._batch_seed(plan, p), plan.batches[p].tolist())
            for p, n in zip(positions, sizes, strict=True)
            if n
        ]
        if not keys:  # no worker to start for steps without samples
            yield from ((None, 0) for _ in sizes)
            return
        if self.persistent_workers:
            # one base seed for the pool's life, from the loader's seed
            seed = _mix(_WORKER_STREAM, self.seed)
        else:
            seed = _mix(
                _WORKER_STREAM,
                self.seed,
                plan.epoch,
                plan.rank,
                plan.training,
                start_batch,
            )
        iterator = self._worker_pool().iterate(keys, seed)
        for n in sizes:
            yield (next(iterator), n) if n else (None, 0)

    def _worker_pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(
                self.dataset,
                functools.partial(_load_list, self.collate_fn),
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent=self.persistent_workers,
                prefetch_factor=self.prefetch_factor,
            )
        return self._pool

    def close(self) -> None:
        """Stop the worker processes that ``persistent_workers`` keeps."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (or copied) without the worker processes."""
        state = dict(self.__dict__)
        state['_pool'] = None
        return state

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to reproduce the order and position.

        The global batch and the world size the current epoch started with
        make a mid-epoch position global: the sample cursor is the steps
        done times the global batch, whatever the number of ranks.
        """
        world = ranks.get_world_size()
        return {
            'seed': self.seed,
            'batch_size': self.per_rank_batch(world),
            'global_batch_size': self.per_rank_batch(world) * world,
            'epoch_start': self._epoch_start,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the seed, and the samples of the epoch to resume.

        The epoch that a mid-epoch checkpoint was in keeps the samples of
        the world size it started with (the tail that one dropped), also
        when this job runs another.
        """
        self.seed = int(state['seed'])
        start = state.get('epoch_start')
        self._resumed = (
            None if start is None else (int(start[0]), int(start[1]))
        )

    def sample_cursor(self, steps_done: int) -> int:
        """Samples of the current epoch done after ``steps_done`` steps."""
        if self._epoch_start is None:
            return 0
        started = self._epoch_start[1]
        epoch_samples = len(self.dataset) // started * started
        return min(
            steps_done * self.batch_size * ranks.get_world_size(),
            epoch_samples,
        )

    def describe(self) -> dict[str, Any]:
        return {
            'dataset': type(self.dataset).__name__,
            'samples': len(self.dataset),
            'batch_size': self._batch_size,
            'global_batch_size': self.global_batch_size,
            'seed': self.seed,
        }


def _load_list(
    collate_fn: Callable[[list[Any]], Any], dataset: Any, indices: list[int]
) -> Any:
    """One batch from a list of indices (what workers receive)."""
    return _load(dataset, collate_fn, torch.tensor(indices, dtype=torch.long))


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
