"""IterableDataset training across a preemption mid-epoch.

The worker's training samples come as a stream of this rank's share,
reshuffled by ``set_epoch``.  A stream with ``state_dict()`` /
``load_state_dict()`` resumes inside the epoch and ends bit for bit with
the weights of an uninterrupted run; one without them refuses the
resume, naming what to implement.  One process, attempts in this process
(as in ``test_preemption_resume``), and 2 gloo ranks, attempts forked by
the zygote.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from tests.preemption._support import (
    REQUEUE,
    Trial,
    Zygote,
    assert_bitwise_equal,
)
from tests.preemption.conftest import options
from tests.preemption.test_preemption_resume import attempt

STATEFUL = ('--iterable', 'stateful', '--trackers', 'csv', '--epochs', '2')


def _final(root: pathlib.Path) -> dict:
    return torch.load(root / 'final.pt', weights_only=False)


def test_a_stateful_stream_resumes_mid_epoch(tmp_path: pathlib.Path) -> None:
    straight = tmp_path / 'straight'
    assert attempt(straight, '--out', str(straight), *STATEFUL) == 0
    cut = tmp_path / 'cut'
    code = attempt(cut, '--out', str(cut), *STATEFUL, '--signal-at', '3')
    assert code == REQUEUE
    assert attempt(cut, '--out', str(cut), *STATEFUL, '--resume') == 0
    assert_bitwise_equal(_final(cut), _final(straight))


def test_a_stream_without_state_refuses_a_mid_epoch_resume(
    tmp_path: pathlib.Path,
) -> None:
    stateless = ('--iterable', 'stateless', '--trackers', 'csv')
    assert attempt(tmp_path, *stateless, '--signal-at', '3') == REQUEUE
    with pytest.raises(
        ValueError,
        match=r'Resuming inside an epoch, at batch 3, needs the position of '
        r'the IterableDataset Stream, which has no state_dict\(\) and '
        r'load_state_dict\(\)\. Implement state_dict\(\) and '
        r'load_state_dict\(\)',
    ):
        attempt(tmp_path, *stateless, '--resume')


def test_a_stateful_stream_resumes_on_two_ranks(
    zygote: Zygote, tmp_path: pathlib.Path
) -> None:
    common = [*options(2, 'csv'), '--iterable', 'stateful', '--epochs', '2']
    straight = Trial(zygote, tmp_path / 'straight', 2, common)
    assert straight.attempt() == [0, 0], straight.logs()
    cut = Trial(zygote, tmp_path / 'cut', 2, common)
    assert cut.attempt('--signal-at', '3') == [REQUEUE] * 2, cut.logs()
    assert cut.attempt() == [0, 0], cut.logs()
    assert_bitwise_equal(cut.final(), straight.final())
