"""Bad input gives a clear error that names the value at fault."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import drytorch
from drytorch.core import exceptions
from drytorch.lib import schedulers
from drytorch.lib.learning import LearningSchema
from tests.lib import _support

INPUTS = torch.randn(8, _support.IN_FEATURES)


@pytest.mark.parametrize(
    ('data', 'match'),
    [
        (TensorDataset(INPUTS), r'pairs, got a Tensor\.'),
        (
            TensorDataset(INPUTS, torch.zeros(8, 1), torch.zeros(8)),
            'pairs, got a tuple of 3 items',
        ),
    ],
)
@pytest.mark.usefixtures('run')
def test_loader_items_that_are_not_pairs(
    data: TensorDataset, match: str
) -> None:
    trainer = _support.make_trainer(data=data)
    with pytest.raises(ValueError, match=match):
        trainer.train(1)


@pytest.mark.usefixtures('run')
def test_targets_of_the_wrong_shape_for_a_regression_loss() -> None:
    # (8,) targets against (batch, 1) outputs would silently broadcast
    trainer = _support.make_trainer(data=TensorDataset(INPUTS, torch.zeros(8)))
    with pytest.raises(
        ValueError, match=r'outputs of shape \(8, 1\) and targets of shape'
    ) as caught:
        trainer.train(1)
    assert '(8,)' in str(caught.value)


@pytest.mark.usefixtures('run')
def test_targets_of_the_wrong_shape_for_cross_entropy() -> None:
    classes = torch.zeros(8, 2, dtype=torch.long)  # one-hot-like, not indices
    trainer = _support.make_trainer(
        torch.nn.Linear(_support.IN_FEATURES, 5),
        data=TensorDataset(INPUTS, classes),
        loss=drytorch.Loss('CrossEntropy'),
    )
    with pytest.raises(
        ValueError, match=r'shape \(8, 5\) and targets of shape \(8, 2\)'
    ):
        trainer.train(1)


@pytest.mark.usefixtures('run')
def test_a_loss_that_returns_a_non_scalar() -> None:
    def wide(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs - targets).square().expand(-1, 3)

    trainer = _support.make_trainer(loss=drytorch.Loss(wide, 'Wide'))
    with pytest.raises(
        exceptions.LossNotScalarError, match=r"'Wide'.*shape \(8, 3\)"
    ):
        trainer.train(1)


@pytest.mark.parametrize(
    'scheduler',
    [
        schedulers.ConstantScheduler(),
        schedulers.CosineScheduler(10).with_warmup(2),
        schedulers.StepScheduler([2, 4]),
    ],
)
def test_a_scheduler_with_a_negative_epoch(
    scheduler: schedulers.AbstractScheduler,
) -> None:
    with pytest.raises(ValueError, match=r'epoch must be >= 0.*got -1'):
        scheduler(0.1, -1)
    schema = LearningSchema.sgd(0.1, scheduler=scheduler)
    with pytest.raises(ValueError, match='got -3'):
        schema.learning_rates(-3)


def test_an_unknown_optimizer_argument() -> None:
    with pytest.raises(
        TypeError,
        match=r"Adam got an unknown argument 'bettas'\. Did you mean 'betas'",
    ):
        LearningSchema.adam(bettas=(0.9, 0.99))


def test_an_optimizer_argument_out_of_range() -> None:
    with pytest.raises(ValueError, match=r'betas=\(1\.5, 0\.999\)'):
        LearningSchema.adam(betas=(1.5, 0.999))


@pytest.mark.usefixtures('run')
def test_bad_training_arguments_are_named() -> None:
    trainer = _support.make_trainer()
    with pytest.raises(ValueError, match='n_epochs must be >= 0, got -2'):
        trainer.train(-2)
    with pytest.raises(ValueError, match='interval must be >= 1, got 0'):
        trainer.add_validation(trainer.loader, interval=0)
    with pytest.raises(ValueError, match='sync_every must be >= 1, got 0'):
        _support.make_trainer(name='other', sync_every=0)
