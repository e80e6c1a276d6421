"""Tests of DataLoader: batches, order, rank shards and resuming."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

import drytorch


def numbered(n: int) -> TensorDataset:
    """Samples whose input and target are their own index."""
    index = torch.arange(n)
    return TensorDataset(index.float().unsqueeze(1), index)


def flat(batches: list[torch.Tensor]) -> list[int]:
    return [int(i) for batch in batches for i in batch]


def test_training_batches_cover_the_epochs_order() -> None:
    loader = drytorch.DataLoader(numbered(10), 4, seed=1)
    plan = loader.plan(training=True, epoch=1)
    assert [len(b) for b in plan.batches] == [4, 4, 2]
    assert plan.num_samples == 10
    order = loader.permutation(1)
    assert flat(plan.batches) == order.tolist()
    fetched = list(loader.iterate(plan))
    assert [n for _, n in fetched] == [4, 4, 2]
    for (inputs, targets), indices in zip(
        (batch for batch, _ in fetched), plan.batches, strict=True
    ):
        assert torch.equal(targets, indices)
        assert torch.equal(inputs.squeeze(1), indices.float())


def test_drop_last_drops_the_incomplete_batch() -> None:
    loader = drytorch.DataLoader(numbered(10), 4, drop_last=True)
    plan = loader.plan(training=True, epoch=1)
    assert [len(b) for b in plan.batches] == [4, 4]


def test_training_order_is_a_function_of_seed_and_epoch_only() -> None:
    first = drytorch.DataLoader(numbered(50), 8, seed=3)
    torch.manual_seed(123)  # the global generator plays no part
    second = drytorch.DataLoader(numbered(50), 8, seed=3)
    for epoch in (1, 2, 7):
        order = first.permutation(epoch)
        assert sorted(order.tolist()) == list(range(50))
        assert torch.equal(order, second.permutation(epoch))
        assert torch.equal(order, first.permutation(epoch))
    assert not torch.equal(first.permutation(1), first.permutation(2))
    other_seed = drytorch.DataLoader(numbered(50), 8, seed=4)
    assert not torch.equal(first.permutation(1), other_seed.permutation(1))


def test_the_seed_is_saved_and_restored() -> None:
    saved = drytorch.DataLoader(numbered(20), 4, seed=11)
    restored = drytorch.DataLoader(numbered(20), 4, seed=0)
    restored.load_state_dict(saved.state_dict())
    assert restored.seed == 11
    assert torch.equal(restored.permutation(5), saved.permutation(5))


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 200),
    world=st.integers(1, 5),
    batch=st.integers(1, 16),
    epoch=st.integers(1, 4),
    drop_last=st.booleans(),
)
def test_training_shards_drop_the_same_tail_on_every_rank(
    size: int, world: int, batch: int, epoch: int, drop_last: bool
) -> None:
    if size < world:
        return
    loader = drytorch.DataLoader(
        numbered(size), batch, seed=2, drop_last=drop_last
    )
    if drop_last and batch > size // world:
        with pytest.raises(ValueError, match='would drop every batch'):
            loader.plan(training=True, epoch=epoch, rank=0, world_size=world)
        return
    plans = [
        loader.plan(training=True, epoch=epoch, rank=r, world_size=world)
        for r in range(world)
    ]
    assert len({len(plan) for plan in plans}) == 1
    assert len({tuple(len(b) for b in p.batches) for p in plans}) == 1
    kept = size // world * world
    assert all(plan.num_samples == kept for plan in plans)
    seen = [i for plan in plans for i in flat(plan.batches)]
    assert len(seen) == len(set(seen))  # no sample twice in an epoch
    order = loader.permutation(epoch).tolist()
    if not drop_last:
        # the tail that does not divide by the world size is dropped
        assert sorted(seen) == sorted(order[:kept])
    # the k-th global batch is a contiguous slice of the epoch's order
    for step in range(len(plans[0])):
        together = sorted(i for p in plans for i in p.batches[step].tolist())
        start = step * batch * world
        assert together == sorted(order[start : start + len(together)])


def test_training_needs_a_sample_per_rank() -> None:
    loader = drytorch.DataLoader(numbered(3), 2)
    with pytest.raises(ValueError, match='3 samples, fewer than the 4'):
        loader.plan(training=True, epoch=1, rank=0, world_size=4)


def _check_evaluation_shards(size: int, world: int, batch: int) -> None:
    loader = drytorch.DataLoader(numbered(size), batch)
    plans = [
        loader.plan(training=False, rank=r, world_size=world)
        for r in range(world)
    ]
    steps = math.ceil(math.ceil(size / world) / batch)
    assert [len(plan) for plan in plans] == [steps] * world
    assert all(plan.num_samples == size for plan in plans)
    seen = sorted(i for plan in plans for i in flat(plan.batches))
    assert seen == list(range(size))  # every sample exactly once


@pytest.mark.parametrize('world', [2, 3, 4])
@pytest.mark.parametrize('batch', [1, 8, 10, 64])
def test_evaluation_keeps_101_samples_once_over_ranks(
    world: int, batch: int
) -> None:
    _check_evaluation_shards(101, world, batch)


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(1, 300),
    world=st.integers(1, 6),
    batch=st.integers(1, 20),
)
def test_evaluation_keeps_every_sample_once(
    size: int, world: int, batch: int
) -> None:
    _check_evaluation_shards(size, world, batch)


def test_evaluation_with_fewer_samples_than_ranks() -> None:
    # ranks past the last sample get one empty step, not an error
    _check_evaluation_shards(2, 4, 3)
    loader = drytorch.DataLoader(numbered(2), 3)
    plan = loader.plan(training=False, rank=3, world_size=4)
    assert [len(b) for b in plan.batches] == [0]


def test_evaluation_steps_with_no_sample_still_happen() -> None:
    # 5 samples over 4 ranks: rank 0 has two, the others one; with batches
    # of one sample every rank runs two steps, the others' second empty.
    loader = drytorch.DataLoader(numbered(5), 1)
    plan = loader.plan(training=False, rank=3, world_size=4)
    assert [len(b) for b in plan.batches] == [1, 0]
    assert [n for _, n in loader.iterate(plan)] == [1, 0]
    assert list(loader.iterate(plan))[1] == (None, 0)


def test_iterating_from_a_batch_resumes_the_same_epoch() -> None:
    loader = drytorch.DataLoader(numbered(30), 4, seed=5)
    plan = loader.plan(training=True, epoch=3)
    whole = [targets for (_, targets), _ in loader.iterate(plan)]
    rest = [targets for (_, targets), _ in loader.iterate(plan, 5)]
    assert len(rest) == len(whole) - 5
    for got, expected in zip(rest, whole[5:], strict=True):
        assert torch.equal(got, expected)
    # a new loader with the same seed (a new process) continues alike
    again = drytorch.DataLoader(numbered(30), 4, seed=5)
    replanned = again.plan(training=True, epoch=3)
    fresh = [t for (_, t), _ in again.iterate(replanned, 5)]
    assert all(torch.equal(a, b) for a, b in zip(fresh, rest, strict=True))


def test_a_data_set_without_getitems_is_collated() -> None:
    items = [(torch.tensor([float(i)]), i) for i in range(6)]
    loader = drytorch.DataLoader(items, 4)
    plan = loader.plan(training=False)
    (inputs, targets), n = next(loader.iterate(plan))
    assert n == 4
    assert inputs.shape == (4, 1)
    assert targets.tolist() == [0, 1, 2, 3]


def test_worker_processes_load_the_same_batches() -> None:
    dataset = numbered(7)
    plan_args = {'training': False, 'rank': 1, 'world_size': 2}
    plain = drytorch.DataLoader(dataset, 2)
    workers = drytorch.DataLoader(dataset, 2, num_workers=1)
    expected = list(plain.iterate(plain.plan(**plan_args)))
    got = list(workers.iterate(workers.plan(**plan_args)))
    assert [n for _, n in got] == [n for _, n in expected] == [2, 1]
    for (batch, _), (reference, _) in zip(got, expected, strict=True):
        assert torch.equal(batch[1], reference[1])


@pytest.mark.parametrize(
    ('dataset', 'batch_size', 'error', 'match'),
    [
        (numbered(4), 0, ValueError, 'positive integer, got 0'),
        (numbered(4), 2.5, ValueError, 'got 2.5'),
        (iter(range(3)), 2, TypeError, 'has no len'),
        ([], 2, ValueError, 'empty'),
    ],
)
def test_bad_loader_arguments_are_named(
    dataset: object, batch_size: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        drytorch.DataLoader(dataset, batch_size)  # type: ignore[arg-type]
