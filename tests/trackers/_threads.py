"""A run's events handed to a tracker from a thread that did not build it.

On rank zero the dispatcher notifies trackers on a background worker, so a
tracker is constructed on one thread and used on another.  These helpers
check exactly that, without the dispatcher: the events are created with a
publisher that only records them, then a plain ``threading.Thread``
notifies the tracker, which was built on the test's own thread.
"""

from __future__ import annotations

import datetime
import pathlib
import threading
from collections.abc import Iterable

from drytorch.core import log_events
from drytorch.core.tracking import Tracker
from tests.trackers._support import MODEL, SOURCES, value


def run_events(
    par_dir: pathlib.Path,
    epochs: Iterable[int],
    exp_name: str = 't',
    run_id: str = 'r',
) -> list[log_events.Event]:
    """Start, the metrics of ``epochs`` for every source, stop."""
    events: list[log_events.Event] = []
    log_events.Event.set_publisher(events.append)
    try:
        log_events.StartExperimentEvent(
            config={'lr': 0.5},
            exp_name=exp_name,
            run_ts=datetime.datetime.now(),
            run_id=run_id,
            par_dir=par_dir,
            tags=['tag-a', 'tag-b'],
        )
        for epoch in epochs:
            for source in SOURCES:
                log_events.MetricEvent(
                    model_name=MODEL,
                    source_name=source,
                    epoch=epoch,
                    metrics={'loss': value(epoch, source)},
                )
        log_events.StopExperimentEvent(exp_name=exp_name, run_id=run_id)
    finally:
        log_events.Event.set_publisher(None)
    return events


def notify_on_thread(
    tracker: Tracker, events: Iterable[log_events.Event]
) -> None:
    """Notify ``tracker`` of ``events`` from a new thread, in order.

    What the thread raised is raised again here, so that a tracker that
    only works on the thread that built it fails the test.
    """
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            for event in events:
                tracker.notify(event)
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    worker = threading.Thread(target=deliver, name='not-the-builder')
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), 'the tracker hangs on another thread'
    if errors:
        raise errors[0]
