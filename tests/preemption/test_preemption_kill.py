"""SIGKILL at any moment: the last complete checkpoint loads and resumes.

A killed process gets no chance to save anything, so the next attempt
resumes from the newest checkpoint that was completely written (here one
per epoch), maybe epochs before the kill.  Data order and random state
come from the checkpoint, so the run still ends with the weights of the
uninterrupted one, and the trackers drop what the killed attempt logged
past the checkpoint.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import time
from collections.abc import Callable

import pytest
import torch

from drytorch.lib.checkpoints import LocalCheckpoint
from tests.preemption._support import (
    REQUEUE,
    Trial,
    Zygote,
    assert_same_as,
    checkpoint_name,
)
from tests.preemption.conftest import options

TRACKERS = ['csv', 'sql', 'tb']
# a run of about a second: steps and checkpoint writes take a while, so
# that a random moment falls anywhere in it, writes included
SLOW_RUN = ['--save-every', '1', '--step-sleep', '0.02', '--slow-save', '0.01']


def assert_checkpoints_load(trial: Trial) -> None:
    """Every complete checkpoint loads; ``latest`` names one of them."""
    checkpoint = LocalCheckpoint(trial.checkpoint_dir.parent)
    checkpoint.bind('net')
    complete = checkpoint.available()
    for info in complete:
        state = torch.load(info.path, weights_only=False)
        assert state['position']['epoch'] == info.epoch
    latest = trial.checkpoint_dir / 'latest'
    if latest.exists():
        assert latest.read_text().strip() in {i.path.name for i in complete}


def kill_when(
    pid: int, ready: Callable[[], bool], timeout: float = 30.0
) -> None:
    """SIGKILL ``pid`` as soon as ``ready()`` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f'the moment to kill never came in {timeout} s')
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_killed_at_random_moments(
    zygote: Zygote,
    reference: Callable[[int], Trial],
    tmp_path: pathlib.Path,
    seed: int,
) -> None:
    """Two attempts killed at random moments, then one that completes.

    An attempt the kill came too late for has completed the run: resuming
    a completed run on request continues it (``train(3)`` trains three
    more), so none follows then.
    """
    moments = random.Random(seed)
    trial = Trial(zygote, tmp_path, 1, [*options(1, 'csv,sql,tb'), *SLOW_RUN])
    completed = False
    for _ in range(2):
        (pid,) = trial.start()
        time.sleep(moments.uniform(0.05, 1.2))
        os.kill(pid, signal.SIGKILL)
        (code,) = trial.wait([pid])
        assert code in (-signal.SIGKILL, 0), trial.logs()
        assert_checkpoints_load(trial)
        # the run is complete once the script got past it (the kill may
        # still come before the process exits)
        if 'FINISHED' in trial.logs().split('--- attempt')[-1]:
            completed = True
            break
    if not completed:
        assert trial.attempt() == [0], trial.logs()
    assert 'cannot be read' not in trial.logs()
    assert_same_as(trial, reference(1), TRACKERS)


@pytest.mark.parametrize(
    ('cue', 'written', 'kept'),
    [
        pytest.param([], checkpoint_name(2), checkpoint_name(1), id='epoch'),
        pytest.param(
            ['--signal-at', '9'],
            checkpoint_name(1, 3),
            checkpoint_name(1),
            id='preemption',
        ),
    ],
)
def test_killed_while_a_checkpoint_is_written(
    zygote: Zygote,
    reference: Callable[[int], Trial],
    tmp_path: pathlib.Path,
    cue: list[str],
    written: str,
    kept: str,
) -> None:
    """Killed with half a file on disk: the one before it is used."""
    trial = Trial(
        zygote, tmp_path, 1, [*options(1, 'csv,sql,tb'), '--save-every', '1']
    )
    folder = trial.checkpoint_dir
    pattern = f'.{written}.*.tmp'

    def half_written() -> bool:
        return any(p.stat().st_size > 0 for p in folder.glob(pattern))

    (pid,) = trial.start(*cue, '--slow-save', '0.05')
    kill_when(pid, half_written)
    assert trial.wait([pid]) == [-signal.SIGKILL], trial.logs()
    assert len(list(folder.glob(pattern))) == 1  # left behind, never loaded
    assert trial.checkpoints() == [kept, 'latest']
    assert (folder / 'latest').read_text().strip() == kept
    assert_checkpoints_load(trial)

    assert trial.attempt() == [0], trial.logs()
    assert 'cannot be read' not in trial.logs()
    assert_same_as(trial, reference(1), TRACKERS)


def test_killed_after_a_preemption(
    zygote: Zygote, reference: Callable[[int], Trial], tmp_path: pathlib.Path
) -> None:
    """Preempted, then the resumed attempt killed: resume once more."""
    trial = Trial(zygote, tmp_path, 1, [*options(1, 'csv,sql,tb'), *SLOW_RUN])
    assert trial.attempt('--signal-at', '4') == [REQUEUE], trial.logs()

    def epoch_two_saved() -> bool:
        return (trial.checkpoint_dir / checkpoint_name(2)).exists()

    (pid,) = trial.start()
    kill_when(pid, epoch_two_saved)
    trial.wait([pid])
    assert trial.attempt() == [0], trial.logs()
    assert trial.registry()['attempts'] == 3
    assert_same_as(trial, reference(1), TRACKERS)
