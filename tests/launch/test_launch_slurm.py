"""Jobs on the real one-node SLURM cluster, submitted with submitit.

A 2-task job trains the digits demo; the same job preempted by a real
signal (``scancel --signal=USR2``) and by a real priority preemption (a job
on the ``urgent`` partition) checkpoints, is requeued, resumes and ends with
the same weights and logs; the sbatch template gives the same result.  Each
preempted job waits after epoch 2 (see ``_jobs.train_demo``) until the
signal has arrived, so the signal lands mid-training on any machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drytorch.launch import InvalidLaunchError, JobFailedError, submit
from tests.launch._support import (
    EPOCHS,
    REPO,
    TASKS,
    RunOutputs,
    assert_no_duplicate_rows,
    read_record,
    read_run,
    sacct_state,
    squeue_state,
    start_requeued_now,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PAUSE_AFTER = 2


def test_two_tasks_train_the_demo(
    reference: tuple[dict[str, float], RunOutputs],
) -> None:
    metrics, outputs = reference
    assert metrics['Accuracy'] > 0.8
    record = outputs.record
    assert record['status'] == 'completed'
    assert record['attempts'] == 1
    assert record['world_size'] == TASKS
    assert record['job_key'].startswith('slurm:')
    assert_no_duplicate_rows(outputs)


def _run_preempted(
    root: Path,
    partition: str,
    jobs: Any,
    preempt: Callable[[str], None],
    requeued: bool = True,
) -> tuple[dict[str, float], RunOutputs, Any]:
    markers = root / 'markers'
    markers.mkdir()
    job = submit(
        jobs.train_demo,
        str(root / 'exp'),
        kwargs={
            'epochs': EPOCHS,
            'pause_after': PAUSE_AFTER,
            'markers': str(markers),
        },
        cluster='slurm',
        tasks_per_node=TASKS,
        partition=partition,
        timeout_min=60,  # a signal this early is a preemption, not a timeout
        folder=root / 'jobs' / '%j',
    )
    wait_for(
        lambda: all((markers / f'paused.{r}').exists() for r in range(TASKS)),
        240,
        f'both ranks of job {job.job_id} to finish epoch {PAUSE_AFTER}',
    )
    preempt(job.job_id)
    if requeued:
        start_requeued_now(job.job_id)
    else:
        job.result_grace_s = 3.0
    metrics = job.result(timeout_s=300)
    return metrics, read_run(root / 'exp'), job


def _check_resumed(
    reference: tuple[dict[str, float], RunOutputs],
    metrics: dict[str, float],
    outputs: RunOutputs,
    job: Any,
) -> None:
    ref_metrics, ref_outputs = reference
    assert metrics == ref_metrics
    outputs.assert_same_training(ref_outputs)
    assert_no_duplicate_rows(outputs)
    assert outputs.record['attempts'] == 2
    assert outputs.record['status'] == 'completed'
    assert outputs.record['job_key'] == f'slurm:{job.job_id}'
    log = job.stderr_path.read_text()
    assert f'requeued with `scontrol requeue {job.job_id}`' in log
    assert f'slurm job {job.job_id}, attempt 2]: train_demo finished' in log


def test_usr2_signal_requeues_and_resumes(
    reference: tuple[dict[str, float], RunOutputs],
    slurm_cluster: Any,
    jobs_by_value: Any,
    single_threaded: None,
    tmp_path: Path,
) -> None:
    def signal(job_id: str) -> None:
        subprocess.run(
            ['scancel', '--signal=USR2', job_id], check=True, timeout=30
        )

    metrics, outputs, job = _run_preempted(
        tmp_path, slurm_cluster.partition, jobs_by_value, signal
    )
    _check_resumed(reference, metrics, outputs, job)


def test_priority_preemption_requeues_and_resumes(
    reference: tuple[dict[str, float], RunOutputs],
    slurm_cluster: Any,
    jobs_by_value: Any,
    single_threaded: None,
    tmp_path: Path,
) -> None:
    urgent: list[str] = []

    def preempt(job_id: str) -> None:
        proc = subprocess.run(
            [
                'sbatch',
                '--parsable',
                f'--partition={slurm_cluster.urgent}',
                '--exclusive',
                '--output=/dev/null',
                '--wrap',
                'sleep 5',
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        urgent.append(proc.stdout.strip().split(';')[0])

    try:
        metrics, outputs, job = _run_preempted(
            tmp_path, slurm_cluster.partition, jobs_by_value, preempt
        )
    finally:
        for job_id in urgent:
            subprocess.run(['scancel', job_id], check=False, timeout=30)
    _check_resumed(reference, metrics, outputs, job)


def test_scancel_checkpoints_but_is_not_undone(
    slurm_cluster: Any,
    jobs_by_value: Any,
    single_threaded: None,
    tmp_path: Path,
) -> None:
    def cancel(job_id: str) -> None:
        subprocess.run(['scancel', job_id], check=True, timeout=30)

    with pytest.raises(
        JobFailedError, match=r'ended \(state CANCELLED'
    ) as info:
        _run_preempted(
            tmp_path,
            slurm_cluster.partition,
            jobs_by_value,
            cancel,
            requeued=False,
        )
    job_id = info.value.job_id
    # a requeued job would come back as PENDING; a cancelled one leaves
    wait_for(lambda: squeue_state(job_id) == '', 60, f'job {job_id} to go')
    assert sacct_state(job_id).startswith('CANCELLED')
    log = Path(info.value.stderr_path).read_text()
    assert 'the run checkpointed after SIGTERM (scancel' in log
    assert 'requeued with' not in log
    record = read_record(tmp_path / 'exp')
    assert (record['status'], record['attempts']) == ('preempted', 1)


def test_sbatch_template_gives_the_same_result(
    reference: tuple[dict[str, float], RunOutputs],
    slurm_cluster: Any,
    single_threaded: None,
    tmp_path: Path,
) -> None:
    template = REPO / 'slurm' / 'templates' / 'srun_multi_node.sbatch'
    log = tmp_path / 'job.out'
    environ = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        [
            'sbatch',
            '--parsable',
            f'--partition={slurm_cluster.partition}',
            f'--ntasks-per-node={TASKS}',
            '--cpus-per-task=1',
            '--time=10',
            f'--output={log}',
            f'--chdir={tmp_path}',
            str(template),
            '-m',
            'drytorch.demo',
            '--epochs',
            str(EPOCHS),
            '--par-dir',
            str(tmp_path / 'exp'),
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = proc.stdout.strip().split(';')[0]
    # `sbatch --wait` polls with growing sleeps: polling here is faster
    ended = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'OUT_OF_MEMORY')
    wait_for(
        lambda: sacct_state(job_id).startswith(ended),
        300,
        f'job {job_id} to end',
    )
    text = log.read_text() if log.exists() else ''
    assert sacct_state(job_id) == 'COMPLETED', text
    ref_metrics, ref_outputs = reference
    outputs = read_run(tmp_path / 'exp')
    outputs.assert_same_training(ref_outputs)
    assert outputs.record['world_size'] == TASKS
    assert f'test accuracy: {ref_metrics["Accuracy"]:.2%}' in text


def test_job_array_runs_one_job_per_params(
    slurm_cluster: Any,
    jobs_by_value: Any,
    single_threaded: None,
    tmp_path: Path,
) -> None:
    jobs = submit(
        jobs_by_value.echo,
        cluster='slurm',
        partition=slurm_cluster.partition,
        timeout_min=5,
        folder=tmp_path / '%j',
        array_params=[{'lr': 0.1}, {'lr': 0.01}],
    )
    assert len(jobs) == 2
    array_id = jobs[0].job_id.split('_')[0]
    assert [j.job_id for j in jobs] == [f'{array_id}_0', f'{array_id}_1']
    results = [j.result(timeout_s=180) for j in jobs]
    assert results == [
        {'lr': 0.1, 'array_task': '0'},
        {'lr': 0.01, 'array_task': '1'},
    ]


def test_unknown_partition_is_refused_before_submitting(
    slurm_cluster: Any, jobs_by_value: Any, tmp_path: Path
) -> None:
    with pytest.raises(
        InvalidLaunchError,
        match=r"partition='gpu-huge' does not exist on this cluster \(sinfo "
        rf'lists: .*{slurm_cluster.partition} \(default\)',
    ):
        submit(
            jobs_by_value.where,
            partition='gpu-huge',
            folder=tmp_path / '%j',
        )
    assert not tmp_path.joinpath('%j').exists()


def test_gpus_the_cluster_does_not_have(
    slurm_cluster: Any, jobs_by_value: Any, tmp_path: Path
) -> None:
    with pytest.raises(
        InvalidLaunchError,
        match=rf'gpus_per_node=2, but the nodes of partition '
        rf"'{slurm_cluster.partition}' have at most 0 GPU\(s\)",
    ):
        submit(jobs_by_value.where, gpus_per_node=2, folder=tmp_path / '%j')


def test_a_job_that_dies_reports_its_error_log(
    slurm_cluster: Any,
    jobs_by_value: Any,
    single_threaded: None,
    tmp_path: Path,
) -> None:
    job = submit(
        jobs_by_value.die,
        cluster='slurm',
        partition=slurm_cluster.partition,
        timeout_min=5,
        folder=tmp_path / '%j',
    )
    job.result_grace_s = 3.0
    with pytest.raises(
        JobFailedError,
        match=rf'slurm job {job.job_id} \(die\) ended \(state \w+\) without '
        r'writing the result of rank 0: the process died before returning',
    ) as info:
        job.result(timeout_s=180)
    message = str(info.value)
    assert info.value.stderr_path == str(job.stderr_path)
    assert f'Read its error log: {job.stderr_path}' in message
    assert f'sacct -j {job.job_id}' in message
    assert 'Exited with exit code 1' in message  # srun's line, in the tail
