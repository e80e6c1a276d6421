"""Tests of elastic training shards: global batches, world changes, refusals.

Plans are made for each rank of a world here, in one process (``plan``
takes the rank and world size); the real preemption and resume with
another number of gloo ranks is in ``tests/preemption``.
"""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

import drytorch
from drytorch.core import exceptions
from drytorch.lib import elastic


def numbered(n: int) -> TensorDataset:
    index = torch.arange(n)
    return TensorDataset(index.float().unsqueeze(1), index)


def rank_plans(
    loader: drytorch.DataLoader, world: int, epoch: int = 1
) -> list[list[torch.Tensor]]:
    return [
        loader.plan(
            training=True, epoch=epoch, rank=r, world_size=world
        ).batches
        for r in range(world)
    ]


@pytest.mark.parametrize('world', [1, 2, 3, 4, 6])
@pytest.mark.parametrize('drop_last', [False, True])
def test_a_global_batch_plans_as_its_share_per_rank(
    world: int, drop_last: bool
) -> None:
    """global_batch_size=G on W ranks is batch_size=G/W: the same batches."""
    given_global = drytorch.DataLoader(
        numbered(53), global_batch_size=12, seed=4, drop_last=drop_last
    )
    per_rank = drytorch.DataLoader(
        numbered(53), 12 // world, seed=4, drop_last=drop_last
    )
    for mine, theirs in zip(
        rank_plans(given_global, world),
        rank_plans(per_rank, world),
        strict=True,
    ):
        assert [b.tolist() for b in mine] == [b.tolist() for b in theirs]
    assert given_global.per_rank_batch(world) == 12 // world


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(12, 120),
    started=st.sampled_from([1, 2, 3, 4]),
    resumed=st.sampled_from([1, 2, 3, 4, 6]),
    steps_done=st.integers(0, 12),
    drop_last=st.booleans(),
)
def test_an_epoch_resumed_on_another_world_takes_each_sample_once(
    size: int, started: int, resumed: int, steps_done: int, drop_last: bool
) -> None:
    """The steps done by N ranks and the rest by M: the epoch of N, once."""
    saved = drytorch.DataLoader(
        numbered(size), global_batch_size=12, seed=2, drop_last=drop_last
    )
    before = rank_plans(saved, started, epoch=3)
    total = len(before[0])
    steps_done = min(steps_done, total)
    state = saved.state_dict()
    assert state['epoch_start'] == (3, started)
    loader = drytorch.DataLoader(
        numbered(size), global_batch_size=12, seed=0, drop_last=drop_last
    )
    loader.load_state_dict(state)
    try:
        after = rank_plans(loader, resumed, epoch=3)
    except ValueError as err:  # the last batch is smaller than the world
        assert 'fewer than the' in str(err)
        last = (size // started * started) % 12
        assert not drop_last and 0 < last < resumed
        return
    assert all(len(plan) == total for plan in after)  # the same steps
    seen = collections.Counter(
        int(i)
        for plans, steps in (
            (before, range(steps_done)),
            (after, range(steps_done, total)),
        )
        for plan in plans
        for step in steps
        for i in plan[step]
    )
    epoch_samples = {int(i) for plan in before for b in plan for i in b}
    assert seen == dict.fromkeys(epoch_samples, 1)
    # every full step keeps the global batch
    for step in range(total):
        assert sum(len(plan[step]) for plan in after) == sum(
            len(plan[step]) for plan in before
        )


def test_a_resumed_epoch_keeps_the_tail_of_the_world_that_started_it() -> None:
    """50 samples on 4 ranks drop 2; on 1 rank the next epoch drops none."""
    saved = drytorch.DataLoader(numbered(50), global_batch_size=12)
    saved.plan(training=True, epoch=1, rank=0, world_size=4)
    loader = drytorch.DataLoader(numbered(50), global_batch_size=12)
    loader.load_state_dict(saved.state_dict())
    assert (
        loader.plan(training=True, epoch=1, rank=0, world_size=1).num_samples
        == 48
    )
    assert (
        loader.plan(training=True, epoch=2, rank=0, world_size=1).num_samples
        == 50
    )


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({}, 'one batch size'),
        ({'batch_size': 4, 'global_batch_size': 8}, 'one batch size'),
        ({'global_batch_size': 0}, 'global_batch_size must be a positive'),
        ({'global_batch_size': True}, 'global_batch_size must be a positive'),
    ],
)
def test_batch_sizes_are_checked_when_made(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        drytorch.DataLoader(numbered(8), **kwargs)  # type: ignore[arg-type]


def test_a_global_batch_the_ranks_do_not_divide_is_named() -> None:
    loader = drytorch.DataLoader(numbered(40), global_batch_size=32)
    with pytest.raises(
        ValueError,
        match=r'global_batch_size=32 does not divide by the 3 ranks.*'
        r'multiple of 3, or run a number of processes that divides 32',
    ):
        loader.plan(training=True, rank=0, world_size=3)


def _state(loader: drytorch.DataLoader, world: int, batch: int) -> dict:
    return {
        'world_size': world,
        'loader': {'batch_size': batch, 'global_batch_size': batch * world},
    }


def test_a_world_change_refuses_what_cannot_keep_the_global_batch() -> None:
    per_rank = drytorch.DataLoader(numbered(40), 16)
    with pytest.raises(
        exceptions.WorldSizeChangedError,
        match=r'written by 2 process\(es\).*runs 1: its global batch was 32 '
        r'samples and would be 16 here.*global_batch_size=32 \(each of the 1 '
        r'ranks then takes 32\)',
    ):
        elastic.check_world_change(per_rank, _state(per_rank, 2, 16), 1)
    other = drytorch.DataLoader(numbered(40), global_batch_size=24)
    with pytest.raises(
        exceptions.WorldSizeChangedError,
        match=r'global_batch_size is 24.*with global_batch_size=32',
    ):
        elastic.check_world_change(other, _state(other, 2, 16), 1)
    kept = drytorch.DataLoader(numbered(40), global_batch_size=32)
    elastic.check_world_change(kept, _state(kept, 2, 16), 1)
    elastic.check_world_change(kept, _state(kept, 2, 16), 4)
    with pytest.raises(
        exceptions.WorldSizeChangedError,
        match=r'global batch of 32 samples does not divide into 3 ranks',
    ):
        elastic.check_world_change(kept, _state(kept, 2, 16), 3)


def test_a_last_batch_smaller_than_the_new_world_is_refused() -> None:
    """50 samples on 2 ranks: a last batch of 2 (48 + 2), not for 3 ranks."""
    loader = drytorch.DataLoader(numbered(50), global_batch_size=24)
    state = _state(loader, 2, 12)
    state['loader']['epoch_start'] = (1, 2)
    elastic.check_world_change(loader, state, 1)
    with pytest.raises(
        exceptions.WorldSizeChangedError,
        match=r'last batch holds 2 samples, fewer than the 3 ranks.*'
        r'run at most 2 processes',
    ):
        elastic.check_world_change(loader, state, 3)
    dropped = drytorch.DataLoader(
        numbered(50), global_batch_size=24, drop_last=True
    )
    elastic.check_world_change(dropped, state, 3)


def test_an_old_checkpoint_gives_its_global_batch_per_rank() -> None:
    state = {'world_size': 3, 'loader': {'seed': 0, 'batch_size': 8}}
    assert elastic.saved_global_batch(state) == 24


def test_rank_zero_carries_every_saved_ranks_partial_sums() -> None:
    saved = [
        {
            'accumulator': {
                'names': ('CE', 'acc'),
                'sums': [1.5, 2.0],
                'count': 4,
            }
        },
        {
            'accumulator': {
                'names': ('CE', 'acc'),
                'sums': [0.5, 1.0],
                'count': 3,
            }
        },
    ]
    zero = elastic.merged_accumulator(saved, 0)
    assert zero == {'names': ('CE', 'acc'), 'sums': [2.0, 3.0], 'count': 7}
    for rank in (1, 2):
        other = elastic.merged_accumulator(saved, rank)
        assert other == {
            'names': ('CE', 'acc'),
            'sums': [0.0, 0.0],
            'count': 0,
        }


class _Stream(torch.utils.data.IterableDataset[int]):
    def __len__(self) -> int:
        return 8

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(8))


def test_an_iterable_data_set_cannot_change_world_mid_epoch() -> None:
    loader = drytorch.DataLoader(_Stream(), global_batch_size=4)
    with pytest.raises(
        exceptions.WorldSizeChangedError,
        match='iterable data set, whose position is kept per rank',
    ):
        elastic.check_world_change(loader, _state(loader, 2, 2), 1)
