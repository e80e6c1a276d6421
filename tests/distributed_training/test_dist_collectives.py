"""The metric path costs ceil(S / N) all-reduces an epoch, whatever M is.

Each rank wraps ``torch.distributed.all_reduce`` before anything runs and
counts its calls during one training epoch and one validation pass of
S steps, with M reported values and a sync every N steps.  DDP's gradient
buckets go through its C++ reducer and never through that function, so
the count is drytorch's own: one packed all-reduce per sync point, and
none on the steps in between.  ``PackedReducer.calls`` must agree.  A
training epoch adds one small all-reduce of its own after the hooks (the
stop agreement), whatever M and N are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.distributed_training import _training_worker as worker
from tests.distributed_training.conftest import COUNT_CONFIGS, Launch


def counts(launched: Launch) -> list[tuple[int, dict[str, Any]]]:
    return [
        (rank['rank'], count)
        for rank in launched.ranks
        for count in rank['counts']
    ]


@pytest.mark.parametrize('world_size', [2, 3])
def test_one_all_reduce_per_sync_point(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    found = counts(launch(world_size))
    assert len(found) == world_size * len(COUNT_CONFIGS)
    for rank, count in found:
        every = count['every']
        assert count['train_names'] == count['metrics']
        assert count['val_names'] == count['metrics']
        train = worker.expected_syncs(count['train_steps'], every)
        val = worker.expected_syncs(count['val_steps'], every)
        where = f'rank {rank}, M={count["metrics"]}, N={every}'
        assert count['train_all_reduce'] == train + 1, where
        assert count['train_reducer_calls'] == train, where
        assert count['val_all_reduce'] == val, where
        assert count['val_reducer_calls'] == val, where


@pytest.mark.parametrize('world_size', [2, 3])
def test_the_count_does_not_depend_on_the_number_of_metrics(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    by_interval: dict[int, set[tuple[int, int]]] = {}
    metrics_seen: dict[int, set[int]] = {}
    for _, count in counts(launch(world_size)):
        every = count['every']
        calls = (count['train_all_reduce'], count['val_all_reduce'])
        by_interval.setdefault(every, set()).add(calls)
        metrics_seen.setdefault(every, set()).add(count['metrics'])
    for every, calls in by_interval.items():
        assert len(calls) == 1, f'N={every}: {calls}'
    # The comparison means something: 1 and 4 metrics at the same N.
    assert metrics_seen[4] == metrics_seen[100] == {1, 4}


@pytest.mark.parametrize('world_size', [2, 3])
def test_the_epoch_has_more_steps_than_sync_points(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    """Guards the test above against a data set too small to tell."""
    for _, count in counts(launch(world_size)):
        if count['every'] > 1:
            assert count['train_steps'] > count['train_all_reduce']


def test_one_process_runs_no_collective(
    launch: Callable[[int], Launch],
) -> None:
    for count in launch(1).zero['counts']:
        assert count['train_all_reduce'] == 0
        assert count['val_all_reduce'] == 0
        assert count['train_reducer_calls'] == 0
