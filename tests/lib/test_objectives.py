"""Tests of losses, metrics, their composition and their accumulation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import drytorch
from drytorch.core import exceptions, log_events
from drytorch.lib import objectives
from drytorch.lib.objectives import MetricAccumulator
from tests.helpers.kernel import RecordingTracker
from tests.lib import _support

# Two samples with errors 1 and 3 (outputs minus targets).
OUTPUTS = torch.tensor([[1.0], [3.0]])
TARGETS = torch.tensor([[0.0], [0.0]])


def test_composed_loss_reports_the_total_and_each_component() -> None:
    loss = drytorch.Loss('MSE') ** 2 + 0.5 * drytorch.Loss('MAE')
    values = loss.compute(OUTPUTS, TARGETS)
    # by hand: MSE = (1 + 9) / 2 = 5, MAE = (1 + 3) / 2 = 2
    # total = 5 ** 2 + 0.5 * 2 = 26
    assert set(loss.names) == {'Loss', 'MSE', 'MAE'}
    assert values['MSE'].item() == pytest.approx(5.0)
    assert values['MAE'].item() == pytest.approx(2.0)
    assert values['Loss'].item() == pytest.approx(26.0)
    assert loss.criterion(values) is values['Loss']
    assert repr(loss) == "Loss('(([MSE] ** 2) + (0.5 x [MAE]))')"


@pytest.mark.parametrize(
    ('build', 'expected'),
    [
        (lambda mse, mae: mse - mae, 3.0),
        (lambda mse, mae: mse / mae, 2.5),
        (lambda mse, mae: 10 - mse, 5.0),
        (lambda mse, mae: mse * mae + 1, 11.0),
        (lambda mse, mae: 2 * (mse + mae), 14.0),
    ],
)
def test_loss_arithmetic(build, expected: float) -> None:
    loss = build(drytorch.Loss('MSE'), drytorch.Loss('MAE'))
    assert loss.compute(OUTPUTS, TARGETS)['Loss'].item() == pytest.approx(
        expected
    )


@pytest.mark.usefixtures('run')
def test_training_logs_the_total_and_each_component(
    recorder: RecordingTracker,
) -> None:
    loss = drytorch.Loss('MSE') ** 2 + 0.5 * drytorch.Loss('MAE')
    data = TensorDataset(OUTPUTS, TARGETS)
    # a module that returns its input: the outputs above, exactly
    identity = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(identity.weight)
    identity.weight.requires_grad_(False)
    model = drytorch.Model(identity, name='identity', device='cpu')
    validation = drytorch.Validation(
        model, loader=drytorch.DataLoader(data, 2), metric=loss
    )
    validation()
    (event,) = recorder.of_type(log_events.MetricEvent)
    assert event.metrics == pytest.approx(
        {'Loss': 26.0, 'MSE': 5.0, 'MAE': 2.0}
    )


def test_metrics_collect_with_or() -> None:
    error = drytorch.Metric(objectives.mae, 'Error', higher_is_better=False)
    biggest = drytorch.Metric(
        lambda out, tgt: (out - tgt).abs().max(), 'Biggest', False
    )
    collection = error | biggest
    assert isinstance(collection, drytorch.MetricCollection)
    assert collection.names == ('Error', 'Biggest')
    values = collection.compute(OUTPUTS, TARGETS)
    assert values['Error'].item() == pytest.approx(2.0)
    assert values['Biggest'].item() == pytest.approx(3.0)
    assert collection.higher_is_better == {'Error': False, 'Biggest': False}
    both = drytorch.Loss('MSE') | collection
    assert both.names == ('MSE', 'Error', 'Biggest')


def test_collecting_two_objectives_of_one_name_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"same name \['MSE'\]"):
        drytorch.Loss('MSE') | drytorch.Metric(objectives.mse, 'MSE')


def test_per_sample_and_scalar_functions_give_the_batch_mean() -> None:
    per_sample = drytorch.Metric(objectives.mse, 'PerSample')
    scalar = drytorch.Metric(
        lambda out, tgt: (out - tgt).square().mean(), 'Scalar'
    )
    number = drytorch.Metric(lambda out, tgt: 5, 'Number')
    for metric in (per_sample, scalar, number):
        (value,) = metric.compute(OUTPUTS, TARGETS).values()
        assert value.ndim == 0
        assert value.item() == pytest.approx(5.0)


def test_an_objective_must_return_a_tensor() -> None:
    metric = drytorch.Metric(lambda out, tgt: 'five', 'Text')
    with pytest.raises(TypeError, match="'Text' returned str"):
        metric.compute(OUTPUTS, TARGETS)


def test_a_non_scalar_loss_names_its_shape() -> None:
    loss = drytorch.Loss(lambda out, tgt: torch.zeros(4, 3), 'Wide')
    with pytest.raises(exceptions.LossNotScalarError, match=r'\(4, 3\)'):
        loss.compute(OUTPUTS, TARGETS)


def test_unknown_built_in_lists_the_built_ins() -> None:
    with pytest.raises(ValueError, match=r"'MSEE'.*'Accuracy', 'CrossEnt"):
        drytorch.Loss('MSEE')


@pytest.mark.parametrize(
    ('name', 'per_sample', 'targets'),
    [
        ('MSE', objectives.mse, torch.randn(6, 2)),
        ('MAE', objectives.mae, torch.randn(6, 2)),
        ('CrossEntropy', objectives.cross_entropy, torch.arange(6) % 2),
    ],
)
def test_built_ins_by_name_equal_the_per_sample_functions_mean(
    name: str, per_sample, targets: torch.Tensor
) -> None:
    outputs = torch.randn(6, 2)
    value = drytorch.Loss(name).compute(outputs, targets)[name]
    expected = per_sample(outputs, targets).mean()
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize('fn', ['MSE', 'MAE', objectives.mse, objectives.mae])
def test_regression_losses_refuse_to_broadcast(fn: object) -> None:
    loss = drytorch.Loss(fn)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r'\(4, 1\) and targets \(4,\)'):
        loss.compute(torch.zeros(4, 1), torch.zeros(4))


def _uneven_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(10, 2, generator=generator),
        torch.randn(10, 2, generator=generator),
    )


@pytest.mark.parametrize('sync_every', [1, 2, None])
@pytest.mark.usefixtures('run')
def test_means_over_uneven_batches_equal_the_full_data_mean(
    sync_every: int | None,
) -> None:
    data = _uneven_data()
    identity = torch.nn.Identity()
    model = drytorch.Model(identity, name='identity', device='cpu')
    per_sample = drytorch.Metric(objectives.mse, 'PerSample')
    batch_mean = drytorch.Metric(
        lambda out, tgt: (out - tgt).square().mean(), 'BatchMean'
    )
    evaluation = drytorch.Validation(
        model,
        loader=drytorch.DataLoader(data, 4),  # batches of 4, 4 and 2
        metric=per_sample | batch_mean,
        sync_every=sync_every,
    )
    evaluation()
    inputs, targets = data.tensors
    expected = (inputs - targets).square().mean().item()
    assert evaluation.computed_metrics['PerSample'] == pytest.approx(expected)
    assert evaluation.computed_metrics['BatchMean'] == pytest.approx(expected)


def test_accumulator_folds_full_windows_exactly() -> None:
    accumulator = MetricAccumulator(('b', 'a'), torch.device('cpu'), 3)
    assert accumulator.names == ('a', 'b')  # fixed order on every rank
    batches = [(1.0, 10.0, 4), (2.0, 20.0, 4), (3.0, 30.0, 1)] * 3
    for a, b, n in batches:
        accumulator.add({'a': torch.tensor(a), 'b': torch.tensor(b)}, n)
    assert accumulator.fold() is None
    total = sum(n for _, _, n in batches)
    assert accumulator.count == total
    means = (accumulator.sums / accumulator.count).tolist()
    expected_a = sum(a * n for a, _, n in batches) / total
    assert means == pytest.approx([expected_a, 10 * expected_a])


def test_accumulator_remembers_the_first_non_finite_step() -> None:
    accumulator = MetricAccumulator(('loss',), torch.device('cpu'), 4)
    for step in range(10):
        value = float('nan') if step in (5, 8) else 1.0
        accumulator.add({'loss': torch.tensor(value)}, 2)
    # the window holding step 5 was folded inside add(), not at a sync
    assert accumulator.fold() == 5
    accumulator.reset()
    accumulator.add({'loss': torch.tensor(1.0)}, 2)
    assert accumulator.fold() is None


def test_accumulator_state_continues_an_epoch() -> None:
    first = MetricAccumulator(('loss',), torch.device('cpu'))
    for value in (1.0, 2.0):
        first.add({'loss': torch.tensor(value)}, 3)
    second = MetricAccumulator(('loss',), torch.device('cpu'))
    second.load_state_dict(first.state_dict())
    second.add({'loss': torch.tensor(4.0)}, 2)
    second.fold()
    assert second.count == 8
    assert second.sums.item() == pytest.approx(3 + 6 + 8)
    other = MetricAccumulator(('acc',), torch.device('cpu'))
    with pytest.raises(ValueError, match=r"metrics \('loss',\)"):
        other.load_state_dict(first.state_dict())


@pytest.mark.usefixtures('run')
def test_metric_names_of_a_trainer_are_the_loss_names(
    recorder: RecordingTracker,
) -> None:
    loss = drytorch.Loss('MSE') + drytorch.Loss('MAE')
    trainer = _support.make_trainer(loss=loss)
    trainer.train(1)
    (event,) = recorder.of_type(log_events.MetricEvent)
    assert set(event.metrics) == {'Loss', 'MSE', 'MAE'}
    assert event.metrics['Loss'] == pytest.approx(
        event.metrics['MSE'] + event.metrics['MAE']
    )
