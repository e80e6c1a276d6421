"""Inside a task of a submitted job: where am I, and how to requeue.

submitit starts every task of a job with the same pickled callable and
describes the task through its ``JobEnvironment`` (global rank, local rank,
number of tasks, hosts).  The executors differ in two things only, and each
variant answers them:

- what the task must export so that :func:`drytorch.distributed.
  detect_environment` sees the job: nothing under SLURM (srun's own
  variables are read directly), torchrun's ``env://`` variables for local
  processes, which submitit describes only in its own ``SUBMITIT_LOCAL_*``
  names;
- how a job that checkpointed after a preemption signal goes back to the
  queue: ``scontrol requeue`` under SLURM, exit status 144 for submitit's
  local controller (which restarts the tasks), not at all in this process.
"""

from __future__ import annotations

import abc
import os
import pathlib
import subprocess
import sys
from typing import ClassVar

from drytorch.core.exceptions import REQUEUE_EXIT_CODE
from drytorch.distributed import detect_environment
from drytorch.distributed.slurm import (
    PORT_BASE,
    PORT_SPAN,
    expand_tasks_per_node,
)
from drytorch.launch.errors import LaunchError

__all__ = ['DebugTask', 'LocalTask', 'SlurmTask', 'Task']

# torchrun's variables: what a launcher exports for env:// rendezvous.
TORCHRUN_VARIABLES = (
    'RANK',
    'LOCAL_RANK',
    'WORLD_SIZE',
    'LOCAL_WORLD_SIZE',
    'GROUP_RANK',
    'MASTER_ADDR',
    'MASTER_PORT',
    'TORCHELASTIC_RUN_ID',
    'TORCHELASTIC_RESTART_COUNT',
)
LOCAL_REQUEUE_EXIT_CODE = 144
"""submitit's local controller restarts the tasks when one exits with it."""


class Task(abc.ABC):
    """This process as a task of a job.

    Attributes:
        name: the executor's name, from the class name (``SlurmTask`` ->
            ``'slurm'``).
        job_id: the scheduler's id of the job (``JOB_TASK`` in arrays).
        rank: global rank of this task.
        local_rank: rank of this task on its node.
        world_size: tasks in the job.
        local_world_size: tasks on this node.
        attempt: 1, then one more for each requeue.

    """

    name: ClassVar[str] = 'task'

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__.removesuffix('Task').lower()

    def __init__(
        self,
        job_id: str,
        rank: int = 0,
        local_rank: int = 0,
        world_size: int = 1,
        local_world_size: int = 1,
        attempt: int = 1,
    ) -> None:
        self.job_id = job_id
        self.rank = rank
        self.local_rank = local_rank
        self.world_size = world_size
        self.local_world_size = local_world_size
        self.attempt = attempt

    @staticmethod
    def current() -> Task:
        """The task this process is, from the executor that started it."""
        executor = os.environ.get('SUBMITIT_EXECUTOR', '')
        if executor == SlurmTask.name:
            return SlurmTask.from_submitit()
        if executor == LocalTask.name:
            return LocalTask.from_submitit()
        return DebugTask('in-process')

    def prepare(self) -> None:
        """Make the task visible to drytorch's environment detection.

        Raises:
            LaunchError: the detected rank or world size is not the one
                submitit started this task as.

        """
        self._export()
        found = detect_environment()
        if (found.rank, found.world_size) != (self.rank, self.world_size):
            read = ', '.join(
                f'{k}={v}' for k, v in sorted(found.variables_read().items())
            )
            raise LaunchError(
                f'submitit started this process as task {self.rank} of '
                f'{self.world_size}, but drytorch detects rank {found.rank} '
                f'of {found.world_size} through {found.name} '
                f'({read or "no variables"}). A launcher variable inherited '
                'from the submitting shell is probably in the way: submit '
                'from a shell without RANK, WORLD_SIZE, OMPI_* or PMI_* set.'
            )

    def say(self, message: str) -> None:
        """Print a line to the job's error log, on rank zero only."""
        if self.rank == 0:
            print(
                f'drytorch.launch [{self.name} job {self.job_id}, attempt '
                f'{self.attempt}]: {message}',
                file=sys.stderr,
                flush=True,
            )

    @abc.abstractmethod
    def requeue(self) -> int | None:
        """Put the job back in the queue (every task calls it).

        Returns:
            the exit status the task must end with, or None when the job
            cannot be requeued and the preemption should propagate.

        """

    @abc.abstractmethod
    def _export(self) -> None:
        """Set the variables that detection needs."""


class SlurmTask(Task):
    """A task started by srun in a submitit batch job."""

    @classmethod
    def from_submitit(cls) -> SlurmTask:
        import submitit

        env = submitit.JobEnvironment()
        nodes = max(env.num_nodes, 1)
        restarts = os.environ.get('SLURM_RESTART_COUNT', '0')
        return cls(
            job_id=env.job_id,
            rank=env.global_rank,
            local_rank=env.local_rank,
            world_size=env.num_tasks,
            local_world_size=_tasks_on_node(env.node, env.num_tasks, nodes),
            attempt=1 + (int(restarts) if restarts.isdecimal() else 0),
        )

    def requeue(self) -> int:
        """Rank zero runs ``scontrol requeue``; SLURM restarts the job.

        SLURM ends this attempt (SIGTERM to every task, which submitit's
        handler lets pass, then SIGKILL) and starts the job again with the
        same id and ``SLURM_RESTART_COUNT`` one higher: the run resumes.
        """
        if self.rank != 0:
            return REQUEUE_EXIT_CODE
        command = ['scontrol', 'requeue', self.job_id]
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            problem = proc.stderr.strip() if proc.returncode else ''
        except (OSError, subprocess.TimeoutExpired) as err:
            problem = str(err)
        if problem:
            self.say(
                f'`{" ".join(command)}` failed: {problem}. A job that '
                'SLURM preempted itself (PreemptMode=REQUEUE) is requeued '
                'anyway; otherwise it ends here, with its checkpoint saved: '
                'submit it again with create_run(resume=True) to continue.'
            )
        else:
            self.say(f'requeued with `{" ".join(command)}`.')
        return REQUEUE_EXIT_CODE

    def _export(self) -> None:
        # srun's variables describe this task; torchrun's, inherited from a
        # submitting shell that was itself a torchrun worker, would win
        # detection (torchrun is checked first) and describe another job.
        if 'RANK' in os.environ or 'TORCHELASTIC_RUN_ID' in os.environ:
            for name in TORCHRUN_VARIABLES:
                os.environ.pop(name, None)


class LocalTask(Task):
    """A process started by submitit's local executor on this machine."""

    @classmethod
    def from_submitit(cls) -> LocalTask:
        import submitit

        env = submitit.JobEnvironment()
        restarts_file = pathlib.Path(env.paths.folder) / (
            f'{env.job_id}_restarts'
        )
        return cls(
            job_id=env.job_id,
            rank=env.global_rank,
            local_rank=env.local_rank,
            world_size=env.num_tasks,
            local_world_size=env.num_tasks,
            attempt=1 + _read_count(restarts_file),
            restarts_file=restarts_file,
        )

    def __init__(
        self,
        job_id: str,
        rank: int = 0,
        local_rank: int = 0,
        world_size: int = 1,
        local_world_size: int = 1,
        attempt: int = 1,
        restarts_file: pathlib.Path | None = None,
    ) -> None:
        super().__init__(
            job_id, rank, local_rank, world_size, local_world_size, attempt
        )
        self.restarts_file = restarts_file

    def requeue(self) -> int:
        """Count the restart, then exit for the controller to restart us.

        The next attempt sees the count as torchrun's restart count, which
        makes drytorch resume the run this job started.  The controller
        starts it only once every task of this attempt has exited, so the
        count is written before any task reads it.
        """
        if self.rank == 0 and self.restarts_file is not None:
            self.restarts_file.write_text(f'{self.attempt}\n')
            self.say('restarting the tasks (local requeue).')
        return LOCAL_REQUEUE_EXIT_CODE

    def _export(self) -> None:
        # A local job started inside a SLURM allocation is not a SLURM task:
        # drop SLURM's variables so that neither detection nor the run
        # registry (which keys runs by SLURM_JOB_ID) takes it for one.
        for name in list(os.environ):
            if name.startswith(('SLURM_', 'SLURMD_')):
                del os.environ[name]
        port = os.environ.get('MASTER_PORT', '')
        if not port.isdecimal():
            number = int(self.job_id) if self.job_id.isdecimal() else 0
            port = str(PORT_BASE + number % PORT_SPAN)
        os.environ.update(
            RANK=str(self.rank),
            LOCAL_RANK=str(self.local_rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_WORLD_SIZE=str(self.local_world_size),
            GROUP_RANK='0',
            MASTER_ADDR='127.0.0.1',
            MASTER_PORT=port,
            TORCHELASTIC_RUN_ID=f'submitit-local-{self.job_id}',
            TORCHELASTIC_RESTART_COUNT=str(self.attempt - 1),
        )


class DebugTask(Task):
    """The job run in this very process (``cluster='debug'``)."""

    def prepare(self) -> None:
        """Nothing: this process is whatever started it."""

    def _export(self) -> None:
        """Nothing to export."""

    def requeue(self) -> None:
        """Nothing to requeue: the preemption reaches the caller."""
        return None


def _tasks_on_node(node: int, tasks: int, nodes: int) -> int:
    """Tasks of the step on node ``node``, as SLURM distributed them.

    ``nodes=3, tasks=5`` runs 2, 2 and 1 (``2(x2),1``): not ``tasks //
    nodes`` on every node.
    """
    for name in ('SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE'):
        try:
            counts = expand_tasks_per_node(os.environ.get(name, ''))
        except ValueError:
            continue
        if node < len(counts):
            return counts[node]
    return max(tasks // nodes, 1)


def _read_count(path: pathlib.Path) -> int:
    if not path.exists():
        return 0
    text = path.read_text().strip()
    return int(text) if text.isdecimal() else 0
