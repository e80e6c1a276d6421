"""Trackers on rank zero's background worker: order, snapshots, back-pressure,
drain deadline, failures (in notify and in progress callbacks), interrupts.

Nothing here measures time: a tracker held on a ``threading.Event`` shows
that the training thread does not wait for it, deterministically.
"""

from __future__ import annotations

import functools
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import pytest
from typing_extensions import override

from drytorch import Experiment, Tracker, extend_default_trackers
from drytorch.core import delivery, exceptions, log_events, tracking
from tests.helpers.kernel import RecordingTracker as _Recording


class Interval(NamedTuple):
    """A metric value with fields of its own."""

    low: float
    high: float


class RecordingTracker(_Recording):
    """The test double, on the background worker like a user's tracker."""

    immediate = False


class GatedTracker(RecordingTracker):
    """Records events once its gate opens; notes the thread it ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.threads: set[str] = set()

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        self.entered.set()
        self.gate.wait(30)
        self.threads.add(threading.current_thread().name)
        return super().notify(event)


class ImmediateRecorder(_Recording):
    """A recorder that asks to stay on the training thread."""

    immediate = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        self.threads.add(threading.current_thread().name)
        return super().notify(event)


class PushingTracker(RecordingTracker):
    """Registers a progress callback that fails at its ``fail_at`` call."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.pushed: list[tuple[dict[str, Any], int]] = []

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        if isinstance(event, log_events.IterateBatchEvent):
            event.push_updates.append(self._push)
        return super().notify(event)

    def _push(self, metrics: Mapping[str, Any], batches_done: int) -> None:
        if batches_done == self.fail_at:
            raise ValueError('progress backend refused the update')
        self.pushed.append((dict(metrics), batches_done))


def _experiment(name: str = 'Bg') -> Experiment[Any]:
    return Experiment(None, name=name, par_dir='experiments')


@pytest.fixture
def gate_closed() -> Iterator[list[GatedTracker]]:
    """Gated trackers made by a test; their gates open at the end."""
    made: list[GatedTracker] = []
    yield made
    for tracker in made:
        tracker.gate.set()


def _metric(epoch: int, metrics: dict[str, float]) -> log_events.MetricEvent:
    return log_events.MetricEvent(
        model_name='m', source_name='train', epoch=epoch, metrics=metrics
    )


def test_publishing_does_not_wait_for_a_busy_tracker(
    gate_closed: list[GatedTracker],
) -> None:
    exp = _experiment()
    slow, now = GatedTracker(), ImmediateRecorder()
    gate_closed.append(slow)
    exp.trackers.subscribe(slow, now)
    with exp.create_run():
        assert slow.entered.wait(10)  # held on the start event
        for epoch in (1, 2, 3):
            _metric(epoch, {'loss': 1 / epoch})
        # the training thread went on: the immediate tracker has them all
        assert [e.epoch for e in now.of_type(log_events.MetricEvent)] == [
            1,
            2,
            3,
        ]
        assert slow.events == []
        slow.gate.set()
        assert exp.trackers.flush(10)
        assert [e.epoch for e in slow.of_type(log_events.MetricEvent)] == [
            1,
            2,
            3,
        ]
    assert slow.names[-1] == 'StopExperimentEvent'
    assert slow.threads == {'drytorch-trackers'}
    assert now.threads == {threading.current_thread().name}


def test_events_carry_a_snapshot_of_what_they_were_given() -> None:
    exp = _experiment()
    recorder = RecordingTracker()
    exp.trackers.subscribe(recorder)
    interval = Interval(0.1, 0.9)
    per_class = np.array([1.0, 2.0])
    metrics: dict[str, Any] = {
        'loss': 1.0,
        'interval': interval,
        'per_class': per_class,
    }
    metadata: dict[str, Any] = {'optimizer': {'lr': 0.1}}
    with exp.create_run():
        _metric(1, metrics)
        log_events.ActorRegistrationEvent(
            actor_name='a',
            actor_ts=log_events.datetime.datetime(2026, 1, 1),
            model_name='m',
            model_ts=log_events.datetime.datetime(2026, 1, 1),
            metadata=metadata,
        )
        metrics['loss'] = 99.0  # the caller reuses its objects
        per_class[:] = -1.0
        metadata['optimizer']['lr'] = 99.0
    (event,) = recorder.of_type(log_events.MetricEvent)
    assert event.metrics['loss'] == 1.0
    assert event.metrics['interval'] == Interval(0.1, 0.9)
    assert list(event.metrics['per_class']) == [1.0, 2.0]
    (actor,) = recorder.of_type(log_events.ActorRegistrationEvent)
    assert actor.metadata == {'optimizer': {'lr': 0.1}}


def test_a_full_queue_makes_training_wait_and_the_wait_is_reported(
    monkeypatch: pytest.MonkeyPatch,
    gate_closed: list[GatedTracker],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(delivery.QUEUE_SIZE_VARIABLE, '2')
    exp = _experiment()
    slow = GatedTracker()
    gate_closed.append(slow)
    exp.trackers.subscribe(slow)
    published: list[int] = []

    def train() -> None:
        for epoch in range(1, 6):
            _metric(epoch, {'loss': float(epoch)})
            published.append(epoch)

    with exp.create_run():
        assert slow.entered.wait(10)
        loop = threading.Thread(target=train)
        loop.start()
        loop.join(0.5)
        # two events fit in the queue; the loop waits, dropping nothing
        assert loop.is_alive()
        assert published == [1, 2]
        slow.gate.set()
        loop.join(10)
        assert published == [1, 2, 3, 4, 5]
    epochs = [e.epoch for e in slow.of_type(log_events.MetricEvent)]
    assert epochs == [1, 2, 3, 4, 5]
    report = exp.trackers.last_report
    assert report.waits >= 1
    assert report.waited_s > 0
    # the drytorch logger's own handler writes the report to stderr
    assert 'Training waited' in capsys.readouterr().err


def test_drain_deadline_names_what_was_not_delivered(
    monkeypatch: pytest.MonkeyPatch, gate_closed: list[GatedTracker]
) -> None:
    monkeypatch.setenv(delivery.DRAIN_TIMEOUT_VARIABLE, '0.5')
    exp = _experiment()
    stuck, after = GatedTracker(), RecordingTracker()
    gate_closed.append(stuck)
    exp.trackers.subscribe(stuck, after)
    with (
        pytest.warns(tracking.TrackerExceptionWarning) as record,
        exp.create_run() as run,
    ):
        _metric(1, {'loss': 1.0})
    message = str(record[0].message)
    assert "'GatedTracker'" in message
    assert delivery.DRAIN_TIMEOUT_VARIABLE in message
    report = exp.trackers.last_report
    assert report.stuck == 'GatedTracker'
    # start (where it is stuck), the metric and the stop
    assert report.undelivered == {'GatedTracker': 3, 'RecordingTracker': 3}
    assert after.clean_ups == 1  # its files are closed all the same
    assert run.status == 'completed'
    assert exp.registry.get(run.id).status == 'completed'


def test_drain_timeout_variable_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(delivery.DRAIN_TIMEOUT_VARIABLE, 'soon')
    with pytest.raises(exceptions.DryTorchError, match="'soon'"):
        delivery.drain_timeout()
    monkeypatch.setenv(delivery.QUEUE_SIZE_VARIABLE, '0')
    with pytest.raises(exceptions.DryTorchError, match='positive'):
        delivery.queue_size()


@pytest.mark.parametrize('immediate', [False, True], ids=['worker', 'now'])
def test_failing_progress_callback_drops_only_its_tracker(
    immediate: bool,
) -> None:
    exp = _experiment()
    failing, healthy = PushingTracker(fail_at=2), PushingTracker()
    failing.immediate = immediate  # type: ignore[misc]
    exp.trackers.subscribe(failing=failing, healthy=healthy)
    with (
        pytest.warns(tracking.TrackerExceptionWarning) as record,
        exp.create_run() as run,
    ):
        event = log_events.IterateBatchEvent(
            source_name='train', batch_size=4, dataset_size=40, n_iter=None
        )
        for done in (1, 2, 3):
            event.update({'loss': float(done)}, done)
    message = str(record[0].message)
    assert "'failing'" in message
    assert 'progress backend refused the update' in message
    assert run.status == 'completed'
    assert exp.registry.get(run.id).status == 'completed'
    assert failing.pushed == [({'loss': 1.0}, 1)]
    assert failing.clean_ups >= 1
    assert 'failing' not in exp.trackers.named_trackers
    assert [n for _, n in healthy.pushed] == [1, 2, 3]


def test_failure_warning_points_at_the_failing_line() -> None:
    class Broken(Tracker):
        @functools.singledispatchmethod
        @override
        def notify(self, event: log_events.Event) -> None:
            if isinstance(event, log_events.EndTrainingEvent):
                raise KeyError('missing column')  # the line to find
            return super().notify(event)

    exp = _experiment()
    exp.trackers.subscribe(Broken())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with exp.create_run():
            log_events.EndTrainingEvent(source_name='s')
    (warning,) = [
        w
        for w in caught
        if issubclass(w.category, tracking.TrackerExceptionWarning)
    ]
    with open(__file__, encoding='utf-8') as source:
        lines = source.read().splitlines()
    line = next(
        i + 1 for i, text in enumerate(lines) if '# the line to find' in text
    )
    assert (warning.filename, warning.lineno) == (__file__, line)
    assert warning.message.filename == __file__
    assert warning.message.lineno == line
    assert f'{__file__}:{line}' in str(warning.message)


def test_get_current_sees_every_earlier_event() -> None:
    exp = _experiment()
    recorder = RecordingTracker()
    exp.trackers.subscribe(recorder)
    with exp.create_run():
        for epoch in range(1, 51):
            _metric(epoch, {'loss': float(epoch)})
        found = RecordingTracker.get_current()
        assert found is recorder
        assert len(found.of_type(log_events.MetricEvent)) == 50


@pytest.mark.parametrize('error', [KeyboardInterrupt, SystemExit])
def test_interrupt_in_a_background_tracker_reaches_the_training(
    error: type[BaseException],
) -> None:
    class Exiting(RecordingTracker):
        @functools.singledispatchmethod
        @override
        def notify(self, event: log_events.Event) -> None:
            super().notify(event)
            if isinstance(event, log_events.EndTrainingEvent):
                raise error()

    exp = _experiment()
    witness = RecordingTracker()
    exp.trackers.subscribe(Exiting(), witness=witness)
    with pytest.raises(error), exp.create_run() as run:
        log_events.EndTrainingEvent(source_name='s')
    assert run.status == 'failed'
    assert exp.registry.get(run.id).status == 'failed'
    # the trackers are told the same status the registry holds
    (stop,) = witness.of_type(log_events.StopExperimentEvent)
    assert stop.status == 'failed'


class TestDefaultsLikeSubscribe:
    def test_two_trackers_of_one_class_are_refused_with_what_to_do(
        self,
    ) -> None:
        first = RecordingTracker()
        extend_default_trackers([first])
        with pytest.raises(exceptions.TrackerAlreadyRegisteredError) as info:
            extend_default_trackers([RecordingTracker()])
        assert 'extend_default_trackers({' in str(info.value)
        with pytest.raises(exceptions.TrackerAlreadyRegisteredError):
            extend_default_trackers([ImmediateRecorder(), ImmediateRecorder()])
        assert dict(tracking.DEFAULT_TRACKERS) == {'RecordingTracker': first}

    def test_named_defaults_keep_both(self) -> None:
        first, second = RecordingTracker(), RecordingTracker()
        extend_default_trackers([first])
        extend_default_trackers({'second': second})
        exp = _experiment()
        assert exp.trackers.named_trackers == {
            'RecordingTracker': first,
            'second': second,
        }
        with exp.create_run():
            pass
        assert first.names == second.names != []

    def test_subscribing_a_default_class_again_says_what_to_do(self) -> None:
        extend_default_trackers([RecordingTracker()])
        exp = _experiment()
        with pytest.raises(exceptions.TrackerAlreadyRegisteredError) as info:
            exp.trackers.subscribe(RecordingTracker())
        assert 'subscribe(my_name=' in str(info.value)


def test_a_stuck_tracker_on_a_full_queue_cannot_hang_the_stop(
    monkeypatch: pytest.MonkeyPatch, gate_closed: list[GatedTracker]
) -> None:
    monkeypatch.setenv(delivery.DRAIN_TIMEOUT_VARIABLE, '0.3')
    monkeypatch.setenv(delivery.QUEUE_SIZE_VARIABLE, '1')
    exp = _experiment()
    stuck = GatedTracker()
    gate_closed.append(stuck)
    exp.trackers.subscribe(stuck)
    with (
        pytest.warns(tracking.TrackerExceptionWarning, match='GatedTracker'),
        exp.create_run() as run,
    ):
        assert stuck.entered.wait(10)
        _metric(1, {'loss': 1.0})  # fills the queue
    assert run.status == 'completed'
    assert exp.trackers.last_report.stuck == 'GatedTracker'


def test_a_tracker_finds_its_peers_while_the_stop_drains() -> None:
    """A tracker that calls get_current() on events still queued when the
    run's block ends (as a seed-style tracker that saves a final plot on
    the stop would) finds the other trackers."""

    class Asking(RecordingTracker):
        found: list[str]

        def __init__(self) -> None:
            super().__init__()
            self.found = []

        @functools.singledispatchmethod
        @override
        def notify(self, event: log_events.Event) -> None:
            if isinstance(
                event,
                log_events.MetricEvent | log_events.StopExperimentEvent,
            ):
                peer = GatedTracker.get_current()
                self.found.append(type(peer).__name__)
            return super().notify(event)

    exp = _experiment()
    slow, asking = GatedTracker(), Asking()
    exp.trackers.subscribe(slow, asking)
    with exp.create_run():
        for epoch in (1, 2, 3):
            _metric(epoch, {'loss': 1.0})
        # opens while the stop drains (or just before: either way, the
        # asking tracker gets the metrics and the stop after the run's
        # block has ended)
        threading.Timer(0.3, slow.gate.set).start()
    assert asking.found == ['GatedTracker'] * 4
    assert [e.epoch for e in asking.of_type(log_events.MetricEvent)] == [
        1,
        2,
        3,
    ]


def test_one_tracker_is_not_subscribed_under_two_names() -> None:
    exp = _experiment()
    tracker = RecordingTracker()
    with pytest.raises(exceptions.TrackerSubscribedTwiceError, match="'x'"):
        exp.trackers.subscribe(x=tracker, y=tracker)
    exp.trackers.subscribe(x=tracker)
    with pytest.raises(exceptions.TrackerSubscribedTwiceError):
        exp.trackers.subscribe(y=tracker)
    with pytest.raises(exceptions.TrackerSubscribedTwiceError):
        extend_default_trackers({'a': tracker, 'b': tracker})
    assert exp.trackers.all_names() == ['x']


def test_the_stop_waits_one_drain_deadline_not_two(
    monkeypatch: pytest.MonkeyPatch, gate_closed: list[GatedTracker]
) -> None:
    """A stuck tracker with a full queue: flush, stop event and drain share
    the deadline (two of them would outlast SLURM's grace time)."""
    deadline = 3.0
    monkeypatch.setenv(delivery.DRAIN_TIMEOUT_VARIABLE, str(deadline))
    monkeypatch.setenv(delivery.QUEUE_SIZE_VARIABLE, '1')
    exp = _experiment()
    stuck = GatedTracker()
    gate_closed.append(stuck)
    exp.trackers.subscribe(stuck)
    run = exp.create_run().start()
    assert stuck.entered.wait(10)
    _metric(1, {'loss': 1.0})  # fills the queue
    began = time.monotonic()
    with pytest.warns(tracking.TrackerExceptionWarning):
        run.stop()
    took = time.monotonic() - began
    # generous: the bug took two deadlines (6 s)
    assert took < deadline + 2.5, took
    report = exp.trackers.last_report
    # the start it is stuck on, the metric, and the stop never queued
    assert report.undelivered == {'GatedTracker': 3}
    assert report.busy_s['GatedTracker'] >= deadline
