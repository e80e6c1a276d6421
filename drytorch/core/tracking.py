"""Trackers, the dispatcher that feeds them, and the default trackers.

A tracker only observes: it receives events and logs, plots or stores them,
and never changes the experiment.  The dispatcher shields the run from its
trackers (one that raises is reported and dropped, the run goes on) and the
trackers from the cluster (only rank zero's dispatcher hands them events).
"""

from __future__ import annotations

import abc
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, Self

from drytorch.core import exceptions, log_events
from drytorch.distributed import ranks

__all__ = [
    'DEFAULT_TRACKERS',
    'EventDispatcher',
    'Tracker',
    'TrackerFailedWarning',
    'extend_default_trackers',
    'remove_all_default_trackers',
]


class TrackerFailedWarning(exceptions.DryTorchWarning):
    """Warned when a tracker raised and was unsubscribed."""


class Tracker(abc.ABC):
    """Observer of an experiment's events.

    Subclasses override :meth:`notify` (a ``singledispatchmethod``) for the
    events they care about and call ``super().notify(event)`` so that the
    base class can clean up when the run stops.
    """

    @functools.singledispatchmethod
    @abc.abstractmethod
    def notify(self, event: log_events.Event) -> None:
        """Handle an event; events nobody registered for are ignored."""
        return None

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        self.clean_up()

    def clean_up(self) -> None:
        """Release files, writers, servers; called when the run stops.

        It must be safe to call twice and must leave the tracker ready for
        the next run, since default trackers serve every experiment.
        """
        return None

    @classmethod
    def get_current(cls) -> Self:
        """The instance of this class subscribed to the running experiment.

        Lets code deep in an experiment reach a tracker without it being
        passed around.  On ranks other than zero the subscribed instance is
        returned as well, although it receives no events there.
        """
        dispatcher = EventDispatcher.active()
        if dispatcher is None:
            raise exceptions.NoActiveRunError(f'{cls.__name__}.get_current()')
        found = dispatcher.find(cls)
        if found is None:
            raise exceptions.TrackerNotUsedError(cls, dispatcher.all_names())
        return found


def _tracker_name(tracker: Tracker) -> str:
    return tracker.__class__.__name__


class EventDispatcher:
    """Hands each published event to every subscribed tracker, in order.

    On ranks other than zero the trackers are held (so that
    :meth:`Tracker.get_current` still answers) but never called: publishing
    there costs one attribute check.
    """

    _active: ClassVar[EventDispatcher | None] = None

    def __init__(self, exp_name: str = '') -> None:
        self.exp_name = exp_name
        self._trackers: dict[str, Tracker] = {}
        # (name, tracker, bound notify), rebuilt only when subscriptions
        # change: a singledispatchmethod builds a new wrapper at every
        # attribute access, which would otherwise happen per event.
        self._handlers: list[tuple[str, Tracker, Callable[..., None]]] = []
        self._live = ranks.is_rank_zero()

    @property
    def named_trackers(self) -> dict[str, Tracker]:
        """The trackers that receive events here (none off rank zero)."""
        return dict(self._trackers) if self._live else {}

    def all_names(self) -> list[str]:
        """Names of every subscribed tracker, live or not."""
        return list(self._trackers)

    def __iter__(self) -> Iterator[Tracker]:
        return iter(self.named_trackers.values())

    def __len__(self) -> int:
        return len(self.named_trackers)

    def find(self, cls: type[Tracker]) -> Tracker | None:
        """The subscribed tracker of exactly ``cls``, else a subclass."""
        candidates = list(self._trackers.values())
        for tracker in candidates:
            if type(tracker) is cls:
                return tracker
        for tracker in candidates:
            if isinstance(tracker, cls):
                return tracker
        return None

    def subscribe(self, *trackers: Tracker, **named: Tracker) -> None:
        """Subscribe trackers, named after their class unless named here."""
        pairs = [(_tracker_name(t), t) for t in trackers]
        pairs += list(named.items())
        for name, tracker in pairs:
            if not isinstance(tracker, Tracker):
                raise TypeError(
                    f'{name}={tracker!r} is not a Tracker; trackers must '
                    'subclass drytorch.core.tracking.Tracker.'
                )
            if name in self._trackers:
                raise exceptions.TrackerAlreadySubscribedError(name)
        for name, tracker in pairs:
            self._trackers[name] = tracker
        self._rebuild()

    def remove(self, name: str) -> None:
        """Unsubscribe the tracker called ``name``."""
        try:
            del self._trackers[name]
            self._rebuild()
        except KeyError:
            raise KeyError(
                f'No tracker named {name!r}; subscribed: '
                f'{", ".join(self._trackers) or "none"}.'
            ) from None

    def remove_all(self) -> None:
        """Unsubscribe every tracker."""
        self._trackers.clear()
        self._rebuild()

    def activate(self) -> None:
        """Become the dispatcher of the running run; decide rank here.

        The rank is read once per run, after the process group is up, so
        that publishing never asks it again.
        """
        self._live = ranks.is_rank_zero()
        EventDispatcher._active = self
        log_events.Event.set_publisher(self.publish)

    def deactivate(self) -> None:
        """Stop receiving events (the run has stopped)."""
        if EventDispatcher._active is self:
            EventDispatcher._active = None
            log_events.Event.set_publisher(None)

    @classmethod
    def active(cls) -> EventDispatcher | None:
        """The dispatcher of the running run, if any."""
        return cls._active

    def publish(self, event: log_events.Event) -> None:
        """Notify every tracker; drop (with a warning) those that fail."""
        if not self._live:
            return
        for name, tracker, notify in self._handlers:
            try:
                notify(event)
            except Exception as err:  # noqa: BLE001 - trackers must not stop runs
                self._drop(name, tracker, event, err)

    def _rebuild(self) -> None:
        self._handlers = [(n, t, t.notify) for n, t in self._trackers.items()]

    def _drop(
        self,
        name: str,
        tracker: Tracker,
        event: log_events.Event,
        err: Exception,
    ) -> None:
        warnings.warn(
            TrackerFailedWarning(
                f'Tracker {name!r} failed on {event.__class__.__name__} '
                f'with {err.__class__.__name__}: {str(err).rstrip(".")}. '
                'It is unsubscribed; '
                'the run goes on without it.'
            ),
            stacklevel=3,
        )
        self._trackers.pop(name, None)
        self._rebuild()
        try:
            tracker.clean_up()
        except Exception as clean_err:  # noqa: BLE001
            warnings.warn(
                TrackerFailedWarning(
                    f'Tracker {name!r} also failed to clean up: {clean_err}'
                ),
                stacklevel=3,
            )


DEFAULT_TRACKERS: dict[str, Tracker] = {}


def extend_default_trackers(trackers: Iterable[Tracker]) -> None:
    """Add trackers that every experiment created from now on subscribes."""
    for tracker in trackers:
        if not isinstance(tracker, Tracker):
            raise TypeError(f'{tracker!r} is not a Tracker.')
        DEFAULT_TRACKERS[_tracker_name(tracker)] = tracker


def remove_all_default_trackers() -> None:
    """Experiments created from now on start with no tracker."""
    DEFAULT_TRACKERS.clear()
