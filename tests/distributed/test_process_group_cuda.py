"""NCCL paths, on a machine with a CUDA device (skipped elsewhere).

One device cannot hold two NCCL ranks, so NCCL is brought up for a world of
one through the same ``_start`` that ``init_distributed`` uses; the choice
of backend for oversubscribed nodes is checked with real gloo ranks.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist

from drytorch.distributed import process_group as pg
from drytorch.distributed import teardown_distributed
from drytorch.distributed.torchrun import TorchrunEnvironment

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA device'
)


def test_each_local_rank_with_a_device_gets_nccl() -> None:
    count = torch.cuda.device_count()
    assert pg.default_backend(count) == 'nccl'
    assert pg.default_backend(count + 1) == 'gloo'


def test_nccl_binds_the_local_device(free_port: Callable[[], int]) -> None:
    local_rank = torch.cuda.device_count() - 1
    env = TorchrunEnvironment(
        {
            'RANK': '0',
            'WORLD_SIZE': '1',
            'LOCAL_RANK': str(local_rank),
            'LOCAL_WORLD_SIZE': str(local_rank + 1),
            'MASTER_ADDR': '127.0.0.1',
            'MASTER_PORT': str(free_port()),
        }
    )
    pg._start(env, 'nccl', datetime.timedelta(seconds=60))
    try:
        assert dist.get_backend() == 'nccl'
        assert torch.cuda.current_device() == local_rank
        values = torch.arange(4.0, device='cuda')
        dist.all_reduce(values)
        assert values.tolist() == [0.0, 1.0, 2.0, 3.0]
        dist.barrier()
    finally:
        teardown_distributed()
    assert not dist.is_initialized()
