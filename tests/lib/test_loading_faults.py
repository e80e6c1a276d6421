"""DataLoader faults: worker seeds on resume, and batches that cannot fit.

The data set here draws from torch, ``random`` and numpy in ``__getitem__``,
as an augmentation would; the consumer draws from the global torch
generator, as dropout would.  Workers use the default start method and are
kept cheap (tiny samples, two workers), so that the tests stay fast.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import drytorch

WORKERS = [0, 2]


class Augmented(Dataset[torch.Tensor]):
    """Sample i is [i, a torch draw, a random draw, a numpy draw]."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(
            [
                float(index),
                torch.rand(()).item(),
                random.random(),
                float(np.random.rand()),
            ],
            dtype=torch.float64,
        )


def rng_states() -> tuple[Any, ...]:
    """The global streams, as a checkpoint saves them."""
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def restore(states: tuple[Any, ...]) -> None:
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


def consume(
    batches: Iterator[tuple[Any, int]],
    checkpoint_after: int | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[Any, ...] | None]:
    """The batches, what a dropout-like step makes of them, a checkpoint.

    The checkpoint is the global streams after ``checkpoint_after`` steps,
    which is what a mid-epoch checkpoint holds.
    """
    seen, outputs, saved = [], [], None
    for step, (batch, _) in enumerate(batches, start=1):
        seen.append(batch)
        outputs.append(batch * torch.rand(batch.shape, dtype=batch.dtype))
        if step == checkpoint_after:
            saved = rng_states()  # between steps, as the trainer saves
    return seen, outputs, saved


@pytest.fixture
def _global_seeds() -> Iterator[None]:
    """Known global streams, put back after the test."""
    before = rng_states()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    yield
    restore(before)


@pytest.mark.usefixtures('_global_seeds')
@pytest.mark.parametrize('workers', WORKERS)
def test_a_resumed_epoch_repeats_the_tail_of_a_full_pass(
    workers: int,
) -> None:
    start = 3
    loader = drytorch.DataLoader(Augmented(24), 4, seed=7, num_workers=workers)
    plan = loader.plan(training=True, epoch=2)
    whole, outputs, saved = consume(loader.iterate(plan), start)
    assert saved is not None
    # a new process: a fresh loader, the checkpoint's streams put back
    restore(saved)
    fresh = drytorch.DataLoader(Augmented(24), 4, seed=7, num_workers=workers)
    replanned = fresh.plan(training=True, epoch=2)
    rest, rest_outputs, _ = consume(fresh.iterate(replanned, start))
    assert len(rest) == len(whole) - start
    for got, expected in zip(rest, whole[start:], strict=True):
        assert torch.equal(got, expected)
    for got, expected in zip(rest_outputs, outputs[start:], strict=True):
        assert torch.equal(got, expected)


@pytest.mark.usefixtures('_global_seeds')
@pytest.mark.parametrize('workers', WORKERS)
def test_loading_leaves_the_global_torch_generator_alone(
    workers: int,
) -> None:
    loader = drytorch.DataLoader(Augmented(12), 4, num_workers=workers)
    before = torch.get_rng_state()
    for training in (True, False):
        plan = loader.plan(training=training, epoch=1)
        assert len(list(loader.iterate(plan))) == 3
        assert len(list(loader.iterate(plan, 1))) == 2
    # as if no batch had been loaded: dropout afterwards is the same
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.usefixtures('_global_seeds')
def test_torch_draws_are_the_same_with_and_without_workers() -> None:
    plans = {}
    batches = {}
    for workers in WORKERS:
        loader = drytorch.DataLoader(
            Augmented(16), 4, seed=1, num_workers=workers
        )
        plans[workers] = loader.plan(training=True, epoch=3)
        batches[workers] = [b for b, _ in loader.iterate(plans[workers], 1)]
    for plain, forked in zip(batches[0], batches[2], strict=True):
        assert torch.equal(plain[:, :2], forked[:, :2])


def test_draws_differ_between_epochs_ranks_and_seeds() -> None:
    def torch_draws(seed: int, epoch: int, rank: int) -> dict[int, float]:
        loader = drytorch.DataLoader(Augmented(8), 2, seed=seed)
        plan = loader.plan(training=True, epoch=epoch, rank=rank, world_size=2)
        rows = torch.cat([b for b, _ in loader.iterate(plan)])
        return {int(row[0]): float(row[1]) for row in rows}

    reference = torch_draws(0, 1, 0)
    assert torch_draws(0, 1, 0) == reference
    for other in (torch_draws(0, 2, 0), torch_draws(1, 1, 0)):
        shared = reference.keys() & other.keys()
        assert all(reference[i] != other[i] for i in shared)
    assert not set(torch_draws(0, 1, 1).values()) & set(reference.values())


def numbered(n: int) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(torch.arange(n))


@pytest.mark.parametrize(
    ('world', 'size', 'batch', 'per_rank'),
    [(1, 10, 16, 10), (2, 10, 8, 5), (2, 11, 6, 5)],
)
def test_a_batch_larger_than_the_shard_is_refused_with_drop_last(
    world: int, size: int, batch: int, per_rank: int
) -> None:
    loader = drytorch.DataLoader(numbered(size), batch, drop_last=True)
    expected = (
        f'batch_size={batch} is larger than the {per_rank} training samples '
        f'of each rank \\({size} samples over a world size of {world}\\)'
    )
    for rank in range(world):
        with pytest.raises(ValueError, match=expected) as caught:
            loader.plan(training=True, epoch=1, rank=rank, world_size=world)
        message = str(caught.value)
        assert f'batch_size of at most {per_rank}' in message
        assert 'drop_last=False' in message


def test_a_batch_that_fits_the_shard_or_keeps_the_last_is_fine() -> None:
    fits = drytorch.DataLoader(numbered(10), 5, drop_last=True)
    plan = fits.plan(training=True, epoch=1, rank=1, world_size=2)
    assert [len(b) for b in plan.batches] == [5]
    kept = drytorch.DataLoader(numbered(10), 8, drop_last=False)
    plan = kept.plan(training=True, epoch=1, rank=1, world_size=2)
    assert [len(b) for b in plan.batches] == [5]
    # evaluation never drops a batch: nothing to refuse
    evaluation = drytorch.DataLoader(numbered(10), 8, drop_last=True)
    plan = evaluation.plan(training=False, rank=1, world_size=2)
    assert [len(b) for b in plan.batches] == [5]
