"""A background worker that hands events to trackers in publication order.

Trackers used to run on rank zero's training thread, where a backend that
takes 5 ms per event (a database, a server, a network file system) stalled
every rank at the next collective.  The training thread now only puts the
event on a bounded queue; one daemon thread delivers the events, in the
order they were published, to the trackers that were subscribed when each
was published.  The queue is bounded so that memory cannot grow without
limit: when a backend cannot keep up, the training thread waits, and the
time it waited is counted so that the run can report it.

A tracker that never returns (a server that stopped answering with no
timeout of its own) must not stop training either: once one call has run
longer than the stall timeout while the training thread waits for the
worker (a full queue, a flush before a checkpoint), the call is left
behind on its thread, the handler is reported to ``on_stall`` (the
dispatcher unsubscribes the tracker), and a new thread takes over the
queue where the old one stood.  A slow tracker only makes training wait;
a stuck one is given up.

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
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from drytorch.core import exceptions

__all__ = [
    'DRAIN_TIMEOUT_VARIABLE',
    'QUEUE_SIZE_VARIABLE',
    'STALL_TIMEOUT_VARIABLE',
    'DeliveryReport',
    'DeliveryWorker',
    'drain_timeout',
    'queue_size',
    'stall_timeout',
]

DRAIN_TIMEOUT_VARIABLE = 'DRYTORCH_TRACKER_DRAIN_TIMEOUT'
QUEUE_SIZE_VARIABLE = 'DRYTORCH_TRACKER_QUEUE_SIZE'
STALL_TIMEOUT_VARIABLE = 'DRYTORCH_TRACKER_STALL_TIMEOUT'

# SLURM waits KillWait (30 s by default) between the SIGTERM that ends a
# preempted job and its SIGKILL; draining must end well before, leaving
# time for the requeue request and the process's own exit.
_DEFAULT_DRAIN_TIMEOUT = 20.0
# events are small records; 10,000 of them hold a few MB at most, and an
# epoch publishes tens, so only a backend slower than training waits here
_DEFAULT_QUEUE_SIZE = 10_000
# longer than any backend's own patience (W&B waits 90 s for its service):
# a call past it is stuck, not slow
_DEFAULT_STALL_TIMEOUT = 120.0
# how often a waiting training thread looks for a stuck call
_CHECK_EVERY_S = 0.25

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


def stall_timeout() -> float:
    """Seconds one tracker call may run before it is given up."""
    text = os.environ.get(STALL_TIMEOUT_VARIABLE, '').strip()
    if not text:
        return _DEFAULT_STALL_TIMEOUT
    return float(_positive(STALL_TIMEOUT_VARIABLE, text, float))


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
        stalled: handlers given up during the run, each with how long its
            call had run.

    """

    events: int = 0
    waited_s: float = 0.0
    waits: int = 0
    drain_s: float = 0.0
    busy_s: dict[str, float] = dataclasses.field(default_factory=dict)
    undelivered: dict[str, int] = dataclasses.field(default_factory=dict)
    stuck: str | None = None
    stalled: dict[str, float] = dataclasses.field(default_factory=dict)


_CLOSE = object()


class _Serving(NamedTuple):
    """The call in progress: which item, which handler, since when."""

    seq: int
    item: Any
    handlers: Sequence[Any]
    index: int
    began: float


class DeliveryWorker(Generic[_H]):
    """One run's queue of events and the thread that empties it.

    Args:
        deliver: called on the worker thread for each (handler, item); it
            must not raise (the dispatcher warns and drops the tracker).
        name_of: a handler's name, for the report.
        maxsize: the queue's bound.
        on_stall: called on the waiting thread with a handler whose call
            was given up, how long it had run and the file and line where
            it waits; it must not raise.
        stall_after: seconds after which a call is given up; None: never.

    """

    def __init__(
        self,
        deliver: Callable[[_H, Any], None],
        name_of: Callable[[_H], str],
        maxsize: int,
        on_stall: Callable[[_H, float, tuple[str, int]], None] | None = None,
        stall_after: float | None = None,
    ) -> None:
        self._deliver = deliver
        self._name_of = name_of
        self._on_stall = on_stall
        self._stall_after = stall_after
        self._lock = threading.Lock()  # guards _serving and _generation
        self._put_lock = threading.Lock()
        self._generation = 0
        self._queue: queue.Queue[tuple[int, Any, Sequence[_H]]] = queue.Queue(
            maxsize
        )
        self._sequence = itertools.count(1)
        self._last_put = 0
        self._done = 0
        self._done_changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._serving: _Serving | None = None
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
        with self._put_lock:  # queue order is sequence order, any thread
            if self._thread is None:
                self._start()
            seq = next(self._sequence)
            entry = (seq, item, handlers)
            try:
                self._queue.put_nowait(entry)
            except queue.Full:
                began = time.perf_counter()
                try:
                    if not self._put_waiting(entry, timeout):
                        self.missed(handlers)
                        return False
                finally:
                    self.report.waited_s += time.perf_counter() - began
                    self.report.waits += 1
            self._last_put = seq
            self.report.events += 1
        return True

    def missed(self, handlers: Sequence[_H]) -> None:
        """Count an item that ``handlers`` will never receive."""
        missed = self.report.undelivered
        for handler in handlers:
            name = self._name_of(handler)
            missed[name] = missed.get(name, 0) + 1

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
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._done_changed:
                if self._done_changed.wait_for(
                    lambda: self._done >= target or not self._alive(),
                    _slice(deadline),
                ):
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._leave_stuck_call()

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

    def _put_waiting(self, entry: Any, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._queue.put(entry, timeout=_slice(deadline))
            except queue.Full:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self._leave_stuck_call()
            else:
                return True

    def _leave_stuck_call(self) -> None:
        """Give up a call that ran past the stall timeout; go on without it.

        The call stays on its thread (nothing can stop it); that thread
        sees a newer generation when the call returns, and quits.  A new
        thread delivers the rest of the item to the next handlers, then
        the queue.
        """
        limit = self._stall_after
        if limit is None or self._abandoned:
            return
        with self._lock:
            serving = self._serving
            if serving is None:
                return
            ran = time.monotonic() - serving.began
            if ran < limit:
                return
            self._generation += 1
            self._serving = None
            generation = self._generation
        handler = serving.handlers[serving.index]
        self.report.stalled[self._name_of(handler)] = ran
        if self._on_stall is not None:
            self._on_stall(handler, ran, _where(self._thread))
        rest = serving._replace(index=serving.index + 1)
        self._start(generation, rest)

    def _start(
        self, generation: int = 0, rest: _Serving | None = None
    ) -> None:
        self._thread = threading.Thread(
            target=self._work,
            args=(generation, rest),
            name='drytorch-trackers',
            daemon=True,
        )
        self._thread.start()

    def _work(self, generation: int, rest: _Serving | None) -> None:
        if rest is not None and not self._serve(
            generation, rest.seq, rest.item, rest.handlers, rest.index
        ):
            return
        while True:
            seq, item, handlers = self._queue.get()
            if item is _CLOSE:
                return
            if not self._serve(generation, seq, item, handlers, 0):
                return

    def _serve(
        self,
        generation: int,
        seq: int,
        item: Any,
        handlers: Sequence[_H],
        start: int,
    ) -> bool:
        """Deliver ``item`` from ``handlers[start]`` on; False: retired."""
        busy = self.report.busy_s
        for index in range(start, len(handlers)):
            handler = handlers[index]
            with self._lock:
                if self._generation != generation or self._abandoned:
                    return False
                began = time.monotonic()
                self._serving = _Serving(seq, item, handlers, index, began)
            try:
                self._deliver(handler, item)
            except BaseException as interrupt:  # noqa: BLE001 - relayed
                # an exit or interrupt belongs to the training thread,
                # which raises it at its next event or at the stop
                if self.interrupt is None:
                    self.interrupt = interrupt
            name = self._name_of(handler)
            busy[name] = busy.get(name, 0.0) + time.monotonic() - began
        with self._lock:
            if self._generation != generation:
                return False
            self._serving = None
        with self._done_changed:
            self._done = max(self._done, seq)
            self._done_changed.notify_all()
        return True

    def _abandon(self) -> None:
        self._abandoned = True
        with self._lock:
            serving = self._serving
        if serving is not None:
            handlers, index = serving.handlers, serving.index
            stuck = self._name_of(handlers[index])
            self.report.stuck = stuck
            busy = self.report.busy_s  # the call still running counts too
            busy[stuck] = busy.get(stuck, 0.0) + (
                time.monotonic() - serving.began
            )
            self.missed(handlers[index:])
        with self._queue.mutex:
            pending = list(self._queue.queue)
        for _, item, handlers in pending:
            if item is not _CLOSE:
                self.missed(handlers)
        with self._done_changed:
            self._done_changed.notify_all()


def _slice(deadline: float | None) -> float:
    """How long to wait before looking for a stuck call again."""
    if deadline is None:
        return _CHECK_EVERY_S
    return max(min(_CHECK_EVERY_S, deadline - time.monotonic()), 0.0)


def _where(thread: threading.Thread | None) -> tuple[str, int]:
    """File and line where ``thread`` is now, outside the standard library.

    The innermost frame is usually a lock or a socket of the standard
    library; the first frame out of it is the code that waits.
    """
    frames = sys._current_frames()
    frame = frames.get(thread.ident) if thread and thread.ident else None
    stdlib = sysconfig.get_paths()['stdlib']
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(stdlib):
            return filename, frame.f_lineno
        frame = frame.f_back
    return '<unknown>', 0
