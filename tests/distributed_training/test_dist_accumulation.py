"""Gradient accumulation on 2 real gloo ranks under DDP.

k=4 micro-batches of 8 per rank end two epochs with the weights of k=1
with batches of 32, and DDP all-reduces the gradients once per optimizer
step (counted by a comm hook that does the real all-reduce), not once per
micro-batch.  Under FSDP the same windows give the same weights.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from tests.distributed_training import _accumulation_worker as worker
from tests.helpers.multiprocess import run_distributed


@pytest.fixture(scope='module')
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root: pathlib.Path = tmp_path_factory.mktemp('accumulation')
    cwd = root / 'cwd'
    cwd.mkdir()
    return (
        run_distributed(
            2,
            func=worker.train_both,
            args=(str(root / 'experiments'),),
            env={'DRYTORCH_INIT_MODE': 'none'},
            cwd=cwd,
            timeout=180,
        )
        .check()
        .values
    )


def test_four_micro_batches_equal_one_big_batch(
    ranks: list[dict[str, Any]],
) -> None:
    for out in ranks:
        big, small = out['big']['state'], out['small']['state']
        for key, value in big.items():
            torch.testing.assert_close(small[key], value, rtol=1e-5, atol=1e-7)
        assert out['small']['metrics']['CE'] == pytest.approx(
            out['big']['metrics']['CE'], rel=1e-5
        )
    # the ranks hold the same replica
    for key, value in ranks[0]['small']['state'].items():
        assert torch.equal(value, ranks[1]['small']['state'][key])


def test_one_all_reduce_per_optimizer_step(
    ranks: list[dict[str, Any]],
) -> None:
    for out in ranks:
        big, small = out['big'], out['small']
        assert big['ddp'] == small['ddp'] == 'DistributedDataParallel'
        assert (big['batches'], small['batches']) == (4, 13)
        # 4 windows per epoch either way: 4 x 32, or 3 x (4 x 8) + 1 x 4
        assert big['optimizer_steps'] == small['optimizer_steps'] == 8
        # a model this small fits one DDP bucket: one all-reduce a step
        assert big['all_reduces'] == 8
        assert small['all_reduces'] == 8  # not 26, one per micro-batch


def test_fsdp_accumulates_as_well(ranks: list[dict[str, Any]]) -> None:
    """Sharded: reduce-scatter skipped but on a window's last batch."""
    zero = ranks[0]
    assert zero['fsdp_small']['optimizer_steps'] == 8
    big, small = zero['fsdp_big']['state'], zero['fsdp_small']['state']
    assert big.keys() == small.keys() == zero['big']['state'].keys()
    for key, value in big.items():
        torch.testing.assert_close(small[key], value, rtol=1e-5, atol=1e-7)
        # and the same model as under DDP
        torch.testing.assert_close(
            small[key], zero['small']['state'][key], rtol=1e-5, atol=1e-7
        )
