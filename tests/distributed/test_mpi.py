"""MPI: Open MPI and PMI variables, and agreeing on rank zero's address."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest

from drytorch.distributed import DistributedSetupError
from drytorch.distributed import mpi as mpi_module
from drytorch.distributed.environment import DEFAULT_MASTER_PORT
from drytorch.distributed.mpi import MpiEnvironment

OPEN_MPI = {
    'OMPI_COMM_WORLD_RANK': '3',
    'OMPI_COMM_WORLD_SIZE': '4',
    'OMPI_COMM_WORLD_LOCAL_RANK': '1',
    'OMPI_COMM_WORLD_LOCAL_SIZE': '2',
}
PMI = {
    'PMI_RANK': '2',
    'PMI_SIZE': '4',
    'MPI_LOCALRANKID': '0',
    'MPI_LOCALNRANKS': '2',
}
SINGLE_NODE = {
    'OMPI_COMM_WORLD_RANK': '1',
    'OMPI_COMM_WORLD_SIZE': '2',
    'OMPI_COMM_WORLD_LOCAL_RANK': '1',
    'OMPI_COMM_WORLD_LOCAL_SIZE': '2',
}


class FakeComm:
    """COMM_WORLD as seen by one rank: bcast returns rank zero's object."""

    def __init__(self, from_rank_zero: Any) -> None:
        self.from_rank_zero = from_rank_zero
        self.sent: list[Any] = []

    def bcast(self, obj: Any, root: int = 0) -> Any:
        assert root == 0
        self.sent.append(obj)
        return obj if obj is not None else self.from_rank_zero


@pytest.fixture
def no_mpi4py(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'mpi4py', None)


def use_comm(monkeypatch: pytest.MonkeyPatch, comm: FakeComm) -> None:
    fake = SimpleNamespace(COMM_WORLD=comm)
    monkeypatch.setattr(mpi_module, '_import_mpi', lambda: fake)


def test_open_mpi_variables() -> None:
    env = MpiEnvironment(OPEN_MPI)
    assert env.name == 'mpi'
    assert (env.rank, env.world_size) == (3, 4)
    assert (env.local_rank, env.local_world_size, env.node_rank) == (1, 2, 1)


def test_mpich_and_intel_variables() -> None:
    env = MpiEnvironment(PMI)
    assert (env.rank, env.world_size) == (2, 4)
    assert (env.local_rank, env.local_world_size, env.node_rank) == (0, 2, 1)


def test_detection_needs_rank_and_size_of_one_flavour() -> None:
    assert MpiEnvironment.detected(OPEN_MPI)
    assert MpiEnvironment.detected(PMI)
    assert not MpiEnvironment.detected({'PMI_RANK': '0'})
    assert not MpiEnvironment.detected({'OMPI_COMM_WORLD_RANK': '0'})


def test_a_missing_local_rank_is_named() -> None:
    environ = {'PMI_RANK': '0', 'PMI_SIZE': '2', 'MPI_LOCALNRANKS': '2'}
    with pytest.raises(
        DistributedSetupError,
        match='OMPI_COMM_WORLD_LOCAL_RANK or MPI_LOCALRANKID is not set',
    ):
        MpiEnvironment(environ)


def test_a_malformed_value_is_quoted() -> None:
    with pytest.raises(
        DistributedSetupError, match="mpi: PMI_SIZE='4 ranks' is not a whole"
    ):
        MpiEnvironment({**PMI, 'PMI_SIZE': '4 ranks'})


def test_construction_is_no_collective(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    comm = FakeComm(('node01', 12345))
    use_comm(monkeypatch, comm)
    env = MpiEnvironment(OPEN_MPI)
    assert 'master' not in repr(env)
    assert comm.sent == []
    assert (env.master_addr, env.master_port) == ('node01', 12345)
    assert env.master_port == 12345
    assert comm.sent == [None]  # one broadcast, received from rank zero


def test_rank_zero_proposes_its_host_and_a_free_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    comm = FakeComm(None)
    use_comm(monkeypatch, comm)
    monkeypatch.setattr(mpi_module, '_hostname', lambda: 'node01')
    environ = {**OPEN_MPI, 'OMPI_COMM_WORLD_RANK': '0'}
    environ['OMPI_COMM_WORLD_LOCAL_RANK'] = '0'
    env = MpiEnvironment(environ)
    assert env.master_addr == 'node01'
    assert 0 < env.master_port < 65536
    assert comm.sent == [('node01', env.master_port)]


def test_rank_zero_proposes_loopback_on_a_single_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    comm = FakeComm(None)
    use_comm(monkeypatch, comm)
    environ = {**SINGLE_NODE, 'OMPI_COMM_WORLD_RANK': '0'}
    environ['OMPI_COMM_WORLD_LOCAL_RANK'] = '0'
    env = MpiEnvironment({**environ, 'MASTER_PORT': '23456'})
    assert (env.master_addr, env.master_port) == ('127.0.0.1', 23456)


@pytest.mark.usefixtures('no_mpi4py')
def test_without_mpi4py_a_single_node_uses_loopback() -> None:
    env = MpiEnvironment(SINGLE_NODE)
    assert (env.master_addr, env.master_port) == (
        '127.0.0.1',
        DEFAULT_MASTER_PORT,
    )


@pytest.mark.usefixtures('no_mpi4py')
def test_without_mpi4py_master_variables_are_used() -> None:
    environ = {**OPEN_MPI, 'MASTER_ADDR': 'node01', 'MASTER_PORT': '23456'}
    env = MpiEnvironment(environ)
    assert (env.master_addr, env.master_port) == ('node01', 23456)


@pytest.mark.usefixtures('no_mpi4py')
def test_without_mpi4py_several_nodes_ask_for_it() -> None:
    env = MpiEnvironment(OPEN_MPI)  # detection itself needs no mpi4py
    with pytest.raises(
        DistributedSetupError, match=r'pip install mpi4py'
    ) as info:
        _ = env.master_addr
    assert 'span several nodes' in str(info.value)
    assert 'mpirun -x MASTER_ADDR' in str(info.value)
