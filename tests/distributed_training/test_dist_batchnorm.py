"""BatchNorm under DDP: evaluation reports the saved model's metrics.

Two gloo ranks train an MLP with BatchNorm and dropout; each rank updates
its running statistics with its own batches, so the ranks' buffers drift
apart within an epoch.  Rank zero's module is the one the checkpoints hold,
so validation must evaluate every shard with rank zero's buffers: its
metrics then equal those of the checkpoint evaluated in one process.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import drytorch
from drytorch import Experiment
from tests.distributed_training import _bn_worker as worker
from tests.helpers.kernel import isolated_kernel
from tests.helpers.multiprocess import run_distributed

TOLERANCE = 1e-6  # float32 forward passes, float64 sums: rounding only


@pytest.fixture(scope='module')
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of two ranks returned, launched once for the module."""
    root = tmp_path_factory.mktemp('batchnorm')
    cwd = root / 'cwd'
    cwd.mkdir()
    result = run_distributed(
        2,
        func=worker.train_with_batchnorm,
        args=(str(root / 'experiments'),),
        env={'DRYTORCH_INIT_MODE': 'none'},
        cwd=cwd,
        timeout=120,
    ).check()
    return result.values


def _saved_module_state(path: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location='cpu', weights_only=False)
    return state['model']['module']


def test_the_ranks_buffers_drift_apart_during_training(
    ranks: list[dict[str, Any]],
) -> None:
    """The premise: without a broadcast the ranks would disagree."""
    zero, one = (r['buffers_before_validation'] for r in ranks)
    assert not torch.allclose(zero['1.running_mean'], one['1.running_mean'])


def test_validation_reports_the_metrics_of_the_saved_model(
    ranks: list[dict[str, Any]],
) -> None:
    zero = ranks[0]
    assert len(zero['validation']) == worker.EPOCHS
    for epoch, (metrics, path) in enumerate(
        zip(zero['validation'], zero['checkpoints'], strict=True), start=1
    ):
        assert path, f'no checkpoint after epoch {epoch}'
        expected = worker.reference_metrics(_saved_module_state(path))
        assert metrics['CrossEntropy'] == pytest.approx(
            expected['CrossEntropy'], rel=TOLERANCE, abs=TOLERANCE
        ), f'epoch {epoch}'
    assert ranks[1]['validation'] == zero['validation']


def test_evaluation_leaves_every_rank_with_rank_zeros_buffers(
    ranks: list[dict[str, Any]],
) -> None:
    zero = ranks[0]['buffers_before_validation']
    for rank in ranks:
        after = rank['buffers_after_validation']
        assert after.keys() == zero.keys()
        for name, value in zero.items():
            assert torch.equal(after[name], value), (rank['rank'], name)


def test_one_broadcast_per_evaluation_and_none_without_buffers(
    ranks: list[dict[str, Any]],
) -> None:
    for rank in ranks:
        # an epoch: training (DDP syncs buffers in C++) and one validation
        assert rank['broadcasts'] == [1] * worker.EPOCHS
        assert rank['test_broadcasts'] == 1
        assert rank['test_broadcasts_no_buffers'] == 0


def test_sync_batchnorm_on_the_cpu_under_a_group_is_refused(
    ranks: list[dict[str, Any]],
) -> None:
    for rank in ranks:
        error = rank['sync_batchnorm_error']
        assert error.startswith('ValueError: '), error
        assert 'SyncBatchNorm' in error
        assert 'sync_batchnorm=False' in error


# ------------------------------------------------------------ one process
@pytest.fixture
def one_process_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> Iterator[None]:
    """A run in this process, where no process group is up."""
    monkeypatch.chdir(tmp_path)
    with isolated_kernel(monkeypatch):
        experiment: Experiment[Any] = Experiment(
            {}, name='BatchNormAlone', par_dir=tmp_path / 'experiments'
        )
        with experiment.create_run(run_id='alone'):
            yield


@pytest.mark.usefixtures('one_process_run')
def test_one_process_asks_for_no_broadcast_and_no_sync_batchnorm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(
        torch.distributed, 'broadcast', lambda *a, **k: calls.append(a)
    )
    model = drytorch.Model(
        worker.make_network(), device='cpu', sync_batchnorm=True
    )
    # without a process group the option does nothing: no conversion
    assert model.training_module() is model.module
    assert not any(
        isinstance(m, nn.SyncBatchNorm) for m in model.module.modules()
    )
    data = worker.make_dataset(worker.N_VALIDATION, seed=1)
    drytorch.Test(
        model,
        loader=drytorch.DataLoader(data, worker.EVAL_BATCH),
        metric=drytorch.Metric('Accuracy'),
    )()
    assert calls == []


@pytest.mark.usefixtures('one_process_run')
def test_the_conversion_keeps_the_parameters_and_buffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``training_module`` does before DDP on a GPU, checked on CPU.

    The optimizer is built on the module before the conversion, so the
    SyncBatchNorm layers must hold the very same tensors.  A module that
    is itself a BatchNorm layer is replaced by a new one.
    """
    model = drytorch.Model(
        worker.make_network(), device='cpu', sync_batchnorm=True
    )
    alone = drytorch.Model(
        nn.BatchNorm1d(4), device='cpu', sync_batchnorm=True
    )
    before = {id(t) for t in model.module.state_dict(keep_vars=True).values()}
    for converted in (model, alone):  # as if on a GPU, under a group
        monkeypatch.setattr(converted, 'device', torch.device('cuda', 0))
    monkeypatch.setattr(
        'drytorch.distributed.ranks.is_distributed', lambda: True
    )
    model._convert_sync_batchnorm()
    assert isinstance(model.module[1], nn.SyncBatchNorm)
    after = {id(t) for t in model.module.state_dict(keep_vars=True).values()}
    assert after == before
    alone._convert_sync_batchnorm()
    assert isinstance(alone.module, nn.SyncBatchNorm)
    assert alone.forward_module is alone.module


@pytest.mark.usefixtures('one_process_run')
def test_sync_batchnorm_is_refused_on_the_cpu_when_training_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group that came up after the model: checked again before DDP."""
    model = drytorch.Model(
        worker.make_network(), device='cpu', sync_batchnorm=True
    )
    monkeypatch.setattr(
        'drytorch.distributed.ranks.is_distributed', lambda: True
    )
    with pytest.raises(ValueError, match=r'sync_batchnorm=True needs a GPU'):
        model.training_module()
