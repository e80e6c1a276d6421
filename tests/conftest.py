"""Shared fixtures for the real services the tests use, and test markers.

Services are started outside pytest (`.ci/run` does it):

- SLURM: ``bash slurm/cluster/up.sh``
- multi-node SLURM (namespaces on this machine):
  ``export DRYTORCH_TEST_MULTINODE_CONF=$(bash slurm/multinode/up.sh)``;
  its clients need ``SLURM_CONF`` set to that path (``multinode_env``),
  clients without it talk to the one-node cluster
- PostgreSQL: ``export DRYTORCH_TEST_PG_URL=$(bash slurm/postgres/up.sh)``
- MPI: Open MPI's ``mpirun`` and ``mpi4py``
- MLflow: ``export DRYTORCH_TEST_MLFLOW_URL=$(bash slurm/mlflow/up.sh)``
  (without it, a server of the session's own; see tests/helpers)

A test that asks for an absent service is skipped with the reason, unless
``CI_REQUIRE_SERVICES=1`` is set: then it fails, so that CI cannot go green
by skipping what it was meant to check.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

MARKERS = {
    'slurm': 'needs the SLURM test cluster (slurm/cluster/up.sh)',
    'multinode': 'needs the multi-node SLURM cluster (slurm/multinode/up.sh)',
    'mpi': 'needs Open MPI (mpirun) and mpi4py',
    'postgres': 'needs PostgreSQL (DRYTORCH_TEST_PG_URL)',
    'mlflow': 'needs an MLflow server (DRYTORCH_TEST_MLFLOW_URL)',
    'slow': 'takes more than a few seconds',
}
# a test that uses one of these fixtures gets the marker without asking
FIXTURE_MARKERS = {
    'slurm_cluster': 'slurm',
    'multinode_cluster': 'multinode',
    'multinode_env': 'multinode',
    'mpirun': 'mpi',
    'pg_url': 'postgres',
    'mlflow_url': 'mlflow',
}


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line('markers', f'{name}: {doc}')


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, 'fixturenames', ()):
                item.add_marker(marker)


def _service_absent(reason: str) -> NoReturn:
    """Skip, or fail when CI_REQUIRE_SERVICES=1."""
    if os.environ.get('CI_REQUIRE_SERVICES') == '1':
        pytest.fail(f'{reason} (CI_REQUIRE_SERVICES=1)', pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Undo what a test (or code it calls) wrote into os.environ.

    Code under test exports launcher variables (RANK, WORLD_SIZE, ...) on
    purpose; left behind, they would make every later subprocess wait for
    ranks that never come.
    """
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope='session', autouse=True)
def _offline_backends() -> Iterator[None]:
    """W&B never goes online; matplotlib never needs a display."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('WANDB_MODE', 'offline')
        mp.setenv('MPLBACKEND', 'Agg')
        yield


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """The one-node test cluster; `urgent` preempts jobs in `partition`."""

    partition: str = 'debug'
    urgent: str = 'urgent'


@pytest.fixture(scope='session')
def slurm_cluster() -> SlurmCluster:
    """The SLURM test cluster, checked to answer (sinfo)."""
    hint = 'start it with `bash slurm/cluster/up.sh`'
    if shutil.which('sinfo') is None or shutil.which('sbatch') is None:
        _service_absent(f'SLURM is not installed; {hint}')
    try:
        proc = subprocess.run(
            ['sinfo', '-h', '-p', 'debug', '-o', '%T'],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _service_absent(f'sinfo timed out: SLURM is not up; {hint}')
    state = proc.stdout.strip()
    if proc.returncode != 0 or not state:
        _service_absent(
            f'SLURM does not answer ({proc.stderr.strip()}); {hint}'
        )
    if not state.startswith(('idle', 'mixed', 'alloc', 'completing')):
        _service_absent(f'SLURM node is {state!r}, not usable; {hint}')
    return SlurmCluster()


REPO = pathlib.Path(__file__).resolve().parents[1]
# where slurm/multinode/up.sh puts it by default
MULTINODE_CONF = pathlib.Path('/tmp/multinode/etc/slurm.conf')


@dataclasses.dataclass(frozen=True)
class MultinodeCluster:
    """The multi-node test cluster of slurm/multinode/ (one machine).

    Its clients need ``SLURM_CONF=conf`` (see ``env`` and the fixture
    ``multinode_env``); jobs inherit it. `urgent` preempts jobs in
    `partition`, as in the one-node cluster. `node_sh` is the failure tool
    (crash, stop, start, net-down, net-up, pids, exec), see ``node_tool``.
    """

    conf: pathlib.Path
    nodes: tuple[str, ...]
    partition: str = 'debug'
    urgent: str = 'urgent'
    node_sh: pathlib.Path = REPO / 'slurm' / 'multinode' / 'node.sh'

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ with SLURM_CONF set, and node.sh's MN_* settings.

        Every MN_* variable of the environment goes through (up.sh's
        settings of a second cluster); MN_BASE and MN_PREFIX, which node.sh
        needs to find the nodes, follow this cluster's conf and node names.
        """
        return {
            **os.environ,
            'SLURM_CONF': str(self.conf),
            'MN_BASE': str(self.conf.parent.parent),
            # node.sh's NODE is PREFIX + number (node2, nb2)
            'MN_PREFIX': self.nodes[0].rstrip('0123456789'),
            **extra,
        }

    def node_tool(
        self, action: str, node: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``node.sh ACTION NODE ARGS...``; raise if it fails."""
        return subprocess.run(
            ['bash', str(self.node_sh), action, node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


@pytest.fixture(scope='session')
def multinode_cluster() -> MultinodeCluster:
    """The multi-node SLURM cluster, checked to answer with usable nodes."""
    hint = (
        'start it with `bash slurm/multinode/up.sh` (as root; it prints '
        'the slurm.conf path for DRYTORCH_TEST_MULTINODE_CONF)'
    )
    if shutil.which('sinfo') is None or shutil.which('srun') is None:
        _service_absent(f'SLURM is not installed; {hint}')
    conf = pathlib.Path(
        os.environ.get('DRYTORCH_TEST_MULTINODE_CONF') or MULTINODE_CONF
    )
    if not conf.is_file():
        _service_absent(f'no multi-node slurm.conf at {conf}; {hint}')
    try:
        proc = subprocess.run(
            ['sinfo', '-h', '-N', '-p', 'debug', '-o', '%N %T'],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, 'SLURM_CONF': str(conf)},
        )
    except subprocess.TimeoutExpired:
        _service_absent(f'sinfo timed out: the cluster is not up; {hint}')
    rows = [line.split() for line in proc.stdout.splitlines() if line]
    if proc.returncode != 0 or not rows:
        _service_absent(
            f'the multi-node cluster does not answer '
            f'({proc.stderr.strip()}); {hint}'
        )
    bad = [
        f'{node} {state}'
        for node, state in rows
        if state.endswith('*')
        or not state.startswith(('idle', 'mixed', 'alloc', 'completing'))
    ]
    if bad:
        _service_absent(f'multi-node cluster nodes not usable: {bad}; {hint}')
    return MultinodeCluster(
        conf=conf, nodes=tuple(sorted(node for node, _ in rows))
    )


@pytest.fixture
def multinode_env(
    multinode_cluster: MultinodeCluster, monkeypatch: pytest.MonkeyPatch
) -> MultinodeCluster:
    """The multi-node cluster, with SLURM_CONF set for this test only."""
    monkeypatch.setenv('SLURM_CONF', str(multinode_cluster.conf))
    return multinode_cluster


@pytest.fixture(scope='session')
def _pg_server_url() -> str:
    """URL of the PostgreSQL test server, checked to accept a connection."""
    hint = (
        'start it with '
        '`export DRYTORCH_TEST_PG_URL=$(bash slurm/postgres/up.sh)`'
    )
    url = os.environ.get('DRYTORCH_TEST_PG_URL')
    if not url:
        _service_absent(f'DRYTORCH_TEST_PG_URL is not set; {hint}')
    try:
        import sqlalchemy as sa
    except ImportError:
        _service_absent('sqlalchemy is not installed (extra `postgres`)')
    engine = sa.create_engine(url, connect_args={'connect_timeout': 10})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text('SELECT 1'))
    except Exception as exc:  # noqa: BLE001 - any failure means absent
        _service_absent(f'cannot connect to {url}: {exc}; {hint}')
    finally:
        engine.dispose()
    return url


@pytest.fixture
def pg_url(_pg_server_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database, dropped afterwards."""
    import sqlalchemy as sa

    server = sa.make_url(_pg_server_url)
    name = f'drytorch_t_{uuid.uuid4().hex[:16]}'
    admin = sa.create_engine(server, isolation_level='AUTOCOMMIT')
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE {name}'))
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(
                sa.text(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)')
            )
    finally:
        admin.dispose()


@pytest.fixture(scope='session')
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running MLflow server with a SQLite backend."""
    from tests.helpers import mlflow_server

    folder = tmp_path_factory.mktemp('mlflow')
    yield from mlflow_server.serve(folder, _service_absent)


@pytest.fixture(scope='session')
def mpirun() -> str:
    """Path to Open MPI's mpirun, with mpi4py checked to load MPI."""
    path = shutil.which('mpirun')
    if path is None:
        _service_absent('mpirun is not on PATH (apt-get install openmpi-bin)')
    try:
        proc = subprocess.run(
            [
                sys.executable,
                '-c',
                'from mpi4py import MPI; MPI.Get_version()',
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _service_absent('importing mpi4py timed out')
    if proc.returncode != 0:
        _service_absent(
            'mpi4py cannot load MPI (pip install mpi4py, after '
            f'libopenmpi-dev): {proc.stderr.strip()[-500:]}'
        )
    return path
