"""The job entry point and the task variants, in this process."""

from __future__ import annotations

import os
import pickle
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drytorch.core.exceptions import REQUEUE_EXIT_CODE, PreemptedExit
from drytorch.distributed import detect_environment
from drytorch.distributed.preemption import watcher
from drytorch.launch import (
    DistributedJob,
    InvalidLaunchError,
    JobFailedError,
    LaunchError,
    ScriptJob,
    submit,
)
from drytorch.launch.tasks import (
    LOCAL_REQUEUE_EXIT_CODE,
    DebugTask,
    LocalTask,
    SlurmTask,
    Task,
)

LAUNCHER = ('SLURM_', 'SUBMITIT_', 'OMPI_', 'PMI_', 'TORCHELASTIC_')
TORCHRUN = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE')


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No launcher variable from the shell that runs the tests."""
    for name in list(os.environ):
        if name.startswith(LAUNCHER) or name in TORCHRUN:
            monkeypatch.delenv(name)
    for name in ('GROUP_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)


def add(a: int, b: int = 0) -> int:
    return a + b


def fail() -> None:
    raise ValueError('broken on purpose')


def preempted() -> None:
    raise PreemptedExit('checkpointed')


def exits(code: int) -> None:
    sys.exit(code)


def test_debug_runs_in_this_process() -> None:
    job = submit(add, 1, kwargs={'b': 2}, cluster='debug')
    assert job.result() == 3
    assert job.state == 'COMPLETED'
    assert job.describe().startswith('debug job debug (add)')


def test_debug_keeps_the_error_for_result() -> None:
    job = submit(fail, cluster='debug')
    assert job.state == 'FAILED'
    with pytest.raises(ValueError, match='broken on purpose'):
        job.result()


def test_debug_preemption_reaches_the_caller() -> None:
    job = submit(preempted, cluster='debug')
    with pytest.raises(PreemptedExit):
        job.result()


def test_debug_array_and_many_tasks_warning() -> None:
    with pytest.warns(UserWarning, match="cluster='debug' runs one task"):
        jobs = submit(
            add,
            1,
            cluster='debug',
            tasks_per_node=2,
            array_params=[{'b': 10}, {'b': 20}],
        )
    assert [j.result() for j in jobs] == [11, 21]


def test_array_params_must_be_dicts() -> None:
    with pytest.raises(InvalidLaunchError, match=r'array_params\[1\] is 3'):
        submit(add, 1, cluster='debug', array_params=[{'b': 1}, 3])
    with pytest.raises(InvalidLaunchError, match='non-empty list of dicts'):
        submit(add, 1, cluster='debug', array_params={'b': 1})


def test_exit_status_other_than_requeue_is_an_error() -> None:
    job = DistributedJob(exits, 2)
    with pytest.raises(LaunchError, match='exits exited with status 2'):
        job()
    assert DistributedJob(exits, 0)() is None


def test_job_pickles_and_checkpoints_itself() -> None:
    pytest.importorskip('submitit')
    job = DistributedJob(add, 1, b=5)
    again = pickle.loads(pickle.dumps(job))
    assert again({'b': 1}) == 2
    delayed = job.checkpoint({'b': 7})
    assert delayed.function is job
    assert delayed.args == ({'b': 7},)


def test_script_runs_as_python_would(tmp_path: Path) -> None:
    out = tmp_path / 'argv.txt'
    script = tmp_path / 'train.py'
    script.write_text(
        'import sys, pathlib\n'
        'from helper import VALUE\n'  # the script's folder is importable
        f'pathlib.Path({str(out)!r}).write_text(" ".join(sys.argv[1:]) + '
        'VALUE)\n'
        'if __name__ == "__main__":\n'
        '    sys.exit(0)\n'
    )
    (tmp_path / 'helper.py').write_text('VALUE = "!"\n')
    saved = sys.argv[:]
    job = ScriptJob(script, '--epochs', 3)
    assert job.name == 'train'
    assert job(lr=0.1, fast=True, slow=False) == 0
    assert out.read_text() == '--epochs 3 --lr 0.1 --fast!'
    assert sys.argv == saved
    sys.modules.pop('helper', None)


def test_script_and_module_are_checked_at_once(tmp_path: Path) -> None:
    with pytest.raises(
        InvalidLaunchError, match=r"script 'nope\.py' not found.*-m package"
    ):
        ScriptJob('nope.py')
    with pytest.raises(
        InvalidLaunchError, match=r"module 'no_such\.module' cannot be"
    ):
        ScriptJob.module('no_such.module')
    assert ScriptJob.module('drytorch.demo', '--epochs', 1).name == (
        'drytorch.demo'
    )


def test_local_task_exports_torchrun_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('SLURM_JOB_ID', '77')  # submitted from an allocation
    monkeypatch.setenv('SLURM_PROCID', '0')
    restarts = tmp_path / '4242_restarts'
    restarts.write_text('1\n')
    task = LocalTask(
        '4242',
        rank=1,
        local_rank=1,
        world_size=2,
        local_world_size=2,
        attempt=2,
        restarts_file=restarts,
    )
    task.prepare()
    found = detect_environment()
    assert (found.name, found.rank, found.world_size) == ('torchrun', 1, 2)
    assert found.master_addr == '127.0.0.1'
    assert os.environ['TORCHELASTIC_RUN_ID'] == 'submitit-local-4242'
    assert os.environ['TORCHELASTIC_RESTART_COUNT'] == '1'
    assert 'SLURM_JOB_ID' not in os.environ
    # every rank derives the same port from the job id
    assert found.master_port == int(os.environ['MASTER_PORT'])
    assert task.requeue() == LOCAL_REQUEUE_EXIT_CODE
    assert restarts.read_text() == '1\n'  # only rank zero counts
    LocalTask('4242', restarts_file=restarts, attempt=2).requeue()
    assert restarts.read_text() == '2\n'


def test_slurm_task_drops_inherited_torchrun_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        'RANK': '3',
        'LOCAL_RANK': '3',
        'WORLD_SIZE': '4',
        'MASTER_ADDR': 'elsewhere',
        'MASTER_PORT': '1234',
        'SLURM_JOB_ID': '12',
        'SLURM_STEP_ID': '0',
        'SLURM_PROCID': '1',
        'SLURM_LOCALID': '1',
        'SLURM_NTASKS': '2',
        'SLURM_NODEID': '0',
        'SLURM_TASKS_PER_NODE': '2',
        'SLURM_JOB_NODELIST': 'node1',
    }.items():
        monkeypatch.setenv(name, value)
    SlurmTask('12', rank=1, local_rank=1, world_size=2).prepare()
    found = detect_environment()
    assert (found.name, found.rank, found.world_size) == ('slurm', 1, 2)
    assert 'RANK' not in os.environ


def test_a_task_that_detection_disagrees_with_fails_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv('OMPI_COMM_WORLD_RANK', '0')
    monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '4')
    monkeypatch.setenv('OMPI_COMM_WORLD_LOCAL_RANK', '0')
    monkeypatch.setenv('OMPI_COMM_WORLD_LOCAL_SIZE', '4')
    with pytest.raises(
        LaunchError,
        match=r'submitit started this process as task 0 of 2, but drytorch '
        r'detects rank 0 of 4 through mpi',
    ):
        SlurmTask('12', rank=0, world_size=2).prepare()


def test_slurm_requeue_runs_scontrol_on_rank_zero(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = tmp_path / 'calls'
    scontrol = tmp_path / 'scontrol'
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}/usr/bin:/bin')
    assert SlurmTask('12_3', rank=1).requeue() == REQUEUE_EXIT_CODE
    assert not calls.exists()
    assert SlurmTask('12_3', rank=0).requeue() == REQUEUE_EXIT_CODE
    assert calls.read_text() == 'requeue 12_3\n'
    assert 'requeued with `scontrol requeue 12_3`' in capsys.readouterr().err
    scontrol.write_text('#!/bin/sh\necho "Invalid job id" >&2; exit 1\n')
    SlurmTask('12', rank=0).requeue()
    err = capsys.readouterr().err
    assert '`scontrol requeue 12` failed: Invalid job id' in err
    assert 'create_run(resume=True)' in err


def test_the_current_task_follows_the_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(Task.current(), DebugTask)
    assert DebugTask('x').requeue() is None


def test_job_failed_error_carries_the_log_path() -> None:
    err = JobFailedError('died', '12', '/logs/12_0_log.err')
    assert (err.job_id, err.stderr_path) == ('12', '/logs/12_0_log.err')


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """The handlers of USR1 and USR2 as they were before the test."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    watcher.reset()


def test_rank_zero_requeues_after_usr2_not_after_sigterm(
    tmp_path: Path, restore_signals: None, capsys: pytest.CaptureFixture[str]
) -> None:
    restarts = tmp_path / '9_restarts'
    task = LocalTask('9', restarts_file=restarts)
    watcher.reset()
    watcher._handle(signal.SIGTERM, None)  # scancel
    assert DistributedJob._requeue(task) == REQUEUE_EXIT_CODE
    assert not restarts.exists()
    assert 'after SIGTERM (scancel' in capsys.readouterr().err
    watcher.reset()
    watcher._handle(signal.SIGUSR2, None)  # preemption, time limit
    assert DistributedJob._requeue(task) == LOCAL_REQUEUE_EXIT_CODE
    assert restarts.read_text() == '1\n'
    # a second signal can no longer reach submitit's requeueing handler
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
