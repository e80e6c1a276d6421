"""EMAModel under DDP: the same average on every rank, evaluated exactly.

Two gloo ranks train an EMAModel with BatchNorm.  The weights are the same
on every rank after each all-reduced step, so the averages agree; the
averaged BatchNorm statistics follow each rank's batches and are taken
from rank zero before each evaluation, so the validation metric is that of
rank zero's average, computed here by plain torch in one process.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.distributed_training import _bn_worker as bn
from tests.distributed_training import _ema_worker as worker
from tests.helpers.multiprocess import run_distributed


@pytest.fixture(scope='module')
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp('ema')
    cwd = root / 'cwd'
    cwd.mkdir()
    result = run_distributed(
        2,
        func=worker.train_ema,
        args=(str(root / 'experiments'),),
        env={'DRYTORCH_INIT_MODE': 'none'},
        cwd=cwd,
        timeout=120,
    )
    result.check()
    return result.values


def test_every_rank_holds_the_same_average(
    ranks: list[dict[str, Any]],
) -> None:
    zero, one = ranks
    steps = bn.EPOCHS * (bn.N_TRAIN // 2 // bn.TRAIN_BATCH)
    assert zero['n_averaged'] == one['n_averaged'] == steps
    for name, value in zero['averaged'].items():
        assert torch.equal(value, one['averaged'][name]), name
    assert zero['validation'] == one['validation']


def test_validation_is_that_of_rank_zeros_average(
    ranks: list[dict[str, Any]],
) -> None:
    expected = bn.reference_metrics(ranks[0]['averaged'])
    assert ranks[0]['validation']['CrossEntropy'] == pytest.approx(
        expected['CrossEntropy'], rel=1e-6, abs=1e-6
    )
