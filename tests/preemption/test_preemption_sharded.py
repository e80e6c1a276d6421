"""Checkpoints in parts under preemption, killed ranks and SIGKILL storms.

The preemption worker with ``--checkpoint sharded`` (every rank writes its
part, rank zero renames the folder into place) or ``--checkpoint async``
(the same, written in the background): a preempted training resumes bit
for bit under DDP and FSDP, as with single files; a mid-epoch checkpoint
refuses another number of ranks; a rank killed while the parts are
written, and SIGKILL at random moments of background writes, leave the
previous checkpoint the one that loads, never a corrupt one.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import time
import warnings
from collections.abc import Callable

import pytest
import torch

from drytorch.lib import checkpoints
from tests.preemption import _worker as worker
from tests.preemption._support import (
    REQUEUE,
    Trial,
    Zygote,
    assert_same_as,
    checkpoint_name,
)

pytestmark = pytest.mark.timeout(600)

TWO_RANKS = (
    *('--batch-size', '8', '--val-batch-size', '8', '--sync-every', '2'),
    *('--trackers', 'csv'),
)
# rank one's 9th training pass: epoch 2, read at the sync point of step 4
MID_EPOCH = ('--signal-at', '9', '--signal-rank', '1')
PARTS = ['.metadata', '__0_0.distcp', '__1_0.distcp', 'state.pt']
TRIALS = 50


@pytest.fixture(scope='module')
def uninterrupted(
    zygote: Zygote, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Trial]:
    """The uninterrupted 2-rank run of a wrapping, with single files."""
    done: dict[str, Trial] = {}

    def get(parallel: str) -> Trial:
        if parallel not in done:
            root = tmp_path_factory.mktemp(f'uninterrupted-{parallel}')
            trial = Trial(
                zygote, root, 2, (*TWO_RANKS, '--parallel', parallel)
            )
            assert trial.attempt() == [0, 0], trial.logs()
            done[parallel] = trial
        return done[parallel]

    return get


def _hidden(trial: Trial) -> list[str]:
    folder = trial.checkpoint_dir
    return sorted(p.name for p in folder.iterdir() if p.name.startswith('.'))


@pytest.mark.parametrize('checkpoint', ['sharded', 'async'])
@pytest.mark.parametrize('parallel', ['ddp', 'fsdp'])
def test_a_preempted_training_resumes_bit_for_bit_from_parts(
    zygote: Zygote,
    uninterrupted: Callable[[str], Trial],
    tmp_path: pathlib.Path,
    parallel: str,
    checkpoint: str,
) -> None:
    """A real SIGUSR2 mid-epoch; each rank wrote, and reads back, its part."""
    options = (*TWO_RANKS, '--parallel', parallel, '--checkpoint', checkpoint)
    if checkpoint == 'async':  # background writes in flight at the signal
        options = (*options, '--save-every', '1')
    trial = Trial(zygote, tmp_path, 2, options)
    assert trial.attempt(*MID_EPOCH) == [REQUEUE] * 2, trial.logs()
    name = checkpoint_name(1, 4, '.dcp')
    assert name in trial.checkpoints()
    assert sorted(os.listdir(trial.checkpoint_dir / name)) == PARTS
    assert (trial.checkpoint_dir / 'latest').read_text().strip() == name
    assert trial.attempt() == [0, 0], trial.logs()
    assert trial.registry()['attempts'] == 2
    assert_same_as(trial, uninterrupted(parallel), ['csv'])
    assert not _hidden(trial)


def test_mid_epoch_parts_refuse_another_number_of_ranks(
    zygote: Zygote,
    uninterrupted: Callable[[str], Trial],
    tmp_path: pathlib.Path,
) -> None:
    """3 ranks cannot continue 2 ranks' epoch; the 2 ranks then can."""
    options = (*TWO_RANKS, '--parallel', 'fsdp', '--checkpoint', 'sharded')
    trial = Trial(zygote, tmp_path, 2, options)
    assert trial.attempt(*MID_EPOCH) == [REQUEUE] * 2, trial.logs()
    assert trial.attempt(world_size=3) == [1, 1, 1], trial.logs()
    for rank in range(3):
        assert 'WorldSizeChangedError' in trial.log(2, rank)
        assert 'written by 2 process(es)' in trial.log(2, rank)
    assert trial.attempt() == [0, 0], trial.logs()
    assert_same_as(trial, uninterrupted('fsdp'), ['csv'])


def _wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError('the condition did not come true')
        time.sleep(0.02)


def test_a_rank_killed_while_parts_are_written_leaves_the_previous_one(
    zygote: Zygote,
    uninterrupted: Callable[[str], Trial],
    tmp_path: pathlib.Path,
) -> None:
    """SIGKILL rank one after its part of epoch 2's checkpoint is on disk.

    Rank zero fails instead of completing the folder; the folder is never
    renamed into place, the resume starts from epoch 1's checkpoint and
    ends equal to the uninterrupted run.
    """
    options = (*TWO_RANKS, '--parallel', 'ddp', '--checkpoint', 'sharded')
    trial = Trial(zygote, tmp_path, 2, (*options, '--save-every', '1'))
    pids = trial.start(
        '--slow-parts', '5', env={'DRYTORCH_CHECKPOINT_TIMEOUT': '30'}
    )
    _wait_for(lambda: 'PART 1 ' in trial.log(1, 1), 60)
    os.kill(pids[1], signal.SIGKILL)
    codes = trial.wait(pids)
    assert codes[0] not in (0, REQUEUE), trial.logs()
    assert codes[1] == -signal.SIGKILL
    first = checkpoint_name(1, 0, '.dcp')
    assert trial.checkpoints() == [first, 'latest']
    assert (trial.checkpoint_dir / 'latest').read_text().strip() == first
    assert any('epoch_000002.dcp' in name for name in _hidden(trial))
    assert trial.attempt() == [0, 0], trial.logs()
    assert_same_as(trial, uninterrupted('ddp'), ['csv'])
    assert not _hidden(trial)


def _check_newest(trial: Trial, scratch: pathlib.Path) -> None:
    """The newest checkpoint loads, whole, with the position it is named by.

    Any warning (a checkpoint skipped as unreadable) fails: a folder at a
    final name must always be complete.
    """
    store = checkpoints.LocalCheckpoint(
        trial.checkpoint_dir.parent, run_folders=False
    )
    store.bind('net')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        state, info = store.load()
        exported = store.export(scratch / 'newest.pt', info)
    assert state['position']['epoch'] == info.epoch
    assert state['position']['batch'] == info.batch
    whole = torch.load(exported, weights_only=False)
    network = worker.network(torch.nn.Identity())
    network.load_state_dict(whole['model']['module'])
    assert whole['model']['epoch'] == state['model_epoch']


def test_sigkill_at_random_moments_of_background_writes(
    zygote: Zygote, tmp_path: pathlib.Path
) -> None:
    """50 attempts, each killed at a random moment; every resume loads.

    Each attempt resumes from the newest checkpoint the kills left and is
    killed in turn.  Writes take a tenth of a second more after the part
    is on disk, so that many kills land while one is in flight: the test
    counts them, and fails if too few did to mean anything.
    """
    options = (
        *('--trackers', 'csv', '--checkpoint', 'async', '--save-every', '1'),
        *('--epochs', '10000', '--slow-parts', '0.1'),
    )
    trial = Trial(zygote, tmp_path / 'run', 1, options)
    chance = random.Random(13)
    in_flight = corrupt = 0
    for attempt in range(TRIALS):
        (pid,) = trial.start()
        if attempt == 0:  # a first checkpoint to go back to
            _wait_for(lambda: 'PART 0 ' in trial.log(1), 60)
        time.sleep(chance.uniform(0.05, 1.0))
        os.kill(pid, signal.SIGKILL)
        assert trial.wait([pid]) == [-signal.SIGKILL], trial.log(attempt + 1)
        if any(f'.dcp.{pid}.tmp' in name for name in _hidden(trial)):
            in_flight += 1
        try:
            _check_newest(trial, tmp_path)
        except Exception as err:  # noqa: BLE001 - counted, then reported
            corrupt += 1
            print(f'attempt {attempt + 1}: {err!r}')
    print(f'SIGKILL {TRIALS} times: {in_flight} in a write, {corrupt} corrupt')
    assert corrupt == 0
    assert in_flight >= TRIALS // 5, f'only {in_flight} kills hit a write'
