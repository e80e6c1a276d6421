"""Bringing the group up and down, in one process and in several (gloo).

The multi-process tests start real ranks (``rank_worker.py``) with the
variables torchrun, srun or mpirun would set, on free local ports.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from drytorch.distributed import (
    DistributedSetupError,
    ensure_process_group,
    init_distributed,
    teardown_distributed,
)
from drytorch.distributed import process_group as pg
from drytorch.distributed.local import LocalEnvironment
from drytorch.distributed.slurm import PORT_BASE, PORT_SPAN

WORKER = Path(__file__).with_name('rank_worker.py')
REPO = Path(__file__).resolve().parents[2]
SETUP_TIMEOUT = 4  # seconds, for the tests that must fail


def worker_environ(**variables: object) -> dict[str, str]:
    """This process's clean environment, plus a rank's variables."""
    environ = dict(os.environ)
    path = environ.get('PYTHONPATH')
    environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), path]))
    environ['OMP_NUM_THREADS'] = '1'
    environ.update({name: str(value) for name, value in variables.items()})
    return environ


def torchrun_ranks(world: int, port: int) -> list[dict[str, str]]:
    return [
        worker_environ(
            RANK=rank,
            LOCAL_RANK=rank,
            WORLD_SIZE=world,
            LOCAL_WORLD_SIZE=world,
            GROUP_RANK=0,
            MASTER_ADDR='127.0.0.1',
            MASTER_PORT=port,
            TORCHELASTIC_RUN_ID='test',
        )
        for rank in range(world)
    ]


def srun_ranks(
    world: int, job_id: int, **extra: object
) -> list[dict[str, str]]:
    return [
        worker_environ(
            SLURM_JOB_ID=job_id,
            SLURM_STEP_ID=0,
            SLURM_PROCID=rank,
            SLURM_LOCALID=rank,
            SLURM_NODEID=0,
            SLURM_NTASKS=world,
            SLURM_TASKS_PER_NODE=world,
            SLURM_JOB_NODELIST='localhost',
            **extra,
        )
        for rank in range(world)
    ]


def run_ranks(
    environs: list[dict[str, str]], mode: str, limit: float = 60
) -> list[tuple[int, dict[str, Any]]]:
    """Start one worker per environment; their exit codes and reports.

    ``limit`` only guards against a hang: the timeouts under test are
    measured by the ranks themselves, since imports on a loaded machine
    can take longer than the timeout.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), mode],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for environ in environs
    ]
    deadline = time.monotonic() + limit
    results = []
    try:
        for proc in procs:
            remaining = max(deadline - time.monotonic(), 0.1)
            out, err = proc.communicate(timeout=remaining)
            results.append((proc.returncode, last_report(out, err)))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return results


def last_report(out: str, err: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.startswith('{')]
    if not lines:
        return {'stderr': err[-2000:]}
    return json.loads(lines[-1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


# --- one process ---------------------------------------------------------


def test_one_process_starts_no_group() -> None:
    env = init_distributed()
    assert isinstance(env, LocalEnvironment)
    assert not dist.is_initialized()
    assert init_distributed() is env
    teardown_distributed()
    teardown_distributed()
    assert not dist.is_initialized()


def test_ensure_process_group_starts_nothing_alone() -> None:
    ensure_process_group()
    assert not dist.is_initialized()


def test_a_group_of_one_can_still_be_adopted(
    free_port: Callable[[], int],
) -> None:
    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{free_port()}',
        rank=0,
        world_size=1,
    )
    assert init_distributed().world_size == 1
    teardown_distributed()
    assert not dist.is_initialized()


def test_a_foreign_group_that_disagrees_is_refused(
    monkeypatch: pytest.MonkeyPatch, free_port: Callable[[], int]
) -> None:
    port = free_port()
    dist.init_process_group(
        'gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1
    )
    for name, value in torchrun_ranks(2, port)[1].items():
        monkeypatch.setenv(name, value)
    with pytest.raises(
        DistributedSetupError, match='already up as rank 0 of 1, but'
    ):
        init_distributed()


def test_backend_follows_the_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert pg.default_backend(2) == 'nccl'
    # three ranks on two devices: all of them use gloo, rank 0 included,
    # since ranks that disagree on the backend never meet
    assert pg.default_backend(3) == 'gloo'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert pg.default_backend(1) == 'gloo'


def test_timeout_default_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pg._timeout_from_environment() == datetime.timedelta(minutes=5)
    monkeypatch.setenv('DRYTORCH_DIST_TIMEOUT', '2.5')
    assert pg._timeout_from_environment() == datetime.timedelta(seconds=2.5)


@pytest.mark.parametrize('value', ['soon', '0', '-3', 'nan', 'inf'])
def test_a_malformed_timeout_is_quoted(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv('DRYTORCH_DIST_TIMEOUT', value)
    with pytest.raises(
        DistributedSetupError,
        match=f"DRYTORCH_DIST_TIMEOUT='{value}' is not a positive number",
    ):
        pg._timeout_from_environment()


# --- several processes, gloo ---------------------------------------------


def test_two_ranks_as_torchrun_starts_them(
    free_port: Callable[[], int],
) -> None:
    results = run_ranks(torchrun_ranks(2, free_port()), 'init')
    for rank, (code, report) in enumerate(results):
        assert code == 0, report
        assert report['name'] == report['detected'] == 'torchrun'
        assert (report['group_rank'], report['group_size']) == (rank, 2)
        assert report['backend'] == 'gloo'
        assert report['same']  # the second call returned the same object
        assert report['total'] == 1.0


def test_three_ranks_as_srun_starts_them() -> None:
    # No MASTER_PORT: the port is derived from the job id; pick an id
    # whose port is free here (from a random start: test runs may overlap).
    first = random.randrange(PORT_SPAN)
    job_id = next(
        job
        for job in range(first, first + PORT_SPAN)
        if port_is_free(PORT_BASE + job % PORT_SPAN)
    )
    results = run_ranks(srun_ranks(3, job_id), 'init')
    port = PORT_BASE + job_id % PORT_SPAN
    for rank, (code, report) in enumerate(results):
        assert code == 0, report
        assert report['name'] == 'slurm'
        assert (report['group_rank'], report['group_size']) == (rank, 3)
        assert report['local_rank'] == rank
        assert report['master'] == f'localhost:{port}'
        assert report['total'] == 3.0


@pytest.mark.slow
@pytest.mark.parametrize(
    'started', [[0, 1], [1, 2]], ids=['rank-2-missing', 'rank-0-missing']
)
def test_missing_ranks_fail_within_the_timeout(
    free_port: Callable[[], int], started: list[int]
) -> None:
    # SLURM_NTASKS says 3, but only two ranks are started.  Without rank 0
    # nobody serves the rendezvous: a different failure inside torch.
    environs = srun_ranks(
        3,
        4242,
        MASTER_PORT=free_port(),
        DRYTORCH_DIST_TIMEOUT=SETUP_TIMEOUT,
    )
    results = run_ranks([environs[rank] for rank in started], 'init')
    for code, report in results:
        assert code == 3, report
        message = report['setup_error']
        assert message.startswith('slurm: the gloo process group of 3 ranks')
        assert f'did not come up within {SETUP_TIMEOUT} s' in message
        assert "SLURM_NTASKS='3'" in message
        assert 'that all 3 processes were started' in message
        # measured by the rank from its call, so slow imports do not count
        # well inside what a hang would take (the default timeout is 300 s),
        # with room for a loaded machine: what is pinned is the timeout
        assert report['seconds'] < 5 * SETUP_TIMEOUT


@pytest.mark.slow
def test_a_killed_rank_makes_the_others_fail(
    free_port: Callable[[], int],
) -> None:
    limits = {'VICTIM': '1', 'DRYTORCH_DIST_TIMEOUT': str(SETUP_TIMEOUT)}
    environs = [{**e, **limits} for e in torchrun_ranks(3, free_port())]
    results = run_ranks(environs, 'loop', limit=60)
    (code0, report0), (code1, report1), (code2, report2) = results
    assert code1 == -9, report1  # SIGKILL
    for code, report in ((code0, report0), (code2, report2)):
        assert code == 4, report
        assert report['step'] >= 20
        assert report['error']
        assert report['at'] - report1['killed_at'] < SETUP_TIMEOUT


@pytest.mark.skipif(
    shutil.which('torchrun') is None, reason='torchrun is not on PATH'
)
def test_under_real_torchrun() -> None:
    proc = subprocess.run(
        [
            'torchrun',
            '--standalone',
            '--nproc-per-node',
            '2',
            str(WORKER),
            'init',
        ],
        env=worker_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the two ranks share one stdout: their lines may run together
    reports = [
        json.loads(text) for text in re.findall(r'\{[^{}]*\}', proc.stdout)
    ]
    assert sorted(r['group_rank'] for r in reports) == [0, 1]
    assert {r['name'] for r in reports} == {'torchrun'}
    assert {r['group_size'] for r in reports} == {2}


def test_under_real_mpirun(mpirun: str) -> None:
    environ = worker_environ()
    if not (shutil.which('ssh') or shutil.which('rsh')):
        # Open MPI refuses to start without a remote shell on PATH, even
        # for a launch on this node alone, where it never calls it.
        environ.setdefault('OMPI_MCA_plm_rsh_agent', 'false')
    proc = subprocess.run(
        [
            mpirun,
            '--allow-run-as-root',
            '--oversubscribe',
            '-np',
            '2',
            sys.executable,
            str(WORKER),
            'init',
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # the two ranks share one stdout: their lines may run together
    reports = [
        json.loads(text) for text in re.findall(r'\{[^{}]*\}', proc.stdout)
    ]
    assert sorted(r['group_rank'] for r in reports) == [0, 1]
    assert {r['name'] for r in reports} == {'mpi'}
    assert {r['local_rank'] for r in reports} == {0, 1}
    # rank zero chose the address and port and broadcast them over MPI
    assert len({r['master'] for r in reports}) == 1
