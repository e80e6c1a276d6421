"""A preemption inside an accumulation window stops at the window's end.

The worker's epoch has 6 batches of 16; with ``--accumulation-steps 4``
its windows are batches 1-4 and 5-6.  A signal in the second forward pass
lands inside the first window: the attempt trains to batch 4, checkpoints
there, and the resumed attempt ends with the weights of an uninterrupted
run, bit for bit.  Attempts run in this process, as in
``test_preemption_resume``.
"""

from __future__ import annotations

import pathlib

import torch

from drytorch.core import log_events
from tests.helpers.kernel import RecordingTracker
from tests.preemption._support import (
    REQUEUE,
    assert_bitwise_equal,
    checkpoint_name,
)
from tests.preemption.test_preemption_resume import attempt

ACCUMULATE = ('--accumulation-steps', '4', '--trackers', 'csv')


def _final(root: pathlib.Path) -> dict:
    return torch.load(root / 'final.pt', weights_only=False)


def test_a_stop_inside_a_window_waits_for_its_end(
    tmp_path: pathlib.Path,
) -> None:
    straight = tmp_path / 'straight'
    assert attempt(straight, '--out', str(straight), *ACCUMULATE) == 0

    cut = tmp_path / 'cut'
    recorder = RecordingTracker()
    code = attempt(
        cut,
        '--out',
        str(cut),
        *ACCUMULATE,
        '--signal-at',
        '2',
        extra=(recorder,),
    )
    assert code == REQUEUE
    (saved,) = recorder.of_type(log_events.SaveModelEvent)
    # batch 2 was inside the window of batches 1-4: stopped after batch 4
    assert pathlib.Path(saved.location).name == checkpoint_name(0, 4)
    assert attempt(cut, '--out', str(cut), *ACCUMULATE, '--resume') == 0
    assert_bitwise_equal(_final(cut), _final(straight))


def test_a_stop_in_the_short_last_window(tmp_path: pathlib.Path) -> None:
    """Batch 5 opens the epoch's last window (5-6): the epoch completes."""
    straight = tmp_path / 'straight'
    assert attempt(straight, '--out', str(straight), *ACCUMULATE) == 0
    cut = tmp_path / 'cut'
    recorder = RecordingTracker()
    code = attempt(
        cut,
        '--out',
        str(cut),
        *ACCUMULATE,
        '--signal-at',
        '5',
        extra=(recorder,),
    )
    assert code == REQUEUE
    saved = recorder.of_type(log_events.SaveModelEvent)
    # the epoch's 6 batches ran: the stop comes after its validation
    assert pathlib.Path(saved[-1].location).name == checkpoint_name(1, 0)
    assert attempt(cut, '--out', str(cut), *ACCUMULATE, '--resume') == 0
    assert_bitwise_equal(_final(cut), _final(straight))
