"""DataLoader over an IterableDataset: plans by count, set_epoch, errors.

The resume inside an epoch (bit for bit with a stateful stream, refused
without a state) is in ``tests/preemption/test_preemption_streams.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.utils.data import IterableDataset

import drytorch


class Counting(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Yields ``size`` samples (i, i), or ``yields`` if it lies about len."""

    def __init__(self, size: int = 10, yields: int | None = None) -> None:
        self.size = size
        self.yields = size if yields is None else yields
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.yields):
            yield torch.tensor([float(i)]), torch.tensor(i)


class Unsized(IterableDataset[int]):
    def __iter__(self) -> Iterator[int]:
        yield 0


def test_a_stream_is_cut_into_batches() -> None:
    stream = Counting(10)
    loader = drytorch.DataLoader(stream, 4)
    plan = loader.plan(training=True, epoch=3)
    assert [len(b) for b in plan.batches] == [4, 4, 2]
    batches = list(loader.iterate(plan))
    assert [n for _, n in batches] == [4, 4, 2]
    labels = torch.cat([batch[1] for batch, _ in batches])
    assert labels.tolist() == list(range(10))
    assert stream.epochs == [3]  # training passes tell the epoch
    list(loader.iterate(loader.plan(training=False)))
    assert stream.epochs == [3]  # evaluation passes do not


def test_drop_last_drops_the_short_batch() -> None:
    loader = drytorch.DataLoader(Counting(10), 4, drop_last=True)
    assert [len(b) for b in loader.plan(training=True).batches] == [4, 4]
    with pytest.raises(ValueError, match='larger than the 10 samples'):
        drytorch.DataLoader(Counting(10), 16, drop_last=True).plan(
            training=True
        )


def test_a_stream_shorter_than_its_len_is_an_error() -> None:
    loader = drytorch.DataLoader(Counting(10, yields=6), 4)
    with pytest.raises(ValueError, match=r'ended after 6 samples, but its '):
        list(loader.iterate(loader.plan(training=True)))


def test_a_stream_needs_len_and_no_workers() -> None:
    with pytest.raises(TypeError, match='IterableDataset without __len__'):
        drytorch.DataLoader(Unsized(), 4)
    with pytest.raises(ValueError, match='Use num_workers=0'):
        drytorch.DataLoader(Counting(), 4, num_workers=2)


def test_a_stateless_stream_has_no_position() -> None:
    loader = drytorch.DataLoader(Counting(), 4)
    assert loader.stream_state() is None
    with pytest.raises(ValueError, match='which has no state_dict'):
        list(loader.iterate(loader.plan(training=True), start_batch=1))
