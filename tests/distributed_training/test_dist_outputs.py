"""Test(store_outputs=True): every sample's output on rank zero, in order.

Rank r evaluates samples r, r + W, r + 2W, ...; rank zero must get all
101 outputs back in the data set's order, each once.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.distributed_training import _training_worker as worker
from tests.distributed_training.conftest import Launch


@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_rank_zero_gets_every_output_in_data_set_order(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    outputs = launch(world_size).zero['test_outputs']
    expected = worker.reference_outputs()
    assert outputs.shape == expected.shape == (101, worker.N_CLASSES)
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-6)
    # Order, not just content: each row is nearest to its own reference.
    nearest = torch.cdist(outputs, expected).argmin(dim=1)
    assert torch.equal(nearest, torch.arange(101))


@pytest.mark.parametrize('world_size', [2, 3])
def test_other_ranks_keep_no_outputs(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    for rank in launch(world_size).ranks[1:]:
        assert rank['test_outputs'].numel() == 0
