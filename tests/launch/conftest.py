"""Fixtures of the launch tests: job functions and a reference job."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.launch import _jobs
from tests.launch._support import EPOCHS, TASKS, RunOutputs, read_run


@pytest.fixture(scope='session')
def jobs_by_value() -> Iterator[Any]:
    """The job functions, pickled by value: jobs need not import tests/."""
    cloudpickle = pytest.importorskip('cloudpickle')
    cloudpickle.register_pickle_by_value(_jobs)
    yield _jobs
    cloudpickle.unregister_pickle_by_value(_jobs)


@pytest.fixture
def single_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """One torch thread in every job, so that all compute alike; no
    launcher variable of the shell that runs the tests reaches a job."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('DRYTORCH_DIST_TIMEOUT', '120')
    for name in list(os.environ):
        if name.startswith(('SLURM_', 'SUBMITIT_')) or name in (
            'RANK',
            'WORLD_SIZE',
            'LOCAL_RANK',
            'TORCHELASTIC_RUN_ID',
        ):
            monkeypatch.delenv(name)


@pytest.fixture(scope='session')
def reference(
    slurm_cluster: Any,
    jobs_by_value: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, float], RunOutputs]:
    """An uninterrupted 2-task SLURM job: its metrics and outputs."""
    from drytorch.launch import submit

    root = tmp_path_factory.mktemp('reference')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('OMP_NUM_THREADS', '1')
        mp.setenv('DRYTORCH_DIST_TIMEOUT', '120')
        job = submit(
            jobs_by_value.train_demo,
            str(root / 'exp'),
            kwargs={'epochs': EPOCHS},
            cluster='slurm',
            tasks_per_node=TASKS,
            partition=slurm_cluster.partition,
            timeout_min=60,
            folder=root / 'jobs' / '%j',
        )
    metrics = job.result(timeout_s=300)
    return metrics, read_run(root / 'exp')
