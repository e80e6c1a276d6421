"""torchrun's variables, and the env:// variables others export."""

from __future__ import annotations

import pytest

from drytorch.distributed import DistributedSetupError
from drytorch.distributed.torchrun import TorchrunEnvironment

FULL = {
    'RANK': '5',
    'LOCAL_RANK': '1',
    'WORLD_SIZE': '8',
    'LOCAL_WORLD_SIZE': '4',
    'GROUP_RANK': '1',
    'MASTER_ADDR': 'node01',
    'MASTER_PORT': '29400',
    'TORCHELASTIC_RUN_ID': 'run-7',
}


def test_every_answer_is_read() -> None:
    env = TorchrunEnvironment(FULL)
    assert env.name == 'torchrun'
    assert (env.rank, env.world_size) == (5, 8)
    assert (env.local_rank, env.local_world_size, env.node_rank) == (1, 4, 1)
    assert (env.master_addr, env.master_port) == ('node01', 29400)
    assert env.run_id == 'run-7'


def test_detection_needs_rank_local_rank_and_world_size() -> None:
    assert TorchrunEnvironment.detected(FULL)
    for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        partial = {k: v for k, v in FULL.items() if k != name}
        assert not TorchrunEnvironment.detected(partial)


def test_the_node_is_derived_without_group_rank() -> None:
    # submitit's TorchDistributedEnvironment.export() sets no GROUP_RANK.
    environ = {k: v for k, v in FULL.items() if k != 'GROUP_RANK'}
    assert TorchrunEnvironment(environ).node_rank == 1


def test_the_run_id_is_optional() -> None:
    environ = {k: v for k, v in FULL.items() if k != 'TORCHELASTIC_RUN_ID'}
    assert TorchrunEnvironment(environ).run_id is None


def test_a_missing_local_world_size_is_named() -> None:
    environ = {k: v for k, v in FULL.items() if k != 'LOCAL_WORLD_SIZE'}
    with pytest.raises(
        DistributedSetupError, match='torchrun: LOCAL_WORLD_SIZE is not set'
    ):
        TorchrunEnvironment(environ)


@pytest.mark.parametrize('missing', ['MASTER_ADDR', 'MASTER_PORT'])
def test_a_missing_master_is_named(missing: str) -> None:
    environ = {k: v for k, v in FULL.items() if k != missing}
    with pytest.raises(
        DistributedSetupError, match='MASTER_ADDR and MASTER_PORT must'
    ):
        TorchrunEnvironment(environ)


@pytest.mark.parametrize(
    ('name', 'value', 'message'),
    [
        ('RANK', 'one', "RANK='one' is not a whole number"),
        ('LOCAL_RANK', '-1', "LOCAL_RANK='-1' is not a whole number"),
        ('MASTER_PORT', '70000', "MASTER_PORT='70000' is not a TCP port"),
        ('MASTER_PORT', 'http', "MASTER_PORT='http' is not a whole number"),
    ],
)
def test_malformed_values_are_quoted(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(DistributedSetupError, match=message) as info:
        TorchrunEnvironment({**FULL, name: value})
    assert 'same --nnodes and --nproc-per-node' in str(info.value)
