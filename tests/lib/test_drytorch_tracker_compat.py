"""A tracker written against DRYTorch 0.1.0rc11's event fields runs here.

The tracker below reads only the fields and the progress callback that
DRYTorch documents, and counts progress the way DRYTorch's own progress bar
does (``n += n_processes``, the loop is over when ``n`` reaches
``n_iter``).  It must work unchanged on a real training, validation and
test.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from typing_extensions import override

import drytorch
from drytorch.core import exceptions, log_events
from drytorch.core.tracking import Tracker
from drytorch.distributed.preemption import watcher
from tests.lib import _support


class DRYTorchStyleTracker(Tracker):
    """Records what a DRYTorch tracker would read, field by field."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[Any, ...]] = []
        self.loops: list[dict[str, Any]] = []

    @functools.singledispatchmethod
    @override
    def notify(self, event: log_events.Event) -> None:
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartExperimentEvent) -> None:
        self.lines.append(
            (
                'start',
                event.exp_name,
                event.run_id,
                event.resumed,
                event.config,
                list(event.tags),
                event.run_ts.year > 2000,
                event.par_dir is not None,
            )
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.ModelRegistrationEvent) -> None:
        self.lines.append(('model', event.model_name, event.model_ts.year > 0))
        assert 'Linear' in event.architecture_repr
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.ActorRegistrationEvent) -> None:
        assert isinstance(event.metadata, dict)
        assert event.actor_ts.year > 0 and event.model_ts.year > 0
        self.lines.append(('actor', event.actor_name, event.model_name))
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartTrainingEvent) -> None:
        self.lines.append(
            (
                'train',
                event.source_name,
                event.model_name,
                event.start_epoch,
                event.end_epoch,
            )
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartEpochEvent) -> None:
        self.lines.append(('epoch', event.model_name, event.epoch))
        assert event.end_epoch in (None, 2)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndEpochEvent) -> None:
        self.lines.append(('end epoch', event.source_name, event.epoch))
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.IterateBatchEvent) -> None:
        loop = {
            'source': event.source_name,
            'batch_size': event.batch_size,
            'n_iter': event.n_iter,
            'dataset_size': event.dataset_size,
            'n': 0,
            'closed': False,
            'increments': [],
        }
        self.loops.append(loop)

        def update(metrics: Mapping[str, Any], n_processes: int) -> None:
            # DRYTorch's TqdmLogger: the last update reaches n_iter
            last = loop['n'] >= loop['n_iter'] - n_processes
            loop['n'] += n_processes
            loop['increments'].append(n_processes)
            loop['metrics'] = dict(metrics)
            if last:
                loop['closed'] = True

        event.push_updates.append(update)
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.MetricEvent) -> None:
        self.lines.append(
            (
                'metrics',
                event.model_name,
                event.source_name,
                event.epoch,
                sorted(event.metrics),
            )
        )
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.LearningRateEvent) -> None:
        self.lines.append(('lr', event.model_name, event.epoch))
        _ = event.base_lr, event.scheduler_name
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndTrainingEvent) -> None:
        self.lines.append(('end training', event.source_name))
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StartTestEvent) -> None:
        self.lines.append(('test', event.source_name, event.model_name))
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.EndTestEvent) -> None:
        self.lines.append(('end test', event.source_name, event.model_name))
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.SaveModelEvent) -> None:
        self.lines.append(('save', event.model_name, event.epoch))
        assert event.definition and event.location
        return super().notify(event)

    @notify.register
    def _(self, event: log_events.StopExperimentEvent) -> None:
        self.lines.append(('stop', event.exp_name, event.run_id))
        return super().notify(event)


@pytest.fixture
def tracked(tmp_path: Any) -> tuple[DRYTorchStyleTracker, str]:
    tracker = DRYTorchStyleTracker()
    experiment: drytorch.Experiment[Any] = drytorch.Experiment(
        {'lr': 0.05},
        name='Compat',
        par_dir=tmp_path / 'experiments',
        tags=['t'],
    )
    experiment.trackers.subscribe(tracker)
    with experiment.create_run(run_id='r'):
        # 40 samples in batches of 8 (5 batches), a sync every 2 steps
        trainer = _support.make_trainer(sync_every=2)
        trainer.add_validation(
            drytorch.DataLoader(_support.regression_data(12, seed=1), 5)
        )
        trainer.train(2)
        drytorch.Test(
            trainer.model,
            loader=drytorch.DataLoader(_support.regression_data(9), 4),
            metric=drytorch.Loss('MSE'),
        )()
    experiment.trackers.flush()
    return tracker, 'r'


def test_progress_counted_as_drytorch_does_ends_every_loop(
    tracked: tuple[DRYTorchStyleTracker, str],
) -> None:
    tracker, _ = tracked
    trainer_loops = [x for x in tracker.loops if x['source'] == 'Trainer']
    assert [x['n_iter'] for x in trainer_loops] == [5, 5]
    for loop in tracker.loops:
        # every loop's increments add up to its length, and the bar closes
        assert loop['n'] == loop['n_iter'], loop
        assert loop['closed'], loop
        assert set(loop['metrics']) == {'MSE'}
    sizes = sorted(
        {(x['dataset_size'], x['batch_size']) for x in tracker.loops}
    )
    assert sizes == [(9, 4), (12, 5), (40, 8)]


def test_lifecycle_fields_read_as_in_drytorch(
    tracked: tuple[DRYTorchStyleTracker, str],
) -> None:
    tracker, run_id = tracked
    lines = tracker.lines
    assert lines[0] == (
        'start',
        'Compat',
        run_id,
        False,
        {'lr': 0.05},
        ['t'],
        True,
        True,
    )
    assert ('model', 'net', True) in lines
    assert ('train', 'Trainer', 'net', 1, 2) in lines
    assert [x[2] for x in lines if x[0] == 'epoch'] == [1, 2]
    epochs = [x[1:] for x in lines if x[0] == 'metrics']
    assert ('net', 'Trainer', 1, ['MSE']) in epochs
    assert ('net', 'Trainer', 2, ['MSE']) in epochs
    assert ('end training', 'Trainer') in lines
    assert any(x[0] == 'test' and x[2] == 'net' for x in lines)
    assert lines[-1] == ('stop', 'Compat', run_id)


class _FlagAt(torch.nn.Module):
    """Identity that raises the preemption flag at one training pass."""

    def __init__(self, at: int | None) -> None:
        super().__init__()
        self.at, self.passes = at, 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.passes += 1
            if self.passes == self.at:
                watcher.request()
        return inputs


def test_a_resumed_epoch_still_counts_up_to_n_iter(tmp_path: Any) -> None:
    """Preempted in epoch 2 after 3 of 5 batches, then resumed."""
    experiment: drytorch.Experiment[Any] = drytorch.Experiment(
        None, name='Compat', par_dir=tmp_path / 'experiments'
    )

    def attempt(flag_at: int | None) -> DRYTorchStyleTracker:
        tracker = DRYTorchStyleTracker()
        experiment.trackers.subscribe(compat=tracker)
        try:
            with experiment.create_run(run_id='r', resume=flag_at is None):
                module = torch.nn.Sequential(
                    _FlagAt(flag_at), _support.linear()
                )
                _support.make_trainer(module, sync_every=1).train(2)
        finally:
            experiment.trackers.remove('compat')
        return tracker

    with pytest.raises(exceptions.PreemptedExit):
        attempt(flag_at=5 + 3)  # the third batch of epoch 2
    resumed = attempt(flag_at=None)
    loops = [x for x in resumed.loops if x['source'] == 'Trainer']
    assert len(loops) == 1
    (loop,) = loops
    assert loop['n_iter'] == 5
    assert loop['n'] == 5 and loop['closed']
    assert loop['increments'][0] == 4  # the 3 done before, and the 4th
