"""DDP's options given to Model reach DistributedDataParallel, 2 gloo ranks."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from tests.distributed_training import _ddp_options_worker as worker
from tests.helpers.multiprocess import run_distributed


@pytest.fixture(scope='module')
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root: pathlib.Path = tmp_path_factory.mktemp('ddp_options')
    cwd = root / 'cwd'
    cwd.mkdir()
    return (
        run_distributed(
            2,
            func=worker.train,
            args=(str(root / 'experiments'),),
            env={'DRYTORCH_INIT_MODE': 'none'},
            cwd=cwd,
            timeout=180,
        )
        .check()
        .values
    )


def test_find_unused_parameters_trains_a_branch_not_taken(
    ranks: list[dict[str, Any]],
) -> None:
    for out in ranks:
        assert out['unused']['type'] == 'DistributedDataParallel'
        assert out['unused']['find_unused_parameters'] is True
        assert out['unused']['static_graph'] is False
    assert ranks[0]['unused_loss'] == ranks[1]['unused_loss']


def test_static_graph(ranks: list[dict[str, Any]]) -> None:
    for out in ranks:
        assert out['static']['static_graph'] is True
        assert out['static']['find_unused_parameters'] is False


def test_bucket_size_and_views(ranks: list[dict[str, Any]]) -> None:
    for out in ranks:
        facts = out['tiny']
        assert facts['static_graph'] is False
        assert facts['gradient_as_bucket_view'] is True
        assert facts['bucket_bytes_cap'] == int(0.001 * 1024 * 1024)
        # trained through the comm hook: every step all-reduced
        assert out['tiny_steps'] == 4
        assert out['tiny_all_reduces'] >= 4
    for key, value in ranks[0]['tiny_state'].items():
        assert torch.equal(value, ranks[1]['tiny_state'][key])


def test_a_compiled_model_under_ddp(ranks: list[dict[str, Any]]) -> None:
    """DDP wraps the compiled module; states keep the plain names."""
    for out in ranks:
        compiled = out['compiled']
        assert compiled['wraps'] == 'OptimizedModule'
        assert compiled['names'] == [
            '0.weight',
            '0.bias',
            '2.weight',
            '2.bias',
        ]
    assert (
        ranks[0]['compiled']['validation']
        == ranks[1]['compiled']['validation']
    )
