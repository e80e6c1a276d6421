"""MPI launchers: Open MPI's mpirun, and MPICH / Intel MPI (PMI).

The ranks come from the launcher's variables, so detecting MPI needs no
mpi4py.  Where rank zero listens does not: mpirun says nothing about it.
With mpi4py, rank zero chooses the address and a free port and broadcasts
them over ``COMM_WORLD``; without it, ``MASTER_ADDR`` / ``MASTER_PORT`` or,
on a single node, ``127.0.0.1`` and a fixed port are used, and only a
multi-node job with neither asks for mpi4py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from types import ModuleType
from typing import ClassVar

from drytorch.distributed.environment import (
    DEFAULT_MASTER_PORT,
    ClusterEnvironment,
)

__all__ = ['MpiEnvironment']

_FLAVOURS = (
    ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE'),  # Open MPI
    ('PMI_RANK', 'PMI_SIZE'),  # MPICH, Intel MPI, MVAPICH
)


class MpiEnvironment(ClusterEnvironment):
    """Processes started by mpirun / mpiexec, one rank per MPI process.

    With mpi4py, the first read of ``master_addr`` or ``master_port`` is a
    broadcast from rank zero that every rank must reach: never read them
    first under ``if is_rank_zero():``.  ``init_distributed`` reads them on
    every rank.
    """

    variables: ClassVar[Mapping[str, tuple[str, ...]]] = {
        'rank': ('OMPI_COMM_WORLD_RANK', 'PMI_RANK'),
        'world_size': ('OMPI_COMM_WORLD_SIZE', 'PMI_SIZE'),
        'local_rank': ('OMPI_COMM_WORLD_LOCAL_RANK', 'MPI_LOCALRANKID'),
        'local_world_size': ('OMPI_COMM_WORLD_LOCAL_SIZE', 'MPI_LOCALNRANKS'),
    }
    hint: ClassVar[str] = (
        'that the script was started by mpirun -np N (Open MPI) or '
        'mpiexec (MPICH, Intel MPI), one process per rank'
    )
    # With mpi4py, rank zero's choice is broadcast: a collective.
    collective_master: ClassVar[bool] = True

    @classmethod
    def detected(cls, environ: Mapping[str, str] | None = None) -> bool:
        """Whether an MPI launcher's rank and size variables are set."""
        source = os.environ if environ is None else environ
        return any(
            rank in source and size in source for rank, size in _FLAVOURS
        )

    def _derive(self, field: str, values: Mapping[str, int]) -> int:
        if field == 'node_rank' and 'local_world_size' in values:
            # MPI names no node index; mpirun's default mapping (by slot)
            # fills each node with a block of consecutive ranks.
            return values['rank'] // values['local_world_size']
        return super()._derive(field, values)

    def _find_master(self) -> tuple[str, int]:
        addr = self._get('MASTER_ADDR')
        port = self._port('MASTER_PORT')
        single_node = self.local_world_size == self.world_size
        mpi = _import_mpi()
        if mpi is not None:
            # Every rank takes rank zero's answer, even where its own
            # variables say otherwise: mpirun need not export them all.
            proposal = None
            if self.rank == 0:
                proposal = (
                    addr or ('127.0.0.1' if single_node else _hostname()),
                    port or _free_port(),
                )
            agreed = mpi.COMM_WORLD.bcast(proposal, root=0)
            return str(agreed[0]), int(agreed[1])
        if addr is None and not single_node:
            raise self.setup_error(
                f'the {self.world_size} ranks span several nodes, and '
                'neither MASTER_ADDR nor mpi4py is there to agree on where '
                'rank zero listens',
                'that mpi4py is installed (pip install mpi4py), or export '
                'MASTER_ADDR and MASTER_PORT to every rank '
                '(mpirun -x MASTER_ADDR -x MASTER_PORT)',
            )
        return addr or '127.0.0.1', port or DEFAULT_MASTER_PORT


def _import_mpi() -> ModuleType | None:
    """mpi4py's MPI module, or None; imported late since it starts MPI."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI


def _hostname() -> str:
    return socket.gethostname()


def _free_port() -> int:
    """A port free right now on this host (a small race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(('', 0))
        return int(probe.getsockname()[1])
