"""An epoch's metrics over 101 samples: 2 and 3 gloo ranks versus one.

101 divides by neither 2 nor 3.  Evaluation keeps every sample once, so
validation and test report exactly the single-process values.  Training
drops the tail that does not divide (the same samples on every rank), so
its epoch loss is compared with the loss of those samples; the weights are
kept fixed (see ``FROZEN_LR``) so that the loss depends on the data alone.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.distributed_training import _training_worker as worker
from tests.distributed_training.conftest import Launch

REL = 1e-6  # float32 batch means, float64 sums: only rounding differs


@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_training_epoch_loss_is_that_of_the_covered_samples(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    covered = worker.training_samples(world_size)
    assert len(covered) == 101 // world_size * world_size
    expected = worker.reference_metrics(covered)['CrossEntropy']
    for rank in launch(world_size).ranks:
        assert rank['weights_unchanged']
        got = rank['train_metrics']['CrossEntropy']
        assert got == pytest.approx(expected, rel=REL)


def test_one_process_trains_on_every_sample(
    launch: Callable[[int], Launch],
) -> None:
    expected = worker.reference_metrics()['CrossEntropy']
    got = launch(1).zero['train_metrics']['CrossEntropy']
    assert got == pytest.approx(expected, rel=REL)


@pytest.mark.parametrize('world_size', [2, 3])
@pytest.mark.parametrize('source', ['validation_metrics', 'test_metrics'])
def test_evaluation_equals_one_process(
    launch: Callable[[int], Launch], world_size: int, source: str
) -> None:
    single = launch(1).zero[source]
    reference = worker.reference_metrics()
    assert set(single) <= set(reference)
    for name, value in single.items():
        assert value == pytest.approx(reference[name], rel=REL)
    for rank in launch(world_size).ranks:
        assert rank[source].keys() == single.keys()
        for name, value in single.items():
            assert rank[source][name] == pytest.approx(value, rel=REL), name


@pytest.mark.parametrize('world_size', [2, 3])
def test_every_rank_reports_the_very_same_numbers(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    """Hooks decide from these values, so ranks must agree to the bit."""
    ranks = launch(world_size).ranks
    for source in ('train_metrics', 'validation_metrics', 'test_metrics'):
        assert all(rank[source] == ranks[0][source] for rank in ranks)


@pytest.mark.parametrize('world_size', [2, 3])
def test_ranks_train_one_model_with_ddp(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    ranks = launch(world_size).ranks
    assert [rank['rank'] for rank in ranks] == list(range(world_size))
    assert all(rank['world_size'] == world_size for rank in ranks)
    assert all(rank['backend'] == 'gloo' for rank in ranks)
    assert all(rank['ddp'] for rank in ranks)
    weights = ranks[0]['trained_weights']
    assert all(rank['trained_weights'] == weights for rank in ranks)
    assert not launch(1).zero['ddp']
