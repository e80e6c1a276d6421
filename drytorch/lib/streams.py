"""Iterable data sets: batches from a stream, with a resumable position.

A ``torch.utils.data.IterableDataset`` has no index to plan with, so its
pass is planned by count: ``len(dataset)`` samples on this rank (the data
set shards itself over the ranks, and every rank must report the same
length, so that all run the same number of steps), cut into batches.
Each pass starts a new iterator; a training pass first calls the data
set's ``set_epoch(epoch)`` when it has one (the torchdata convention), so
the data set can reshuffle.

The position inside an epoch belongs to the data set: one that implements
``state_dict()`` and ``load_state_dict()`` (the protocol of torchdata's
``StatefulDataLoader``) has its state saved per rank in a mid-epoch
checkpoint, and loaded back before the resumed pass starts its iterator,
which then continues where the preempted one stopped.  A data set without
them cannot resume inside an epoch: the resumed pass refuses to start and
names what to implement, instead of silently training on other samples.

Streams load in this process only: with worker processes, batches are
prefetched, and the data set's state in this process would not say which
samples training consumed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data as torch_data

__all__ = ['StreamPosition', 'is_stream', 'stream_batches']


def is_stream(dataset: object) -> bool:
    """Whether ``dataset`` is iterable-style (no index to plan with)."""
    return isinstance(dataset, torch_data.IterableDataset)


def is_stateful(dataset: object) -> bool:
    """Whether ``dataset`` can save and restore its position."""
    return callable(getattr(dataset, 'state_dict', None)) and callable(
        getattr(dataset, 'load_state_dict', None)
    )


def check_stream(dataset: Any, num_workers: int) -> None:
    """Refuse a stream that cannot be planned or resumed exactly.

    Raises:
        TypeError: for a stream without ``len()``.
        ValueError: for a stream with worker processes.

    """
    name = type(dataset).__name__
    try:
        len(dataset)
    except TypeError:
        raise TypeError(
            f'{name} is an IterableDataset without __len__; give it one '
            "that returns this rank's samples per epoch (the same on every "
            'rank), so that every rank runs the same number of steps.'
        ) from None
    if num_workers:
        raise ValueError(
            f'{name} is an IterableDataset, and num_workers={num_workers} '
            'would prefetch from it in other processes, so its state here '
            'would not say which samples training consumed. Use '
            'num_workers=0.'
        )


class StreamPosition:
    """A stream's saved state, waiting for the resumed pass that uses it."""

    def __init__(self) -> None:
        self.pending: Any = None

    def state(self, dataset: Any) -> Any:
        """The data set's state now (None without the protocol)."""
        if not is_stream(dataset) or not is_stateful(dataset):
            return None
        return dataset.state_dict()

    def restore(self, state: Any) -> None:
        """Keep ``state`` for the next pass that starts inside an epoch."""
        self.pending = state


def stream_batches(
    dataset: Any,
    collate_fn: Callable[[list[Any]], Any],
    sizes: list[int],
    start_batch: int,
    position: StreamPosition,
    epoch: int | None,
) -> Iterator[tuple[Any, int]]:
    """Yield ``(batch, n)`` for batches ``start_batch``... of ``sizes``.

    ``epoch`` (training passes) goes to the data set's ``set_epoch``.

    Raises:
        ValueError: when the pass starts inside an epoch and there is no
            saved state to continue from (the data set does not implement
            the protocol); when the stream ends before ``len()`` said.

    """
    name = type(dataset).__name__
    pending, position.pending = position.pending, None
    if start_batch:
        if pending is None:
            missing = (
                'state_dict() and load_state_dict()'
                if not is_stateful(dataset)
                else 'a state in the checkpoint'
            )
            raise ValueError(
                f'Resuming inside an epoch, at batch {start_batch}, needs '
                f'the position of the IterableDataset {name}, which has no '
                f'{missing}. Implement state_dict() and load_state_dict() '
                "(torchdata's Stateful protocol: the state returned must "
                'make the next iter() continue after the samples already '
                'yielded), or restart from a checkpoint at an epoch end.'
            )
        dataset.load_state_dict(pending)
    elif epoch is not None:
        set_epoch = getattr(dataset, 'set_epoch', None)
        if callable(set_epoch):
            set_epoch(epoch)
    iterator = iter(dataset)
    consumed = sum(sizes[:start_batch])
    for n in sizes[start_batch:]:
        items = list(itertools.islice(iterator, n))
        if len(items) < n:
            raise ValueError(
                f'{name} ended after {consumed + len(items)} samples, but '
                f'its len() is {sum(sizes)}: make len() the number of '
                'samples one pass yields on this rank.'
            )
        consumed += n
        yield collate_fn(items), n


def stream_plan_batches(
    size: int, batch_size: int, drop_last: bool
) -> list[torch.Tensor]:
    """The batches of a pass: sample positions in the stream."""
    if drop_last:
        size -= size % batch_size
    if size == 0:  # split would give one empty batch
        return []
    return list(torch.split(torch.arange(size), batch_size))
