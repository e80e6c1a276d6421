"""Persistent loader workers across a preemption: the same weights.

The worker's training and validation load with 2 worker processes that
live for every pass (``persistent_workers=True``); signalled mid-epoch,
the run resumes with a fresh pool and ends bit for bit with the weights
of an uninterrupted run (and of one whose workers start for each pass).
Attempts run in this process, as in ``test_preemption_resume``.
"""

from __future__ import annotations

import pathlib

import torch

from tests.preemption._support import REQUEUE, assert_bitwise_equal
from tests.preemption.test_preemption_resume import attempt

WORKERS = ('--num-workers', '2', '--trackers', 'csv', '--epochs', '2')


def _final(root: pathlib.Path) -> dict:
    return torch.load(root / 'final.pt', weights_only=False)


def test_persistent_workers_resume_exactly(tmp_path: pathlib.Path) -> None:
    per_pass = tmp_path / 'per_pass'
    assert attempt(per_pass, '--out', str(per_pass), *WORKERS) == 0
    persistent = (*WORKERS, '--persistent-workers')
    straight = tmp_path / 'straight'
    assert attempt(straight, '--out', str(straight), *persistent) == 0
    assert_bitwise_equal(_final(straight), _final(per_pass))
    cut = tmp_path / 'cut'
    code = attempt(cut, '--out', str(cut), *persistent, '--signal-at', '4')
    assert code == REQUEUE
    assert attempt(cut, '--out', str(cut), *persistent, '--resume') == 0
    assert_bitwise_equal(_final(cut), _final(straight))
