"""Tests of Validation and Test: inference mode, events, stored outputs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import drytorch
from drytorch.core import log_events
from drytorch.lib import objectives
from tests.helpers.kernel import RecordingTracker
from tests.lib import _support

pytestmark = pytest.mark.usefixtures('run')


class ModeSpy(torch.nn.Linear):
    """A linear layer that records the autograd mode of each call."""

    def __init__(self) -> None:
        super().__init__(_support.IN_FEATURES, 1)
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.seen.append(
            (
                torch.is_inference_mode_enabled(),
                torch.is_grad_enabled(),
                self.training,
            )
        )
        return super().forward(inputs)


def _loader(n: int = 10, batch_size: int = 3) -> drytorch.DataLoader:
    return drytorch.DataLoader(_support.regression_data(n), batch_size)


def test_evaluation_runs_in_inference_mode() -> None:
    spy = ModeSpy()
    model = drytorch.Model(spy, name='spy', device='cpu')
    validation = drytorch.Validation(
        model, loader=_loader(), metric=drytorch.Loss('MSE')
    )
    validation()
    assert spy.seen == [(True, False, False)] * 4  # batches of 3, 3, 3, 1
    assert spy.training  # the module is put back in training mode
    assert torch.is_grad_enabled()


def test_training_runs_with_gradients_and_validation_without() -> None:
    spy = ModeSpy()
    trainer = _support.make_trainer(spy, data=_support.regression_data(8))
    trainer.add_validation(_loader(4, 4))
    trainer.train(1)
    assert spy.seen == [(False, True, True), (True, False, False)]


def test_test_is_announced_around_its_metrics(
    recorder: RecordingTracker,
) -> None:
    model = drytorch.Model(_support.linear(), name='net', device='cpu')
    test = drytorch.Test(
        model,
        loader=_loader(),
        metric=drytorch.Loss('MSE') | drytorch.Metric('MAE', 'MAE', False),
    )
    test()
    kinds = (
        log_events.StartTestEvent,
        log_events.IterateBatchEvent,
        log_events.MetricEvent,
        log_events.EndTestEvent,
    )
    events = [e for e in recorder.events if isinstance(e, kinds)]
    assert [type(e) for e in events] == list(kinds)
    start, iterate, metric, end = events
    assert start.model_name == end.model_name == metric.model_name == 'net'
    assert iterate.source_name == metric.source_name == 'Test'
    assert (iterate.n_iter, iterate.dataset_size) == (4, 10)
    assert set(metric.metrics) == {'MSE', 'MAE'}
    assert test.computed_metrics == metric.metrics


def test_test_ends_even_when_the_metric_fails(
    recorder: RecordingTracker,
) -> None:
    model = drytorch.Model(_support.linear(), name='net', device='cpu')
    broken = drytorch.Metric(lambda out, tgt: 'text', 'Broken')
    test = drytorch.Test(model, loader=_loader(), metric=broken)
    with pytest.raises(TypeError, match='Broken'):
        test()
    assert isinstance(recorder.events[-1], log_events.EndTestEvent)


def test_stored_outputs_are_detached_cpu_in_data_set_order() -> None:
    data = _support.regression_data(10)
    module = _support.linear()
    model = drytorch.Model(module, name='net', device='cpu')
    test = drytorch.Test(
        model,
        loader=drytorch.DataLoader(data, 3),
        metric=drytorch.Loss('MSE'),
        store_outputs=True,
    )
    test()
    assert len(test.outputs_list) == 10
    assert all(o.device.type == 'cpu' for o in test.outputs_list)
    assert not any(o.requires_grad for o in test.outputs_list)
    with torch.no_grad():
        expected = module(data.tensors[0])
    torch.testing.assert_close(torch.stack(test.outputs_list), expected)


def test_structured_outputs_are_split_per_sample() -> None:
    class TwoHeads(torch.nn.Module):
        def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            return {'sum': inputs.sum(1), 'first': inputs[:, 0]}

    data = TensorDataset(torch.arange(8.0).view(4, 2), torch.zeros(4))
    model = drytorch.Model(TwoHeads(), name='heads', device='cpu')
    test = drytorch.Test(
        model,
        loader=drytorch.DataLoader(data, 3),
        metric=drytorch.Metric(lambda out, tgt: out['sum'], 'Sum'),
        store_outputs=True,
    )
    test()
    assert [o['first'].item() for o in test.outputs_list] == [0, 2, 4, 6]
    assert [o['sum'].item() for o in test.outputs_list] == [1, 5, 9, 13]
    assert test.computed_metrics['Sum'] == pytest.approx(7.0)


def test_outputs_are_kept_only_when_asked() -> None:
    model = drytorch.Model(_support.linear(), name='net', device='cpu')
    test = drytorch.Test(model, loader=_loader(), metric=drytorch.Loss('MSE'))
    test()
    assert test.outputs_list == []


def test_validation_metrics_carry_the_models_epoch(
    recorder: RecordingTracker,
) -> None:
    trainer = _support.make_trainer()
    trainer.train(2)
    validation = drytorch.Validation(
        trainer.model,
        loader=_loader(),
        metric=drytorch.Metric(objectives.mae, 'MAE', False),
    )
    validation()
    event = recorder.of_type(log_events.MetricEvent)[-1]
    assert (event.source_name, event.epoch) == ('Validation', 2)


def test_a_diagnostic_computes_metrics_that_no_tracker_sees(
    recorder: RecordingTracker,
) -> None:
    model = drytorch.Model(_support.linear(), name='net', device='cpu')
    diagnostic = drytorch.Diagnostic(
        model,
        loader=drytorch.DataLoader(_support.regression_data(10), 4),
        metric=drytorch.Loss('MSE'),
    )
    diagnostic(store_outputs=True)
    assert set(diagnostic.computed_metrics) == {'MSE'}
    assert len(diagnostic.outputs_list) == 10
    assert not [
        e
        for e in recorder.of_type(log_events.MetricEvent)
        if e.source_name == diagnostic.name
    ]
    diagnostic()  # the constructor's choice again: nothing stored
    assert not diagnostic.store_outputs
