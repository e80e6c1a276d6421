"""The events of an experiment: frozen records that publish themselves.

Creating an event inside a running run hands it to that run's dispatcher;
library code therefore never holds a reference to trackers.  Every rank
creates the same events by the same code path; the dispatcher decides that
only rank zero's trackers see them (see ``drytorch.core.tracking``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from drytorch.core import exceptions

__all__ = [
    'ActorRegistrationEvent',
    'EndEpochEvent',
    'EndTestEvent',
    'EndTrainingEvent',
    'Event',
    'IterateBatchEvent',
    'LearningRateEvent',
    'LoadModelEvent',
    'MetricEvent',
    'ModelRegistrationEvent',
    'SaveModelEvent',
    'StartEpochEvent',
    'StartExperimentEvent',
    'StartTestEvent',
    'StartTrainingEvent',
    'StopExperimentEvent',
    'TerminatedTrainingEvent',
]

Publisher = Callable[['Event'], None]

# Field metadata: how an event keeps what it carries.  Trackers may read an
# event on a background thread after the training went on, so a mapping or
# list handed to an event is copied when the event is created: the caller
# may change its own afterwards.  'deep' copies a whole object (the
# configuration); 'shared' keeps the object (a channel, on purpose).
_SNAPSHOT = 'snapshot'


@functools.cache
def _snapshot_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    fields = []
    for field in dataclasses.fields(cls):
        how = field.metadata.get(_SNAPSHOT, 'copy')
        if how != 'shared':
            fields.append((field.name, how == 'deep'))
    return tuple(fields)


def _snapshot(value: Any) -> Any:
    """A copy of containers, down to their leaves; other values as are."""
    if isinstance(value, str | int | float | bool | None | datetime.datetime):
        return value
    if isinstance(value, Mapping):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return _rebuilt(value, [_snapshot(item) for item in value])
    detach = getattr(value, 'detach', None)  # a tensor, changed in place
    if callable(detach):
        return detach().clone()
    if isinstance(value, np.ndarray | np.generic):
        return value.copy()
    return value


def _rebuilt(value: Any, items: list[Any]) -> Any:
    """A container of ``value``'s type holding ``items``.

    A named tuple takes its items as arguments; a subclass whose
    constructor takes something else keeps its type only when the copy
    can be made, else it becomes the plain container it derives from.
    """
    kind = type(value)
    if isinstance(value, tuple) and hasattr(kind, '_make'):
        return kind._make(items)
    try:
        return kind(items)
    except Exception:
        for base in (list, tuple, frozenset, set):
            if isinstance(value, base):
                return base(items)
        raise


def _deep_copy(value: Any) -> Any:
    """A deep copy, or the object itself when it cannot be copied."""
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - a config may hold a lock, a socket
        return value


@dataclasses.dataclass(frozen=True)
class Event:
    """Base of every event; creating an instance publishes it.

    The publisher is installed by the run when it starts and removed when it
    stops, so an event created outside a run is a mistake that fails loudly
    rather than a log line that silently goes nowhere.
    """

    _publisher: ClassVar[Publisher | None] = None

    def __post_init__(self) -> None:
        publisher = Event._publisher
        if publisher is None:
            raise exceptions.NoActiveExperimentError(
                f'Creating {self.__class__.__name__}'
            )
        for name, deep in _snapshot_fields(type(self)):
            value = getattr(self, name)
            object.__setattr__(
                self, name, _deep_copy(value) if deep else _snapshot(value)
            )
        publisher(self)

    @staticmethod
    def set_publisher(publisher: Publisher | None) -> None:
        """Route every new event to ``publisher`` (None: no run active)."""
        Event._publisher = publisher


@dataclasses.dataclass(frozen=True)
class StartExperimentEvent(Event):
    """A run of an experiment starts (or resumes).

    Attributes:
        config: the experiment's configuration object.
        exp_name: the experiment's name.
        run_ts: when this attempt of the run started.
        run_id: the run's identifier, identical on every rank.
        resumed: whether this attempt continues an earlier one.
        par_dir: the experiment's parent directory.
        tags: the experiment's tags.
        attempt: 1 for the first attempt, then one more per resume.

    """

    config: Any = dataclasses.field(metadata={_SNAPSHOT: 'deep'})
    exp_name: str
    run_ts: datetime.datetime
    run_id: str
    resumed: bool = False
    par_dir: pathlib.Path = pathlib.Path('experiments')
    tags: list[str] = dataclasses.field(default_factory=list)
    attempt: int = 1

    @property
    def run_dir(self) -> pathlib.Path:
        """The run's own folder, where dumpers write by default."""
        return self.par_dir / self.exp_name / 'runs' / self.run_id


@dataclasses.dataclass(frozen=True)
class StopExperimentEvent(Event):
    """A run stops; trackers clean up when they receive it.

    Attributes:
        exp_name: the experiment's name.
        run_id: the run's identifier.
        status: how the run ended: completed, failed or preempted.

    """

    exp_name: str
    run_id: str
    status: str = 'completed'

    @property
    def preempted(self) -> bool:
        """Whether the run stops to be resumed later."""
        return self.status == 'preempted'


@dataclasses.dataclass(frozen=True)
class ModelRegistrationEvent(Event):
    """A model joins the run; documents its architecture."""

    model_name: str
    model_ts: datetime.datetime
    architecture_repr: str


@dataclasses.dataclass(frozen=True)
class ActorRegistrationEvent(Event):
    """An object acting on a model (trainer, evaluator...) joins the run."""

    actor_name: str
    actor_ts: datetime.datetime
    model_name: str
    model_ts: datetime.datetime
    metadata: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SaveModelEvent(Event):
    """A model's state (or a full checkpoint) was written."""

    model_name: str
    definition: str
    location: str
    epoch: int


@dataclasses.dataclass(frozen=True)
class LoadModelEvent(Event):
    """A model's state (or a full checkpoint) was read back."""

    model_name: str
    definition: str
    location: str
    epoch: int


@dataclasses.dataclass(frozen=True)
class StartTrainingEvent(Event):
    """Training starts; epochs run from ``start_epoch`` to ``end_epoch``."""

    source_name: str
    model_name: str
    start_epoch: int
    end_epoch: int


@dataclasses.dataclass(frozen=True)
class StartEpochEvent(Event):
    """An epoch starts (``epoch`` counts from 1)."""

    source_name: str
    model_name: str
    epoch: int
    end_epoch: int | None = None


@dataclasses.dataclass(frozen=True)
class EndEpochEvent(Event):
    """An epoch ends."""

    source_name: str
    model_name: str
    epoch: int


@dataclasses.dataclass(frozen=True)
class IterateBatchEvent(Event):
    """A loop over batches starts; progress is pushed through ``update``.

    Trackers that show progress append a callback ``push(metrics, n)`` to
    ``push_updates`` while handling the event; the loop then calls
    :meth:`update` at each sync point with the running global metrics and
    ``n``, the batches run since the previous update.  These are DRYTorch's
    fields and callback, so a tracker written for DRYTorch counts progress
    unchanged.  Over one loop the increments add up to ``n_iter``: after a
    resume the first one also counts the ``start_batch`` batches done before
    the preemption, so the bar of such a tracker still ends full.

    Attributes:
        source_name: who iterates (trainer, validation, test).
        batch_size: samples per batch on this rank, if known.
        n_iter: the batches this loop runs, the same on every rank
            (``None`` when not known).
        dataset_size: samples in the whole data set, if known.
        push_updates: the trackers' progress callbacks.
        start_batch: batches already done (non-zero when resuming).
        model_name: the model the loop runs; empty if not said.

    """

    source_name: str
    batch_size: int | None
    n_iter: int | None
    dataset_size: int | None
    push_updates: list[Callable[[Mapping[str, Any], int], None]] = (
        dataclasses.field(default_factory=list, metadata={_SNAPSHOT: 'shared'})
    )
    start_batch: int = 0
    model_name: str = ''

    def update(self, metrics: Mapping[str, Any], n_processes: int = 1) -> None:
        """Push the running metrics and the progress to the trackers.

        Args:
            metrics: the running global metrics by name.
            n_processes: the batches run since the previous update (the
                name is DRYTorch's, where each process advanced one batch).

        """
        for push in self.push_updates:
            push(metrics, n_processes)


@dataclasses.dataclass(frozen=True)
class TerminatedTrainingEvent(Event):
    """Training stopped before its last epoch, for ``reason``."""

    source_name: str
    model_name: str
    epoch: int
    reason: str


@dataclasses.dataclass(frozen=True)
class EndTrainingEvent(Event):
    """Training ended (normally or after termination)."""

    source_name: str


@dataclasses.dataclass(frozen=True)
class StartTestEvent(Event):
    """A test of a model starts."""

    source_name: str
    model_name: str


@dataclasses.dataclass(frozen=True)
class EndTestEvent(Event):
    """A test of a model ends."""

    source_name: str
    model_name: str


@dataclasses.dataclass(frozen=True)
class MetricEvent(Event):
    """Global metric values of a source at an epoch.

    The values are already reduced over every rank: they are what a single
    process would compute on the whole data set.

    Attributes:
        model_name: the model the metrics are about.
        source_name: who computed them (trainer, validation, test).
        epoch: the model's epoch when they were computed.
        metrics: metric name to value.

    """

    model_name: str
    source_name: str
    epoch: int
    metrics: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class LearningRateEvent(Event):
    """The learning rate (or its schedule) changed."""

    model_name: str
    source_name: str
    epoch: int
    base_lr: float | Mapping[str, float] | None = None
    scheduler_name: str | None = None
