"""What the SLURM cluster has, asked before a job is submitted.

``sbatch`` accepts a job for a partition without the GPUs it needs and lets
it wait in the queue forever, and refuses an unknown partition only with
its own terse message.  One ``sinfo`` call answers both questions for every
partition, so the request is checked against it first and the error says
what the cluster offers instead.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

from drytorch.launch.errors import ClusterUnavailableError, InvalidLaunchError
from drytorch.launch.request import LaunchRequest

__all__ = [
    'NodeGroup',
    'Partition',
    'check_request',
    'partitions',
    'require_slurm',
]

SLURM_COMMANDS = ('sbatch', 'srun', 'sinfo')
_GPUS = re.compile(r'gpu(?::[^:,(]+)?:(\d+)')
_LEADING_INT = re.compile(r'\d+')


@dataclasses.dataclass(frozen=True)
class NodeGroup:
    """Nodes of a partition that look alike to sinfo."""

    nodes: int
    cpus: int
    gpus: int
    gres: str


@dataclasses.dataclass(frozen=True)
class Partition:
    """A partition: its name, whether it is the default, its nodes."""

    name: str
    default: bool
    groups: tuple[NodeGroup, ...]

    def nodes_fitting(self, cpus: int, gpus: int) -> int:
        """How many nodes have at least ``cpus`` CPUs and ``gpus`` GPUs."""
        return sum(
            g.nodes for g in self.groups if g.cpus >= cpus and g.gpus >= gpus
        )


def require_slurm() -> None:
    """Raise unless SLURM's commands are on PATH."""
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise ClusterUnavailableError(
            "cluster='slurm' was asked for, but this machine has no SLURM: "
            f'{", ".join(missing)} not found on PATH. Submit from a login '
            'node of your cluster (where `sinfo` answers), or run here with '
            "cluster='local' (processes on this machine) or cluster='debug' "
            '(this process).'
        )


def partitions() -> dict[str, Partition]:
    """Every partition that sinfo lists, by name.

    Raises:
        ClusterUnavailableError: sinfo fails or does not answer.

    """
    command = ['sinfo', '--noheader', '--format=%P|%D|%c|%G']
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        raise ClusterUnavailableError(
            'SLURM does not answer: `sinfo` did not return within 30 s. '
            'Check that slurmctld is up (`scontrol ping`).'
        ) from None
    if proc.returncode != 0:
        raise ClusterUnavailableError(
            f'SLURM does not answer: `{" ".join(command)}` failed '
            f'({proc.stderr.strip() or f"exit {proc.returncode}"}). '
            'Check that slurmctld is up (`scontrol ping`).'
        )
    groups: dict[str, list[NodeGroup]] = {}
    defaults: set[str] = set()
    for line in proc.stdout.splitlines():
        fields = line.strip().split('|')
        if len(fields) != 4:
            continue
        name, nodes, cpus, gres = fields
        if name.endswith('*'):
            name = name[:-1]
            defaults.add(name)
        groups.setdefault(name, []).append(
            NodeGroup(_int(nodes), _int(cpus), _gpus(gres), gres)
        )
    return {
        name: Partition(name, name in defaults, tuple(found))
        for name, found in groups.items()
    }


def check_request(
    request: LaunchRequest, known: dict[str, Partition]
) -> Partition | None:
    """Check the request against the cluster; return its partition.

    Returns None when no partition is named and the cluster has no default
    (sbatch then decides).

    Raises:
        InvalidLaunchError: the partition does not exist, or no set of its
            nodes can hold the request.

    """
    listing = ', '.join(
        f'{p.name}{" (default)" if p.default else ""}' for p in known.values()
    )
    if request.partition is not None:
        partition = known.get(request.partition)
        if partition is None:
            raise InvalidLaunchError(
                f'partition={request.partition!r} does not exist on this '
                f'cluster (sinfo lists: {listing or "no partition"}). Use '
                'one of those, or leave partition=None for the default.'
            )
    else:
        partition = next((p for p in known.values() if p.default), None)
        if partition is None:
            return None
    _check_capacity(request, partition, known)
    return partition


def _check_capacity(
    request: LaunchRequest, partition: Partition, known: dict[str, Partition]
) -> None:
    gpus = request.gpus_per_node
    cpus = request.ntasks_per_node * request.cpus_per_task
    most_gpus = max((g.gpus for g in partition.groups), default=0)
    most_cpus = max((g.cpus for g in partition.groups), default=0)
    name = partition.name
    if gpus > most_gpus:
        with_gpus = [
            p.name
            for p in known.values()
            if any(g.gpus >= gpus for g in p.groups)
        ]
        where = (
            f'partitions with {gpus} GPUs per node: {", ".join(with_gpus)}'
            if with_gpus
            else 'no partition of this cluster has that many'
        )
        gres = ', '.join(sorted({g.gres for g in partition.groups}))
        raise InvalidLaunchError(
            f'gpus_per_node={gpus}, but the nodes of partition {name!r} have '
            f'at most {most_gpus} GPU(s) (sinfo GRES: {gres}). Lower '
            f'gpus_per_node or choose another partition ({where}).'
        )
    if cpus > most_cpus:
        if request.tasks is not None:
            tasks = (
                f'tasks={request.tasks} on nodes={request.nodes} (up to '
                f'{request.ntasks_per_node} per node)'
            )
        else:
            tasks = f'tasks_per_node={request.ntasks_per_node}'
        raise InvalidLaunchError(
            f'{tasks} x cpus_per_task='
            f'{request.cpus_per_task} needs {cpus} CPUs per node, but the '
            f'nodes of partition {name!r} have at most {most_cpus}. Lower '
            'cpus_per_task or tasks_per_node (and use more nodes).'
        )
    fitting = partition.nodes_fitting(cpus, gpus)
    if request.nodes > fitting:
        raise InvalidLaunchError(
            f'nodes={request.nodes}, but partition {name!r} has only '
            f'{fitting} node(s) with at least {cpus} CPUs and {gpus} '
            'GPUs. Lower nodes or choose another partition.'
        )


def _int(text: str) -> int:
    match = _LEADING_INT.match(text.strip())
    return int(match.group()) if match else 0


def _gpus(gres: str) -> int:
    return sum(int(count) for count in _GPUS.findall(gres))
