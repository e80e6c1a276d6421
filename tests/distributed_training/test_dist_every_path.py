"""Two real gloo ranks: a decision, failure or difference on one rank.

Every rank must end the same way, in time, and say why: a stop decided
on one rank, a checkpoint rank zero cannot write (or takes too long to),
a checkpoint one rank cannot read, a non-finite loss on rank 1, and a
resume with more ranks than the checkpoint knew.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.distributed_training import _every_path_worker as worker
from tests.helpers.multiprocess import LaunchResult, run_distributed

# far above what the tests allow for: a rank that waited for the process
# group's timeout would show as a failure of the time checks
GROUP_TIMEOUT = 60


def launch(
    tmp_path: pathlib.Path, func: object, *args: object, world: int = 2
) -> LaunchResult:
    result = run_distributed(
        world,
        func=func,  # type: ignore[arg-type]
        args=(str(tmp_path / 'experiments'), *args),
        env={
            'DRYTORCH_INIT_MODE': 'none',
            'DRYTORCH_DIST_TIMEOUT': str(GROUP_TIMEOUT),
        },
        cwd=tmp_path,
        timeout=120,
    )
    return result.check()


@pytest.mark.parametrize('rank', [0, 1])
def test_a_stop_decided_on_one_rank_stops_every_rank_after_that_epoch(
    tmp_path: pathlib.Path, rank: int
) -> None:
    values = launch(tmp_path, worker.terminate_on_one_rank, rank, 2).values
    assert values == [(2, f'decided on rank {rank}')] * 2


def test_a_checkpoint_rank_zero_cannot_write_fails_every_rank_with_the_cause(
    tmp_path: pathlib.Path,
) -> None:
    values = launch(tmp_path, worker.write_into_a_file).values
    for rank, (kind, message, seconds) in enumerate(values):
        assert kind == 'CheckpointWriteError', (rank, message)
        assert 'blocker' in message, message
        assert 'NotADirectoryError' in message or 'FileExists' in message
        assert seconds < GROUP_TIMEOUT / 2, (rank, seconds)
    assert (tmp_path / 'experiments' / 'blocker').read_text() == 'not a folder'


def test_the_wait_for_a_checkpoint_write_has_its_own_timeout(
    tmp_path: pathlib.Path,
) -> None:
    values = launch(tmp_path, worker.slow_write, 3.0).values
    kind, message, seconds = values[1]
    assert kind == 'DryTorchError', message
    assert 'DRYTORCH_CHECKPOINT_TIMEOUT' in message
    assert seconds < GROUP_TIMEOUT / 2, seconds
    assert values[0][0] in ('CheckpointWriteError', 'DryTorchError')


def test_rank_zero_chooses_the_checkpoint_and_every_rank_loads_it(
    tmp_path: pathlib.Path,
) -> None:
    assert launch(tmp_path, worker.save_epochs, 3).values == [3, 3]
    # rank 0 cannot read the newest: it chooses the one before, for all
    values = launch(
        tmp_path, worker.resume_with_unreadable, 0, 'epoch_000003.pt'
    ).values
    assert values == [2, 2]
    # rank 1 cannot read what rank 0 chose: every rank stops, naming it,
    # rather than rank 1 resuming elsewhere
    values = launch(
        tmp_path, worker.resume_with_unreadable, 1, 'epoch_000003.pt'
    ).values
    for kind, message, _ in values:
        assert kind == 'DryTorchError', message
        assert 'rank 1' in message and 'epoch_000003.pt' in message


def test_new_ranks_get_distinct_streams_derived_from_the_saved_ones(
    tmp_path: pathlib.Path,
) -> None:
    assert launch(tmp_path, worker.save_epochs, 1, world=1).values == [1]
    first = launch(tmp_path, worker.draws_after_resume, world=3).values
    again = launch(tmp_path, worker.draws_after_resume, world=3).values
    assert first == again, 'the derived streams must be deterministic'
    for kind in range(3):
        drawn = [repr(v[kind]) for v in first]
        assert len(set(drawn)) == 3, drawn


@pytest.mark.parametrize('rank', [0, 1])
def test_a_non_finite_loss_names_the_rank_and_batch_where_it_appeared(
    tmp_path: pathlib.Path, rank: int
) -> None:
    values = launch(tmp_path, worker.nan_on_one_rank, rank, 3).values
    for kind, message, _ in values:
        assert kind == 'ConvergenceError', message
        assert f'batch 3 on rank {rank}' in message, message
