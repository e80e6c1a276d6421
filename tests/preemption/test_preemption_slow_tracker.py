"""A preempted 2-rank run whose trackers include a slow one.

Every tracker subscribed (CSV, SQLite, TensorBoard, W&B offline, YAML) and
one more that takes 100 ms over each event: the preempted attempt must
still drain its trackers within the deadline and exit with "requeue me",
and the resumed run's records must hold every epoch exactly once, with the
values of the uninterrupted run.
"""

from __future__ import annotations

import ast
import pathlib
import re
from collections.abc import Callable

from drytorch.core import delivery
from tests.preemption._support import (
    REQUEUE,
    Trial,
    Zygote,
    assert_same_as,
)
from tests.preemption.conftest import options

DEADLINE = 15.0


def _drained(log: str) -> tuple[float, int, dict[str, int]]:
    found = re.search(r'^DRAINED (\S+) (\d+) (\{.*\})$', log, re.MULTILINE)
    assert found, log
    return (
        float(found[1]),
        int(found[2]),
        ast.literal_eval(found[3]),
    )


def test_slow_tracker_drains_before_requeue_and_records_once(
    zygote: Zygote,
    reference: Callable[[int], Trial],
    tmp_path: pathlib.Path,
) -> None:
    trial = Trial(
        zygote, tmp_path / 'slow', 2, [*options(2), '--slow-tracker', '0.1']
    )
    env = {delivery.DRAIN_TIMEOUT_VARIABLE: str(DEADLINE)}
    codes = trial.attempt('--signal-at', '8', env=env)
    assert codes == [REQUEUE, REQUEUE], trial.logs()
    drain_s, events, undelivered = _drained(trial.log(1, rank=0))
    # the slow tracker had a backlog to deliver, and delivered all of it
    assert events > 10
    assert undelivered == {}
    assert drain_s < DEADLINE
    assert trial.attempt(env=env) == [0, 0], trial.logs()
    assert _drained(trial.log(2, rank=0))[2] == {}
    assert_same_as(trial, reference(2), ['csv', 'sql', 'tb', 'wandb'])
