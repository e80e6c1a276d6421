"""The detection order and what the base class checks for every launcher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import pytest

from drytorch.distributed import (
    ClusterEnvironment,
    DistributedSetupError,
    detect_environment,
)
from drytorch.distributed.environment import _detection_order
from drytorch.distributed.local import LocalEnvironment
from drytorch.distributed.mpi import MpiEnvironment
from drytorch.distributed.slurm import SlurmEnvironment
from drytorch.distributed.torchrun import TorchrunEnvironment

TORCHRUN = {
    'RANK': '1',
    'LOCAL_RANK': '1',
    'WORLD_SIZE': '2',
    'LOCAL_WORLD_SIZE': '2',
    'GROUP_RANK': '0',
    'MASTER_ADDR': '10.0.0.1',
    'MASTER_PORT': '29400',
    'TORCHELASTIC_RUN_ID': 'abc',
}
SLURM = {
    'SLURM_JOB_ID': '1234',
    'SLURM_STEP_ID': '0',
    'SLURM_PROCID': '3',
    'SLURM_LOCALID': '1',
    'SLURM_NTASKS': '4',
    'SLURM_NODEID': '1',
    'SLURM_TASKS_PER_NODE': '2(x2)',
    'SLURM_JOB_NODELIST': 'node[01-02]',
}
OPEN_MPI = {
    'OMPI_COMM_WORLD_RANK': '2',
    'OMPI_COMM_WORLD_SIZE': '4',
    'OMPI_COMM_WORLD_LOCAL_RANK': '0',
    'OMPI_COMM_WORLD_LOCAL_SIZE': '2',
}
PMI = {
    'PMI_RANK': '3',
    'PMI_SIZE': '4',
    'MPI_LOCALRANKID': '1',
    'MPI_LOCALNRANKS': '2',
}


def set_environ(mp: pytest.MonkeyPatch, *tables: dict[str, str]) -> None:
    for table in tables:
        for name, value in table.items():
            mp.setenv(name, value)


def test_names_come_from_the_class_names() -> None:
    names = [variant.name for variant in _detection_order()]
    assert names == ['torchrun', 'slurm', 'mpi', 'local']


def test_nothing_set_is_a_single_local_process() -> None:
    env = detect_environment()
    assert isinstance(env, LocalEnvironment)
    assert (env.rank, env.world_size, env.local_rank) == (0, 1, 0)
    assert (env.local_world_size, env.node_rank) == (1, 0)
    assert env.variables_read() == {}


def test_torchrun_inside_slurm_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchrun started by srun: both sets of variables, torchrun's describe
    # the workers.
    set_environ(monkeypatch, SLURM, TORCHRUN)
    env = detect_environment()
    assert isinstance(env, TorchrunEnvironment)
    assert (env.rank, env.world_size) == (1, 2)


def test_slurm_wins_over_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    # srun --mpi=pmi2 sets PMI_* as well.
    set_environ(monkeypatch, PMI, SLURM)
    env = detect_environment()
    assert isinstance(env, SlurmEnvironment)
    assert env.rank == 3


@pytest.mark.parametrize('table', [OPEN_MPI, PMI], ids=['openmpi', 'pmi'])
def test_mpi_wins_over_local(
    monkeypatch: pytest.MonkeyPatch, table: dict[str, str]
) -> None:
    set_environ(monkeypatch, table)
    assert isinstance(detect_environment(), MpiEnvironment)


def test_detected_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not TorchrunEnvironment.detected()
    set_environ(monkeypatch, TORCHRUN)
    assert TorchrunEnvironment.detected()
    assert LocalEnvironment.detected()


def test_an_explicit_mapping_is_read_instead_of_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_environ(monkeypatch, OPEN_MPI)
    env = detect_environment(TORCHRUN)
    assert env.name == 'torchrun'


def test_variables_read_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    set_environ(monkeypatch, TORCHRUN)
    monkeypatch.setenv('UNRELATED', 'x')
    read = detect_environment().variables_read()
    assert read == TORCHRUN


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'RANK': '2'}, 'rank 2 is not below the world size 2'),
        ({'WORLD_SIZE': '0', 'RANK': '0'}, 'the world size is 0'),
        ({'LOCAL_WORLD_SIZE': '3'}, '3 processes on this node do not fit'),
        ({'LOCAL_RANK': '2'}, 'local rank 2 is not below the 2 processes'),
    ],
)
def test_contradictions_are_refused(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, str], message: str
) -> None:
    set_environ(monkeypatch, TORCHRUN, changes)
    with pytest.raises(DistributedSetupError, match=message) as info:
        detect_environment()
    assert str(info.value).startswith('torchrun: ')
    assert 'Variables read: ' in str(info.value)


def test_a_malformed_value_is_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    set_environ(monkeypatch, TORCHRUN, {'WORLD_SIZE': 'two'})
    with pytest.raises(
        DistributedSetupError, match="WORLD_SIZE='two' is not a whole number"
    ):
        detect_environment()


def test_the_error_is_a_runtime_error() -> None:
    assert issubclass(DistributedSetupError, RuntimeError)


def test_repr_shows_the_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    set_environ(monkeypatch, TORCHRUN)
    text = repr(detect_environment())
    assert text.startswith('TorchrunEnvironment(rank=1, world_size=2')
    assert 'master=10.0.0.1:29400' in text


def test_a_new_variant_is_one_table() -> None:
    class ToyEnvironment(ClusterEnvironment):
        markers: ClassVar[tuple[str, ...]] = ('TOY_RANK',)
        variables: ClassVar[Mapping[str, tuple[str, ...]]] = {
            'rank': ('TOY_RANK',),
            'world_size': ('TOY_SIZE',),
            'local_rank': ('TOY_RANK',),
            'node_rank': ('TOY_NODE',),
            'local_world_size': ('TOY_SIZE',),
        }

        def _find_master(self) -> tuple[str, int]:
            return 'toy', 1

    environ = {'TOY_RANK': '1', 'TOY_SIZE': '3', 'TOY_NODE': '0'}
    assert ToyEnvironment.detected(environ)
    env = ToyEnvironment(environ)
    assert env.name == 'toy'
    assert (env.rank, env.world_size, env.master_addr) == (1, 3, 'toy')
    with pytest.raises(DistributedSetupError, match='TOY_NODE is not set'):
        ToyEnvironment({'TOY_RANK': '0', 'TOY_SIZE': '1'})
