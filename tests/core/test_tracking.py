"""Trackers and the dispatcher: subscription, lookup, failure isolation."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
from typing_extensions import override

from drytorch import (
    Experiment,
    Tracker,
    extend_default_trackers,
    remove_all_default_trackers,
)
from drytorch.core import exceptions, log_events, tracking
from tests.helpers.kernel import FailingTracker, RecordingTracker


class OtherTracker(RecordingTracker):
    """A second tracker class (a subclass of RecordingTracker)."""


class UnrelatedTracker(Tracker):
    """A tracker that ignores everything."""

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)


def make_experiment(name: str = 'Exp') -> Experiment[Any]:
    return Experiment(None, name=name, par_dir='experiments')


class TestSubscription:
    def test_subscribe_by_class_name_and_by_keyword(self) -> None:
        exp = make_experiment()
        first, second = RecordingTracker(), RecordingTracker()
        exp.trackers.subscribe(first, backup=second)
        assert exp.trackers.named_trackers == {
            'RecordingTracker': first,
            'backup': second,
        }
        assert list(exp.trackers) == [first, second]
        assert len(exp.trackers) == 2

    def test_duplicate_name_is_refused_and_nothing_is_added(self) -> None:
        exp = make_experiment()
        first = RecordingTracker()
        exp.trackers.subscribe(first)
        other = OtherTracker()
        with pytest.raises(exceptions.TrackerAlreadyRegisteredError) as info:
            exp.trackers.subscribe(other, RecordingTracker=RecordingTracker())
        assert "'RecordingTracker'" in str(info.value)
        assert 'remove' in str(info.value)
        assert exp.trackers.named_trackers == {'RecordingTracker': first}

    def test_subscribing_a_non_tracker_is_a_type_error(self) -> None:
        exp = make_experiment()
        with pytest.raises(TypeError, match='not a Tracker'):
            exp.trackers.subscribe(logger=print)  # type: ignore[arg-type]
        assert exp.trackers.named_trackers == {}

    def test_remove_and_remove_all(self) -> None:
        exp = make_experiment()
        first, second = RecordingTracker(), OtherTracker()
        exp.trackers.subscribe(first, second)
        exp.trackers.remove('RecordingTracker')
        assert exp.trackers.named_trackers == {'OtherTracker': second}
        with pytest.raises(KeyError, match='OtherTracker'):
            exp.trackers.remove('RecordingTracker')
        exp.trackers.subscribe(first)
        exp.trackers.remove_all()
        assert exp.trackers.named_trackers == {}
        with exp.create_run():
            log_events.EndTrainingEvent(source_name='s')
        assert first.events == [] and second.events == []

    def test_removed_tracker_gets_no_more_events(self) -> None:
        exp = make_experiment()
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        with exp.create_run():
            log_events.EndTrainingEvent(source_name='before')
            exp.trackers.remove('RecordingTracker')
            log_events.EndTrainingEvent(source_name='after')
        assert recorder.names == ['StartExperimentEvent', 'EndTrainingEvent']

    def test_events_reach_trackers_in_subscription_order(self) -> None:
        order: list[str] = []

        class Named(Tracker):
            def __init__(self, name: str) -> None:
                self.name = name

            def notify(self, event: log_events.Event) -> None:
                if isinstance(event, log_events.EndTrainingEvent):
                    order.append(self.name)

        exp = make_experiment()
        exp.trackers.subscribe(c=Named('c'), a=Named('a'), b=Named('b'))
        with exp.create_run():
            log_events.EndTrainingEvent(source_name='s')
        assert order == ['c', 'a', 'b']


class TestDefaultTrackers:
    def test_new_experiments_subscribe_the_defaults(self) -> None:
        recorder = RecordingTracker()
        extend_default_trackers([recorder])
        exp = make_experiment()
        assert exp.trackers.named_trackers == {'RecordingTracker': recorder}
        with exp.create_run():
            pass
        assert recorder.names == [
            'StartExperimentEvent',
            'StopExperimentEvent',
        ]

    def test_remove_all_default_trackers(self) -> None:
        extend_default_trackers([RecordingTracker()])
        remove_all_default_trackers()
        assert make_experiment().trackers.named_trackers == {}

    def test_existing_experiments_keep_their_trackers(self) -> None:
        recorder = RecordingTracker()
        extend_default_trackers([recorder])
        exp = make_experiment()
        remove_all_default_trackers()
        assert exp.trackers.named_trackers == {'RecordingTracker': recorder}

    def test_extend_refuses_non_trackers(self) -> None:
        with pytest.raises(TypeError):
            extend_default_trackers([object()])  # type: ignore[list-item]


class TestGetCurrent:
    def test_returns_the_subscribed_instance(self) -> None:
        exp = make_experiment()
        recorder = RecordingTracker()
        exp.trackers.subscribe(custom_name=recorder)
        with exp.create_run():
            assert RecordingTracker.get_current() is recorder

    def test_prefers_the_exact_class_then_a_subclass(self) -> None:
        exp = make_experiment()
        sub = OtherTracker()
        exp.trackers.subscribe(sub)
        with exp.create_run():
            assert RecordingTracker.get_current() is sub
        exact = RecordingTracker()
        exp.trackers.subscribe(exact)
        with exp.create_run():
            assert RecordingTracker.get_current() is exact
            assert OtherTracker.get_current() is sub

    def test_not_used_names_the_class_and_the_subscribed(self) -> None:
        exp = make_experiment()
        exp.trackers.subscribe(RecordingTracker())
        with (
            exp.create_run(),
            pytest.raises(exceptions.TrackerNotUsedError) as info,
        ):
            UnrelatedTracker.get_current()
        message = str(info.value)
        assert 'UnrelatedTracker' in message
        assert 'RecordingTracker' in message
        assert 'subscribe' in message

    def test_without_a_run(self) -> None:
        exp = make_experiment()
        exp.trackers.subscribe(RecordingTracker())
        with pytest.raises(exceptions.NoActiveExperimentError) as info:
            RecordingTracker.get_current()
        assert 'RecordingTracker.get_current()' in str(info.value)
        with exp.create_run():
            pass
        with pytest.raises(exceptions.NoActiveExperimentError):
            RecordingTracker.get_current()


class TestFailingTrackers:
    def test_failure_is_warned_cleaned_up_and_unsubscribed(self) -> None:
        exp = make_experiment()
        failing = FailingTracker(on=log_events.EndTrainingEvent)
        healthy = RecordingTracker()
        exp.trackers.subscribe(failing, healthy)
        with exp.create_run() as run:
            with pytest.warns(tracking.TrackerExceptionWarning) as record:
                log_events.EndTrainingEvent(source_name='s')
                exp.trackers.flush()
            message = str(record[0].message)
            assert "'FailingTracker'" in message
            assert 'EndTrainingEvent' in message
            assert 'tracker backend is down' in message
            assert failing.clean_ups == 1
            assert 'FailingTracker' not in exp.trackers.named_trackers
            log_events.EndTestEvent(source_name='s', model_name='m')
        assert run.status == 'completed'
        assert exp.registry.get(run.id).status == 'completed'
        # the failing tracker saw nothing after its failure...
        assert failing.names == ['StartExperimentEvent', 'EndTrainingEvent']
        # ...and the healthy one saw everything
        assert healthy.names == [
            'StartExperimentEvent',
            'EndTrainingEvent',
            'EndTestEvent',
            'StopExperimentEvent',
        ]

    def test_failure_at_start_does_not_stop_the_run(self) -> None:
        exp = make_experiment()
        failing = FailingTracker(on=log_events.StartExperimentEvent)
        healthy = RecordingTracker()
        exp.trackers.subscribe(failing, healthy)
        with (
            pytest.warns(tracking.TrackerExceptionWarning),
            exp.create_run() as run,
        ):
            assert run.is_active
        assert run.status == 'completed'
        assert healthy.names[-1] == 'StopExperimentEvent'

    def test_failing_clean_up_is_warned_too(self) -> None:
        class BadCleanUp(FailingTracker):
            def clean_up(self) -> None:
                raise OSError('disk gone')

        exp = make_experiment()
        exp.trackers.subscribe(BadCleanUp(on=log_events.EndTrainingEvent))
        with exp.create_run():
            with pytest.warns(tracking.TrackerExceptionWarning) as record:
                log_events.EndTrainingEvent(source_name='s')
                exp.trackers.flush()
            messages = [str(w.message) for w in record]
            assert any('disk gone' in m for m in messages)
            assert exp.trackers.named_trackers == {}

    @pytest.mark.parametrize('error', [KeyboardInterrupt, SystemExit])
    def test_interrupts_pass_through(self, error: type[BaseException]) -> None:
        exp = make_experiment()
        failing = FailingTracker(on=log_events.EndTrainingEvent, error=error())
        exp.trackers.subscribe(failing)
        with pytest.raises(error), exp.create_run() as run:
            log_events.EndTrainingEvent(source_name='s')
        assert 'FailingTracker' in exp.trackers.named_trackers
        assert run.status == 'failed'
        assert exp.registry.get(run.id).status == 'failed'

    def test_interrupt_while_starting_leaves_no_run_behind(self) -> None:
        exp = make_experiment()
        failing = FailingTracker(
            on=log_events.StartExperimentEvent, error=KeyboardInterrupt()
        )
        exp.trackers.subscribe(failing)
        run = exp.create_run()
        # raised by the background worker, it reaches the training thread
        # at its next event, or when the run stops
        with pytest.raises(KeyboardInterrupt):
            run.start()
            log_events.EndTrainingEvent(source_name='s')
            run.stop()
        assert Experiment.current_run() is None
        assert run.status == 'failed'
        assert exp.registry.get(run.id).status == 'failed'
        assert failing.clean_ups == 1
        exp.trackers.remove('FailingTracker')
        with exp.create_run() as second:  # the next run can start
            assert second.is_active


class TestCleanUp:
    def test_clean_up_at_stop(self) -> None:
        exp = make_experiment()
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        with exp.create_run():
            assert recorder.clean_ups == 0
        assert recorder.clean_ups == 1

    def test_clean_up_when_the_run_body_raises(self) -> None:
        exp = make_experiment()
        recorder = RecordingTracker()
        exp.trackers.subscribe(recorder)
        with pytest.raises(ZeroDivisionError), exp.create_run() as run:
            _ = 1 / 0
        assert recorder.clean_ups == 1
        stop = recorder.events[-1]
        assert isinstance(stop, log_events.StopExperimentEvent)
        assert stop.status == 'failed'
        assert run.status == 'failed'
        assert exp.registry.get(run.id).status == 'failed'

    def test_documented_notify_pattern_cleans_up(self) -> None:
        """The seed's pattern: override notify, register, call super."""
        calls: list[str] = []

        class Documented(Tracker):
            @functools.singledispatchmethod
            @override
            def notify(self, event: log_events.Event) -> None:
                return super().notify(event)

            @notify.register
            def _(self, event: log_events.StopExperimentEvent) -> None:
                calls.append('stop handler')
                return super().notify(event)

            @override
            def clean_up(self) -> None:
                calls.append('clean_up')

        exp = make_experiment()
        exp.trackers.subscribe(Documented())
        with exp.create_run():
            assert calls == []
        assert calls == ['stop handler', 'clean_up']

    def test_tracker_without_notify_cannot_be_created(self) -> None:
        class Incomplete(Tracker):
            pass

        with pytest.raises(TypeError):
            Incomplete()  # type: ignore[abstract]


def test_warning_category_is_a_drytorch_warning() -> None:
    exp = make_experiment()
    exp.trackers.subscribe(FailingTracker(on=log_events.EndTrainingEvent))
    with exp.create_run(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        log_events.EndTrainingEvent(source_name='s')
        exp.trackers.flush()
    assert [w.category for w in caught] == [tracking.TrackerExceptionWarning]
    assert issubclass(
        tracking.TrackerExceptionWarning, exceptions.DryTorchWarning
    )
