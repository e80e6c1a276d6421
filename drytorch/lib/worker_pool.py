"""The worker processes of a DataLoader: one pool per pass, or one for all.

A pass hands the pool *keys*: (seed, sample indices) for each batch to
load.  A worker loads the key's batch under its seed (torch, ``random`` and
numpy seeded before each batch, none put back: a worker's streams serve
nobody else), so a batch is the same from whichever worker, in whichever
pass, also after a resume (see ``drytorch.lib.loading``).

Since the plan of a pass travels in the keys, the workers need nothing
but the data set and the collate function, which they receive once: with
``persistent=True`` the same processes serve every pass (epochs and
evaluations), torch's ``persistent_workers``.  A pass that stops early (a
preemption) leaves batches in flight; the next pass's ``iter()`` makes
torch drain them before it hands out new ones.

The workers' own base seed (which only code outside a batch could see)
comes from a generator of the pass (a pool per pass) or of the loader's
seed (a persistent pool), never from the global torch generator, which
torch would otherwise draw at a moment that differs between a full pass
and a resume.

The checks of the worker options (at a loader's construction) and the
pinning of batches loaded in this process live here too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data as torch_data

__all__ = ['Key', 'WorkerPool', 'check_worker_options', 'pinned']

Key = tuple[int, Sequence[int]]
"""A batch to load: its seed and the indices of its samples."""


class _Keys(torch_data.Sampler[Key]):
    """The keys of the current pass; replaced before each pass."""

    def __init__(self) -> None:
        self.keys: list[Key] = []

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _KeyedBatches(torch_data.Dataset[Any]):
    """Item ``(seed, indices)`` is that batch, loaded under that seed."""

    def __init__(
        self,
        dataset: Any,
        load: Callable[[Any, Sequence[int]], Any],
    ) -> None:
        self.dataset = dataset
        self.load = load

    def __getitem__(self, key: Key) -> Any:  # type: ignore[override]
        seed, indices = key
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)  # numpy takes 32 bits
        return self.load(self.dataset, indices)


def check_worker_options(
    num_workers: object, persistent: object, prefetch_factor: object
) -> None:
    """Refuse worker options that cannot work, before any pass."""
    if (
        isinstance(num_workers, bool)
        or not isinstance(num_workers, int)
        or num_workers < 0
    ):
        raise ValueError(
            f'num_workers must be a whole number >= 0, got {num_workers!r}.'
        )
    if not isinstance(persistent, bool):
        raise TypeError(
            f'persistent_workers must be True or False, got {persistent!r}.'
        )
    if prefetch_factor is not None and (
        isinstance(prefetch_factor, bool)
        or not isinstance(prefetch_factor, int)
        or prefetch_factor < 1
    ):
        raise ValueError(
            'prefetch_factor must be a positive integer (batches each '
            f'worker loads ahead), got {prefetch_factor!r}.'
        )
    if num_workers == 0 and (persistent or prefetch_factor is not None):
        given = (
            'persistent_workers=True'
            if persistent
            else (f'prefetch_factor={prefetch_factor!r}')
        )
        raise ValueError(
            f'{given} applies to worker processes, and num_workers=0 loads '
            'in this process. Pass num_workers=1 or more, or drop it.'
        )


def pinned(data: Any) -> Any:
    """``data`` with its tensors in pinned memory (nested containers too)."""
    if isinstance(data, torch.Tensor):
        return data.pin_memory()
    if isinstance(data, tuple | list):
        return type(data)(pinned(d) for d in data)
    if isinstance(data, dict):
        return {k: pinned(v) for k, v in data.items()}
    return data


def _as_is(batch: Any) -> Any:
    """Workers return collated batches (a function: lambdas do not pickle)."""
    return batch


class WorkerPool:
    """Worker processes that load keyed batches.

    Args:
        dataset: the map-style data set.
        load: ``load(dataset, indices)`` makes one batch (in a worker).
        num_workers: processes (at least 1).
        pin_memory: pin the batches (torch's pinning thread).
        persistent: keep the processes from one pass to the next.
        prefetch_factor: batches each worker loads ahead (None: torch's).

    """

    def __init__(
        self,
        dataset: Any,
        load: Callable[[Any, Sequence[int]], Any],
        *,
        num_workers: int,
        pin_memory: bool = False,
        persistent: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        self._batches = _KeyedBatches(dataset, load)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent = persistent
        self.prefetch_factor = prefetch_factor
        self._keys = _Keys()
        self._loader: torch_data.DataLoader[Any] | None = None
        #: torch loaders made so far: 1 for a persistent pool
        self.started = 0

    def iterate(self, keys: list[Key], seed: int) -> Iterator[Any]:
        """The batches of ``keys``, in order.

        ``seed`` seeds the workers' base seed of a pool made for this
        pass; a persistent pool keeps the one it started with.
        """
        self._keys.keys = keys
        if self._loader is None or not self.persistent:
            generator = torch.Generator()
            generator.manual_seed(seed)
            options: dict[str, Any] = {}
            if self.prefetch_factor is not None:
                options['prefetch_factor'] = self.prefetch_factor
            self._loader = torch_data.DataLoader(
                self._batches,
                batch_size=None,  # each item is a whole batch already
                sampler=self._keys,
                collate_fn=_as_is,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                generator=generator,
                persistent_workers=self.persistent,
                **options,
            )
            self.started += 1
        return iter(self._loader)

    def close(self) -> None:
        """Stop the worker processes (a persistent pool's, at once)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, '_iterator', None)
        shutdown = getattr(iterator, '_shutdown_workers', None)
        if shutdown is not None:
            shutdown()
