"""A real signal stops a training at a step; the resumed run is seamless.

Each attempt is a process of its own (see ``_zygote.py``) that sends the
signal to itself from inside a forward pass, so that the step where it
arrives is chosen by the test, not by a race.  The resumed run must end
with the weights of the uninterrupted reference bit for bit, and every
tracker must hold each epoch's metrics once, with the reference's values.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import torch

from tests.preemption._support import (
    REQUEUE,
    SINGLE_BATCHES,
    VALIDATION_BATCHES,
    Trial,
    Zygote,
    assert_same_as,
    attempts_yaml,
    checkpoint_name,
    sql_run,
    wandb_endings,
)
from tests.preemption.conftest import options

TRACKERS = 'csv,sql,tb,yaml'
WITH_WANDB = TRACKERS + ',wandb'


def stop_position(
    phase: str, at: int, sync_every: int = 1
) -> tuple[int, int, str]:
    """(epoch, batch, phase) of the checkpoint after a signal at pass ``at``.

    The flag is read at the first sync point at or after the signalled
    step: every step in one process, every ``sync_every`` steps and at the
    last step of a loop across ranks.
    """

    def noticed(step: int, total: int) -> int:
        return min(-(-step // sync_every) * sync_every, total)

    if phase == 'train':
        epoch, step = divmod(at - 1, SINGLE_BATCHES)
        stop = noticed(step + 1, SINGLE_BATCHES)
        if stop < SINGLE_BATCHES:
            return epoch, stop, 'train'
        return epoch + 1, 0, 'validate'
    epoch, step = divmod(at - 1, VALIDATION_BATCHES)
    stop = noticed(step + 1, VALIDATION_BATCHES)
    if stop < VALIDATION_BATCHES:
        return epoch + 1, 0, 'validate'
    return epoch + 1, 0, 'done'


def preempt_and_resume(
    trial: Trial,
    reference: Trial,
    trackers: str,
    cue: list[str],
    position: tuple[int, int, str],
) -> None:
    codes = trial.attempt(*cue)
    assert codes == [REQUEUE] * trial.world_size, trial.logs()
    record = trial.registry()
    assert (record['status'], record['attempts']) == ('preempted', 1)
    chosen = trackers.split(',')
    if 'sql' in chosen:
        assert sql_run(trial.run_dir) == ('preempted', 1)
    epoch, batch, phase = position
    name = checkpoint_name(epoch, batch)
    assert trial.checkpoints() == [name, 'latest'], trial.logs()
    assert (trial.checkpoint_dir / 'latest').read_text().strip() == name
    saved = torch.load(trial.checkpoint_dir / name, weights_only=False)
    assert saved['position']['phase'] == phase
    assert saved['world_size'] == trial.world_size
    assert len(saved['ranks']) == trial.world_size

    codes = trial.attempt()
    assert codes == [0] * trial.world_size, trial.logs()
    record = trial.registry()
    assert (record['status'], record['attempts']) == ('completed', 2)
    if 'sql' in chosen:
        assert sql_run(trial.run_dir) == ('completed', 2)
    assert_same_as(trial, reference, chosen)
    attempts = attempts_yaml(trial.run_dir)
    assert [(a['attempt'], a['resumed'], a['status']) for a in attempts] == [
        (1, False, 'preempted'),
        (2, True, 'completed'),
    ]
    if 'wandb' in chosen:
        # one W&B file per attempt: the first marked as preempting, and
        # neither finished as failed
        assert sorted(wandb_endings(trial.run_dir)) == [(False, 0), (True, 0)]


SINGLE = [
    pytest.param('train', 1, 'USR2', WITH_WANDB, id='first-batch-of-run'),
    pytest.param('train', 7, 'USR1', TRACKERS, id='first-batch-of-epoch'),
    pytest.param('train', 12, 'TERM', WITH_WANDB, id='last-batch-of-epoch'),
    pytest.param('train', 16, 'USR2', TRACKERS, id='mid-epoch'),
    pytest.param('train', 18, 'USR2', TRACKERS, id='last-batch-of-run'),
    pytest.param('validate', 5, 'USR1', TRACKERS, id='mid-validation'),
    pytest.param('validate', 3, 'TERM', TRACKERS, id='last-validation-batch'),
]


@pytest.mark.parametrize(('phase', 'at', 'signame', 'trackers'), SINGLE)
def test_one_process(
    zygote: Zygote,
    reference: Callable[[int], Trial],
    tmp_path: pathlib.Path,
    phase: str,
    at: int,
    signame: str,
    trackers: str,
) -> None:
    trial = Trial(zygote, tmp_path, 1, options(1, trackers))
    cue = ['--signal-phase', phase, '--signal-at', str(at)]
    cue += ['--signal', signame]
    position = stop_position(phase, at)
    preempt_and_resume(trial, reference(1), trackers, cue, position)


TWO_RANKS = [
    pytest.param(1, 'train', 1, TRACKERS, id='rank1-first-batch'),
    pytest.param(1, 'train', 9, TRACKERS, id='rank1-mid-epoch'),
    pytest.param(0, 'train', 6, TRACKERS, id='rank0-last-batch-of-epoch'),
    pytest.param(1, 'validate', 4, WITH_WANDB, id='rank1-mid-validation'),
    pytest.param(1, 'validate', 3, TRACKERS, id='rank1-last-validation'),
]


# Forked 2-rank attempts were seen to hang at start-up, before any signal,
# about once in four full suites on a loaded 2-core machine (a harness
# issue still open: the zygote now dumps every stack of a hung attempt into
# its log).  One rerun keeps CI meaningful; a real resume bug fails twice.
@pytest.mark.flaky(reruns=1)
@pytest.mark.parametrize(('rank', 'phase', 'at', 'trackers'), TWO_RANKS)
def test_two_ranks_one_signalled(
    zygote: Zygote,
    reference: Callable[[int], Trial],
    tmp_path: pathlib.Path,
    rank: int,
    phase: str,
    at: int,
    trackers: str,
) -> None:
    """Only one rank gets the signal; the all-reduce tells the other."""
    trial = Trial(zygote, tmp_path, 2, options(2, trackers))
    cue = ['--signal-rank', str(rank), '--signal-phase', phase]
    cue += ['--signal-at', str(at)]
    position = stop_position(phase, at, sync_every=2)
    preempt_and_resume(trial, reference(2), trackers, cue, position)
    signalled = trial.log(1, rank)
    assert 'Traceback' not in signalled + trial.log(1, 1 - rank)


def test_signals_during_the_checkpoint_write(
    zygote: Zygote, reference: Callable[[int], Trial], tmp_path: pathlib.Path
) -> None:
    """USR2, USR1 and TERM keep coming while the checkpoint is written."""
    trial = Trial(zygote, tmp_path, 1, options(1, TRACKERS))
    cue = ['--signal-at', '9', '--storm', '12']
    preempt_and_resume(
        trial, reference(1), TRACKERS, cue, stop_position('train', 9)
    )
