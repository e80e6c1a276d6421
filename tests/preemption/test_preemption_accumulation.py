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


# ---------------------------------------------------------------- per step
PER_STEP = ('--per-step-schedule', '--trackers', 'csv')


def _rates(root: pathlib.Path) -> list[float]:
    return [float(line) for line in (root / 'rates.txt').read_text().split()]


def test_a_stop_mid_warmup_resumes_on_the_curve(
    tmp_path: pathlib.Path,
) -> None:
    """Signalled at step 3 of a 6-step warmup: no jump, same weights."""
    straight = tmp_path / 'straight'
    assert attempt(straight, '--out', str(straight), *PER_STEP) == 0
    cut = tmp_path / 'cut'
    recorder = RecordingTracker()
    code = attempt(
        cut, '--out', str(cut), *PER_STEP, '--signal-at', '3',
        extra=(recorder,),
    )  # fmt: skip
    assert code == REQUEUE
    (saved,) = recorder.of_type(log_events.SaveModelEvent)
    assert pathlib.Path(saved.location).name == checkpoint_name(0, 3)
    assert len(_rates(cut)) == 3  # the first attempt's steps
    assert attempt(cut, '--out', str(cut), *PER_STEP, '--resume') == 0
    # every step's rate, the first attempt's then the second's, is the
    # uninterrupted run's: the warmup went on from step 4
    assert _rates(cut) == _rates(straight)
    assert len(_rates(straight)) == 18
    assert _rates(straight)[:6] == sorted(_rates(straight)[:6])
    assert_bitwise_equal(_final(cut), _final(straight))


def test_accumulation_and_a_per_step_schedule(tmp_path: pathlib.Path) -> None:
    """A step is a window: 2 of them per epoch of 6 batches with k=4."""
    both = (*PER_STEP, '--accumulation-steps', '4')
    straight = tmp_path / 'straight'
    assert attempt(straight, '--out', str(straight), *both) == 0
    assert len(_rates(straight)) == 6
    cut = tmp_path / 'cut'
    assert attempt(cut, '--out', str(cut), *both, '--signal-at', '2') == (
        REQUEUE
    )
    assert attempt(cut, '--out', str(cut), *both, '--resume') == 0
    assert _rates(cut) == _rates(straight)
    assert_bitwise_equal(_final(cut), _final(straight))
