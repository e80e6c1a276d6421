"""Elastic mid-epoch resume: 2 ranks preempted, 1 or 3 continue the epoch.

Real processes, gloo for more than one rank, a real SIGUSR2 at a random
step inside the second epoch.  The global batch is kept (24 samples: 12
per rank for 2, 24 for 1, 8 for 3), so the epoch has the same 4 steps
whatever the world size.  The samples carry their index and each rank
records the ids it trains, so the tests check that every sample of every
epoch is trained exactly once over the two attempts.  Without dropout the
random streams (which a world change cannot keep) do not matter, and the
metrics equal the uninterrupted 2-rank run's to float tolerance.
"""

from __future__ import annotations

import collections
import math
import pathlib
import random

import pytest

from tests.preemption._support import REQUEUE, Trial, Zygote, csv_records

SAMPLES = 96  # the worker's training set
EPOCHS = 3
STEPS = 4  # 96 samples in global batches of 24
ELASTIC = (
    '--global-batch-size',
    '24',
    '--val-batch-size',
    '8',
    '--sync-every',
    '1',
    '--dropout',
    '0',
    '--record-ids',
    '--trackers',
    'csv',
)


def trained_ids(root: pathlib.Path) -> dict[int, collections.Counter[int]]:
    """Per epoch, how many times each sample was trained, over every rank."""
    seen: dict[int, collections.Counter[int]] = collections.defaultdict(
        collections.Counter
    )
    for path in root.glob('ids-*.txt'):
        for line in path.read_text().splitlines():
            epoch, *ids = (int(word) for word in line.split())
            seen[epoch].update(ids)
    return dict(seen)


@pytest.fixture(scope='module')
def uninterrupted(
    zygote: Zygote, tmp_path_factory: pytest.TempPathFactory
) -> Trial:
    """The 2-rank run that nothing stops."""
    trial = Trial(zygote, tmp_path_factory.mktemp('elastic-ref'), 2, ELASTIC)
    assert trial.attempt() == [0, 0], trial.logs()
    return trial


def assert_every_sample_once(root: pathlib.Path, where: str = '') -> None:
    """Every sample of every epoch trained exactly once, over all attempts."""
    seen = trained_ids(root)
    for epoch in range(1, EPOCHS + 1):
        assert seen[epoch] == dict.fromkeys(range(SAMPLES), 1), (where, epoch)


def assert_metrics_close(trial: Trial, reference: Trial, where: str) -> None:
    """One record per metric and epoch, equal to the reference's to 1e-5."""
    expected = csv_records(reference.run_dir)
    actual = csv_records(trial.run_dir)
    assert sorted(actual) == sorted(expected), where
    for key, values in expected.items():
        assert len(actual[key]) == 1, (where, key, actual[key])
        assert math.isclose(
            actual[key][0], values[0], rel_tol=1e-5, abs_tol=1e-7
        ), (where, key, actual[key], values)


@pytest.mark.parametrize('resumed_world', [1, 3])
def test_two_ranks_preempted_mid_epoch_continue_with_another_number(
    zygote: Zygote,
    uninterrupted: Trial,
    tmp_path: pathlib.Path,
    resumed_world: int,
) -> None:
    step = random.SystemRandom().randint(1, STEPS - 1)  # inside epoch 2
    where = (
        f'preempted after step {step} of epoch 2, resumed on {resumed_world}'
    )
    trial = Trial(zygote, tmp_path, 2, ELASTIC)
    cue = ('--signal-at', str(STEPS + step))
    assert trial.attempt(*cue) == [REQUEUE] * 2, (where, trial.logs())
    done = trained_ids(tmp_path)
    assert sum(done[2].values()) == step * 24, where
    codes = trial.attempt(world_size=resumed_world)
    assert codes == [0] * resumed_world, (where, trial.logs())
    assert trial.registry()['attempts'] == 2
    assert_every_sample_once(tmp_path, where)
    assert_metrics_close(trial, uninterrupted, where)


def test_a_global_batch_the_new_ranks_do_not_divide_is_refused(
    zygote: Zygote, tmp_path: pathlib.Path
) -> None:
    """32 samples cannot be split over 3 ranks; the 2 ranks then resume."""
    options = [*ELASTIC]
    options[1] = '32'  # 3 global batches of 32
    trial = Trial(zygote, tmp_path, 2, options)
    assert trial.attempt('--signal-at', '4') == [REQUEUE] * 2, trial.logs()
    assert trial.attempt(world_size=3) == [1, 1, 1], trial.logs()
    for rank in range(3):
        log = trial.log(2, rank)
        assert 'global_batch_size=32 does not divide by the 3 ranks' in log
    assert trial.attempt() == [0, 0], trial.logs()
    assert_every_sample_once(tmp_path)


def test_fsdp_parts_of_two_ranks_continue_the_epoch_on_three(
    zygote: Zygote, uninterrupted: Trial, tmp_path: pathlib.Path
) -> None:
    """Checkpoints in parts reshard the model; the epoch goes on at once."""
    options = (*ELASTIC, '--parallel', 'fsdp', '--checkpoint', 'sharded')
    trial = Trial(zygote, tmp_path, 2, options)
    assert trial.attempt('--signal-at', '6') == [REQUEUE] * 2, trial.logs()
    assert trial.checkpoints()[0].endswith('+000002.dcp'), trial.checkpoints()
    assert trial.attempt(world_size=3) == [0, 0, 0], trial.logs()
    assert_every_sample_once(tmp_path, 'fsdp 2 -> 3')
    assert_metrics_close(trial, uninterrupted, 'fsdp 2 -> 3')
