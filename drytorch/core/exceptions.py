"""Every error and warning of drytorch, each saying what to do about it.

Errors derive from :class:`DryTorchError` so that a user can catch the
library's own failures in one clause; warnings derive from
:class:`DryTorchWarning` so that they can be filtered in one line.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable
from typing import Any

__all__ = [
    'AccessOutsideScopeError',
    'CannotStoreOutputWarning',
    'CheckpointNotFoundError',
    'CheckpointNotInitializedError',
    'CheckpointWriteError',
    'ComputedBeforeUpdatedWarning',
    'ComputedMetricsTypeError',
    'ConvergenceError',
    'DatasetHasNoLengthError',
    'DeviceMismatchError',
    'DistributedDatasetNotDivisibleWarning',
    'DistributedStorageWarning',
    'DryTorchError',
    'DryTorchWarning',
    'EndsRunCleanly',
    'EpochCountError',
    'EpochNotFoundError',
    'ExperimentalFeatureWarning',
    'FailedOptionalImportWarning',
    'FuncNotApplicableError',
    'LossNotScalarError',
    'MetricNotFoundError',
    'MissingDependencyError',
    'MissingParamError',
    'ModelDeviceMismatchError',
    'ModelNotFoundError',
    'ModuleAlreadyRegisteredError',
    'ModuleNotDistributedWarning',
    'ModuleNotRegisteredError',
    'NameAlreadyRegisteredError',
    'NameNotValidError',
    'NamedTupleOnlyError',
    'NestedScopeError',
    'NoActiveExperimentError',
    'NoPreviousRunsWarning',
    'NotAFolderError',
    'NotExistingRunWarning',
    'ObjectiveSyncWarning',
    'OptimizerNotLoadedWarning',
    'PastEpochWarning',
    'PreemptedExit',
    'REQUEUE_EXIT_CODE',
    'RecursionWarning',
    'ResultNotAvailableError',
    'RunAlreadyCompletedWarning',
    'RunAlreadyRecordedError',
    'RunAlreadyRunningError',
    'RunAlreadyRunningWarning',
    'RunNotRecordedError',
    'RunNotStartedWarning',
    'TerminatedTrainingWarning',
    'TrackerAlreadyRegisteredError',
    'TrackerError',
    'TrackerExceptionWarning',
    'TrackerNotUsedError',
    'TrackerSubscribedTwiceError',
    'WorldSizeChangedError',
]


class DryTorchError(Exception):
    """Base class of the library's errors."""


class EndsRunCleanly:
    """Marks an exception that ends a run as completed, not failed.

    For a decided, agreed end that must still leave through an exception
    (an Optuna trial pruned: Optuna learns it from ``TrialPruned``).
    """


class PreemptedExit(SystemExit):
    """Raised after a preempted run saved everything: "requeue me".

    A ``SystemExit`` so that an uncaught one ends the process quietly with
    :data:`REQUEUE_EXIT_CODE`, which job scripts read to requeue the job;
    users who want to do something else can catch it.
    """

    def __init__(self, message: str = '') -> None:
        super().__init__(REQUEUE_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message or f'preempted (exit {REQUEUE_EXIT_CODE})'


REQUEUE_EXIT_CODE = 3


class DryTorchWarning(UserWarning):
    """Base class of the library's warnings."""


class NoActiveExperimentError(DryTorchError):
    """Raised when something needs a running run and none is active."""

    def __init__(
        self, what: str = 'This operation', *, running: str | None = None
    ) -> None:
        if running is not None:
            super().__init__(
                f'{what} needs a run of its own experiment class, but the '
                f'running run belongs to {running}. Call get_current() on '
                'that class (or on Experiment), or stop that run first.'
            )
            return
        super().__init__(
            f'{what} needs an active run, but none is running. '
            'Start one with `with experiment.create_run(): ...` '
            'or `run = experiment.create_run(); run.start()`.'
        )


class AccessOutsideScopeError(NoActiveExperimentError):
    """Raised when an experiment is accessed outside its run."""


class RunAlreadyRunningError(DryTorchError):
    """Raised when a second run starts while one is active."""

    def __init__(self, running: str, new: str) -> None:
        super().__init__(
            f'Run {running!r} is still active; stop it before starting '
            f'run {new!r} (leave its `with` block or call `run.stop()`).'
        )


class NameNotValidError(DryTorchError, ValueError):
    """Raised for names that cannot become folder names."""

    def __init__(self, kind: str, name: str, reason: str) -> None:
        shown = name if len(name) <= 60 else name[:57] + '...'
        super().__init__(
            f'{kind} name {shown!r} cannot be used as a folder name: '
            f'{reason}. A name may hold any character but '
            '< > : " / \\ | ? * and control characters; it must not be '
            "empty, '.' or '..', nor begin or end with whitespace, and it "
            'must fit in 255 bytes of UTF-8 (223 for a source or actor '
            'name, whose files add suffixes). Choose another name.'
        )


class NotAFolderError(DryTorchError, NotADirectoryError):
    """Raised when a folder to write in is, or is under, a file."""

    def __init__(
        self, owner: str, folder: pathlib.Path, blocker: pathlib.Path
    ) -> None:
        where = (
            f'{folder} is a file'
            if blocker == folder
            else f'{blocker} is a file, and {folder} would be inside it'
        )
        super().__init__(
            f'{owner} cannot write in {folder}: {where}. Nothing was '
            'written there. Move or rename that file, or choose another '
            'par_dir.'
        )


class RunAlreadyRecordedError(DryTorchError, ValueError):
    """Raised when a new run is given the id of an existing one."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f'Run {run_id!r} already exists in this experiment. Pass '
            '`resume=True` to continue it, or choose another id.'
        )


class NotExistingRunWarning(DryTorchWarning):
    """Warned when resuming a run id that the registry does not know."""

    def __init__(self, run_id: str, experiment: str) -> None:
        super().__init__(
            f'No run {run_id!r} in experiment {experiment!r} to resume; '
            'starting it as a new run.'
        )


class TrackerError(DryTorchError):
    """Raised by trackers for failures of their backend."""


class TrackerAlreadyRegisteredError(DryTorchError, ValueError):
    """Raised when a name is subscribed twice to one dispatcher."""

    def __init__(self, name: str, default: bool = False) -> None:
        if default:
            where = (
                'is already a default tracker; call '
                '`remove_all_default_trackers()` first, or give the new one '
                "a name of its own: `extend_default_trackers({'my_name': "
                'tracker})`.'
            )
        else:
            where = (
                f'is already subscribed; remove it first with '
                f'`trackers.remove({name!r})`, or give the new one a name of '
                'its own: `trackers.subscribe(my_name=tracker)`.'
            )
        super().__init__(f'A tracker named {name!r} {where}')


class TrackerSubscribedTwiceError(DryTorchError, ValueError):
    """Raised when one tracker instance would be subscribed twice.

    It would receive every event twice and clean up twice (two files
    written over each other, a run closed before its last event).
    """

    def __init__(self, name: str, other: str) -> None:
        super().__init__(
            f'The tracker given as {name!r} is the same object as the one '
            f'subscribed as {other!r}; it would receive every event twice. '
            'Subscribe it once, or create a second instance.'
        )


class TrackerNotUsedError(DryTorchError):
    """Raised by ``Tracker.get_current`` when the class is not in use."""

    def __init__(self, tracker_cls: type, active: Iterable[str]) -> None:
        names = ', '.join(sorted(active)) or 'none'
        super().__init__(
            f'No {tracker_cls.__name__} is subscribed to the running '
            f'experiment (subscribed: {names}). Subscribe one with '
            '`experiment.trackers.subscribe(...)` or '
            '`drytorch.extend_default_trackers([...])`.'
        )


class MissingDependencyError(DryTorchError, ImportError):
    """Raised when an optional dependency is needed but not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f'{package!r} is not installed; '
            f"install it with `pip install 'drytorch[{extra}]'`."
        )


class ModuleAlreadyRegisteredError(DryTorchError):
    """Raised when the same module is registered twice in one run."""

    def __init__(self, name: str, experiment: str) -> None:
        super().__init__(
            f'This module is already registered as model {name!r} in '
            f'experiment {experiment!r}; wrap each nn.Module in one Model '
            'only, and reuse that Model.'
        )


class LossNotScalarError(DryTorchError, ValueError):
    """Raised when a loss does not reduce to one number."""

    def __init__(self, name: str, shape: Any) -> None:
        super().__init__(
            f'Loss {name!r} returned a tensor of shape {tuple(shape)}; '
            'a loss must return one value per sample (shape (batch,)) or '
            'a scalar. Reduce it, e.g. `.mean(dim=...)` over the other '
            'dimensions.'
        )


class ConvergenceError(DryTorchError, FloatingPointError):
    """Raised when the loss is not finite.

    Under a process group the rank and the batch are those where a
    non-finite value first appeared (the lowest such rank, if several),
    so that the message points at the data that caused it.
    """

    def __init__(
        self,
        value: float,
        epoch: int,
        batch: int | None,
        rank: int | None = None,
    ) -> None:
        where = f'batch {batch}' if batch is not None else 'an unknown batch'
        if rank is not None:
            where = f'{where} on rank {rank}'
        super().__init__(
            f'The loss is {value} at epoch {epoch}, {where}; training '
            'stopped. Lower the learning rate, clip gradients or check the '
            'input data.'
        )
        self.value = value
        self.epoch = epoch
        self.batch = batch
        self.rank = rank


class ModelNotFoundError(DryTorchError, FileNotFoundError):
    """Raised when no saved model is found (see CheckpointNotFoundError)."""


class EpochNotFoundError(ModelNotFoundError):
    """Raised when no checkpoint of the asked epoch is found."""


class CheckpointNotFoundError(EpochNotFoundError):
    """Raised when no complete checkpoint matches the request.

    DRYTorch's ``ModelNotFoundError`` and ``EpochNotFoundError`` catch it.
    """

    def __init__(self, where: pathlib.Path, epoch: int) -> None:
        which = 'any epoch' if epoch < 0 else f'epoch {epoch}'
        super().__init__(
            f'No complete checkpoint for {which} in {where}. Save one with '
            '`trainer.save_checkpoint()` first, or check the run id.'
        )


class EpochCountError(DryTorchError, TypeError, ValueError):
    """Raised when a number of epochs is not a whole, non-negative number.

    Both a TypeError and a ValueError: ``train(1.5)`` has the wrong type,
    ``train(-1)`` the wrong value, and either is caught as the user expects.
    """

    def __init__(self, name: str, value: object) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            super().__init__(f'{name} must be >= 0, got {value!r}.')
            return
        super().__init__(
            f'{name} must be a whole number of epochs, got {value!r} '
            f'({type(value).__name__}). Pass an int, for example 2: an '
            'epoch is never split.'
        )


class CheckpointWriteError(DryTorchError, OSError):
    """Raised on every rank when rank zero could not write a checkpoint."""

    def __init__(self, where: pathlib.Path | str, cause: str) -> None:
        super().__init__(
            f'Could not write a checkpoint in {where}: {cause}. The previous '
            "checkpoints are untouched. Free disk space, fix the folder's "
            'permissions, or give the model a `LocalCheckpoint(par_dir=...)` '
            'on a writable file system.'
        )


class WorldSizeChangedError(DryTorchError):
    """Raised when a resume cannot continue with a new number of ranks.

    A mid-epoch checkpoint continues with another number of ranks when the
    global batch is kept (``DataLoader(global_batch_size=...)``); ``why``
    says what prevents it, ``remedy`` what would allow it.
    """

    def __init__(
        self,
        saved: int,
        now: int,
        *,
        why: str = 'the exact position cannot be mapped',
        remedy: str = '',
    ) -> None:
        remedy = f'{remedy}, ' if remedy else ''
        super().__init__(
            f'The checkpoint was written by {saved} process(es) in the '
            f'middle of an epoch, and this attempt runs {now}: {why}. To '
            f'continue, {remedy}relaunch with the same number of processes '
            f'({saved}), or load the last end-of-epoch checkpoint with '
            '`load_checkpoint(epoch)`.'
        )


class MetricNotFoundError(DryTorchError, KeyError):
    """Raised when a hook monitors a metric that the evaluation lacks."""

    def __init__(
        self, source_name: str, metric_name: str, found: Iterable[str] = ()
    ) -> None:
        self.source_name, self.metric_name = source_name, metric_name
        names = sorted(found)
        super().__init__(
            f'{source_name} computed no metric {metric_name!r} (it computed '
            f'{names}); pass one of those as `metric`, or the objective '
            'itself.'
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class ResultNotAvailableError(DryTorchError):
    """Raised when a monitored value is read before any was recorded."""

    def __init__(self) -> None:
        super().__init__(
            'No value has been recorded yet: the hook has not run after an '
            'epoch whose metrics it monitors.'
        )


class TrackerExceptionWarning(DryTorchWarning):
    """Warned when a tracker raised and was unsubscribed.

    Attributes:
        tracker: the name the tracker was subscribed under.
        filename: the file of the innermost frame of the traceback.
        lineno: its line, so that a custom tracker's bug is found at once.

    """

    def __init__(
        self,
        message: str,
        tracker: str = '',
        filename: str = '',
        lineno: int = 0,
    ) -> None:
        super().__init__(message)
        self.tracker = tracker
        self.filename = filename
        self.lineno = lineno


# ---------------------------------------------------------------------------
# DRYTorch's other names.  Code written for DRYTorch catches or filters them
# by these names; each docstring says when drytorch raises it, or why it
# does not (a situation that cannot arise here).


class CheckpointNotInitializedError(DryTorchError):
    """A checkpoint used before it was bound to a model.

    Not raised here: a Model binds its checkpoint when it is built.
    """


class ComputedMetricsTypeError(DryTorchError, TypeError):
    """A metric function returned neither a tensor nor a mapping of them."""


class DatasetHasNoLengthError(DryTorchError, TypeError):
    """A map-style data set without ``__len__``.

    Not raised here: data sets without a length are iterated as iterable
    data sets, whose position is their own ``state_dict()``.
    """


class DeviceMismatchError(DryTorchError, ValueError):
    """A metric's value is on another device than the targets."""


class FuncNotApplicableError(DryTorchError, TypeError):
    """A function cannot be applied to a value of this type."""


class MissingParamError(DryTorchError, ValueError):
    """Parameter groups of a learning rate dict miss some parameters.

    Not raised here: ``LearningSchema.build_optimizer`` raises a
    ``ValueError`` that names the parameters and the prefixes.
    """


class ModelDeviceMismatchError(DryTorchError, ValueError):
    """Parameters and outputs on different device types under a group."""


class ModuleNotRegisteredError(DryTorchError):
    """A model used in a run it was not registered in."""


class NameAlreadyRegisteredError(DryTorchError, ValueError):
    """A name already used by another actor of the run."""


class NamedTupleOnlyError(DryTorchError, TypeError):
    """A tuple subclass that is not a named tuple, where one is needed."""


class NestedScopeError(DryTorchError):
    """An experiment started inside another's scope.

    Here a second run while one is active raises RunAlreadyRunningError.
    """


class RunNotRecordedError(DryTorchError, KeyError):
    """A run id that the experiment's registry does not hold."""


class CannotStoreOutputWarning(DryTorchWarning):
    """Outputs could not be stored (``store_outputs=True``)."""


class ComputedBeforeUpdatedWarning(DryTorchWarning):
    """A metric computed before any batch updated it."""


class DistributedDatasetNotDivisibleWarning(DryTorchWarning):
    """An evaluation set that does not divide by the world size.

    Not warned here: evaluations count every sample exactly once whatever
    the world size (see the README, Distributed).
    """


class DistributedStorageWarning(DryTorchWarning):
    """Stored outputs could not be gathered over the ranks."""


class ExperimentalFeatureWarning(DryTorchWarning):
    """A feature that may still change."""


class FailedOptionalImportWarning(DryTorchWarning):
    """An optional package is missing; the library goes on without it."""


class ModuleNotDistributedWarning(DryTorchWarning):
    """A module trained under a process group without DDP or FSDP.

    Not warned here: a Model wraps its module itself under a group.
    """


class NoPreviousRunsWarning(DryTorchWarning):
    """``resume=True`` with no earlier run: a new one starts."""


class ObjectiveSyncWarning(DryTorchWarning):
    """An objective's state could not be synchronised over the ranks."""


class OptimizerNotLoadedWarning(DryTorchWarning):
    """A checkpoint's optimizer state did not load."""


class PastEpochWarning(DryTorchWarning):
    """``train_until`` an epoch the model is already past."""


class RecursionWarning(DryTorchWarning):
    """Metadata of an object that contains itself is not documented."""


class RunAlreadyCompletedWarning(DryTorchWarning):
    """A run stopped twice."""


class RunAlreadyRunningWarning(DryTorchWarning):
    """A run started twice.

    Here a second start while a run is active raises RunAlreadyRunningError.
    """


class RunNotStartedWarning(DryTorchWarning):
    """A run stopped before it started."""


class TerminatedTrainingWarning(DryTorchWarning):
    """Training asked for after the training was terminated."""
