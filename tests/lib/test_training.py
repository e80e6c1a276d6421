"""Tests of Trainer: epochs, validation, events, hooks, schedules, NaN."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from typing_extensions import override

import drytorch
from drytorch.core import exceptions, log_events, tracking
from drytorch.lib import hooks, schedulers
from drytorch.lib.learning import LearningSchema
from tests.helpers.kernel import RecordingTracker
from tests.lib import _support

pytestmark = pytest.mark.usefixtures('run')

FLOW = (
    log_events.StartTrainingEvent,
    log_events.StartEpochEvent,
    log_events.IterateBatchEvent,
    log_events.MetricEvent,
    log_events.EndEpochEvent,
    log_events.TerminatedTrainingEvent,
    log_events.EndTrainingEvent,
    log_events.LearningRateEvent,
)


def flow(recorder: RecordingTracker) -> list[str]:
    """The training events received, with the source of metric events."""
    names = []
    for event in recorder.events:
        if not isinstance(event, FLOW):
            continue
        name = type(event).__name__.removesuffix('Event')
        if isinstance(
            event, log_events.MetricEvent | log_events.StartEpochEvent
        ):
            name += f'({getattr(event, "source_name", "")}, {event.epoch})'
        names.append(name)
    return names


class PushRecorder(tracking.Tracker):
    """Takes the loops' progress updates, as a progress bar does."""

    def __init__(self) -> None:
        super().__init__()
        self.pushes: list[tuple[str, dict[str, float], int]] = []

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.IterateBatchEvent) -> None:
        def push(metrics: Mapping[str, Any], done: int) -> None:
            self.pushes.append((event.source_name, dict(metrics), done))

        event.push_updates.append(push)
        return super().notify(event)


def lr_log(trainer: drytorch.Trainer) -> list[float]:
    """A post-epoch hook's record of the rate each epoch trained with."""
    rates: list[float] = []
    trainer.post_epoch_hooks.hooks.insert(
        0, lambda t: rates.append(t.optimizer.param_groups[0]['lr'])
    )
    return rates


def test_train_counts_epochs_and_learns() -> None:
    trainer = _support.make_trainer()
    trainer.train(3)
    first = trainer.computed_metrics['MSE']
    assert trainer.model.epoch == 3
    trainer.train(2)
    assert trainer.model.epoch == 5
    assert trainer.computed_metrics['MSE'] < first


def test_train_until_stops_at_the_epoch() -> None:
    trainer = _support.make_trainer()
    trainer.train_until(4)
    assert trainer.model.epoch == 4
    with pytest.warns(exceptions.DryTorchWarning, match='already at epoch 4'):
        trainer.train_until(2)
    assert trainer.model.epoch == 4


def test_events_of_an_epoch_come_in_order(recorder: RecordingTracker) -> None:
    trainer = _support.make_trainer()
    trainer.add_validation(drytorch.DataLoader(_support.regression_data(), 8))
    trainer.train(2)
    assert flow(recorder) == [
        'StartTraining',
        'StartEpoch(Trainer, 1)',
        'IterateBatch',
        'Metric(Trainer, 1)',
        'IterateBatch',
        'Metric(Validation, 1)',
        'EndEpoch',
        'StartEpoch(Trainer, 2)',
        'IterateBatch',
        'Metric(Trainer, 2)',
        'IterateBatch',
        'Metric(Validation, 2)',
        'EndEpoch',
        'EndTraining',
    ]
    (start,) = recorder.of_type(log_events.StartTrainingEvent)
    assert (start.start_epoch, start.end_epoch) == (1, 2)


def test_validation_runs_every_interval(recorder: RecordingTracker) -> None:
    trainer = _support.make_trainer()
    trainer.add_validation(
        drytorch.DataLoader(_support.regression_data(), 8), interval=2
    )
    trainer.train(5)
    validated = [
        e.epoch
        for e in recorder.of_type(log_events.MetricEvent)
        if e.source_name == 'Validation'
    ]
    assert validated == [2, 4]
    assert trainer.validation is not None
    assert set(trainer.validation.computed_metrics) == {'MSE'}


def test_terminate_training_stops_after_the_epoch(
    recorder: RecordingTracker,
) -> None:
    trainer = _support.make_trainer()

    def stop_at_two(t: drytorch.Trainer) -> None:
        if t.model.epoch == 2:
            t.terminate_training('enough')

    trainer.post_epoch_hooks.register(stop_at_two)
    trainer.train(5)
    assert trainer.model.epoch == 2
    assert flow(recorder)[-3:] == [
        'EndEpoch',
        'TerminatedTraining',
        'EndTraining',
    ]
    (terminated,) = recorder.of_type(log_events.TerminatedTrainingEvent)
    assert (terminated.epoch, terminated.reason) == (2, 'enough')
    trainer.train(1)  # a later call trains again
    assert trainer.model.epoch == 3


def test_iterate_batch_pushes_running_metrics(
    experiment: drytorch.Experiment[Any],
) -> None:
    bar = PushRecorder()
    experiment.trackers.subscribe(bar)
    # 40 samples in batches of 8: 5 steps, a sync point every 2 steps
    trainer = _support.make_trainer(sync_every=2)
    metrics = []
    trainer.post_epoch_hooks.register(
        lambda t: metrics.append(t.computed_metrics)
    )
    trainer.train(2)
    pushes = [(done, m) for source, m, done in bar.pushes]
    assert [done for done, _ in pushes] == [2, 2, 1, 2, 2, 1]
    assert all(set(m) == {'MSE'} for _, m in pushes)
    # the last push of an epoch is the epoch's metric
    assert pushes[2][1] == metrics[0]
    assert pushes[5][1] == metrics[1]


def test_early_stopping_ends_training(recorder: RecordingTracker) -> None:
    trainer = _support.make_trainer(schema=LearningSchema.sgd(1e-4))
    trainer.add_validation(drytorch.DataLoader(_support.regression_data(), 8))
    # an improvement must be larger than any the tiny rate can make
    stopper = hooks.EarlyStoppingCallback(
        patience=2, start_from_epoch=1, min_delta=10.0
    )
    trainer.post_epoch_hooks.register(stopper)
    trainer.train(10)
    # epoch 1 sets the best; epochs 2 and 3 do not improve on it
    assert trainer.model.epoch == 3
    (terminated,) = recorder.of_type(log_events.TerminatedTrainingEvent)
    assert 'no improvement of MSE for 2 epochs' in terminated.reason


def test_early_stopping_waits_while_the_metric_improves() -> None:
    trainer = _support.make_trainer(schema=LearningSchema.sgd(0.05))
    stopper = hooks.EarlyStoppingCallback(
        patience=1, start_from_epoch=1, monitor=trainer
    )
    trainer.post_epoch_hooks.register(stopper)
    trainer.train(4)
    assert trainer.model.epoch == 4
    assert stopper.monitor.best_value == trainer.computed_metrics['MSE']


def test_reduce_lr_on_plateau_lowers_the_rate(
    recorder: RecordingTracker,
) -> None:
    trainer = _support.make_trainer(schema=LearningSchema.sgd(0.1))
    rates = lr_log(trainer)
    trainer.post_epoch_hooks.register(
        hooks.ReduceLROnPlateau(factor=0.5, patience=1, min_delta=10.0)
    )
    trainer.train(4)
    # epoch 1 sets the best; every later epoch is a plateau
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.025])
    changes = recorder.of_type(log_events.LearningRateEvent)
    assert [(e.epoch, e.base_lr) for e in changes] == [
        (2, pytest.approx(0.05)),
        (3, pytest.approx(0.025)),
        (4, pytest.approx(0.0125)),
    ]


def test_learning_rate_follows_the_schedule_each_epoch() -> None:
    schedule = schedulers.ExponentialScheduler(exp_decay=0.5)
    trainer = _support.make_trainer(
        schema=LearningSchema.sgd(0.1, scheduler=schedule)
    )
    rates = lr_log(trainer)
    trainer.train(3)
    assert rates == pytest.approx([0.1, 0.05, 0.025])


def test_update_learning_rate_emits_an_event_and_applies(
    recorder: RecordingTracker,
) -> None:
    schedule = schedulers.ExponentialScheduler(exp_decay=0.5)
    trainer = _support.make_trainer(
        schema=LearningSchema.sgd(0.1, scheduler=schedule)
    )
    rates = lr_log(trainer)
    trainer.train(2)
    trainer.update_learning_rate(base_lr=0.8)
    trainer.train(1)
    trainer.update_learning_rate(scheduler=schedulers.ConstantScheduler())
    trainer.train(1)
    assert rates == pytest.approx([0.1, 0.05, 0.8 * 0.25, 0.8])
    first, second = recorder.of_type(log_events.LearningRateEvent)
    assert (first.epoch, first.base_lr) == (2, 0.8)
    assert second.scheduler_name == 'ConstantScheduler()'


@pytest.mark.parametrize('sync_every', [None, 3, 100])
def test_a_non_finite_loss_names_the_epoch_and_batch(
    sync_every: int | None,
) -> None:
    # 800 samples in batches of 8: 100 batches an epoch; the loss turns
    # NaN at batch 7 of epoch 2 (the weights stay NaN from there on)
    counter = _support.CallCounter(bad_call=100 + 7)
    trainer = _support.make_trainer(
        data=_support.regression_data(800),
        loss=drytorch.Loss(counter, 'Counted'),
        sync_every=sync_every,
    )
    with pytest.raises(
        exceptions.ConvergenceError, match=r'nan at epoch 2, batch 7;'
    ):
        trainer.train(3)
    assert trainer.model.epoch == 1


def test_non_finite_loss_is_found_past_a_full_window() -> None:
    # the NaN sits in a component that does not reach the weights, so
    # only its own batch is bad; it is folded into the sums inside a
    # full window, long before the next sync point
    counter = _support.CallCounter(bad_call=5)
    watched = drytorch.Loss('MSE') + 0.0 * drytorch.Loss(counter, 'Watch')
    trainer = _support.make_trainer(
        data=_support.regression_data(800),
        loss=watched,
        sync_every=100,
    )
    with pytest.raises(exceptions.ConvergenceError, match='batch 5;'):
        trainer.train(1)


def test_trainer_refuses_what_is_not_a_loss_or_loader() -> None:
    model = drytorch.Model(_support.linear(), device='cpu')
    loader = drytorch.DataLoader(_support.regression_data(), 8)
    schema = LearningSchema.sgd(0.1)
    with pytest.raises(TypeError, match=r'must be a drytorch\.Loss'):
        drytorch.Trainer(
            model,
            loader=loader,
            loss=torch.nn.MSELoss(),  # type: ignore[arg-type]
            learning_schema=schema,
        )
    with pytest.raises(TypeError, match='got list'):
        drytorch.Trainer(
            model,
            loader=[1, 2],  # type: ignore[arg-type]
            loss=drytorch.Loss('MSE'),
            learning_schema=schema,
        )
