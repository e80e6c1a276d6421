"""A preempted 2-rank run whose trackers include a slow one.

Every tracker subscribed (CSV, SQLite, TensorBoard, W&B offline, YAML, and
MLflow on a real server) and one more that takes 100 ms over each event:
the preempted attempt must still drain its trackers within the deadline
and exit with "requeue me", and the resumed run's records must hold every
epoch exactly once, with the values of the uninterrupted run.
"""

from __future__ import annotations

import ast
import pathlib
import re
import uuid
from collections.abc import Callable

from drytorch.core import delivery
from tests.helpers import mlflow_server
from tests.preemption._support import (
    REQUEUE,
    Trial,
    Zygote,
    assert_records_once,
    assert_same_as,
    csv_records,
)
from tests.preemption.conftest import ALL_TRACKERS, options

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
    mlflow_url: str,
) -> None:
    every = f'{ALL_TRACKERS},mlflow'
    trial = Trial(
        zygote,
        tmp_path / 'slow',
        2,
        [*options(2, every), '--slow-tracker', '0.1'],
    )
    experiment = f'slow-{uuid.uuid4().hex[:12]}'
    env = {
        delivery.DRAIN_TIMEOUT_VARIABLE: str(DEADLINE),
        'DRYTORCH_TEST_MLFLOW_URL': mlflow_url,
        'DRYTORCH_TEST_MLFLOW_EXPERIMENT': experiment,
    }
    codes = trial.attempt('--signal-at', '8', env=env)
    assert codes == [REQUEUE, REQUEUE], trial.logs()
    drain_s, events, undelivered = _drained(trial.log(1, rank=0))
    # the slow tracker had a backlog to deliver, and delivered all of it
    assert events > 10
    assert undelivered == {}
    assert drain_s < DEADLINE
    first = mlflow_server.records(mlflow_url, experiment, 'net')
    assert first['status'] == 'KILLED'
    assert trial.attempt(env=env) == [0, 0], trial.logs()
    assert _drained(trial.log(2, rank=0))[2] == {}
    expected = reference(2)
    assert_same_as(trial, expected, ['csv', 'sql', 'tb', 'wandb'])
    # MLflow: the same run, resumed, each epoch once with the reference's
    # values (as the CSV of the uninterrupted run holds them)
    final = mlflow_server.records(mlflow_url, experiment, 'net')
    assert final['run_id'] == first['run_id']
    assert final['status'] == 'FINISHED'
    assert final['tags']['drytorch.attempt'] == '2'
    assert_records_once(
        'mlflow', final['records'], csv_records(expected.run_dir)
    )
