"""Trackers, the dispatcher that feeds them, and the default trackers.

A tracker only observes: it receives events and logs, plots or stores them,
and never changes the experiment.  The dispatcher shields the run from its
trackers (one that raises, in ``notify`` or in a progress callback, is
reported and dropped, the run goes on), the training from their latency
(on rank zero they run on a background worker, see
``drytorch.core.delivery``) and the trackers from the cluster (only rank
zero's dispatcher hands them events).
"""

from __future__ import annotations

import abc
import copy
import functools
import logging
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple, Self

from drytorch.core import delivery, exceptions, log_events
from drytorch.distributed import ranks

__all__ = [
    'DEFAULT_TRACKERS',
    'EventDispatcher',
    'Tracker',
    'TrackerExceptionWarning',
    'extend_default_trackers',
    'remove_all_default_trackers',
]

_logger = logging.getLogger('drytorch')
# DRYTorch's name, where DRYTorch keeps it; importable from here too.
TrackerExceptionWarning = exceptions.TrackerExceptionWarning


class Tracker(abc.ABC):
    """Observer of an experiment's events.

    Subclasses override :meth:`notify` (a ``singledispatchmethod``) for the
    events they care about and call ``super().notify(event)`` so that the
    base class can clean up when the run stops.

    On rank zero ``notify`` runs on a background thread, in event order, so
    that a slow backend never slows the training step.  A tracker that the
    user must see at once (a progress bar, a logger) sets ``immediate`` to
    True (class attribute, or on the instance before subscribing) and is
    notified on the training thread instead.
    """

    immediate: ClassVar[bool] = False

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
        passed around.  The tracker has seen every event published before
        the call (the background worker is waited for), so what it returns
        (a plot, a file) is up to date.  On ranks other than zero the
        subscribed instance is returned as well, although it receives no
        events there.
        """
        dispatcher = EventDispatcher.active()
        if dispatcher is None:
            raise exceptions.NoActiveExperimentError(
                f'{cls.__name__}.get_current()'
            )
        found = dispatcher.find(cls)
        if found is None:
            raise exceptions.TrackerNotUsedError(cls, dispatcher.all_names())
        if not found.immediate:
            dispatcher.flush()
        return found


def _tracker_name(tracker: Tracker) -> str:
    return tracker.__class__.__name__


class _Handler(NamedTuple):
    name: str
    tracker: Tracker
    notify: Callable[[log_events.Event], None]


class _Update(NamedTuple):
    """Running metrics for the callbacks that background trackers added."""

    event: log_events.IterateBatchEvent
    metrics: Mapping[str, Any]
    advanced: int


def _check_trackers(
    pairs: list[tuple[str, Tracker]],
    held: Mapping[str, Tracker] | None = None,
    default: bool = False,
) -> None:
    """Refuse what is not a tracker, a taken name, or an instance twice.

    ``held`` are the trackers already there, which ``pairs`` join.
    """
    seen: dict[str, Tracker] = {}
    names: dict[int, str] = {}
    for name, tracker in (held or {}).items():
        names[id(tracker)] = name
    for name, tracker in pairs:
        if not isinstance(tracker, Tracker):
            raise TypeError(
                f'{name}={tracker!r} is not a Tracker; trackers must '
                'subclass drytorch.core.tracking.Tracker.'
            )
        if name in seen or (held is not None and name in held):
            if held is not None and held.get(name) is tracker:
                continue  # the same default again: nothing to do
            raise exceptions.TrackerAlreadyRegisteredError(name, default)
        other = names.get(id(tracker))
        if other is not None and other != name:
            raise exceptions.TrackerSubscribedTwiceError(name, other)
        seen[name] = tracker
        names[id(tracker)] = name


class EventDispatcher:
    """Hands each published event to every subscribed tracker, in order.

    Immediate trackers are notified on the publishing thread; the others
    on the run's background worker.  On ranks other than zero the trackers
    are held (so that :meth:`Tracker.get_current` still answers) but never
    called: publishing there costs one attribute check.

    Attributes:
        drain_timeout: seconds a stopping run waits for the background
            trackers (``$DRYTORCH_TRACKER_DRAIN_TIMEOUT``, default 20).
        last_report: what the worker of the last run did.

    """

    _active: ClassVar[EventDispatcher | None] = None

    def __init__(self, exp_name: str = '') -> None:
        self.exp_name = exp_name
        self._trackers: dict[str, Tracker] = {}
        self._lock = threading.RLock()
        # handlers are rebuilt only when subscriptions change: a
        # singledispatchmethod builds a new wrapper at every attribute
        # access, which would otherwise happen per event
        self._now: tuple[_Handler, ...] = ()
        self._later: tuple[_Handler, ...] = ()
        self._live = ranks.is_rank_zero()
        self._worker: delivery.DeliveryWorker[_Handler] | None = None
        self.drain_timeout: float | None = None
        self.last_report = delivery.DeliveryReport()
        self._pushing: _Handler | None = None  # progress callback running
        self._stop_deadline: float | None = None

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
        """Subscribe trackers, named after their class unless named here.

        Two trackers of one class need names of their own
        (``subscribe(csv_a=CSVDumper(...), csv_b=CSVDumper(...))``);
        nothing is subscribed when any name is taken.
        """
        pairs = [(_tracker_name(t), t) for t in trackers]
        pairs += list(named.items())
        with self._lock:
            for name, tracker in pairs:
                if self._trackers.get(name) is tracker:
                    raise exceptions.TrackerAlreadyRegisteredError(name)
            _check_trackers(pairs, self._trackers)
            for name, tracker in pairs:
                self._trackers[name] = tracker
            self._rebuild()

    def remove(self, name: str) -> None:
        """Unsubscribe the tracker called ``name``.

        It still receives the events published before the call (the
        background worker is waited for), and none after.
        """
        if self._worker is not None and not self._worker.on_worker():
            self.flush()
        with self._lock:
            if name not in self._trackers:
                raise KeyError(
                    f'No tracker named {name!r}; subscribed: '
                    f'{", ".join(self._trackers) or "none"}.'
                )
            del self._trackers[name]
            self._rebuild()

    def remove_all(self) -> None:
        """Unsubscribe every tracker."""
        with self._lock:
            self._trackers.clear()
            self._rebuild()

    def activate(self) -> None:
        """Become the dispatcher of the running run; decide rank here.

        The rank is read once per run, after the process group is up, so
        that publishing never asks it again.  Each run gets its own worker
        (its thread starts with the first event).
        """
        self._live = ranks.is_rank_zero()
        self._worker = delivery.DeliveryWorker(
            self._deliver,
            _handler_name,
            delivery.queue_size(),
            on_stall=self._stalled,
            stall_after=delivery.stall_timeout(),
        )
        EventDispatcher._active = self
        log_events.Event.set_publisher(self.publish)

    def prepare_stop(self) -> bool:
        """Start the drain deadline and catch up before the stop event.

        The stop event then carries the run's true status: True when a
        background tracker raised an interrupt or exit that the training
        thread has not seen (the run fails).  The flush, the stop event
        and :meth:`deactivate` share one deadline, so a stuck tracker
        delays the end of a run by the drain timeout once, not per step.
        """
        timeout = self.drain_timeout or delivery.drain_timeout()
        self._stop_deadline = time.monotonic() + timeout
        worker = self._worker
        if worker is None:
            return False
        worker.flush(timeout)
        return worker.interrupt is not None

    def _left_to_stop(self) -> float:
        """Seconds left of the drain deadline (the whole one if unset)."""
        timeout = self.drain_timeout or delivery.drain_timeout()
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + timeout
        return max(self._stop_deadline - time.monotonic(), 0.0)

    def deactivate(self) -> BaseException | None:
        """Stop receiving events; wait for the background trackers.

        Waits at most ``drain_timeout`` seconds; past it the trackers that
        did not finish are named in a warning, and those not busy are
        cleaned up from here so that their files are closed.

        Returns:
            an interrupt or exit that a background tracker raised and that
            the training thread has not raised yet, for the run to raise.

        """
        if EventDispatcher._active is self:
            log_events.Event.set_publisher(None)
        timeout = self.drain_timeout or delivery.drain_timeout()
        left = self._left_to_stop()
        self._stop_deadline = None
        worker = self._worker
        if worker is None:
            self._no_longer_active()
            return None
        # still the active dispatcher while it drains: a tracker that
        # calls get_current() on a queued event finds its peers
        report = worker.close(left)
        self._worker = None
        self._no_longer_active()
        self.last_report = report
        if report.undelivered:
            self._give_up(report, timeout)
        if report.waits:
            _logger.warning(
                'Training waited %.2f s (%d times) for trackers that could '
                'not keep up (%s); a larger %s lets it run ahead longer.',
                report.waited_s,
                report.waits,
                _busiest(report),
                delivery.QUEUE_SIZE_VARIABLE,
            )
        return worker.interrupt

    def _no_longer_active(self) -> None:
        if EventDispatcher._active is self:
            EventDispatcher._active = None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the background trackers saw every published event.

        Returns False if ``timeout`` (default: the drain timeout) passed
        first.  Call it before reading a tracker's files during a run.
        """
        worker = self._worker
        if worker is None:
            return True
        if timeout is None:
            timeout = self.drain_timeout or delivery.drain_timeout()
        return worker.flush(timeout)

    @classmethod
    def active(cls) -> EventDispatcher | None:
        """The dispatcher of the running run, if any."""
        return cls._active

    def publish(self, event: log_events.Event) -> None:
        """Notify immediate trackers now, queue the event for the others."""
        if not self._live:
            return
        for handler in self._now:
            self._deliver(handler, event)
        later = self._later
        if not later:
            return
        if self._worker is None:  # published outside a run's activation
            for handler in later:
                self._deliver(handler, event)
            return
        if isinstance(event, log_events.IterateBatchEvent):
            event = self._forward_updates(event)
        worker = self._worker
        if isinstance(event, log_events.StopExperimentEvent):
            # bounded: a tracker stuck on a full queue must not hang the stop
            # (the drain deadline then reports what it missed)
            worker.put(event, later, self._left_to_stop())
            return
        worker.put(event, later)
        if worker.interrupt is not None:
            interrupt, worker.interrupt = worker.interrupt, None
            raise interrupt

    def _forward_updates(
        self, event: log_events.IterateBatchEvent
    ) -> log_events.IterateBatchEvent:
        """A copy for the worker, whose callbacks run on the worker too.

        Background trackers register their progress callbacks on the copy;
        the loop's ``update`` then only queues the running metrics.
        """
        worker = self._worker
        assert worker is not None
        clone = copy.copy(event)
        object.__setattr__(clone, 'push_updates', [])

        def forward(metrics: Mapping[str, Any], advanced: int) -> None:
            # queued even while the copy has no callback yet: the worker
            # may not have reached the event that registers them
            update = _Update(clone, dict(metrics), advanced)
            worker.put(update, (_UPDATES,))

        event.push_updates.append(forward)
        return clone

    def _deliver(self, handler: _Handler, item: Any) -> None:
        """Call one tracker; a tracker that raises is dropped, never fatal."""
        if handler is _UPDATES:
            for push in item.event.push_updates:
                push(item.metrics, item.advanced)
            return
        if self._trackers.get(handler.name) is not handler.tracker:
            return  # removed or dropped after the event was queued
        pushes = getattr(item, 'push_updates', None)
        before = len(pushes) if pushes is not None else 0
        try:
            handler.notify(item)
        except Exception as err:  # noqa: BLE001 - trackers must not stop runs
            self._drop(handler, item.__class__.__name__, err)
            return
        if pushes is not None:
            for index in range(before, len(pushes)):
                pushes[index] = self._guard(handler, pushes[index])

    def _guard(
        self, handler: _Handler, push: Callable[[Mapping[str, Any], int], None]
    ) -> Callable[[Mapping[str, Any], int], None]:
        """A progress callback that drops its tracker instead of raising."""

        def guarded(metrics: Mapping[str, Any], advanced: int) -> None:
            if self._trackers.get(handler.name) is not handler.tracker:
                return
            self._pushing = handler
            try:
                push(metrics, advanced)
            except Exception as err:  # noqa: BLE001
                self._drop(handler, 'a progress update', err)
            finally:
                self._pushing = None

        return guarded

    def _rebuild(self) -> None:
        handlers = [
            _Handler(n, t, t.notify) for n, t in self._trackers.items()
        ]
        self._now = tuple(h for h in handlers if h.tracker.immediate)
        self._later = tuple(h for h in handlers if not h.tracker.immediate)

    def _drop(self, handler: _Handler, what: str, err: Exception) -> None:
        name, tracker = handler.name, handler.tracker
        with self._lock:
            if self._trackers.get(name) is not tracker:
                return
            del self._trackers[name]
            self._rebuild()
        _warn_failure(
            name,
            f'failed on {what} with {err.__class__.__name__}: '
            f'{str(err).rstrip(".")}. It is unsubscribed; the run goes on '
            'without it.',
            err,
        )
        try:
            tracker.clean_up()
        except Exception as clean_err:  # noqa: BLE001
            _warn_failure(name, f'also failed to clean up: {clean_err}', err)

    def _stalled(
        self, handler: _Handler, ran: float, where: tuple[str, int]
    ) -> None:
        """Unsubscribe a tracker whose call the worker gave up.

        No clean-up: the tracker is still inside its call, on a thread of
        its own, and its clean-up would most likely wait on the same
        backend.
        """
        if handler is _UPDATES:  # one of the progress callbacks
            pushing = self._pushing
            if pushing is None:
                return
            handler = pushing
        with self._lock:
            if self._trackers.get(handler.name) is not handler.tracker:
                return
            del self._trackers[handler.name]
            self._rebuild()
        filename, lineno = where
        warning = TrackerExceptionWarning(
            f'Tracker {handler.name!r} has not returned from its call for '
            f'{ran:.1f} s (${delivery.STALL_TIMEOUT_VARIABLE}; it waits at '
            f'{filename}:{lineno}); it is unsubscribed without clean-up, and '
            'the run and the other trackers go on. Give its backend a '
            'timeout of its own, or raise the variable for a backend this '
            'slow.',
            tracker=handler.name,
            filename=filename,
            lineno=lineno,
        )
        _warn_at(warning)

    def _give_up(
        self, report: delivery.DeliveryReport, timeout: float
    ) -> None:
        missed = ', '.join(f'{n}: {k}' for n, k in report.undelivered.items())
        warnings.warn(
            TrackerExceptionWarning(
                f'Trackers did not catch up within {timeout:g} s '
                f'(${delivery.DRAIN_TIMEOUT_VARIABLE}); events not delivered '
                f'per tracker: {missed}. {report.stuck!r} was still busy; '
                'the others are cleaned up now.',
                tracker=report.stuck or '',
            ),
            stacklevel=4,
        )
        for name in report.undelivered:
            tracker = self._trackers.get(name)
            if tracker is None or name == report.stuck:
                continue
            try:
                tracker.clean_up()
            except Exception as err:  # noqa: BLE001
                _warn_failure(name, f'failed to clean up: {err}', err)


# the pseudo-handler of progress updates: their callbacks guard themselves
_UPDATES = _Handler('(progress updates)', None, None)  # type: ignore[arg-type]


def _handler_name(handler: _Handler) -> str:
    return handler.name


def _busiest(report: delivery.DeliveryReport) -> str:
    if not report.busy_s:
        return 'no tracker time recorded'
    name, busy = max(report.busy_s.items(), key=lambda item: item[1])
    return f'{name!r} was busy {busy:.2f} s'


def _warn_failure(name: str, text: str, err: BaseException) -> None:
    """Warn at the tracker's own failing line, which the text names too."""
    frames = traceback.extract_tb(err.__traceback__)
    filename, lineno = (
        (frames[-1].filename, frames[-1].lineno or 0)
        if frames
        else ('<unknown>', 0)
    )
    warning = TrackerExceptionWarning(
        f'Tracker {name!r} {text} (at {filename}:{lineno})',
        tracker=name,
        filename=filename,
        lineno=lineno,
    )
    _warn_at(warning)


def _warn_at(warning: TrackerExceptionWarning) -> None:
    """Warn as from the warning's own file and line (the tracker's)."""
    filename, lineno = warning.filename, warning.lineno
    # warn_explicit shows nothing without a module (3.11); the file's stem
    # is what warnings.warn would derive for a module-level frame
    module = filename.rsplit('/', 1)[-1].removesuffix('.py') or 'drytorch'
    warnings.warn_explicit(
        warning, TrackerExceptionWarning, filename, lineno, module=module
    )


DEFAULT_TRACKERS: dict[str, Tracker] = {}


def extend_default_trackers(
    trackers: Iterable[Tracker] | Mapping[str, Tracker],
) -> None:
    """Add trackers that every experiment created from now on subscribes.

    Names follow :meth:`EventDispatcher.subscribe`: a tracker is named
    after its class unless given in a mapping of name to tracker, and a
    name already taken is refused (nothing is added), as subscribing it
    would be.
    """
    if isinstance(trackers, Mapping):
        pairs = list(trackers.items())
    else:
        pairs = [(_tracker_name(t), t) for t in trackers]
    _check_trackers(pairs, DEFAULT_TRACKERS, default=True)
    for name, tracker in pairs:
        DEFAULT_TRACKERS[name] = tracker


def remove_all_default_trackers() -> None:
    """Experiments created from now on start with no tracker."""
    DEFAULT_TRACKERS.clear()
