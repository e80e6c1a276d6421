"""What a launch asks for, checked before anything is submitted.

:class:`LaunchRequest` holds the resources of one job and checks every rule
that needs no cluster to answer (counts, tasks against GPUs, the time left
after the preemption signal, extra ``sbatch`` options that would fight with
the ones drytorch sets).  The rules that need the cluster (does the
partition exist, does it have the GPUs) live in :mod:`.slurm_info`.

The same request runs under three executors, so that a job developed on a
laptop is submitted unchanged: ``'slurm'`` (a batch job), ``'local'``
(processes on this machine, through submitit's local executor) and
``'debug'`` (this process).  Options that only SLURM understands
(partition, account, extra sbatch arguments...) are ignored by the other
two.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from drytorch.launch.errors import InvalidLaunchError

__all__ = ['CLUSTERS', 'LaunchRequest']

CLUSTERS = ('slurm', 'local', 'debug')
"""Where a job can run: a SLURM cluster, local processes, this process."""

_MEM = re.compile(r'^\d+([KMGT]B?)?$', re.IGNORECASE)

# sbatch options that submit() sets from its own arguments, with the
# argument to use instead.
_OWN_SBATCH = {
    'job-name': 'name=',
    'partition': 'partition=',
    'time': 'timeout_min=',
    'nodes': 'nodes=',
    'ntasks-per-node': 'tasks_per_node=',
    'ntasks': 'tasks= (or nodes= and tasks_per_node=)',
    'cpus-per-task': 'cpus_per_task=',
    'gpus-per-node': 'gpus_per_node=',
    'mem': 'mem=',
    'account': 'account=',
    'qos': 'qos=',
    'constraint': 'constraint=',
    'signal': 'signal_delay_s=',
    'output': 'folder= (logs are written there)',
    'error': 'folder= (logs are written there)',
    'array': 'array_params=',
}


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    """The resources of one job, checked when created.

    Attributes:
        cluster: ``'slurm'``, ``'local'`` or ``'debug'``.
        nodes: nodes of the job.
        gpus_per_node: GPUs on each node (0: CPU only).
        tasks_per_node: processes (ranks) on each node; by default one per
            GPU, or one without GPUs.
        tasks: processes (ranks) of the whole job, instead of
            ``tasks_per_node``, for a count that ``nodes`` does not divide:
            ``nodes=3, tasks=5`` puts at most ``ceil(tasks / nodes)`` = 2
            on a node, filled in order (2, 2, 1). Every node gets at least
            one.
        cpus_per_task: CPU cores of each task (also its torch threads).
        mem: memory per node: a number of GB, or SLURM's ``'32G'``.
        timeout_min: the job's time limit, in minutes.
        partition: SLURM partition; the cluster's default when None.
        account: SLURM account to charge.
        qos: SLURM quality of service.
        constraint: SLURM node features (``--constraint``).
        signal_delay_s: seconds before the time limit when the job gets
            SIGUSR2, the preemption signal, to checkpoint and requeue.
        sbatch_args: more ``#SBATCH`` options, e.g. ``{'exclusive': True,
            'mail-type': 'END'}``.
        srun_args: more arguments for the ``srun`` that starts the tasks.
        folder: where job files and logs go; ``%j`` is the job id.
        name: the job's name in the queue.

    """

    cluster: str = 'slurm'
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    tasks: int | None = None
    cpus_per_task: int = 1
    mem: str | int | None = None
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 90
    sbatch_args: Mapping[str, Any] | None = None
    srun_args: Sequence[str] | None = None
    folder: str = 'drytorch_jobs/%j'
    name: str = 'drytorch'

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise InvalidLaunchError(
                f'cluster={self.cluster!r} is not known; use one of '
                f'{", ".join(repr(c) for c in CLUSTERS)} (a SLURM batch job, '
                'processes on this machine, or this process).'
            )
        _whole('nodes', self.nodes, 1)
        _whole('gpus_per_node', self.gpus_per_node, 0)
        _whole('cpus_per_task', self.cpus_per_task, 1)
        _whole('timeout_min', self.timeout_min, 1)
        _whole('signal_delay_s', self.signal_delay_s, 0)
        if self.tasks_per_node is not None:
            _whole('tasks_per_node', self.tasks_per_node, 1)
        self._check_total_tasks()
        self._check_tasks_and_gpus()
        self._check_signal_delay()
        self._check_mem()
        if self.cluster == 'slurm':
            self._check_sbatch_args()
        elif self.nodes > 1:
            raise InvalidLaunchError(
                f'nodes={self.nodes} with cluster={self.cluster!r}: '
                'this machine is one node. Use nodes=1 here, or '
                "cluster='slurm' to run on several nodes."
            )
        if not self.name.strip() or any(c in self.name for c in '\n\r'):
            raise InvalidLaunchError(
                f'name={self.name!r} cannot name a job; use a short '
                'single-line name such as "digits".'
            )

    @property
    def ntasks_per_node(self) -> int:
        """Tasks on each node, with the default applied.

        With ``tasks``, the most that any node gets: ``ceil(tasks /
        nodes)``.
        """
        if self.tasks is not None:
            return -(-self.tasks // self.nodes)
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        """Processes in the whole job."""
        if self.tasks is not None:
            return self.tasks
        return self.nodes * self.ntasks_per_node

    @property
    def uneven(self) -> bool:
        """Whether the nodes get different numbers of tasks."""
        return self.world_size != self.nodes * self.ntasks_per_node

    def slurm_parameters(self) -> dict[str, Any]:
        """Parameters of submitit's SlurmExecutor (its own names)."""
        params: dict[str, Any] = {
            'job_name': self.name,
            'time': self.timeout_min,
            'nodes': self.nodes,
            'ntasks_per_node': self.ntasks_per_node,
            'cpus_per_task': self.cpus_per_task,
            'signal_delay_s': self.signal_delay_s,
            # requeue after preemption even where the cluster's default
            # (JobRequeue) says otherwise
            'additional_parameters': {'requeue': True, **self._extra()},
        }
        if self.uneven:
            # --ntasks wins and --ntasks-per-node becomes the most per node
            # (sbatch's rule), so the job's nodes hold ceil(tasks / nodes)
            # tasks each and the step fills them in order: 2, 2, 1.  srun
            # would read the inherited SLURM_NTASKS_PER_NODE=2 as a request
            # it cannot honour and warn on every job; the allocation (and
            # the step's SLURM_STEP_TASKS_PER_NODE) already say it all.
            params['additional_parameters']['ntasks'] = self.world_size
            params['setup'] = ['unset SLURM_NTASKS_PER_NODE']
        if self.gpus_per_node:
            params['gpus_per_node'] = self.gpus_per_node
        optional = {
            'partition': self.partition,
            'account': self.account,
            'qos': self.qos,
            'constraint': self.constraint,
            'mem': self._slurm_mem(),
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        if self.srun_args:
            params['srun_args'] = [str(a) for a in self.srun_args]
        return params

    def local_parameters(self) -> dict[str, Any]:
        """Parameters of submitit's LocalExecutor."""
        return {
            'timeout_min': self.timeout_min,
            'tasks_per_node': self.world_size,
            'gpus_per_node': self.gpus_per_node,
            'signal_delay_s': self.signal_delay_s,
        }

    def describe(self) -> str:
        """One line: nodes, tasks, GPUs, where."""
        if self.uneven:
            tasks = (
                f'{self.nodes} node(s), {self.world_size} task(s) (at most '
                f'{self.ntasks_per_node} per node)'
            )
        else:
            tasks = f'{self.nodes} node(s) x {self.ntasks_per_node} task(s)'
        text = f'{tasks}, {self.gpus_per_node} GPU(s) per node'
        if self.cluster == 'slurm':
            text += f', partition {self.partition or "(default)"}'
        return text

    def _check_total_tasks(self) -> None:
        if self.tasks is None:
            return
        _whole('tasks', self.tasks, 1)
        if self.tasks_per_node is not None:
            raise InvalidLaunchError(
                f'tasks={self.tasks} and tasks_per_node='
                f'{self.tasks_per_node} both set the number of ranks; give '
                'tasks= (the whole job, spread over the nodes) or '
                'tasks_per_node= (the same on every node), not both.'
            )
        if self.tasks < self.nodes:
            raise InvalidLaunchError(
                f'tasks={self.tasks} on nodes={self.nodes}: every node needs '
                f'at least one task. Use nodes={self.tasks} or more tasks.'
            )

    def _check_tasks_and_gpus(self) -> None:
        gpus = self.gpus_per_node
        if not gpus:
            return
        if self.tasks is not None and self.ntasks_per_node > gpus:
            most = self.ntasks_per_node
            raise InvalidLaunchError(
                f'tasks={self.tasks} on nodes={self.nodes} puts up to {most} '
                f'tasks on a node, more than gpus_per_node={gpus}: drytorch '
                'gives each task its own GPU (cuda:<local rank>), so '
                f'{most - gpus} task(s) of a node would have none. Use at '
                f'most tasks={self.nodes * gpus}, or nodes='
                f'{-(-self.tasks // gpus)}.'
            )
        tasks = self.tasks_per_node
        if tasks is not None and tasks > gpus:
            raise InvalidLaunchError(
                f'tasks_per_node={tasks} is more than gpus_per_node={gpus}: '
                'drytorch gives each task its own GPU (cuda:<local rank>), '
                f'so {tasks - gpus} task(s) of each node would have none. '
                f'Set tasks_per_node={gpus} (the default: one task per GPU) '
                f'or gpus_per_node={tasks}.'
            )

    def _check_signal_delay(self) -> None:
        if self.signal_delay_s >= self.timeout_min * 60:
            raise InvalidLaunchError(
                f'signal_delay_s={self.signal_delay_s} is not shorter than '
                f'the time limit timeout_min={self.timeout_min} '
                f'({self.timeout_min * 60} s): the job would be told to '
                'checkpoint before it starts. Lower signal_delay_s (90 is '
                'the default) or raise timeout_min.'
            )

    def _check_mem(self) -> None:
        mem = self.mem
        if mem is None:
            return
        if isinstance(mem, bool) or not isinstance(mem, (int, str)):
            raise InvalidLaunchError(
                f'mem={mem!r} is not a memory size; give GB as a number '
                "(mem=32) or SLURM's form (mem='32G', '500M')."
            )
        if isinstance(mem, int) and mem < 0:
            raise InvalidLaunchError(
                f'mem={mem} is negative; give GB per node, e.g. mem=32.'
            )
        if isinstance(mem, str) and not _MEM.match(mem.strip()):
            raise InvalidLaunchError(
                f'mem={mem!r} is not in SLURM\'s form; use e.g. "32G", '
                '"500M" or a number of GB (mem=32).'
            )

    def _slurm_mem(self) -> str | None:
        if self.mem is None:
            return None
        if isinstance(self.mem, int):
            return f'{self.mem}G'
        return self.mem.strip()

    def _check_sbatch_args(self) -> None:
        for key in self._extra():
            if key in _OWN_SBATCH:
                raise InvalidLaunchError(
                    f'sbatch_args sets {key!r}, which drytorch.launch sets '
                    f'itself; pass {_OWN_SBATCH[key]} instead.'
                )

    def _extra(self) -> dict[str, Any]:
        """sbatch_args with keys as sbatch spells them (dashes, no --)."""
        extra: dict[str, Any] = {}
        for key, value in (self.sbatch_args or {}).items():
            name = str(key).lstrip('-').replace('_', '-')
            if len(name) < 2:
                raise InvalidLaunchError(
                    f"sbatch_args has the option {key!r}; use sbatch's "
                    "long option names, e.g. {'exclusive': True, "
                    "'mail-type': 'END'}."
                )
            if value is not None and value is not False:
                extra[name] = value
        return extra


def _whole(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidLaunchError(
            f'{name}={value!r} is not a whole number; give an int '
            f'(at least {least}).'
        )
    if value < least:
        raise InvalidLaunchError(
            f'{name}={value} is less than {least}; give at least {least}.'
        )
