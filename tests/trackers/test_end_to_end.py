"""Real training with several trackers, two of whose backends break."""

from __future__ import annotations

import pathlib
import shutil
import warnings

import pytest

pytest.importorskip('sqlalchemy', reason='sqlalchemy is not installed')
pytest.importorskip('tensorboard', reason='tensorboard is not installed')

import torch

from drytorch import (
    DataLoader,
    Experiment,
    LearningSchema,
    Loss,
    Model,
    Trainer,
)
from drytorch.core.tracking import TrackerExceptionWarning
from drytorch.trackers.csv import CSVDumper
from drytorch.trackers.sqlalchemy import SQLConnection
from drytorch.trackers.tensorboard import TensorBoard


def _data() -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 3, generator=generator)
    targets = inputs @ torch.tensor([[1.0], [2.0], [3.0]])
    return torch.utils.data.TensorDataset(inputs, targets)


def test_training_finishes_and_healthy_trackers_are_complete(
    tmp_path: pathlib.Path,
) -> None:
    torch.manual_seed(0)
    sql_dir = tmp_path / 'sql'
    csv = CSVDumper(par_dir=tmp_path / 'csv')
    exp: Experiment[None] = Experiment(None, name='e2e', par_dir=tmp_path)
    exp.trackers.subscribe(SQLConnection(par_dir=sql_dir), TensorBoard(), csv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', TrackerExceptionWarning)
        with exp.create_run('r') as run:
            model = Model(torch.nn.Linear(3, 1), name='lin')
            trainer = Trainer(
                model,
                loader=DataLoader(_data(), 16),
                loss=Loss('MSE'),
                learning_schema=LearningSchema.sgd(0.05),
            )
            trainer.add_validation(DataLoader(_data(), 32))
            trainer.train(2)
            exp.trackers.flush()  # the trackers run on a background worker
            shutil.rmtree(run.dir / 'tensorboard')
            shutil.rmtree(sql_dir)
            trainer.train(2)
            exp.trackers.flush()
            assert list(exp.trackers.named_trackers) == ['CSVDumper']
    dropped = sorted(
        str(w.message).split("'")[1]
        for w in caught
        if issubclass(w.category, TrackerExceptionWarning)
        and 'failed on' in str(w.message)
    )
    assert dropped == ['SQLConnection', 'TensorBoard']
    assert model.epoch == 4
    history = csv.load_metrics('lin')
    assert sorted(history) == ['Trainer', 'Validation']
    for epochs, metrics in history.values():
        assert epochs == [1, 2, 3, 4]
        assert metrics['MSE'][-1] < metrics['MSE'][0]
