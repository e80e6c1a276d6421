"""Events: frozen records that publish themselves to the running run."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
from typing import Any

import pytest

from drytorch import Experiment
from drytorch.core import exceptions, log_events
from tests.helpers.kernel import RecordingTracker

NOW = datetime.datetime(2026, 5, 29, 12, 0, 47)


def every_event() -> list[tuple[type[log_events.Event], dict[str, Any]]]:
    """One valid set of arguments for each event class."""
    return [
        (
            log_events.StartExperimentEvent,
            {'config': None, 'exp_name': 'e', 'run_ts': NOW, 'run_id': 'r'},
        ),
        (log_events.StopExperimentEvent, {'exp_name': 'e', 'run_id': 'r'}),
        (
            log_events.ModelRegistrationEvent,
            {'model_name': 'm', 'model_ts': NOW, 'architecture_repr': 'M()'},
        ),
        (
            log_events.ActorRegistrationEvent,
            {
                'actor_name': 'a',
                'actor_ts': NOW,
                'model_name': 'm',
                'model_ts': NOW,
                'metadata': {},
            },
        ),
        (
            log_events.SaveModelEvent,
            {
                'model_name': 'm',
                'definition': 'd',
                'location': 'l',
                'epoch': 1,
            },
        ),
        (
            log_events.LoadModelEvent,
            {
                'model_name': 'm',
                'definition': 'd',
                'location': 'l',
                'epoch': 1,
            },
        ),
        (
            log_events.StartTrainingEvent,
            {
                'source_name': 's',
                'model_name': 'm',
                'start_epoch': 1,
                'end_epoch': 3,
            },
        ),
        (
            log_events.StartEpochEvent,
            {'source_name': 's', 'model_name': 'm', 'epoch': 1},
        ),
        (
            log_events.EndEpochEvent,
            {'source_name': 's', 'model_name': 'm', 'epoch': 1},
        ),
        (
            log_events.IterateBatchEvent,
            {
                'source_name': 's',
                'batch_size': 4,
                'dataset_size': 10,
                'n_iter': 3,
            },
        ),
        (
            log_events.TerminatedTrainingEvent,
            {
                'source_name': 's',
                'model_name': 'm',
                'epoch': 2,
                'reason': 'early stopping',
            },
        ),
        (log_events.EndTrainingEvent, {'source_name': 's'}),
        (log_events.StartTestEvent, {'source_name': 's', 'model_name': 'm'}),
        (log_events.EndTestEvent, {'source_name': 's', 'model_name': 'm'}),
        (
            log_events.MetricEvent,
            {
                'model_name': 'm',
                'source_name': 's',
                'epoch': 1,
                'metrics': {'loss': 0.5},
            },
        ),
        (
            log_events.LearningRateEvent,
            {'model_name': 'm', 'source_name': 's', 'epoch': 1},
        ),
    ]


EVENTS = every_event()
EVENT_IDS = [cls.__name__ for cls, _ in EVENTS]


def test_every_listed_event_is_exported() -> None:
    exported = set(log_events.__all__) - {'Event'}
    assert exported == set(EVENT_IDS)


@pytest.mark.parametrize(('cls', 'kwargs'), EVENTS, ids=EVENT_IDS)
def test_event_outside_a_run_raises(
    cls: type[log_events.Event], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(exceptions.NoActiveExperimentError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert cls.__name__ in message
    assert 'create_run' in message


@pytest.mark.parametrize(('cls', 'kwargs'), EVENTS, ids=EVENT_IDS)
def test_event_in_a_run_reaches_trackers_and_is_frozen(
    experiment: Experiment[Any],
    recorder: RecordingTracker,
    cls: type[log_events.Event],
    kwargs: dict[str, Any],
) -> None:
    with experiment.create_run():
        event = cls(**kwargs)
        experiment.trackers.flush()  # trackers run on a background worker
        received = recorder.events[-1]
        if cls is log_events.IterateBatchEvent:
            # a copy whose progress callbacks run on the worker
            assert type(received) is cls
            for name in kwargs:
                assert getattr(received, name) == getattr(event, name)
        else:
            assert received is event
        field = next(iter(kwargs))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, field, kwargs[field])


def test_events_after_the_run_stops_raise(
    experiment: Experiment[Any], recorder: RecordingTracker
) -> None:
    with experiment.create_run():
        pass
    count = len(recorder.events)
    with pytest.raises(exceptions.NoActiveExperimentError):
        log_events.EndTrainingEvent(source_name='late')
    assert len(recorder.events) == count


def test_run_publishes_start_and_stop_with_run_details(
    experiment: Experiment[Any], recorder: RecordingTracker
) -> None:
    experiment.tags.append('baseline')
    with experiment.create_run() as run:
        experiment.trackers.flush()
        start = recorder.events[0]
    stop = recorder.events[-1]
    assert isinstance(start, log_events.StartExperimentEvent)
    assert start.config == {'lr': 0.1}
    assert start.exp_name == 'Exp'
    assert start.run_id == run.id
    assert start.resumed is False
    assert start.attempt == 1
    assert start.tags == ['baseline']
    assert start.par_dir == experiment.par_dir
    assert start.run_dir == experiment.par_dir / 'Exp' / 'runs' / run.id
    assert start.run_dir == run.dir
    assert isinstance(start.run_ts, datetime.datetime)
    assert isinstance(stop, log_events.StopExperimentEvent)
    assert (stop.exp_name, stop.run_id, stop.status) == (
        'Exp',
        run.id,
        'completed',
    )
    assert not stop.preempted


def test_iterate_batch_update_calls_every_push_callback(
    experiment: Experiment[Any],
) -> None:
    pushed: list[tuple[str, dict[str, float], int]] = []

    with experiment.create_run():
        event = log_events.IterateBatchEvent(
            source_name='train', batch_size=8, dataset_size=80, n_iter=10
        )
        event.push_updates.append(
            lambda metrics, done: pushed.append(('a', dict(metrics), done))
        )
        event.push_updates.append(
            lambda metrics, done: pushed.append(('b', dict(metrics), done))
        )
        event.update({'loss': 0.25}, 3)
        event.update({'loss': 0.125}, 10)
    assert pushed == [
        ('a', {'loss': 0.25}, 3),
        ('b', {'loss': 0.25}, 3),
        ('a', {'loss': 0.125}, 10),
        ('b', {'loss': 0.125}, 10),
    ]


def test_iterate_batch_callbacks_added_by_trackers(
    experiment: Experiment[Any],
) -> None:
    pushed: list[tuple[dict[str, float], int]] = []

    class Progress(RecordingTracker):
        def notify(self, event: log_events.Event) -> None:
            if isinstance(event, log_events.IterateBatchEvent):
                event.push_updates.append(
                    lambda metrics, done: pushed.append((dict(metrics), done))
                )
            super().notify(event)

    experiment.trackers.subscribe(Progress())
    with experiment.create_run():
        event = log_events.IterateBatchEvent(
            source_name='train',
            batch_size=None,
            dataset_size=None,
            n_iter=None,
        )
        event.update({'acc': 0.5}, 1)
    assert pushed == [({'acc': 0.5}, 1)]


def test_stop_event_preempted_flag() -> None:
    seen: list[log_events.StopExperimentEvent] = []
    log_events.Event.set_publisher(seen.append)  # type: ignore[arg-type]
    try:
        event = log_events.StopExperimentEvent(
            exp_name='e', run_id='r', status='preempted'
        )
    finally:
        log_events.Event.set_publisher(None)
    assert seen == [event]
    assert event.preempted


def test_start_event_defaults_are_documented_values() -> None:
    log_events.Event.set_publisher(lambda event: None)
    try:
        event = log_events.StartExperimentEvent(
            config=None, exp_name='e', run_ts=NOW, run_id='r'
        )
    finally:
        log_events.Event.set_publisher(None)
    assert event.par_dir == pathlib.Path('experiments')
    assert event.run_dir == pathlib.Path('experiments', 'e', 'runs', 'r')
    assert (event.resumed, event.tags, event.attempt) == (False, [], 1)
