"""DRYTORCH_FORCE_PROCESS_GROUP=1: the distributed paths in one process.

``benchmarks/gpu_check.sh`` uses it to run DDP and the packed all-reduce
over NCCL on a machine with one GPU; here the same path runs with gloo.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.distributed_training import _training_worker as worker
from tests.helpers.multiprocess import run_distributed


def test_a_forced_group_of_one_trains_through_ddp(
    tmp_path: pathlib.Path,
) -> None:
    launched = run_distributed(
        1,
        func=worker.forced_group_training,
        args=(str(tmp_path / 'experiments'),),
        env={
            'DRYTORCH_INIT_MODE': 'none',
            'DRYTORCH_FORCE_PROCESS_GROUP': '1',
        },
        cwd=tmp_path,
        timeout=60,
    ).check()
    out = launched[0].value
    assert out['initialized']
    assert out['world_size'] == 1
    assert out['backend'] == 'gloo'  # no GPU here; NCCL where there is one
    assert out['distributed']
    assert out['ddp']
    steps = -(-worker.N_SAMPLES // worker.TRAIN_BATCH)
    syncs = worker.expected_syncs(steps, worker.TRAIN_SYNC)
    assert out['reducer_calls'] == syncs
    assert out['all_reduce'] == syncs + 1  # and the epoch's stop agreement
    expected = worker.reference_metrics()['CrossEntropy']
    got = out['train_metrics']['CrossEntropy']
    assert got == pytest.approx(expected, rel=1e-6)
    assert not out['initialized_after']
