"""A background worker that hands events to trackers in publication order.

Trackers used to run on rank zero's training thread, where a backend that
takes 5 ms per event (a database, a server, a network file system) stalled
every rank at the next collective.  The training thread now only puts the
event on a bounded queue; one daemon thread delivers the events, in the
order they were published, to the trackers that were subscribed when each
was published.  The queue is bounded so that memory cannot grow without
limit: when a backend cannot keep up, the training thread waits, and the
time it waited is counted so that the run can report it.

The worker knows nothing of trackers: it calls ``deliver(handler, item)``
for each handler of an item, and the dispatcher's ``deliver`` shields the
run from the tracker (see ``drytorch.core.tracking``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from drytorch.core import exceptions

__all__ = [
    'DRAIN_TIMEOUT_VARIABLE',
    'QUEUE_SIZE_VARIABLE',
    'DeliveryReport',
    'DeliveryWorker',
    'drain_timeout',
    'queue_size',
]

DRAIN_TIMEOUT_VARIABLE = 'DRYTORCH_TRACKER_DRAIN_TIMEOUT'
QUEUE_SIZE_VARIABLE = 'DRYTORCH_TRACKER_QUEUE_SIZE'

# SLURM waits KillWait (30 s by default) between the SIGTERM that ends a
# preempted job and its SIGKILL; draining must end well before, leaving
# time for the requeue request and the process's own exit.
_DEFAULT_DRAIN_TIMEOUT = 20.0
# events are small records; 10,000 of them hold a few MB at most, and an
# epoch publishes tens, so only a backend slower than training waits here
_DEFAULT_QUEUE_SIZE = 10_000

_H = TypeVar('_H')


def _positive(variable: str, text: str, kind: type[float] | type[int]) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise exceptions.DryTorchError(
            f'{variable}={text!r} is not a positive '
            f'{"number of seconds" if kind is float else "integer"}; '
            f'set it to e.g. {variable}=20, or unset it for the default.'
        )
    return value


def drain_timeout() -> float:
    """Seconds a stopping run waits for its trackers to catch up."""
    text = os.environ.get(DRAIN_TIMEOUT_VARIABLE, '').strip()
    if not text:
        return _DEFAULT_DRAIN_TIMEOUT
    return float(_positive(DRAIN_TIMEOUT_VARIABLE, text, float))


def queue_size() -> int:
    """Events that may wait for the trackers before training waits."""
    text = os.environ.get(QUEUE_SIZE_VARIABLE, '').strip()
    if not text:
        return _DEFAULT_QUEUE_SIZE
    return int(_positive(QUEUE_SIZE_VARIABLE, text, int))


@dataclasses.dataclass
class DeliveryReport:
    """What the worker of one run did, for the end-of-run report.

    Attributes:
        events: items put on the queue (events and progress updates).
        waited_s: seconds the training thread waited on a full queue.
        waits: how many times it waited.
        drain_s: seconds the stop waited for the queue to empty.
        busy_s: per handler name, seconds spent delivering to it.
        undelivered: per handler name, items it never received because
            the drain deadline passed.
        stuck: the handler that was still busy at the deadline, if any.

    """

    events: int = 0
    waited_s: float = 0.0
    waits: int = 0
    drain_s: float = 0.0
    busy_s: dict[str, float] = dataclasses.field(default_factory=dict)
    undelivered: dict[str, int] = dataclasses.field(default_factory=dict)
    stuck: str | None = None


_CLOSE = object()


class DeliveryWorker(Generic[_H]):
    """One run's queue of events and the thread that empties it.

    Args:
        deliver: called on the worker thread for each (handler, item); it
            must not raise (the dispatcher warns and drops the tracker).
        name_of: a handler's name, for the report.
        maxsize: the queue's bound.

    """

    def __init__(
        self,
        deliver: Callable[[_H, Any], None],
        name_of: Callable[[_H], str],
        maxsize: int,
    ) -> None:
        self._deliver = deliver
        self._name_of = name_of
        self._queue: queue.Queue[tuple[int, Any, Sequence[_H]]] = queue.Queue(
            maxsize
        )
        self._sequence = itertools.count(1)
        self._last_put = 0
        self._done = 0
        self._done_changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._serving: tuple[Sequence[_H], int] | None = None
        self._abandoned = False
        self.report = DeliveryReport()
        self.interrupt: BaseException | None = None

    def put(
        self, item: Any, handlers: Sequence[_H], timeout: float | None = None
    ) -> bool:
        """Queue ``item`` for ``handlers``; wait only if the queue is full.

        Returns False if ``timeout`` passed with the queue still full (the
        stop of a run gives one, so that a stuck tracker cannot hang it).
        """
        if self._thread is None:
            self._start()
        seq = next(self._sequence)
        entry = (seq, item, handlers)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            began = time.perf_counter()
            try:
                self._queue.put(entry, timeout=timeout)
            except queue.Full:
                return False
            finally:
                self.report.waited_s += time.perf_counter() - began
                self.report.waits += 1
        self._last_put = seq
        self.report.events += 1
        return True

    def on_worker(self) -> bool:
        """Whether the caller runs on the worker thread (a tracker's code)."""
        return threading.current_thread() is self._thread

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every item queued so far was delivered.

        Returns False if ``timeout`` passed first.  From the worker thread
        itself (a tracker asking for another) it returns at once: waiting
        there would wait for itself.
        """
        if self._thread is None or self.on_worker():
            return True
        target = self._last_put
        with self._done_changed:
            return self._done_changed.wait_for(
                lambda: self._done >= target or not self._alive(), timeout
            )

    def close(self, timeout: float) -> DeliveryReport:
        """Deliver what is queued within ``timeout`` seconds, then stop.

        Past the deadline the worker is abandoned where it is (it is a
        daemon thread: it cannot keep the process alive) and the report
        says which handler was busy and what each one missed.
        """
        began = time.perf_counter()
        if self._thread is None:
            return self.report
        deadline = began + timeout
        with contextlib.suppress(queue.Full):  # the join below times out
            self._queue.put((0, _CLOSE, ()), timeout=timeout)
        self._thread.join(max(deadline - time.perf_counter(), 0.0))
        self.report.drain_s = time.perf_counter() - began
        if self._thread.is_alive():
            self._abandon()
        return self.report

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._work, name='drytorch-trackers', daemon=True
        )
        self._thread.start()

    def _work(self) -> None:
        busy = self.report.busy_s
        while True:
            seq, item, handlers = self._queue.get()
            if item is _CLOSE:
                return
            for index, handler in enumerate(handlers):
                if self._abandoned:
                    return
                self._serving = (handlers, index)
                began = time.perf_counter()
                try:
                    self._deliver(handler, item)
                except BaseException as interrupt:  # noqa: BLE001 - relayed
                    # an exit or interrupt belongs to the training thread,
                    # which raises it at its next event or at the stop
                    if self.interrupt is None:
                        self.interrupt = interrupt
                name = self._name_of(handler)
                busy[name] = busy.get(name, 0.0) + time.perf_counter() - began
            self._serving = None
            with self._done_changed:
                self._done = seq
                self._done_changed.notify_all()

    def _abandon(self) -> None:
        self._abandoned = True
        missed = self.report.undelivered
        serving = self._serving
        if serving is not None:
            handlers, index = serving
            self.report.stuck = self._name_of(handlers[index])
            for handler in handlers[index:]:
                name = self._name_of(handler)
                missed[name] = missed.get(name, 0) + 1
        with self._queue.mutex:
            pending = list(self._queue.queue)
        for _, item, handlers in pending:
            if item is _CLOSE:
                continue
            for handler in handlers:
                name = self._name_of(handler)
                missed[name] = missed.get(name, 0) + 1
        with self._done_changed:
            self._done_changed.notify_all()
