"""A model made with ``Model(compile=True)`` resumes a preemption exactly.

The worker's network compiled with torch.compile's default backend
(inductor, C++ on this CPU), signalled in the fourth training pass; the
resumed attempt ends with the weights and optimizer state of an
uninterrupted compiled run, bit for bit.  Attempts run in this process,
as in ``test_preemption_resume``.
"""

from __future__ import annotations

import pathlib

import torch

from tests.preemption._support import REQUEUE, assert_bitwise_equal
from tests.preemption.test_preemption_resume import attempt

COMPILED = ('--compile', '--trackers', 'csv', '--epochs', '2')


def test_a_compiled_model_resumes_exactly(tmp_path: pathlib.Path) -> None:
    straight = tmp_path / 'straight'
    assert attempt(straight, '--out', str(straight), *COMPILED) == 0
    cut = tmp_path / 'cut'
    code = attempt(cut, '--out', str(cut), *COMPILED, '--signal-at', '4')
    assert code == REQUEUE
    assert attempt(cut, '--out', str(cut), *COMPILED, '--resume') == 0
    final = torch.load(cut / 'final.pt', weights_only=False)
    assert_bitwise_equal(
        final, torch.load(straight / 'final.pt', weights_only=False)
    )
    # plain names: the checkpoint of a compiled model is a plain one's
    assert not any('_orig_mod' in key for key in final['model'])
