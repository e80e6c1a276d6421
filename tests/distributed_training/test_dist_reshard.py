"""Checkpoints in parts: one part per rank, and N ranks' parts load into M.

Two gloo ranks train the FSDP tests' MLP under DDP and under FSDP with
``LocalCheckpoint(sharded=True)``; one process and three ranks then load
the newest checkpoint into a model built from another seed, at an epoch
boundary.  What they hold right after the load equals, bit for bit, what
the two ranks held when they saved (weights and optimizer state, gathered
into the plain format), and the training goes on.  The export turns the
folder into one file that a plain ``nn.Module`` loads.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import pytest
import torch

from tests.distributed_training import _reshard_worker as worker
from tests.helpers.multiprocess import run_distributed
from tests.preemption._support import assert_bitwise_equal

pytestmark = pytest.mark.timeout(600)

PARALLEL = ('ddp', 'fsdp')


def _launch(world: int, func: Any, *args: str) -> list[Any]:
    return (
        run_distributed(
            world,
            func=func,
            args=args,
            env={'DRYTORCH_INIT_MODE': 'none'},
            timeout=240,
        )
        .check()
        .values
    )


@pytest.fixture(scope='module')
def saved(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[pathlib.Path, dict[str, Any]]]:
    """Per wrapping: the shared folder, and rank zero's state at the save."""
    out = {}
    for parallel in PARALLEL:
        root = tmp_path_factory.mktemp(f'saved-{parallel}')
        folder = root / 'checkpoints'
        values = _launch(2, worker.save, str(root), str(folder), parallel)
        out[parallel] = (folder, values[0])
    return out


@pytest.mark.parametrize('parallel', PARALLEL)
def test_a_checkpoint_holds_one_part_per_rank(
    saved: dict[str, tuple[pathlib.Path, dict[str, Any]]], parallel: str
) -> None:
    _, state = saved[parallel]
    assert state['latest'] == 'net/epoch_000002.dcp'
    assert set(state['files']) == {'epoch_000002.dcp'}
    for contents in state['files'].values():
        assert contents == [
            '.metadata',
            '__0_0.distcp',
            '__1_0.distcp',
            'state.pt',
        ]


@pytest.mark.parametrize('world', [1, 3])
@pytest.mark.parametrize('parallel', PARALLEL)
def test_parts_of_two_ranks_load_into_another_number(
    saved: dict[str, tuple[pathlib.Path, dict[str, Any]]],
    tmp_path: pathlib.Path,
    parallel: str,
    world: int,
) -> None:
    saved_folder, state = saved[parallel]
    folder = tmp_path / 'checkpoints'  # a copy: the resume saves there too
    shutil.copytree(saved_folder, folder)
    values = _launch(
        world, worker.resume, str(tmp_path), str(folder), parallel
    )
    resumed = values[0]
    assert resumed['world'] == world
    expected = {k: state[k] for k in ('module', 'optimizer', 'epoch')}
    assert_bitwise_equal(resumed['loaded'], expected)
    after = resumed['after']
    assert after['epoch'] == 3
    assert torch.isfinite(torch.tensor(resumed['loss']))
    changed = [
        name
        for name, value in after['module'].items()
        if not torch.equal(value, state['module'][name])
    ]
    assert changed, 'the training after the load changed no weight'


@pytest.mark.parametrize('parallel', PARALLEL)
def test_the_export_loads_into_a_plain_module(
    saved: dict[str, tuple[pathlib.Path, dict[str, Any]]],
    tmp_path: pathlib.Path,
    parallel: str,
) -> None:
    folder, state = saved[parallel]
    path = worker.export(str(folder), str(tmp_path / 'net.pt'))
    network = worker.load_plain(path)
    assert_bitwise_equal(dict(network.state_dict()), state['module'])
    exported = torch.load(path, weights_only=False)
    assert exported['model']['epoch'] == 2
    assert exported['world_size'] == 2
    optimizer = torch.optim.Adam(network.parameters())
    optimizer.load_state_dict(exported['optimizer'])
    assert_bitwise_equal(
        optimizer.state_dict()['state'], state['optimizer']['state']
    )
