"""Experiments and their runs.

An :class:`Experiment` holds what does not change between runs (name,
configuration, parent directory, trackers); a :class:`Run` is one execution
of it, possibly spread over several attempts when a job is preempted and
resumed.  The run id is decided once, on rank zero, and agreed by every rank
before any path is built from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import types
import warnings
from typing import Any, ClassVar, Generic, Self, TypeVar

from drytorch.core import exceptions, log_events
from drytorch.core.folders import check_folder, validate_folder_name
from drytorch.core.metadata import MetadataManager
from drytorch.core.registry import RunRegistry, RunStatus
from drytorch.core.tracking import DEFAULT_TRACKERS, EventDispatcher
from drytorch.distributed import ranks
from drytorch.distributed.preemption import request_requeue, watcher

__all__ = ['Experiment', 'Run', 'validate_folder_name']

_T_co = TypeVar('_T_co', covariant=True)


def _scheduler_job() -> tuple[str | None, int]:
    """The scheduler's job key and how many times it was restarted.

    Under SLURM the job id survives requeues and ``SLURM_RESTART_COUNT``
    counts them; under torchrun the rendezvous id survives restarts.  Either
    lets a restarted job find its run with no extra argument.
    """
    env = os.environ
    job = env.get('SLURM_ARRAY_JOB_ID') and (
        f'{env["SLURM_ARRAY_JOB_ID"]}_{env.get("SLURM_ARRAY_TASK_ID", "")}'
    )
    job = job or env.get('SLURM_JOB_ID')
    if job:
        restarts = env.get('SLURM_RESTART_COUNT', '0')
        return f'slurm:{job}', int(restarts) if restarts.isdigit() else 0
    elastic = env.get('TORCHELASTIC_RUN_ID')
    if elastic and elastic != 'none':
        restarts = env.get('TORCHELASTIC_RESTART_COUNT', '0')
        count = int(restarts) if restarts.isdigit() else 0
        return f'torchrun:{elastic}', count
    return None, 0


@dataclasses.dataclass(frozen=True)
class _Decision:
    """What rank zero decided about a run, sent to every rank."""

    run_id: str
    resumed: bool
    attempt: int
    previous_world_size: int
    timestamp: datetime.datetime
    previous_status: str | None = None
    requeued: bool = False


class Run:
    """One execution of an experiment (possibly over several attempts)."""

    # Runs recorded so far by this attempt of a scheduler job, per registry:
    # a restarted job's n-th run resumes the n-th run of the first attempt.
    _job_runs: ClassVar[dict[tuple[str, str, int], int]] = {}

    def __init__(
        self,
        experiment: Experiment[Any],
        run_id: str | None = None,
        resume: bool = False,
        record: bool = True,
    ) -> None:
        if run_id is not None:
            validate_folder_name('Run', run_id)
        self.experiment = experiment
        self.requested_id = run_id
        self.resume = resume
        self.record = record
        self.status: RunStatus = 'created'
        self._decision: _Decision | None = None
        self._signals: contextlib.AbstractContextManager[Any] | None = None

    @property
    def id(self) -> str:
        """The run id, agreed by every rank once the run has started."""
        if self._decision is None:
            return self.requested_id or ''
        return self._decision.run_id

    @property
    def resumed(self) -> bool:
        """Whether this attempt continues an earlier one."""
        return self._decision is not None and self._decision.resumed

    @property
    def attempt(self) -> int:
        """1 for the first attempt, one more for each resume."""
        return self._decision.attempt if self._decision else 0

    @property
    def previous_world_size(self) -> int:
        """Processes of the previous attempt (resumed runs), else now's."""
        if self._decision is None:
            return ranks.get_world_size()
        return self._decision.previous_world_size

    @property
    def requeued(self) -> bool:
        """Whether the scheduler restarted the job (not ``resume=True``).

        A requeued job repeats its script; a run resumed on request after
        it completed continues it (see ``Trainer.train``).
        """
        return self._decision is not None and self._decision.requeued

    @property
    def previous_status(self) -> str | None:
        """How the previous attempt ended (resumed runs), else None."""
        if self._decision is None or not self._decision.resumed:
            return None
        return self._decision.previous_status

    @property
    def timestamp(self) -> datetime.datetime:
        """When this attempt started."""
        if self._decision is None:
            raise exceptions.NoActiveExperimentError('Run.timestamp')
        return self._decision.timestamp

    @property
    def dir(self) -> pathlib.Path:
        """The run's own folder (shared by all its attempts)."""
        return self.experiment.dir / 'runs' / self.id

    @property
    def is_active(self) -> bool:
        """Whether the run is currently running."""
        return self.status == 'running'

    def start(self) -> Self:
        """Agree on the run id with every rank and publish the start."""
        current = Experiment.current_run()
        if current is not None:
            raise exceptions.RunAlreadyRunningError(current.id, self.id)
        ranks.ensure_process_group()
        proposal: _Decision | str | None = None
        error: Exception | None = None
        if ranks.is_rank_zero():
            try:
                proposal = self._decide()
            except Exception as err:  # noqa: BLE001 - re-raised below
                error = err
                proposal = f'{err.__class__.__name__}: {err}'
        # Every rank takes part in the broadcast even when rank zero failed:
        # a rank left waiting in it would hang until the job's time limit.
        decision = ranks.broadcast_object(proposal)
        if error is not None:
            raise error
        if not isinstance(decision, _Decision):
            raise exceptions.DryTorchError(
                f'Rank zero could not start a run of experiment '
                f'{self.experiment.name!r}: {decision or "no decision"}. '
                "See rank zero's log for the cause."
            )
        self._decision = decision
        self.status = 'running'
        exp = self.experiment
        exp.metadata_manager.reset()
        # no reset: a signal that came after the previous run's last step
        # must stop this one (a sweep in a job that is being preempted)
        self._signals = watcher.armed()
        self._signals.__enter__()
        Experiment._current_run_obj = self
        exp.trackers.activate()
        try:
            log_events.StartExperimentEvent(
                config=exp.config,
                exp_name=exp.name,
                run_ts=decision.timestamp,
                run_id=decision.run_id,
                resumed=decision.resumed,
                par_dir=exp.par_dir,
                tags=list(exp.tags),
                attempt=decision.attempt,
            )
        except BaseException:
            # Interrupted while starting (trackers' own errors never get
            # here): no `with` block will stop this run, so stop it now.
            self.stop('failed')
            raise
        return self

    def stop(self, status: RunStatus = 'completed') -> None:
        """Publish the stop (trackers clean up) and record the status.

        A preempted run then asks SLURM to requeue its job, outside
        submitit (see ``drytorch.distributed.preemption.request_requeue``).
        """
        if self.status != 'running':
            return
        exp = self.experiment
        relayed: BaseException | None = None
        try:
            # trackers catch up first, so that the stop they are told of
            # already counts an interrupt that one of them raised
            if exp.trackers.prepare_stop() and status == 'completed':
                status = 'failed'
        finally:
            self.status = status
        try:
            log_events.StopExperimentEvent(
                exp_name=exp.name, run_id=self.id, status=status
            )
        finally:
            # trackers catch up (within their drain timeout) before the
            # status is final and before a preempted job asks for requeue
            relayed = exp.trackers.deactivate()
            if relayed is not None and status == 'completed':
                self.status = status = 'failed'
            if self.record and ranks.is_rank_zero():
                exp.registry.update(self.id, status=status)
            if Experiment._current_run_obj is self:
                Experiment._current_run_obj = None
            try:
                if status == 'preempted':
                    # last, once everything is saved, and while the handlers
                    # are armed: the SIGTERM with which SLURM ends a
                    # requeued job then only sets the flag
                    request_requeue()
                    watcher.reset()
            finally:
                if self._signals is not None:
                    self._signals.__exit__(None, None, None)
                    self._signals = None
        if relayed is not None:
            raise relayed

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, exceptions.EndsRunCleanly):
            self.stop('completed')
        elif isinstance(exc, exceptions.PreemptedExit):
            self.stop('preempted')
        else:
            self.stop('failed')

    def _decide(self) -> _Decision:
        # again here: the file may have appeared since the construction
        check_folder('Experiment', self.experiment.dir)
        now = datetime.datetime.now()
        world = ranks.get_world_size()
        if not self.record:
            run_id = self.requested_id or now.strftime('%Y-%m-%d@%Hh%Mm%Ss')
            return _Decision(run_id, self.resume, 1, world, now)
        registry = self.experiment.registry
        job_key, restarts = _scheduler_job()
        counter = (str(registry.path.resolve()), job_key or '', restarts)
        job_index = Run._job_runs.get(counter, 0) if job_key else None
        target = None
        if self.resume:
            if self.requested_id is None:
                target = registry.last()
            else:
                target = registry.get(self.requested_id)
            if target is None:
                missing = self.requested_id or '(last run)'
                warnings.warn(
                    exceptions.NotExistingRunWarning(
                        missing, self.experiment.name
                    ),
                    stacklevel=3,
                )
        elif job_key and restarts > 0:
            if self.requested_id is None:
                target = registry.find_job(job_key, job_index)
            else:
                named = registry.get(self.requested_id)
                if named is not None and named.job_key == job_key:
                    target = named
        # the same scheduler job restarted (whether or not the script also
        # says resume=True): it repeats its script
        requeued = (
            target is not None
            and job_key is not None
            and restarts > 0
            and target.job_key == job_key
        )
        if target is not None:
            previous = target.world_size
            previous_status = target.status
            record = registry.update(
                target.run_id,
                status='running',
                attempts=target.attempts + 1,
                world_size=world,
            )
            if job_index is not None:
                Run._job_runs[counter] = job_index + 1
            return _Decision(
                record.run_id,
                True,
                record.attempts,
                previous,
                now,
                previous_status,
                requeued,
            )
        record = registry.reserve(
            self.requested_id,
            job_key=job_key,
            world_size=world,
            now=now,
            job_index=job_index,
        )
        registry.update(record.run_id, status='running', attempts=1)
        if job_index is not None:
            Run._job_runs[counter] = job_index + 1
        return _Decision(record.run_id, False, 1, world, now)


class Experiment(Generic[_T_co]):
    """What stays fixed across runs: name, configuration, trackers.

    Args:
        config: the configuration object (anything; documented by trackers).
        name: the experiment's name; defaults to the class name.
        par_dir: the folder under which the experiment keeps its runs.
        tags: labels that trackers attach to every run.

    """

    _current_run_obj: ClassVar[Run | None] = None

    def __init__(
        self,
        config: _T_co,
        *,
        name: str = '',
        par_dir: str | pathlib.Path = pathlib.Path('experiments'),
        tags: list[str] | None = None,
    ) -> None:
        self.name = validate_folder_name(
            'Experiment', name or self.__class__.__name__
        )
        self.config = config
        self.par_dir = pathlib.Path(par_dir)
        check_folder('Experiment', self.dir)
        self.tags = list(tags or [])
        self.trackers = EventDispatcher(self.name)
        self.trackers.subscribe(**DEFAULT_TRACKERS)
        self.metadata_manager = MetadataManager(self.name)
        self.registry = RunRegistry(self.dir)

    @property
    def dir(self) -> pathlib.Path:
        """The experiment's folder: registry and runs live here."""
        return self.par_dir / self.name

    def create_run(
        self,
        run_id: str | None = None,
        resume: bool = False,
        record: bool = True,
    ) -> Run:
        """A run to start (``with``) or to ``start()`` and ``stop()``.

        Args:
            run_id: the run's id; a timestamp by default.
            resume: continue ``run_id``, or the last run when it is None.
            record: write the run in the experiment's registry.

        """
        return Run(self, run_id=run_id, resume=resume, record=record)

    @property
    def run(self) -> Run:
        """This experiment's running run."""
        run = Experiment._current_run_obj
        if run is None or run.experiment is not self:
            raise exceptions.NoActiveExperimentError(f'{self.name}.run')
        return run

    @classmethod
    def current_run(cls) -> Run | None:
        """The running run of any experiment, if any."""
        return Experiment._current_run_obj

    @classmethod
    def get_current(cls) -> Self:
        """The experiment whose run is active."""
        run = Experiment._current_run_obj
        if run is None:
            raise exceptions.NoActiveExperimentError(
                f'{cls.__name__}.get_current()'
            )
        experiment = run.experiment
        if not isinstance(experiment, cls):
            raise exceptions.NoActiveExperimentError(
                f'{cls.__name__}.get_current()',
                running=f'experiment {experiment.name!r} '
                f'({experiment.__class__.__name__})',
            )
        return experiment

    @classmethod
    def get_config(cls) -> Any:
        """The configuration of the experiment whose run is active."""
        return cls.get_current().config

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(name={self.name!r})'
