"""The job entry point: what every task of a submitted job runs.

:class:`DistributedJob` is the callable that submitit pickles and each task
unpickles and calls.  In each task it makes the task visible to drytorch
(:mod:`.tasks`), brings the process group up, runs the user's function and
hands back its result.  When the function ends with
:class:`~drytorch.core.exceptions.PreemptedExit` (drytorch's run
checkpointed after a preemption signal), every rank meets once more, rank
zero alone requeues the job and says so, and every rank exits with the
status that means "requeue me", without a result: submitit keeps waiting
for the requeued attempt, which resumes the same run.  A run stopped by
SIGTERM (``scancel``) checkpoints too, but is not requeued: that would undo
the cancel.

Why drytorch requeues and not submitit: submitit's own SIGUSR2 handler
checkpoints and requeues inside the handler, on rank zero only, at whatever
bytecode the signal interrupts.  While a drytorch run is active its watcher
replaces that handler with one that only sets a flag, and the training loop
stops every rank at the same step; the requeue then happens here, outside
any handler.  Before the run starts and after it stops, submitit's handler
is in place again, and :meth:`DistributedJob.checkpoint` tells it to
resubmit the same job, which resumes from the newest checkpoint.

:class:`ScriptJob` runs a script or a module (``python -m``) in the task's
own process, so that the same entry point serves the command line.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import runpy
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from drytorch.core.exceptions import REQUEUE_EXIT_CODE
from drytorch.distributed import init_distributed, ranks, teardown_distributed
from drytorch.distributed.preemption import watcher
from drytorch.launch.errors import InvalidLaunchError, LaunchError
from drytorch.launch.tasks import DebugTask, Task

__all__ = ['DistributedJob', 'ScriptJob']


class ScriptJob:
    """A Python script (or module) run as ``python`` would run it.

    Args:
        script: path of the script; resolved now, so that the job finds it
            whatever its working directory.
        *args: its command-line arguments.

    Use :meth:`module` for ``python -m package.module``.

    """

    def __init__(self, script: str | os.PathLike[str], *args: object) -> None:
        path = pathlib.Path(script).expanduser().resolve()
        if not path.is_file():
            raise InvalidLaunchError(
                f'script {str(script)!r} not found (looked for {path}). '
                'Give the path of a Python file, or run a module as '
                "`python -m` would: ScriptJob.module('package.module') "
                '(drytorch-launch -m package.module).'
            )
        self.target = str(path)
        self.is_module = False
        self.args = tuple(str(a) for a in args)

    @classmethod
    def module(cls, name: str, *args: object) -> ScriptJob:
        """The module ``name`` run as ``python -m name *args``."""
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise InvalidLaunchError(
                f'module {name!r} cannot be imported here, so the job could '
                'not run it either. Check the name and that its package is '
                'installed (pip install -e .) or on PYTHONPATH.'
            )
        job = cls.__new__(cls)
        job.target = name
        job.is_module = True
        job.args = tuple(str(a) for a in args)
        return job

    @property
    def name(self) -> str:
        """The module's name, or the script's file name without suffix."""
        return (
            self.target if self.is_module else pathlib.Path(self.target).stem
        )

    def __call__(self, **options: Any) -> int:
        """Run it; ``options`` become ``--name value`` arguments.

        Returns:
            0 when the script ends normally or with ``sys.exit(0)``.

        """
        argv = [*self.args, *_as_arguments(options)]
        saved_argv, saved_path = sys.argv[:], sys.path[:]
        try:
            sys.argv = [self.target, *argv]
            if self.is_module:
                runpy.run_module(
                    self.target, run_name='__main__', alter_sys=True
                )
            else:
                sys.path.insert(0, str(pathlib.Path(self.target).parent))
                runpy.run_path(self.target, run_name='__main__')
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                raise
        finally:
            sys.argv = saved_argv
            sys.path[:] = saved_path
        return 0

    def __repr__(self) -> str:
        shown = ['-m', self.target] if self.is_module else [self.target]
        return f'ScriptJob({" ".join([*shown, *self.args])})'


class DistributedJob:
    """The callable each task runs: ``fn(*args, **kwargs)`` on every rank.

    Submit it with submitit (``executor.submit(job)``, or an array with
    ``executor.map_array(job, [overrides, ...])``), or call it in a process
    of its own.  The process group is up when ``fn`` starts (a script's is
    left to the script, which may start its own); in a task of its own,
    it is torn down when ``fn`` returns.

    Attributes:
        fn: the function (or :class:`ScriptJob`) to run.
        args: its positional arguments.
        kwargs: its keyword arguments.
        threads: torch threads per task (the task's CPUs), unless
            ``OMP_NUM_THREADS`` is set.

    """

    def __init__(
        self, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        if not callable(fn):
            raise InvalidLaunchError(
                f'{fn!r} is not callable; submit a function, or a script '
                'path (a ScriptJob).'
            )
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.threads: int | None = None

    @property
    def name(self) -> str:
        """The function's name, or the script's."""
        fn = self.fn
        if isinstance(fn, ScriptJob):
            return fn.name
        return str(getattr(fn, '__name__', type(fn).__name__))

    def __call__(self, overrides: Mapping[str, Any] | None = None) -> Any:
        """Run ``fn`` in this task; ``overrides`` update its kwargs."""
        task = Task.current()
        task.prepare()
        # A task owns its process; in debug mode the process is the user's.
        own_process = not isinstance(task, DebugTask)
        if (
            own_process
            and self.threads
            and 'OMP_NUM_THREADS' not in os.environ
        ):
            import torch

            torch.set_num_threads(self.threads)
        params = {**self.kwargs, **(overrides or {})}
        task.say(f'{self.name} starts on {task.world_size} task(s).')
        try:
            if task.world_size > 1 and not isinstance(self.fn, ScriptJob):
                init_distributed()
            result = self.fn(*self.args, **params)
        except SystemExit as exit_:
            if exit_.code in (None, 0):
                return None
            if exit_.code != REQUEUE_EXIT_CODE:
                raise LaunchError(
                    f'{self.name} exited with status {exit_.code} on rank '
                    f'{task.rank}.'
                ) from exit_
            status = self._requeue(task)
            if status is None:
                raise
            raise SystemExit(status) from None
        finally:
            if own_process:
                teardown_distributed()
        task.say(f'{self.name} finished.')
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """What submitit resubmits when its own handler gets the signal.

        Only reached outside a drytorch run (its watcher holds the signal
        while the run is active): the same job, which resumes the run from
        its newest checkpoint.
        """
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f'DistributedJob({self.name})'

    @staticmethod
    def _requeue(task: Task) -> int | None:
        """Rank zero decides whether to requeue; every rank takes part.

        SIGUSR2 (SIGUSR1) is what SLURM sends before the time limit and on
        preemption: requeue.  SIGTERM is ``scancel`` (or SLURM ending a job
        it will requeue itself): the checkpoint is kept, but requeueing
        would undo the user's cancel.
        """
        if isinstance(task, DebugTask):
            return task.requeue()
        # A second signal must not reach submitit's handler (back in place
        # once drytorch's are disarmed) and requeue the job twice.
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        # Every rank raised PreemptedExit at the same step.  The broadcast
        # hands rank zero's decision to all, and keeps rank zero from
        # requeueing (which ends the job) while a rank is still finishing.
        # the run that stopped for it has reset the flag
        stopped_by = watcher.signum or watcher.consumed
        requeue = ranks.broadcast_object(stopped_by != signal.SIGTERM)
        if not requeue:
            task.say(
                'the run checkpointed after SIGTERM (scancel, or SLURM '
                'ending the job): not requeueing. A job that SLURM preempts '
                'is requeued by SLURM and resumes; to continue a cancelled '
                'one, submit it again with create_run(resume=True).'
            )
            return REQUEUE_EXIT_CODE
        task.say('the run checkpointed after a preemption signal.')
        return task.requeue()


def _as_arguments(options: Mapping[str, Any]) -> list[str]:
    arguments = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = '--' + str(key).replace('_', '-')
        arguments.append(flag)
        if value is not True:
            arguments.append(str(value))
    return arguments
