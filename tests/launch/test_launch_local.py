"""The same job as local processes, through submitit's local executor.

The tasks see torchrun's variables (exported by the entry point from
submitit's own), so drytorch brings gloo up across them; a preempted local
job exits with submitit's "requeue" status, its controller restarts the
tasks, and the run resumes as under SLURM.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from drytorch.launch import JobFailedError, submit
from tests.launch._support import (
    EPOCHS,
    TASKS,
    RunOutputs,
    assert_no_duplicate_rows,
    read_run,
    wait_for,
)

pytestmark = pytest.mark.slow


def _local_job(root: Path, jobs: Any, **kwargs: Any) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('OMP_NUM_THREADS', '1')
        mp.setenv('DRYTORCH_DIST_TIMEOUT', '120')
        return submit(
            jobs.train_demo,
            str(root / 'exp'),
            kwargs={'epochs': EPOCHS, **kwargs},
            cluster='local',
            tasks_per_node=TASKS,
            timeout_min=30,
            folder=root / 'jobs' / '%j',
        )


@pytest.fixture(scope='module')
def local_reference(
    jobs_by_value: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, float], RunOutputs]:
    """An uninterrupted local job with 2 processes."""
    root = tmp_path_factory.mktemp('local')
    job = _local_job(root, jobs_by_value)
    metrics = job.result(timeout_s=300)
    return metrics, read_run(root / 'exp')


def test_two_local_processes_train_the_demo(
    local_reference: tuple[dict[str, float], RunOutputs],
) -> None:
    metrics, outputs = local_reference
    assert metrics['Accuracy'] > 0.8
    assert outputs.record['world_size'] == TASKS
    assert outputs.record['attempts'] == 1
    assert outputs.record['job_key'].startswith('torchrun:submitit-local-')
    assert_no_duplicate_rows(outputs)


def test_local_processes_give_the_slurm_result(
    local_reference: tuple[dict[str, float], RunOutputs],
    request: pytest.FixtureRequest,
) -> None:
    ref_metrics, ref_outputs = request.getfixturevalue('reference')
    metrics, outputs = local_reference
    assert metrics == ref_metrics
    outputs.assert_same_training(ref_outputs)


def test_local_preemption_restarts_and_resumes(
    local_reference: tuple[dict[str, float], RunOutputs],
    jobs_by_value: Any,
    tmp_path: Path,
) -> None:
    markers = tmp_path / 'markers'
    markers.mkdir()
    job = _local_job(
        tmp_path, jobs_by_value, pause_after=2, markers=str(markers)
    )
    paused = [markers / f'paused.{rank}' for rank in range(TASKS)]
    wait_for(
        lambda: all(p.exists() and p.read_text() for p in paused),
        240,
        'both local processes to finish epoch 2',
    )
    for marker in paused:  # as SLURM signals every task
        os.kill(int(marker.read_text()), signal.SIGUSR2)
    metrics = job.result(timeout_s=300)
    outputs = read_run(tmp_path / 'exp')
    ref_metrics, ref_outputs = local_reference
    assert metrics == ref_metrics
    outputs.assert_same_training(ref_outputs)
    assert_no_duplicate_rows(outputs)
    assert outputs.record['attempts'] == 2
    log = job.stderr_path.read_text()
    assert 'restarting the tasks (local requeue)' in log
    assert f'local job {job.job_id}, attempt 2]: train_demo finished' in log


def test_an_error_on_any_rank_gives_its_traceback(
    jobs_by_value: Any, tmp_path: Path
) -> None:
    job = submit(
        jobs_by_value.fail_on,
        1,
        cluster='local',
        tasks_per_node=TASKS,
        timeout_min=5,
        folder=tmp_path / '%j',
    )
    with pytest.raises(
        JobFailedError,
        match=rf'local job {job.job_id} \(fail_on\) failed on rank 1:'
        r'(.|\n)*ValueError: rank 1 broke on purpose',
    ) as info:
        job.result(timeout_s=120)
    assert info.value.stderr_path.endswith(f'{job.job_id}_1_log.err')
