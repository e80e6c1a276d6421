"""The services the other tests rely on are real and work.

Quick checks of the SLURM test cluster (batch job, job steps, accounting,
PMIx), the PostgreSQL server and Open MPI, so that a broken service shows
up here by name rather than as a puzzling failure elsewhere.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest

# rank 0 prints the sorted ranks and sizes that every rank reported
MPI_PROGRAM = """
import json
from mpi4py import MPI
comm = MPI.COMM_WORLD
got = comm.gather((comm.Get_rank(), comm.Get_size()), root=0)
if comm.Get_rank() == 0:
    print('RESULT ' + json.dumps(sorted(got)), flush=True)
"""

TERMINAL_STATES = (
    'COMPLETED',
    'FAILED',
    'CANCELLED',
    'TIMEOUT',
    'NODE_FAIL',
    'OUT_OF_MEMORY',
    'PREEMPTED',
    'BOOT_FAIL',
    'DEADLINE',
)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault('timeout', 120)
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, **kwargs
    )


def _sacct_state(job_id: str, timeout: float = 90) -> str:
    """Poll sacct until the job's allocation reaches a terminal state."""
    deadline = time.monotonic() + timeout
    state = ''
    while time.monotonic() < deadline:
        out = _run(
            ['sacct', '-j', job_id, '-X', '-n', '-P', '-o', 'State'],
        ).stdout.split()
        state = out[0] if out else ''
        if state.startswith(TERMINAL_STATES):
            return state
        time.sleep(0.5)
    pytest.fail(f'job {job_id} still {state or "unknown"} after {timeout}s')


def _mpi_result(stdout: str) -> list[list[int]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith('RESULT ')]
    assert len(lines) == 1, stdout
    return json.loads(lines[0].removeprefix('RESULT '))


def test_sbatch_two_tasks_completes(slurm_cluster, tmp_path: pathlib.Path):
    out = tmp_path / 'job.out'
    script = 'srun bash -c \'echo "task $SLURM_PROCID of $SLURM_NTASKS"\''
    job_id = (
        _run(
            [
                'sbatch',
                '--parsable',
                '-p',
                slurm_cluster.partition,
                '-n',
                '2',
                '-J',
                'drytorch-infra',
                '-o',
                str(out),
                '--wrap',
                script,
            ],
            cwd=tmp_path,
        )
        .stdout.strip()
        .split(';')[0]
    )
    assert job_id.isdigit(), job_id

    assert _sacct_state(job_id) == 'COMPLETED'
    lines = sorted(out.read_text().split('\n')[:-1])
    assert lines == ['task 0 of 2', 'task 1 of 2']


def test_srun_mpi_pmix(slurm_cluster, mpirun, tmp_path: pathlib.Path):
    listing = _run(['srun', '--mpi=list'])
    assert 'pmix' in listing.stdout + listing.stderr
    proc = _run(
        [
            'srun',
            '--mpi=pmix',
            '-p',
            slurm_cluster.partition,
            '-n',
            '2',
            sys.executable,
            '-c',
            MPI_PROGRAM,
        ],
        cwd=tmp_path,
    )
    assert _mpi_result(proc.stdout) == [[0, 2], [1, 2]]


def test_mpirun_two_ranks(mpirun, tmp_path: pathlib.Path):
    proc = _run(
        [
            mpirun,
            '--allow-run-as-root',
            '--oversubscribe',
            '-np',
            '2',
            sys.executable,
            '-c',
            MPI_PROGRAM,
        ],
        cwd=tmp_path,
    )
    assert _mpi_result(proc.stdout) == [[0, 2], [1, 2]]


def test_postgres_round_trip(pg_url: str):
    import sqlalchemy as sa

    metadata = sa.MetaData()
    table = sa.Table(
        'metrics',
        metadata,
        sa.Column('id', sa.Integer, primary_key=True),
        sa.Column('name', sa.String(64), nullable=False),
        sa.Column('value', sa.Float, nullable=False),
    )
    engine = sa.create_engine(pg_url)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {'name': 'loss', 'value': 0.5},
                    {'name': 'acc', 'value': 1.0},
                ],
            )
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.name, table.c.value).order_by(table.c.id)
            ).all()
            server = conn.execute(sa.text('SHOW server_version')).scalar()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [('loss', 0.5), ('acc', 1.0)]
    assert server.split('.')[0].isdigit()
