"""A tracker that never returns is given up; training and the others go on.

The stuck tracker waits on a ``threading.Event`` that only the test's end
opens, so what is checked does not depend on timing: with a stall timeout
of 0.2 s, the training thread must get through a full queue, a flush and
the stop, and every other tracker must receive every event, in order.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from typing_extensions import override

from drytorch.core import delivery, exceptions, log_events, tracking
from tests.core.test_background_trackers import (
    GatedTracker,
    PushingTracker,
    RecordingTracker,
    _experiment,
    _metric,
)

STALL = '0.2'


class HeldTracker(GatedTracker):
    """A gated tracker that notes the thread its call is held on."""

    def __init__(self, on: type[log_events.Event]) -> None:
        super().__init__()
        self.on = on
        self.held_on: threading.Thread | None = None

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        if isinstance(event, self.on):
            self.held_on = threading.current_thread()
            self.entered.set()
            self.gate.wait(30)  # where the warning must point
        self.threads.add(threading.current_thread().name)
        return super(GatedTracker, self).notify(event)  # records it


class HeldPusher(PushingTracker):
    """A tracker whose progress callback never returns."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def _push(self, metrics: Mapping[str, Any], batches_done: int) -> None:
        self.gate.wait(30)
        self.pushed.append((dict(metrics), batches_done))


@pytest.fixture
def held() -> Iterator[list[HeldTracker | HeldPusher]]:
    """Held trackers of a test; released at its end."""
    made: list[HeldTracker | HeldPusher] = []
    yield made
    for tracker in made:
        tracker.gate.set()


@pytest.fixture(autouse=True)
def _short_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(delivery.STALL_TIMEOUT_VARIABLE, STALL)


def _epochs(tracker: RecordingTracker) -> list[int]:
    return [e.epoch for e in tracker.of_type(log_events.MetricEvent)]


@pytest.mark.parametrize(
    'on',
    [log_events.StartExperimentEvent, log_events.MetricEvent],
    ids=['at-start', 'mid-run'],
)
def test_a_full_queue_behind_a_stuck_tracker_does_not_stop_training(
    monkeypatch: pytest.MonkeyPatch,
    held: list[HeldTracker | HeldPusher],
    on: type[log_events.Event],
) -> None:
    monkeypatch.setenv(delivery.QUEUE_SIZE_VARIABLE, '2')
    exp = _experiment()
    before, stuck, after = (
        RecordingTracker(),
        HeldTracker(on),
        RecordingTracker(),
    )
    held.append(stuck)
    exp.trackers.subscribe(before=before, stuck=stuck, after=after)
    with (
        pytest.warns(tracking.TrackerExceptionWarning) as record,
        exp.create_run() as run,
    ):
        for epoch in range(1, 21):  # ten times what the queue holds
            _metric(epoch, {'loss': float(epoch)})
        assert exp.trackers.flush(10)
        assert 'stuck' not in exp.trackers.named_trackers
    (warning,) = [w for w in record if 'has not returned' in str(w.message)]
    assert "'stuck'" in str(warning.message)
    assert delivery.STALL_TIMEOUT_VARIABLE in str(warning.message)
    assert warning.filename == __file__  # the tracker's own waiting line
    assert warning.message.tracker == 'stuck'
    assert run.status == 'completed'
    assert exp.registry.get(run.id).status == 'completed'
    for tracker in (before, after):
        assert _epochs(tracker) == list(range(1, 21))
        assert tracker.names[0] == 'StartExperimentEvent'
        assert tracker.names[-1] == 'StopExperimentEvent'
        assert tracker.clean_ups == 1
    report = exp.trackers.last_report
    assert set(report.stalled) == {'stuck'}
    assert report.stalled['stuck'] >= float(STALL)
    assert report.undelivered == {}
    # no clean-up while its call may still run; once released, the call
    # ends and its thread quits without taking anything more
    assert stuck.clean_ups == 0
    stuck.gate.set()
    assert stuck.held_on is not None
    stuck.held_on.join(10)
    assert not stuck.held_on.is_alive()
    assert isinstance(stuck.events[-1], on)
    assert len(stuck.of_type(on)) == 1


def test_a_flush_behind_a_stuck_tracker_returns(
    held: list[HeldTracker | HeldPusher],
) -> None:
    exp = _experiment()
    stuck, after = HeldTracker(log_events.MetricEvent), RecordingTracker()
    held.append(stuck)
    exp.trackers.subscribe(stuck=stuck, after=after)
    with (
        pytest.warns(
            tracking.TrackerExceptionWarning, match='has not returned'
        ),
        exp.create_run(),
    ):
        _metric(1, {'loss': 1.0})
        _metric(2, {'loss': 2.0})
        assert stuck.entered.wait(10)
        # what a checkpoint does before it writes
        assert exp.trackers.flush(10)
        assert _epochs(after) == [1, 2]
    assert after.names[-1] == 'StopExperimentEvent'


def test_a_stuck_progress_callback_drops_its_tracker_only(
    held: list[HeldTracker | HeldPusher],
) -> None:
    exp = _experiment()
    stuck, healthy = HeldPusher(), PushingTracker()
    held.append(stuck)
    exp.trackers.subscribe(stuck=stuck, healthy=healthy)
    with (
        pytest.warns(tracking.TrackerExceptionWarning, match="'stuck'"),
        exp.create_run() as run,
    ):
        event = log_events.IterateBatchEvent(
            source_name='train', batch_size=4, dataset_size=40, n_iter=None
        )
        event.update({'loss': 1.0}, 1)
        assert exp.trackers.flush(10)
        for done in (2, 3):
            event.update({'loss': float(done)}, done)
        _metric(1, {'loss': 3.0})
        assert exp.trackers.flush(10)
    assert 'stuck' not in exp.trackers.named_trackers
    assert run.status == 'completed'
    # the update in progress when the callback stuck may miss the healthy
    # tracker (it came after in that update); every later one reaches it
    assert [n for _, n in healthy.pushed][-2:] == [2, 3]
    assert _epochs(healthy) == [1]


def test_stall_timeout_variable_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(delivery.STALL_TIMEOUT_VARIABLE, '-1')
    with pytest.raises(exceptions.DryTorchError, match="'-1'"):
        delivery.stall_timeout()
    monkeypatch.delenv(delivery.STALL_TIMEOUT_VARIABLE)
    assert delivery.stall_timeout() > delivery.drain_timeout()
