"""Handles on submitted jobs: state, logs, result, how to follow them.

:class:`SubmittedJob` wraps a submitit job (SLURM or local processes).  Its
:meth:`~SubmittedJob.result` is rank zero's return value, read back through
submitit; a job that raised gives its traceback, and a job that died before
writing a result (killed, out of memory, ``os._exit``, a segfault) gives a
:class:`~drytorch.launch.errors.JobFailedError` with the paths of its logs
and the last lines of its error stream, instead of submitit's bare "has not
produced any output".

:class:`InProcessJob` is the same interface for a job that already ran in
this process (``cluster='debug'``).
"""

from __future__ import annotations

import abc
import pathlib
import time
from typing import Any, NoReturn

from drytorch.launch.errors import JobFailedError

__all__ = ['InProcessJob', 'Job', 'SubmittedJob']

TAIL_LINES = 20


class Job(abc.ABC):
    """A submitted job.

    Attributes:
        job_id: the scheduler's id (the controller's pid for local jobs).
        cluster: ``'slurm'``, ``'local'`` or ``'debug'``.
        name: the job's name.

    """

    job_id: str
    cluster: str
    name: str

    @property
    @abc.abstractmethod
    def state(self) -> str:
        """The scheduler's state of the job (PENDING, RUNNING...)."""

    @abc.abstractmethod
    def done(self) -> bool:
        """Whether the job has ended (with a result or not)."""

    @abc.abstractmethod
    def results(self, timeout_s: float | None = None) -> list[Any]:
        """Every task's return value, in rank order (waits for the end)."""

    def result(self, timeout_s: float | None = None) -> Any:
        """Rank zero's return value (waits for the end of the job).

        Args:
            timeout_s: give up waiting after this many seconds.

        Raises:
            JobFailedError: a task raised, or the job ended without a
                result.
            TimeoutError: the job did not end within ``timeout_s``.

        """
        return self.results(timeout_s)[0]

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the job."""

    @abc.abstractmethod
    def log_paths(self) -> list[tuple[pathlib.Path, pathlib.Path]]:
        """(stdout, stderr) of each task, in rank order."""

    @property
    def stdout_path(self) -> pathlib.Path | None:
        """Rank zero's output log."""
        paths = self.log_paths()
        return paths[0][0] if paths else None

    @property
    def stderr_path(self) -> pathlib.Path | None:
        """Rank zero's error log."""
        paths = self.log_paths()
        return paths[0][1] if paths else None

    @abc.abstractmethod
    def follow_commands(self) -> list[str]:
        """Shell commands that show how the job is doing."""

    def describe(self) -> str:
        """Id, logs and how to follow the job, for a terminal."""
        lines = [f'{self.cluster} job {self.job_id} ({self.name})']
        paths = self.log_paths()
        if paths:
            lines += [f'  stdout: {paths[0][0]}', f'  stderr: {paths[0][1]}']
            if len(paths) > 1:
                folder = paths[0][0].parent
                lines.append(
                    f'  (rank 0; all {len(paths)} ranks: '
                    f'{folder}/{self.job_id}_<rank>_log.out|err)'
                )
        follow = self.follow_commands()
        if follow:
            lines.append('follow it with:')
            lines += [f'  {command}' for command in follow]
        return '\n'.join(lines)

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(cluster={self.cluster!r}, '
            f'job_id={self.job_id!r}, name={self.name!r})'
        )


class SubmittedJob(Job):
    """A job run by submitit, on SLURM or as local processes.

    Attributes:
        submitit_job: the underlying ``submitit.Job``.
        result_grace_s: how long to wait for a result file after the
            scheduler says the job ended (shared file systems lag).

    """

    result_grace_s: float = 15.0

    def __init__(self, submitit_job: Any, cluster: str, name: str) -> None:
        self.submitit_job = submitit_job
        self.job_id = str(submitit_job.job_id)
        self.cluster = cluster
        self.name = name

    @property
    def num_tasks(self) -> int:
        """Tasks (ranks) of the job."""
        return int(self.submitit_job.num_tasks)

    @property
    def state(self) -> str:
        return str(self.submitit_job.state)

    def done(self) -> bool:
        return bool(self.submitit_job.done())

    def results(self, timeout_s: float | None = None) -> list[Any]:
        return self._collect(timeout_s, every_rank=True)

    def result(self, timeout_s: float | None = None) -> Any:
        return self._collect(timeout_s, every_rank=False)[0]

    def cancel(self) -> None:
        self.submitit_job.cancel(check=False)

    def log_paths(self) -> list[tuple[pathlib.Path, pathlib.Path]]:
        return [
            (pathlib.Path(t.paths.stdout), pathlib.Path(t.paths.stderr))
            for t in self._tasks()
        ]

    def follow_commands(self) -> list[str]:
        out = self.stdout_path
        if self.cluster != 'slurm':
            return [f'tail -f {out}']
        job = self.job_id
        return [
            f'squeue -j {job}',
            f'tail -f {out}',
            f'sacct -j {job} --format=JobID,JobName,State,Elapsed,ExitCode',
        ]

    def _tasks(self) -> list[Any]:
        job = self.submitit_job
        return [job.task(rank) for rank in range(job.num_tasks)]

    def _collect(self, timeout_s: float | None, every_rank: bool) -> list[Any]:
        """The results of every rank, or of rank zero alone.

        Another rank's missing result (a late file) does not hold up rank
        zero's, but another rank's error fails the job.
        """
        self._wait(timeout_s)
        tasks = self._tasks()
        wanted = tasks if every_rank else tasks[:1]
        deadline = time.monotonic() + self.result_grace_s
        while not all(t.paths.result_pickle.exists() for t in wanted):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # Any rank's error fails the job, and its traceback says more than
        # "rank 0 left no result" (it may have been killed for it).
        failed = [t for t in tasks if _outcome(t) == 'error']
        if failed:
            self._raise_error(failed[0])
        if all(_outcome(t) == 'success' for t in wanted):
            return [t.result() for t in wanted]
        missing = [t for t in wanted if _outcome(t) is None]
        self._raise_no_result(missing[0])

    def _wait(self, timeout_s: float | None) -> None:
        start = time.monotonic()
        while not self.submitit_job.done():
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                follow = '; '.join(self.follow_commands())
                raise TimeoutError(
                    f'{self.cluster} job {self.job_id} ({self.name}) has not '
                    f'ended after {timeout_s:g} s (state {self.state}). It '
                    f'goes on; follow it with: {follow}'
                )
            time.sleep(1.0)

    def _raise_error(self, task: Any) -> NoReturn:
        """Raise with the traceback that submitit saved for ``task``."""
        try:
            task.result()
        except Exception as err:
            raise JobFailedError(
                f'{self.cluster} job {self.job_id} ({self.name}) failed on '
                f'rank {task.task_id}:\n{err}',
                self.job_id,
                str(task.paths.stderr),
            ) from err
        raise AssertionError(f'rank {task.task_id} did not fail after all')

    def _raise_no_result(self, task: Any) -> NoReturn:
        stderr = pathlib.Path(task.paths.stderr)
        stdout = pathlib.Path(task.paths.stdout)
        tail = _tail(stderr) or _tail(stdout)
        shown = (
            f'Last lines of its logs:\n{tail}'
            if tail
            else 'Its logs are empty or missing: it may not have started.'
        )
        hint = (
            f'`sacct -j {self.job_id}` shows how SLURM saw it end'
            if self.cluster == 'slurm'
            else 'the controller killed it or it was out of memory'
        )
        raise JobFailedError(
            f'{self.cluster} job {self.job_id} ({self.name}) ended (state '
            f'{self.state}) without writing the result of rank '
            f'{task.task_id}: the process died before returning (killed, '
            'out of memory, os._exit, a crash in native code). Read its '
            f'error log: {stderr} (output: {stdout}); {hint}.\n{shown}',
            self.job_id,
            str(stderr),
        )


class InProcessJob(Job):
    """A job that ran in this process (``cluster='debug'``)."""

    def __init__(
        self,
        name: str,
        value: Any = None,
        error: BaseException | None = None,
    ) -> None:
        self.job_id = 'debug'
        self.cluster = 'debug'
        self.name = name
        self._value = value
        self._error = error

    @property
    def state(self) -> str:
        return 'FAILED' if self._error is not None else 'COMPLETED'

    def done(self) -> bool:
        return True

    def results(self, timeout_s: float | None = None) -> list[Any]:
        if self._error is not None:
            raise self._error
        return [self._value]

    def cancel(self) -> None:
        """Nothing to stop: the job has run."""

    def log_paths(self) -> list[tuple[pathlib.Path, pathlib.Path]]:
        return []

    def follow_commands(self) -> list[str]:
        return []


def _outcome(task: Any) -> str | None:
    """'success' or 'error' from a task's result file, None when absent."""
    path = pathlib.Path(task.paths.result_pickle)
    if not path.exists():
        return None
    from submitit.core import utils

    try:
        outcome, _ = utils.pickle_load(path)
    except (EOFError, OSError):
        return None  # cut short: reported as no result
    return str(outcome)


def _tail(path: pathlib.Path, lines: int = TAIL_LINES) -> str:
    if not path.exists():
        return ''
    text = path.read_text(errors='replace').rstrip().splitlines()
    return '\n'.join(f'  | {line}' for line in text[-lines:])
