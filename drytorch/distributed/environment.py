"""Who am I among the processes of this job, whatever started them.

Every launcher answers the same questions (rank, world size, local rank,
node, where rank zero listens) in its own variables.  A variant is mostly a
table from those questions to its variable names; ``ClusterEnvironment``
reads and checks the table once, so that a malformed launch fails here, with
the bad value quoted, and not minutes later inside torch.distributed.

Adding a launcher is one new module with one subclass, and one entry in
``_detection_order``.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from typing import ClassVar

from drytorch.distributed.errors import DistributedSetupError

__all__ = ['DEFAULT_MASTER_PORT', 'ClusterEnvironment', 'detect_environment']

DEFAULT_MASTER_PORT = 29500
"""torch's own default, used only when nothing better can be agreed on."""

# Derived fields are filled in this order, so a variant may derive a field
# from any field before it (local_world_size from node_rank, say).
_INT_FIELDS = (
    'rank',
    'world_size',
    'local_rank',
    'node_rank',
    'local_world_size',
)


class ClusterEnvironment(abc.ABC):
    """What one launcher tells this process about the job, parsed once.

    Subclasses declare ``markers`` (variables whose presence means "this
    launcher started me") and ``variables`` (for each integer answer, the
    variable names to try in order).  Answers a launcher does not give as a
    plain integer come from ``_derive``; the master address and port from
    ``_find_master``.

    Attributes:
        name: the launcher's name, derived from the class name so that it
            cannot drift from it (``SlurmEnvironment`` -> ``'slurm'``).
        rank: global rank of this process.
        world_size: number of processes in the job.
        local_rank: rank of this process on its node.
        local_world_size: number of processes on this node.
        node_rank: index of this node among the job's nodes.

    """

    name: ClassVar[str] = 'cluster'
    markers: ClassVar[tuple[str, ...]] = ()
    variables: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # Read only to be quoted in error messages: ids that locate the job.
    context: ClassVar[tuple[str, ...]] = ()
    hint: ClassVar[str] = 'that every rank was started by the same launcher'
    # True where agreeing on the master is a collective (MPI): it is then
    # resolved at first use, which every rank must reach.
    collective_master: ClassVar[bool] = False

    rank: int
    world_size: int
    local_rank: int
    node_rank: int
    local_world_size: int

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__.removesuffix('Environment').lower()

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Read and check the launcher's variables.

        Args:
            environ: the variables to read; ``os.environ`` when omitted.

        Raises:
            DistributedSetupError: a variable is missing, is not a whole
                number, or the answers contradict each other.

        """
        self._environ = dict(os.environ if environ is None else environ)
        self._read: dict[str, str] = {}
        for name in self.context:
            self._get(name)
        values: dict[str, int] = {}
        for field in _INT_FIELDS:
            value = self._first_int(self.variables.get(field, ()))
            if value is not None:
                values[field] = value
        for field in _INT_FIELDS:
            if field not in values:
                values[field] = self._derive(field, values)
        for field, value in values.items():
            setattr(self, field, value)
        self._check()
        self._master: tuple[str, int] | None = None
        if not self.collective_master:
            self._master = self._find_master()

    @classmethod
    def detected(cls, environ: Mapping[str, str] | None = None) -> bool:
        """Whether this launcher started the current process."""
        env = os.environ if environ is None else environ
        return all(name in env for name in cls.markers)

    @property
    def master_addr(self) -> str:
        """Host where rank zero serves the rendezvous."""
        return self._master_pair()[0]

    @property
    def master_port(self) -> int:
        """Port where rank zero serves the rendezvous."""
        return self._master_pair()[1]

    def variables_read(self) -> dict[str, str]:
        """The launcher variables that were consulted, with their values.

        Error messages quote them so that a failed launch can be diagnosed
        from the job log alone.
        """
        return dict(self._read)

    def variable(self, name: str) -> str | None:
        """One of the launcher's variables as set, or None.

        For what the table of integer answers does not hold, such as the
        GPUs a launcher gave each task; once read, it is quoted in errors.
        """
        return self._get(name)

    def setup_error(self, problem: str, check: str) -> DistributedSetupError:
        """An error naming this launcher, what it read and what to check."""
        shown = ', '.join(f'{k}={v!r}' for k, v in sorted(self._read.items()))
        return DistributedSetupError(
            f'{self.name}: {problem}. '
            f'Variables read: {shown or "none"}. '
            f'Check {check}.'
        )

    def __repr__(self) -> str:
        fields = ', '.join(f'{f}={getattr(self, f)}' for f in _INT_FIELDS)
        if self._master is not None:
            fields += f', master={self._master[0]}:{self._master[1]}'
        return f'{type(self).__name__}({fields})'

    @abc.abstractmethod
    def _find_master(self) -> tuple[str, int]:
        """Rank zero's address and port, identical on every rank."""

    def _derive(self, field: str, values: Mapping[str, int]) -> int:
        """An answer that the table does not give: missing by default."""
        names = self.variables.get(field, ())
        if not names:
            variant = type(self).__name__
            raise NotImplementedError(f'{variant} gives no {field}')
        wanted = ' or '.join(names)
        raise self.setup_error(
            f'{wanted} is not set, so the {field} is unknown',
            self.hint,
        )

    def _get(self, name: str) -> str | None:
        """One variable, remembered for error messages when present."""
        value = self._environ.get(name)
        if value is not None:
            self._read[name] = value
        return value

    def _int(self, name: str) -> int | None:
        """One variable as a whole number, or None when it is not set."""
        raw = self._get(name)
        if raw is None:
            return None
        text = raw.strip()
        if not text.isdecimal():
            raise self.setup_error(
                f'{name}={raw!r} is not a whole number',
                f'that {name} holds a whole number, and {self.hint}',
            )
        return int(text)

    def _port(self, name: str) -> int | None:
        """One variable as a TCP port, or None when it is not set."""
        port = self._int(name)
        if port is not None and not 0 < port < 65536:
            raise self.setup_error(
                f'{name}={self._read[name]!r} is not a TCP port',
                f'that {name} is between 1 and 65535, and {self.hint}',
            )
        return port

    def _first_int(self, names: tuple[str, ...]) -> int | None:
        for name in names:
            value = self._int(name)
            if value is not None:
                return value
        return None

    def _check(self) -> None:
        problems = []
        if self.world_size < 1:
            problems.append(f'the world size is {self.world_size}')
        if not self.rank < self.world_size:
            problems.append(
                f'rank {self.rank} is not below the world size '
                f'{self.world_size}'
            )
        if not 0 < self.local_world_size <= self.world_size:
            problems.append(
                f'{self.local_world_size} processes on this node do not fit '
                f'a world of {self.world_size}'
            )
        if not self.local_rank < self.local_world_size:
            problems.append(
                f'local rank {self.local_rank} is not below the '
                f'{self.local_world_size} processes on this node'
            )
        if problems:
            raise self.setup_error('; '.join(problems), self.hint)

    def _master_pair(self) -> tuple[str, int]:
        if self._master is None:
            self._master = self._find_master()
        return self._master


def detect_environment(
    environ: Mapping[str, str] | None = None,
) -> ClusterEnvironment:
    """The environment of the first launcher, in order, that started us.

    Args:
        environ: the variables to read; ``os.environ`` when omitted.

    Raises:
        DistributedSetupError: the detected launcher's variables are
            malformed or contradict each other.

    """
    env = dict(os.environ if environ is None else environ)
    for variant in _detection_order():
        if variant.detected(env):
            return variant(env)
    raise AssertionError('the local environment is always detected')


def _detection_order() -> tuple[type[ClusterEnvironment], ...]:
    # Imported here because every variant imports this module.
    from drytorch.distributed.local import LocalEnvironment
    from drytorch.distributed.mpi import MpiEnvironment
    from drytorch.distributed.slurm import SlurmEnvironment
    from drytorch.distributed.torchrun import TorchrunEnvironment

    # The most specific launcher first:
    # - torchrun before SLURM: torchrun is often started by srun inside an
    #   allocation, so its processes carry both sets of variables, and only
    #   torchrun's describe the workers (SLURM's describe torchrun itself).
    # - SLURM before MPI: srun --mpi=pmi2/pmix sets PMI_* variables as well,
    #   and SLURM's are the authority on the allocation (node list, job id).
    # - MPI before local, which is what remains: one process started by hand.
    return (
        TorchrunEnvironment,
        SlurmEnvironment,
        MpiEnvironment,
        LocalEnvironment,
    )
