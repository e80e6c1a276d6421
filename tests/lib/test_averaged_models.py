"""EMAModel and SWAModel: averaged weights, evaluated, saved, resumed."""

from __future__ import annotations

import os
import pathlib
import signal
from typing import Any

import pytest
import torch
from torch import nn

import drytorch
from drytorch.core import exceptions
from drytorch.lib.learning import LearningSchema
from drytorch.lib.models import EMAModel, SWAModel
from tests.lib import _support


class _SignalAt(nn.Module):
    """Identity that sends this process SIGUSR2 at one training pass."""

    def __init__(self, at: int | None) -> None:
        super().__init__()
        self.at, self.passes = at, 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.passes += 1
            if self.passes == self.at:
                os.kill(os.getpid(), signal.SIGUSR2)  # a real signal
        return inputs


def _network(signal_at: int | None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        _SignalAt(signal_at),
        nn.Linear(_support.IN_FEATURES, 4),
        nn.BatchNorm1d(4),
        nn.Linear(4, 1),
    )


def _build(kind: str, signal_at: int | None) -> drytorch.Trainer:
    network = _network(signal_at)
    if kind == 'ema':
        model: drytorch.Model = EMAModel(network, 'net', 'cpu', decay=0.9)
    else:
        model = SWAModel(network, 2, 'net', 'cpu')
    trainer = drytorch.Trainer(
        model,
        loader=drytorch.DataLoader(_support.regression_data(40), 8, seed=3),
        loss=drytorch.Loss('MSE'),
        learning_schema=LearningSchema.adam(0.05),
    )
    trainer.add_validation(
        drytorch.DataLoader(_support.regression_data(16, seed=1), 8)
    )
    return trainer


def _averaged(trainer: drytorch.Trainer) -> dict[str, torch.Tensor]:
    model = trainer.model
    assert isinstance(model, EMAModel | SWAModel)
    state = model.exec_averaged_module.state_dict()
    return {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize('kind', ['ema', 'swa'])
def test_a_preempted_run_resumes_the_average_exactly(
    tmp_path: pathlib.Path, kind: str
) -> None:
    experiment: drytorch.Experiment[Any] = drytorch.Experiment(
        None, name='Averages', par_dir=tmp_path
    )
    with experiment.create_run(run_id='full'):
        full = _build(kind, None)
        full.train(4)
        reference = _averaged(full)
        reference_val = dict(full.validation.computed_metrics)
    # 5 batches an epoch: the signal comes in epoch 3, after its 2nd step
    with (
        pytest.raises(exceptions.PreemptedExit),
        experiment.create_run(run_id='cut'),
    ):
        _build(kind, 5 + 5 + 2).train(4)
    with experiment.create_run(run_id='cut', resume=True):
        resumed = _build(kind, None)
        resumed.train(4)
        assert resumed.model.epoch == 4
        # resumed inside epoch 3: its last 3 steps and epoch 4's 5 ran here
        assert resumed.model.module[0].passes == 3 + 5
        got = _averaged(resumed)
        got_val = dict(resumed.validation.computed_metrics)
    assert got.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(got[name], value), name
    assert got_val == reference_val
    averaged = resumed.model.exec_averaged_module  # type: ignore[attr-defined]
    expected_steps = 4 * 5 if kind == 'ema' else 3  # SWA: epochs 2, 3, 4
    assert int(averaged.n_averaged) == expected_steps


def test_evaluations_run_the_average(tmp_path: pathlib.Path) -> None:
    experiment: drytorch.Experiment[Any] = drytorch.Experiment(
        None, name='Averages', par_dir=tmp_path
    )
    with experiment.create_run(run_id='r'):
        trainer = _build('ema', None)
        trainer.train(2)
        model = trainer.model
        data = _support.regression_data(16, seed=1)
        inputs, targets = data.tensors
        averaged = model.averaged_module.eval()  # type: ignore[attr-defined]
        with torch.no_grad():
            expected = torch.nn.functional.mse_loss(averaged(inputs), targets)
            trained = model.module.eval()
            other = torch.nn.functional.mse_loss(trained(inputs), targets)
        assert float(expected) != pytest.approx(float(other))
        assert trainer.validation.computed_metrics['MSE'] == pytest.approx(
            float(expected), rel=1e-6
        )


def test_swa_evaluates_the_trained_module_before_its_start(
    tmp_path: pathlib.Path,
) -> None:
    experiment: drytorch.Experiment[Any] = drytorch.Experiment(
        None, name='Averages', par_dir=tmp_path
    )
    with experiment.create_run(run_id='r'):
        trainer = _build('swa', None)
        trainer.train(1)
        model = trainer.model
        assert not model.uses_average()  # type: ignore[attr-defined]
        assert int(model.exec_averaged_module.n_averaged) == 0  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match='decay must be in'):
            EMAModel(nn.Linear(2, 2), 'other', 'cpu', decay=1.0)
